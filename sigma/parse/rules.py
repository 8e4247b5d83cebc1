"""The default parser: deterministic verb/pattern rules over tokens plus noun-phrase extraction.

Order of reasoning, per sentence: find the editing verb (or a non-imperative pattern such as
"what if X were Y", "X should be Y", "there should be X"), read the object phrase, then decide the
edit type from what the sentence says the object becomes:
- a value (colour, material, state, "a darker shade")       -> attribute, source = target = object
- a new thing                                               -> replace, source = object, target = thing
- a scene, or the object is a background/setting            -> replace, source = "background"
- the object is the whole image (it, the photo), a style, weather, a restoration -> global
No weights, no network; the same text always gives the same parse.
"""
from __future__ import annotations

import re
from dataclasses import dataclass

from sigma.parse import lexicon as L
from sigma.parse.language import not_english
from sigma.parse.phrases import (
    Phrase,
    extract_phrase,
    fold_text,
    is_action_form,
    is_value_word,
    is_word,
    looks_participle,
    subject_then_verb,
    tokenize,
)
from sigma.parse.registry import register_parser
from sigma.parse.types import MAX_EDITS, Edit, ParsedInstruction
from sigma.parse.typos import EDIT_VERBS as _TYPO_EDIT_VERBS
from sigma.parse.typos import correct

_FILLERS = [
    ("please",), ("pls",), ("plz",), ("kindly",), ("can", "you"), ("could", "you"), ("would", "you"), ("will", "you"),
    ("can", "u"), ("could", "u"), ("would", "u"), ("will", "u"),
    ("i", "want", "you", "to"), ("i", "want", "to"), ("i", "would", "like", "you", "to"),
    ("i", "would", "like", "to"), ("i'd", "like", "to"), ("i'd", "like", "you", "to"), ("i", "need", "you", "to"),
    ("i", "need", "to"), ("let's",), ("let", "us"), ("now",), ("then",), ("also",), ("just",), ("try", "to"),
    ("help", "me"), ("go", "ahead", "and"), ("and",), ("ok",), ("okay",), ("hey",), ("simply",),
    ("instruction",), ("edit",), (":",), ("-",), ("you", "should"), ("we", "need", "to"), ("lets",),
    ("how", "about"), ("what", "about"), ("why", "not"),
    # a question to the editor asked as 'we'/'I' ('can we add a rainbow?' was a default add of 'can we add')
    ("can", "we"), ("could", "we"), ("shall", "we"), ("should", "we"), ("can", "i"), ("could", "i"), ("may", "i"),
    ("should", "i"), ("why", "don't", "you"), ("why", "dont", "you"), ("why", "do", "not", "you"),
    ("do", "you", "think", "you", "could"), ("do", "you", "think", "you", "can"), ("do", "you", "think", "we", "could"),
    ("first",), ("firstly",), ("second",), ("secondly",), ("finally",), ("lastly",), ("afterwards",),
    (",",), (";",), ("additionally",), ("plus",),
]
_SENTENCE_SPLIT = re.compile(r"(?<=[.!?;])\s+")
# The most tokens of one sentence the rules read; the rest of a longer sentence is not read (`rule` says so). The
# rules look for a clause end, a gapped object and a noun phrase from every 'and' and comma of a sentence, which costs
# its length squared or more: 100 KB (an operator may allow that much, io.limits.max_instruction_chars) of 'and ' or
# ', ' after "replace the dog with" took minutes, 10 KB of ', ' 2 s. dev.jsonl's longest sentence has 28 tokens, and a
# detector reads at most 256 tokens of text anyway.
MAX_SENTENCE_TOKENS = 256
# The longest concept (source or target) the rules give, in characters. A word is a token however long, so a
# 100,000-letter word (or 256 long ones) was a 100,000-character concept: in every edit, result row and job record,
# and a detector prompt no detector reads (Grounding DINO reads 256 text tokens, and a character is at most one). A
# longer concept is cut at its last word break within the bound (mid-word for one long word; `rule` says so). The
# longest concept of dev.jsonl and the eval set has 30 characters.
MAX_CONCEPT_CHARS = 200


@dataclass(frozen=True)
class Parse:
    edit_type: str
    source: str | None
    target: str | None
    rule: str


def _strip_fillers(toks: list[str]) -> list[str]:
    """Past leading fillers ('please', 'can you'), and punctuation at either end. Positions, not slices: slicing
    after every filler made 100 KB of 'and ' take seconds here (quadratic)."""
    low = [t.lower() for t in toks]
    s, n = 0, len(toks)
    changed = True
    while changed and s < n:
        changed = False
        for filler in _FILLERS:
            if tuple(low[s:s + len(filler)]) == filler and n - s > len(filler):
                # "let the sky be ..." keeps its verb; only "let's"/"let us" are fillers
                s += len(filler)
                changed = True
                break
    while n > s and not is_word(toks[n - 1]):
        n -= 1
    while s < n and not is_word(toks[s]):
        s += 1
    return toks[s:n]


def _skip_connectors(low: list[str], j: int) -> int:
    """Past the words that join two clauses without meaning anything (', and then also')."""
    while j < len(low) and (low[j] in L.CLAUSE_CONNECTORS or tuple(low[j:j + 2]) == ("after", "that")):
        j += 2 if low[j] == "after" else 1
    return j


def _verb_at(low: list[str], q: int) -> int:
    """How many tokens the editing verb at q spans (0: none). A verb that is also a common noun
    ("plant", "turn", "set") counts only with an object or particle after it."""
    if q >= len(low):
        return 0
    multi = _multiword_verb(low, q)
    if multi is not None:
        return multi[1] - q
    if _verb_kind(low[q]) is None or q + 1 >= len(low) or not is_word(low[q + 1]):
        return 0
    if low[q] in L.NOUNY_VERBS and low[q + 1] not in L.OBJECT_STARTS:
        return 0
    return 1


def _clause_end(low: list[str], start: int) -> int:
    """Where the clause starting at `start` ends: a period/semicolon, or 'and', a comma, 'then',
    'while', 'but' or 'plus' followed (past connectors) by a new editing verb."""
    for j in range(start, len(low)):
        w = low[j]
        if w in (".", ";", "!", "?"):
            return j
        if j > start and w in ("and", ",", "then", "while", "but", "plus") and j + 1 < len(low):
            if low[j + 1] in ("then", "also"):
                return j
            q = _skip_connectors(low, j + 1)
            if _verb_at(low, q) or (q + 1 < len(low) and low[q] in L.CONSTRAINT_STARTS and is_word(low[q + 1])):
                return j
            if _arrow_in(low, start, j) and _arrow_in(low, q, len(low)):
                return j                                  # 'sky -> sunset, car -> truck': one edit an arrow
            if any(v in L.WEAR_VERBS for v in low[start:j]) and subject_then_verb(low, q):
                return j                                  # '... wear a scarf and | the cat wear a bow'
    return len(low)
    return len(low)


_ARROW_STOPS = frozenset({",", "and", ".", ";", "!", "?"})


def _arrow_in(low: list[str], start: int, end: int) -> bool:
    """Does the stretch from `start` hold an arrow ('->', '=>', '→') before the next comma, 'and' or stop?"""
    for j in range(start, end):
        if low[j] in _ARROW_STOPS and j > start:
            return False
        if low[j] in ("→", "->") or (low[j] in ("-", "=") and low[j + 1:j + 2] == [">"]):
            return True
    return False


ADJUST_VERBS = frozenset({"increase", "decrease", "reduce", "boost", "lower", "improve", "fix", "correct", "raise",
                          "enhance", "apply", "dress"})

# First match wins, so the order is part of the rule (a verb in two lists takes the earlier kind).
VERB_KINDS: tuple[tuple[frozenset[str] | set[str], str], ...] = (
    (L.REMOVE_VERBS, "remove"), (L.REPLACE_VERBS, "replace"), (L.ADD_VERBS, "add"), (L.PAINT_VERBS, "paint"),
    (L.GIVE_VERBS, "give"), (L.MAKE_VERBS, "make"), (L.CHANGE_VERBS, "change"),
    (L.RESTORATION_VERBS, "restore"), (ADJUST_VERBS, "adjust"), (L.STATE_VERBS, "state"),
    (L.FRAMING_VERBS | L.ORIENTATION_VERBS, "frame"), (L.COVER_VERBS, "cover"), (L.MOVE_VERBS, "move"),
)


def _verb_kind(w: str) -> str | None:
    return next((kind for verbs, kind in VERB_KINDS if w in verbs), None)


def _is_whole_image(ph: Phrase) -> bool:
    """No object, or one whose head is the picture itself ('it', 'the low-light image')."""
    return not ph.words or ph.words[-1] in L.WHOLE_IMAGE or all(w in L.WHOLE_IMAGE for w in ph.words)


def _is_time_scene(ph: Phrase) -> bool:
    """The phrase is a time of day, season or kind of weather ('the daytime scene', 'day', 'the sunny day'): the
    whole scene at that time, not a thing in it. Not a weather thing that lies somewhere ('the snow', 'the fog')."""
    return bool(ph.words) and all(w in L.WEATHER and w not in L.WEATHER_NOUNS for w in ph.words)


def _has(words, vocab) -> bool:
    return any(w in vocab for w in words)


# When words after a value ('the car is red now', 'make the sky blue again'): no part of the value or the thing
_WHEN_WORDS = frozenset({"now", "again", "already", "instead", "anymore"})


def _value_kind(y: list[str]) -> str:
    """What `y` (the words after 'to'/'into'/'be') names: value, style, weather, scene or thing."""
    content = [w for w in y if is_word(w) and w not in ("a", "an", "the", "more", "slightly", "very",
                                                         "much", "bit", "little", "somewhat", "fully",
                                                         "completely", "totally", "entirely", "into",
                                                         "one", "ones", "too", "so", "really", "quite",
                                                         "rather", "extremely", "way", "less")
               and w not in _WHEN_WORDS]
    if not content:
        return "none"
    if all(w in L.SIZE_WORDS for w in content) and not (y and y[0] in ("a", "an")):
        return "value"                                   # 'the car is too big' (was a replace of the car by 'too')
    if _has(content, L.STYLE_WORDS) and ("style" in content or "painting" in content
                                          or "drawing" in content or "sketch" in content
                                          or not any(w not in L.STYLE_WORDS for w in content[:1])):
        return "style"
    if _has(content, L.BACKGROUND_WORDS) or (len(content) > 1 and content[-1] in ("scene", "scenery")):
        return "scene"                                   # "a beach setting", "a snowy winter scene"
    if all(w in L.WEATHER for w in content[:2]) or (content[0] in L.WEATHER and len(content) == 1):
        return "weather"
    if _has(content, L.ATTRIBUTE_VALUE_NOUNS) and not _has(content, L.SCENES):
        return "value"
    first = content[0]
    if first in ("half", "partly", "partially", "halfway") and not (y and y[0] in ("a", "an")):
        return "value"                                   # 'half eaten' (a replace of the apple by 'half eaten')
    if first in ("made", "built", "covered", "crafted", "carved") :
        return "value"                                   # "made of gingerbread"
    indefinite = y and y[0] in ("a", "an")
    if indefinite and len(content) == 1 and (first in L.MATERIALS or first in L.COLOUR_NOUNS):
        return "thing"                                   # "to a glass" (a thing) vs "to glass" (a material)
    if is_value_word(first):
        if not indefinite or all(is_value_word(w) for w in content):
            return "value"
    if not indefinite and content[-1] in L.COLOURS:
        return "value"                                   # "to autumn orange", "to sky blue"
    if not indefinite and (looks_participle(first) or first in ("left", "right", "up", "down", "around",
                                                               "sideways", "forward", "backward")):
        return "value"
    return "thing"


def _strip_connectors(low: list[str], j: int) -> int:
    while j < len(low) and low[j] in ("to", "into", "as", "be", "being", "become", "look", "looks",
                                       "like", "appear", "seem", "turn", "in", "more", "so", "that",
                                       "it", "is", "are", "now"):
        j += 1
    # 'look a bit (more) like a wolf', 'a little more like': a degree (the new thing was 'bit')
    q = j + (low[j:j + 1] == ["a"])
    while q < len(low) and low[q] in ("bit", "little", "lot", "tad", "touch", "more", "slightly", "much"):
        q += 1
    if q > j + (low[j:j + 1] == ["a"]) and low[q:q + 1] in (["like"], ["as"]):
        return _strip_connectors(low, q)
    return j


# ---------------------------------------------------------------------------------------------
def _all_but(toks, low, j) -> Parse | None:
    """'remove everything but the dog', 'erase all except the cat', 'delete everything apart from the woman': what
    changes is all but X, the background around it (the concept was 'everything', which a detector cannot find); 'all
    but one of the birds' changes the others of that kind, the birds. None when no exception follows."""
    if j >= len(low) or low[j] not in ("everything", "all", "anything"):
        return None
    q = j + 1 + (low[j + 1:j + 2] == ["else"])
    n = 2 if tuple(low[q:q + 2]) in (("apart", "from"), ("other", "than"), ("except", "for")) else \
        1 if low[q:q + 1] in (["but"], ["except"], ["besides"]) else 0
    kept = extract_phrase(toks, q + n) if n else None
    if kept is None or not kept.words:
        return None
    if low[q + n] in _NEW_THING | {"one"} and "of" in low[q + n:kept.end]:
        return Parse("remove", kept.text, None, "remove-all-but-some")   # 'all but one of the birds'
    return Parse("remove", "background", None, "remove-all-but")


def _everything_in(toks, low, obj: Phrase) -> Phrase:
    """'everything (all, anything) in the background' is the background, which a detector finds (it asked for
    'everything', which none does); any other phrase is itself."""
    if obj.words not in (["everything"], ["all"], ["anything"], ["stuff"]) or low[obj.end:obj.end + 1] != ["in"]:
        return obj
    place = extract_phrase(toks, obj.end + 1)
    if place.words and place.head in L.BACKGROUND_WORDS:
        return Phrase(list(place.words), place.end, place.saw_attribute, place.seen, place.proper)
    return obj


def _parse_remove(toks, low, j, verb) -> Parse:
    if j < len(low) and low[j] in ("away", "out", "off", "up"):
        j += 1
    all_but = _all_but(toks, low, j)
    if all_but is not None:
        return all_but
    obj = _everything_in(toks, low, extract_phrase(toks, j))
    degradation = obj.head in L.DEGRADATIONS or (_has(obj.words, L.DEGRADATIONS) and len(obj.words) <= 2) or \
        obj.text in L.DEGRADATION_PHRASES
    if degradation and not _located(toks, low, obj) and _nouns_of(obj) <= L.DEGRADATIONS | {"low-light", "light"}:
        return Parse("global", None, None, "remove-degradation")
    if not obj.words:
        return Parse("remove", None, None, "remove-empty")
    return Parse("remove", obj.text, None, "remove")


def _parse_add(toks, low, j, verb) -> Parse:
    if j < len(low) and low[j] in ("on", "in") and verb.startswith("put"):
        j += 1                                            # "put on a hat"
    obj = extract_phrase(toks, j, caps_literal=verb in L.WRITE_VERBS)
    if len(obj.words) > 1 and obj.words[0] in ("bit", "touch", "tad", "lot"):
        # 'add a little bit more light': an amount (the concept was 'bit light')
        obj = Phrase(obj.words[1:], obj.end, obj.saw_attribute, obj.seen, obj.proper)
    if len(obj.words) > 1 and obj.words[-1] in ("back", "again"):
        # 'put the vase back', 'add it back': where it was, no part of the thing (the concept was 'vase back')
        obj = Phrase(obj.words[:-1], obj.end, obj.saw_attribute, obj.seen, obj.proper)
    if not obj.words:
        return Parse("add", None, None, "add-empty")
    if obj.literal and not obj.nouns:
        return Parse("add", None, f"text {obj.literal}", "add-text")      # 'write "HELLO" on the wall'
    if (obj.head in L.WEATHER_NOUNS or (obj.head in L.WEATHER and len(obj.words) == 1)) and \
            not _located(toks, low, obj):
        return Parse("global", None, None, "add-weather")       # "add snow" (but "snow on the roof" is local)
    if obj.head in L.STYLE_WORDS and obj.head in ("filter", "style", "effect"):
        return Parse("global", None, None, "add-style")
    if _scene_light(toks, low, obj) and not (obj.end < len(low) and low[obj.end] in ("to", "on")):
        return Parse("global", None, None, "add-light")   # 'add more light', as 'there should be more light' (an add)
    a_lamp = obj.head in L.LIGHT_WORDS and bool({"a", "an", "one"} & set(obj.seen)) and not _a_bit(obj)
    if (obj.head in L.ATTRIBUTE_NOUNS or all(is_value_word(w) for w in obj.words)) and not a_lamp and \
            obj.end < len(low) and low[obj.end] in ("to", "on"):   # 'add a light on the table' adds a lamp
        owner = extract_phrase(toks, obj.end + 1)
        if _is_whole_image(owner) or (owner.words and all(w in L.LOCATION_WORDS for w in owner.words)):
            # 'add more light to the left side': a part of the picture, no thing (the concept was 'left side')
            return Parse("global", None, None, "add-value-to-image")
        return Parse("attribute", owner.text, owner.text, "add-value-to-object")
    swap = 3 if low[obj.end:obj.end + 3] == ["in", "place", "of"] else 2 if low[obj.end:obj.end + 2] == [
        "instead", "of"] else 0
    old = extract_phrase(toks, obj.end + swap) if swap else _where_it_stands(toks, low, obj.end)
    if old is not None and old.words and not _is_whole_image(old):
        return Parse("replace", old.text, obj.text, "add-in-place-of")   # 'add a tiger in place of the dog'
    if verb in ("put", "place", "set") and low[obj.end:obj.end + 2] == ["on", "fire"]:
        return _on_fire(obj, verb)                        # 'put the house on fire' (it was an add of the house)
    if verb in ("put", "place", "set") and low[j:j + 1] and low[j] in _KNOWN and obj.end + 1 < len(low) and \
            low[obj.end] in ("in", "into", "on", "onto") and low[obj.end + 1] in ("a", "an"):
        new = extract_phrase(toks, obj.end + 2)          # 'put the cat in a spacesuit': the cat is there already,
        if new.words and not _is_whole_image(new):       # what is new is the spacesuit
            return Parse("add", None, new.text, "put-known-in-new")
    if verb in ("put", "place", "set", "move") and low[j] in _PUT_PRONOUNS and obj.end + 1 < len(low) and \
            low[obj.end] in ("on", "onto", "in", "into", "inside", "atop", "upon", "under"):
        q = obj.end + 1
        place = extract_phrase(toks, q) if low[q] in _DEFINITE else None
        if place is not None and place.words and not _is_whole_image(place):
            # 'put it on the table': 'it' names nothing a detector finds, and the table is already there; what
            # changes is the table's look, with something on or in it (it was an add of 'it'). Not 'next to the
            # dog': the dog's pixels stay as they were
            return Parse("attribute", place.text, place.text, "put-pronoun-on-place")
    return Parse("add", None, obj.text, "add")


def _on_fire(obj: Phrase, verb: str) -> Parse:
    """X set burning is X's look, as 'make the house on fire' reads; the picture burning is the whole picture."""
    if not obj.words or _is_whole_image(obj):
        return Parse("global", None, None, verb + "-image-on-fire")
    return Parse("attribute", obj.text, obj.text, verb + "-on-fire")


# What may follow 'where X is' and still say only where X stands ('where the book is now', '... used to be')
_WHERE_TAILS = frozenset({"now", "currently", "right", "standing", "sitting", "lying", "located", "placed", "parked",
                          "used", "to", "be", "stands", "sits", "stood", "sat", "lies", "lay"})


def _where_it_stands(toks, low, k: int) -> Phrase | None:
    """'where the book is' (or was, stands, used to be) after a new thing names the known thing it takes the place
    of: 'put a laptop where the book is' replaces the book, as 'in place of the book' does (it was an add of the
    laptop, whose mask left out the book's region). None for any other 'where' clause ('where the light is dim')."""
    if k >= len(low) or low[k] != "where" or k + 1 >= len(low) or low[k + 1] not in _DEFINITE:
        return None
    old = extract_phrase(toks, k + 1, stop_at_verbs=True)
    q = old.end
    if not old.words or q >= len(low) or low[q] not in ("is", "was", "are", "were", "stands", "sits", "stood", "sat",
                                                          "lies", "lay", "used"):
        return None
    rest = [w for w in low[q + 1:] if is_word(w)]
    cut = next((n for n, w in enumerate(rest) if w in ("and", "then", "but") or w in L.BOUNDARY_WORDS), len(rest))
    return old if all(w in _WHERE_TAILS for w in rest[:cut]) else None


def _located(toks, low, obj: Phrase) -> bool:
    """The phrase is placed on/in a named object ("snow on the roof", "scratches on the table"),
    not on the image ("rain in the photo") nor in the sky ("fog in the sky" is still the weather). A scene
    ("rain in the city") is no object, except for weather that settles on it: "add snow to the mountains" covers
    the mountains, a local add (it was global)."""
    if obj.end >= len(low) or low[obj.end] not in ("on", "onto", "over", "from", "in", "to", "across", "along"):
        return False
    place = extract_phrase(toks, obj.end + 1)
    settles = obj.head in L.SETTLING_WEATHER and low[obj.end] in ("on", "onto", "to", "over")
    return bool(place.words) and not _is_whole_image(place) and place.head not in L.SKY_WORDS \
        and place.head not in L.BACKGROUND_WORDS and (place.head not in L.SCENES or settles)


def _scene_light(toks, low, obj: Phrase) -> bool:
    """Light as a mass noun, not placed ('let there be light', 'there should be more sunlight'): the lighting of
    the whole image, a global edit (it was an add of 'light'); 'a light on the table' is a lamp, a thing."""
    return obj.head in L.LIGHT_WORDS and (not {"a", "an", "one"} & set(obj.seen) or _a_bit(obj)) and \
        not _located(toks, low, obj)


def _a_bit(obj: Phrase) -> bool:
    """'a (little) bit (more) light', 'a little more light': an amount, not 'a light' (a lamp)."""
    return bool({"bit", "little", "lot", "touch", "tad"} & set(obj.seen))


def _nouns_of(obj: Phrase) -> set[str]:
    """The head of each conjunct of a compound phrase ('stain and scratches' -> {stain, scratches})."""
    heads, last = set(), None
    for w in obj.words:
        if w in ("and", "or", ","):
            if last:
                heads.add(last)
            last = None
        else:
            last = w
    if last:
        heads.add(last)
    return heads


def _find(low: list[str], start: int, end: int, words: tuple[str, ...]) -> int | None:
    for k in range(start, end):
        if low[k] in words:
            return k
    return None


def _is_text(ph: Phrase | None) -> bool:
    return ph is not None and (ph.literal is not None or ph.head in L.TEXT_NOUNS)


def _text_edit(x: Phrase, old: Phrase | None, new: Phrase | None, rule: str) -> Parse | None:
    """A change of written text: source and target are the text noun with the quoted text, when the
    instruction gives it ('replace the text OPEN with CLOSED' -> text "OPEN" -> text "CLOSED").
    Quoted, because the words are what a reader (and a detector prompt) needs, with their case."""
    if not (_is_text(x) or _is_text(old)) or new is None or not new.words:
        return None
    src_literal = x.literal or (old.literal if old is not None else None)
    if src_literal is None and new.literal is None:
        return None                                       # "change the text colour to red": an attribute
    noun = " ".join(w for w in x.nouns if w in L.TEXT_NOUNS) or "text"
    source = f"{noun} {src_literal}" if src_literal else noun
    target = f"{noun} {new.literal}" if new.literal and not new.nouns else new.text
    return Parse("replace", source, target, rule + "-text")


def _swap_pair(obj: Phrase, rule: str) -> Parse | None:
    """'swap the dog and the cat': each shows up where the other was, so both are looked for in both images, the
    source as named and the target in the other order (it was a replace of 'dog and cat' by nothing, so the edited
    image was never searched); two of one kind ('swap the two cars') are the same concept on both sides. None when
    the object names one thing."""
    parts: list[list[str]] = [[]]
    for w in obj.words:
        if w in ("and", "or", ","):
            if parts[-1]:
                parts.append([])
        else:
            parts[-1].append(w)
    parts = [p for p in parts if p]
    if len(parts) == 1 and ({"two", "both"} & set(obj.seen) or sum(w in L.ORDINALS for w in obj.seen) > 1):
        return Parse("replace", obj.text, obj.text, rule)   # 'swap the two cars', 'the first and second cars'
    if len(parts) < 2:
        return None
    return Parse("replace", obj.text, " and ".join(" ".join(p) for p in reversed(parts)), rule)


def _one_of(ph: Phrase, other: Phrase) -> Phrase:
    """'a red one', 'the blue ones': 'one' stands for the other phrase's thing, so the concept is the values with its
    head ('red car'; it was 'red', a colour no detector finds). Unchanged when `ph` names a thing of its own."""
    words = [w for w in ph.words if w not in ("one", "ones")]
    if not ph.seen or ph.seen[-1] not in ("one", "ones") or not other.head or \
            not all(is_value_word(w) for w in words) or other.head in words:
        return ph
    return Phrase([*words, other.head], ph.end, ph.saw_attribute, ph.seen, ph.proper)


_NOTHING = frozenset({"nothing", "empty", "emptiness", "void", "blank"})


def _parse_replace(toks, low, j, verb, end) -> Parse:
    if j < len(low) and low[j] in ("out",):
        j += 1
    if verb in L.SWAP_VERBS:                              # 'swap the positions of the dog and the cat'
        q = j + (low[j:j + 1] in (["the"], ["their"]))
        if q + 1 < end and low[q] in L.SWAP_PLACE_NOUNS and low[q + 1] == "of":
            j = q + 2
    obj = _everything_in(toks, low, extract_phrase(toks, j))
    k = _find(low, obj.end, end, ("with", "by", "to", "into", "for", "using"))
    if k is None and verb in L.SWAP_VERBS:
        pair = _swap_pair(obj, "replace-swap-pair")
        if pair is not None:
            return pair
    new = extract_phrase(toks, k + 1, caps_literal=_is_text(obj)) if k is not None else None
    if k is not None and low[k + 1:k + 2] in (["one"], ["ones"]) and (
            k + 2 >= end or low[k + 2] in L.BOUNDARY_WORDS or low[k + 2] in ("that", "which", "made") or
            looks_participle(low[k + 2])):     # '... with one made of wood' (the concept was 'made')
        new = obj                                         # "replace the sign with one that says ENTER"
    if verb.startswith("substitut") and k is not None and low[k] == "for":
        obj, new = new, obj                               # "substitute a cat for the dog"
    if new is not None and new is not obj:
        new = _one_of(new, obj)                           # "replace the blue car with a red one": a red car
    text = _text_edit(obj, None, new, "replace") if new is not None else None
    if text is not None:
        return text
    source = obj.text
    if obj.head in L.BACKGROUND_WORDS:                   # a named object "in the background" stays itself
        source = "background"
    elif obj.saw_attribute and new is not None and _value_kind(low[k + 1:end]) == "value":
        return Parse("attribute", obj.text, obj.text, "replace-attribute")
    target = new.text if new is not None else None
    if new is not None and new.words and all(w in _NOTHING or w in ("space", "area", "background") for w in new.words) \
            and (_has(new.words, _NOTHING) or new.words == ["background"]) and source != "background":
        return Parse("remove", source, None, "replace-with-nothing")   # 'replace the tree with nothing' (a replace)
    return Parse("replace", source, target, "replace")


def _classify_change(toks, low, x: Phrase, seg: list[str], y_start: int | None, end: int,
                     a: Phrase | None, rule: str) -> Parse:
    """X (the object) becomes Y: decide the edit type from what Y is."""
    y = low[y_start:end] if y_start is not None else []
    if y[:1] and y[0] in L.DISPLAY_VERBS and x.words and x.head not in L.HUMAN_NOUNS and not _is_whole_image(x):
        return Parse("attribute", x.text, x.text, rule + "-display")   # 'change the sign to say OPEN': its look
    if y[:1] and x.words and not x.saw_attribute and not _is_whole_image(x) and low[y_start - 1] in ("to", "be") and (
            y[0] in L.ACTION_VERBS or y[0] in L.WEAR_VERBS or (y[0].endswith("ing") and is_action_form(y[0]))):
        # 'change the man to read a book', '... to be sitting': what X does, as 'make the man read a book' (it was a
        # replace of the man by 'read'); 'change the boy to hold an umbrella' adds the umbrella
        return _parse_after_subject(toks, low, x, y_start, end, rule)
    kind = _value_kind(y)
    ynp = extract_phrase(toks[:end], y_start) if y_start is not None else None
    if kind == "value" and _valued_noun(ynp):
        kind = "thing"                                    # 'red car -> blue car', 'car to blue truck': a new thing
    bg_in_x = _has(seg, L.BACKGROUND_WORDS)
    bg = bg_in_x or kind == "scene" or (a is not None and (a.head in L.SCENES or _has(a.words, L.BACKGROUND_WORDS)))
    # a time of day, season or weather as the object is the whole scene in it: 'turn the daytime scene into night',
    # 'change day to night' (an attribute edit of 'daytime', of 'day', which no detector finds)
    whole = (_is_whole_image(x) or _is_time_scene(x) or _scene_at_a_time(x, y, kind)) and not bg_in_x
    if x.saw_attribute and not whole and kind in ("value", "none", "weather", "thing"):
        if kind != "thing" or not bg:
            who = _actor(x) if _has(seg, L.BODY_ATTRIBUTES) or _has(x.seen, L.BODY_ATTRIBUTES) else x.text
            return Parse("attribute", who, who, rule + "-attribute-noun")
    if bg and kind not in ("value", "style"):
        said_setting = _has(y, L.BACKGROUND_WORDS) or (a is not None and _has(a.seen, L.BACKGROUND_WORDS))
        if whole and not said_setting and (kind == "weather" or (ynp is not None and ynp.words
                                                                 and all(w in L.WEATHER for w in ynp.words))):
            return Parse("global", None, None, rule + "-weather")   # "change the image to a winter scene"
        return Parse("replace", "background", ynp.text if ynp else None, rule + "-background")
    if whole:
        return Parse("global", None, None, rule + "-whole-image")
    if kind in ("value", "none"):
        return Parse("attribute", x.text, x.text, rule + "-value")
    if kind == "weather" and x.head in L.SKY_WORDS and ynp is not None and ynp.head in L.SKY_SCENES:
        return Parse("replace", x.text, ynp.text, rule + "-sky-scene")   # "change the sky to a sunset"
    if kind == "style" and _styled_thing(y, ynp) and ynp.head != x.head:
        return Parse("replace", x.text, ynp.text, rule + "-styled-thing")   # "into a vintage bicycle"
    if kind in ("style", "weather"):
        return Parse("attribute", x.text, x.text, rule + "-" + kind)
    if a is not None and is_value_word(a.head or ""):
        return Parse("attribute", x.text, x.text, rule + "-from-value")
    if x.head in L.SCENES and ynp is not None and ynp.head in L.SCENES:
        return Parse("replace", "background", ynp.text, rule + "-scene")
    if ynp is None or not ynp.words:
        return Parse("attribute", x.text, x.text, rule + "-no-target")
    return Parse("replace", x.text, ynp.text, rule + "-thing")


def _valued_noun(ynp: Phrase | None) -> bool:
    """'blue car', 'red sports car': values before a noun that names a thing, which the object becomes, as 'a blue
    car' does ('red car -> blue car' was an attribute edit of the red car, 'blue' read as its new value); a noun of
    look, material or colour ('blue colour', 'red velvet', 'light blue') keeps it a value."""
    words = [w for w in ynp.words if w not in _WHEN_WORDS] if ynp is not None else []
    if len(words) < 2 or not is_value_word(words[0]):
        return False
    head = words[-1]
    return is_word(head) and head.isalpha() and not is_value_word(head) and not looks_participle(head) and \
        head not in L.ATTRIBUTE_VALUE_NOUNS and head not in L.ATTRIBUTE_NOUNS and head not in L.STYLE_HEADS and \
        head not in L.MATERIALS and head not in L.WEATHER and head not in L.LIGHT_WORDS and head not in L.STYLE_WORDS \
        and head not in _MOODS and head not in L.WHOLE_IMAGE and not head.endswith("ly")


# Weather values that lie on what they cover ('turn the street snowy'): the covered thing's look, not the scene's time
_SETTLED = frozenset({"snow", "snowy", "snowing", "snowfall", "frost", "frosty", "icy", "hail"})


def _scene_at_a_time(x: Phrase, y: list[str], kind: str) -> bool:
    """A place (street, city, forest, beach) that becomes a time of day, season or weather ('turn the daytime street
    into night', 'change the park to autumn'): the whole scene at that time, every pixel relit, a global edit as for
    'turn the daytime scene into night' (it was an attribute edit of 'daytime street'). Not the sky ('change the sky
    to a sunset' replaces the sky) and not snow or frost, which lie on the place ('turn the street snowy')."""
    if y[:1] == ["at"]:                                   # 'the street should be at night'
        y = y[1:]
        kind = _value_kind(y)
    return kind == "weather" and bool(x.words) and x.head in L.SCENES and x.head not in L.SKY_WORDS \
        and not _has(y, _SETTLED)


def _styled_thing(y: list[str], ynp: Phrase | None) -> bool:
    """'a vintage bicycle', 'a cartoon dog': a new thing in a style, not a style, for a style word only modifies its
    head noun; 'a vintage look', 'a cartoon version', 'a watercolor painting' stay the object's style."""
    if ynp is None or not ynp.words or y[:1] not in (["a"], ["an"]):
        return False
    head = ynp.words[-1]
    return head not in L.STYLE_WORDS and head not in L.WHOLE_IMAGE and head not in L.ATTRIBUTE_NOUNS \
        and head not in L.STYLE_HEADS and not is_value_word(head)


# What a turn verb says when it turns a thing over, not into something ('turn it upside down', 'turn the car sideways')
_TURNED_OVER = frozenset({"upside", "upside-down", "sideways", "clockwise", "counterclockwise", "anticlockwise",
                          "degrees"})


def _parse_change(toks, low, j, verb, end) -> Parse:
    """change/turn/transform/convert X [from A] (to|into|as) Y; turn/make X Y."""
    if verb in ("turn",) and j < len(low) and low[j] in ("on", "off"):
        obj = extract_phrase(toks, j + 1)
        return Parse("attribute", obj.text, obj.text, "turn-on-off") if obj.words else \
            Parse("global", None, None, "turn-on-off-image")
    turned = next((q for q in range(j, end) if low[q] in _TURNED_OVER), None)
    if verb in ("turn", "turns") and turned is not None and not _has(low[j:turned], ("into", "to", "as")):
        # 'turn it upside down', 'turn the chair sideways': it is flipped or rotated, as 'flip it upside down' reads
        # (global for the picture, the thing's pose otherwise); it was an attribute edit of 'it upside down'
        return _parse_frame(toks, low, j, "rotate", end)
    x = _person_pronoun(low, j, end) or (Phrase(["person"], j + 1, seen=["her"]) if low[j:j + 1] == ["her"] and
                                         low[j + 1:j + 2] in (["into"], ["to"], ["as"]) else None) or \
        extract_phrase(toks, j, stop_at_verbs=True)     # 'turn him into a cyborg', 'turn her into a queen'
    if x.head in L.GLOBAL_ADJUSTMENTS and x.head not in L.ATTRIBUTE_NOUNS or x.words and all(
            w in _STYLE_OF for w in x.words) and x.head in ("style", "styles", "aesthetic"):
        # "adjust the brightness (of the image)" is global; "... of the sky" is the sky's attribute; so is "change the
        # (art) style (of the car) to Van Gogh" (an attribute edit of 'style', which no detector finds)
        owner = extract_phrase(toks, x.end + 1) if x.end < end and low[x.end] == "of" else None
        if owner is None or _is_whole_image(owner):
            return Parse("global", None, None, "change-global-adjustment")
        return Parse("attribute", owner.text, owner.text, "change-adjust-object")
    thing = _pronoun_becomes(toks, low, x, x.end + 1, end) if low[x.end:x.end + 1] in (["into"], ["to"]) else None
    if thing is not None:                                 # 'turn it into a cat', as 'make it a cat' (was global)
        return Parse("replace", None, thing, "change-pronoun-thing")
    x, y_inline = _split_trailing_values(x)
    if y_inline:
        return _inline(x, y_inline, low[j:x.end], "change-inline")
    k_from = _find(low, x.end, end, ("from",))
    k_to = _find(low, x.end, end, ("to", "into", "as", "so", "like"))
    if k_to is None:
        k_to = _find(low, x.end, end, ("in",))
    a = None
    if k_from is not None and (k_to is None or k_from < k_to):
        a = extract_phrase(toks, k_from + 1)
        k_to = _find(low, a.end, end, ("to", "into", "as"))
    seg = low[j:(k_from if k_from is not None else k_to if k_to is not None else end)]
    if k_to is not None and low[k_to] == "in" and not _in_is_target(low, k_to, end):
        k_to = None
    y_start = _strip_connectors(low, k_to + 1) if k_to is not None else None
    if x.end < end and low[x.end] in L.BE_VERBS | L.ACTION_VERBS | L.WEAR_VERBS and k_to is None:
        return _parse_after_subject(toks, low, x, x.end, end, "change")
    if y_start is not None and (_is_text(x) or _is_text(a)):
        if y_start < end and low[y_start] in L.DISPLAY_VERBS:
            y_start += 1                                  # 'change the text to say HELLO': the text is HELLO
        text = _text_edit(x, a, extract_phrase(toks[:end], y_start, caps_literal=True), "change")
        if text is not None:
            return text
    return _classify_change(toks, low, x, seg, y_start, end, a, "change")


_STYLE_OF = L.WHOLE_IMAGE | {"art", "artistic", "visual", "style", "styles", "aesthetic", "overall", "painting",
                             "drawing"}


def _in_is_target(low, k, end, toks=None) -> bool:
    """'in' introduces the new look ('in Van Gogh style', 'in red') or a new place ('in Italy'),
    not a location in the picture ('in the image', 'in the corner')."""
    rest = [w for w in low[k + 1:end] if w not in ("a", "an", "the")]
    if toks is not None and k + 1 < end and toks[k + 1][:1].isupper() and toks[k + 1].lower() not in L.WHOLE_IMAGE:
        return True                                      # a named place
    if not rest or rest[0] in L.WHOLE_IMAGE or rest[0] in L.LOCATION_WORDS:
        return False
    return _value_kind(rest) in ("value", "style", "weather") or _has(rest, L.SCENES)


def _split_trailing_values(x: Phrase) -> tuple[Phrase, list[str]]:
    """'the car red' -> ('car', ['red']): a phrase that swallowed its new value."""
    words = list(x.words)
    tail: list[str] = []
    while len(words) > 2 and words[-1] in _WHEN_WORDS and is_value_word(words[-2]):
        words.pop()                                       # 'the sky blue | again' (the concept was 'sky blue again')
    while len(words) > 1 and (is_value_word(words[-1]) or words[-1] in L.WEATHER or (
            tail and words[-1] in ("and", "or", ",") and len(words) > 2
            and (is_value_word(words[-2]) or words[-2] in L.WEATHER))):
        tail.insert(0, words.pop())                       # "the sky dark and stormy" -> sky
    if not tail:
        return x, []
    saw_attribute = x.saw_attribute
    while len(words) > 1 and words[-1] in L.ATTRIBUTE_NOUNS and words[-1] not in L.SURFACE_NOUNS:   # 'car colour'
        # 'the car colour | blue' is the car itself; 'the white wall | red' is a wall
        words.pop()
        saw_attribute = True
    return Phrase(words, x.end, saw_attribute, x.seen, x.proper), tail


def _inline(x: Phrase, values: list[str], seg: list[str], rule: str) -> Parse:
    if _is_whole_image(x) or _is_time_scene(x) or _scene_at_a_time(x, values, _value_kind(values)):
        return Parse("global", None, None, rule + "-whole-image")
    return Parse("attribute", x.text, x.text, rule)


def _parse_after_subject(toks, low, x: Phrase, k: int, end: int, rule: str) -> Parse:
    """X followed by a verb: 'make the man | wear a hat', 'have the dog | sit', 'the sky | be sunset'."""
    w = low[k]
    if w in L.BE_VERBS and k + 2 < end and low[k + 1] in _WHEN_WORDS | {"still", "also"} and (
            low[k + 2] in L.WEAR_VERBS or is_action_form(low[k + 2])):
        k += 1                                           # 'the girl is now | jumping' (an attribute edit of 'girl')
    if w in L.BE_VERBS and k + 1 < end and (low[k + 1] in L.WEAR_VERBS or is_action_form(low[k + 1])) \
            and low[k + 1] not in L.BE_VERBS:
        k += 1                                           # "should be | wearing sunglasses", "be | playing"
        w = low[k]
    if w in L.WEAR_VERBS or is_action_form(w) and any(w.startswith(s) for s in ("wear", "hold", "carr")):
        if w in ("have", "has", "having", "had", "put") and k + 1 < end and low[k + 1] in ("on",):
            k += 1
        obj = extract_phrase(toks, k + 1)
        if obj.words and all(is_value_word(v) for v in obj.words):   # "the car had a red colour": its look
            return _inline(x, list(obj.words), low[:k], rule + "-has-value")
        if w in ("have", "has", "had", "having") and low[k + 1:k + 2] == ["no"] and obj.words and \
                not _is_whole_image(obj):
            gone = extract_phrase(toks[:end], k + 2)
            return Parse("remove", gone.text, None, rule + "-has-no")   # 'the tree has no leaves' (an add of them)
        if w in ("have", "has", "had", "having") and obj.words and not _is_whole_image(x) and \
                _value_kind(low[k + 1:end]) == "value" and is_value_word(low[k + 1]):
            # 'the woman should have red hair': her look, as 'give the woman red hair' (it added 'red hair')
            return _inline(x, [low[k + 1]], low[:k], rule + "-has-value")
        if _is_whole_image(x) and obj.head in L.GLOBAL_ADJUSTMENTS:
            return Parse("global", None, None, rule + "-has-adjustment")   # 'the photo should have more contrast'
        if obj.words and not _is_whole_image(obj):
            return Parse("add", None, obj.text, rule + "-wear")
    if w in L.BE_VERBS or (w in ("turn", "turns", "turned", "get", "gets") and k + 1 < end
                           and (low[k + 1] in ("into", "to") or is_value_word(low[k + 1]))):
        y_start = _strip_connectors(low, k + 1)
        parse = _classify_change(toks, low, x, low[:k], y_start, end, None, rule + "-be")
        if w in ("look", "looks", "appear", "appears", "seem", "seems") and parse.edit_type == "attribute":
            who = _actor(x)                              # "make the woman look surprised": an expression
            return Parse("attribute", who, who, parse.rule)
        return parse
    if _is_whole_image(x):
        return Parse("global", None, None, rule + "-whole-image-action")
    who = _actor(x)
    return Parse("attribute", who, who, rule + "-action")


def _actor(x: Phrase) -> str | None:
    """The concept of a pose/expression/action edit: 'person' for any human, else the object."""
    return "person" if x.head in L.HUMAN_NOUNS else x.text


def _parse_make(toks, low, j, verb, end) -> Parse:
    """make/let/have/get X Y | X VERB ... | there be X."""
    if j < len(low) and low[j] == "there":
        k = _strip_connectors(low, j + 1)
        obj = extract_phrase(toks, k)
        if (obj.head in L.WEATHER_NOUNS or obj.head in L.WEATHER) and not _located(toks, low, obj):
            return Parse("global", None, None, "let-there-be-weather")
        if _scene_light(toks, low, obj):
            return Parse("global", None, None, "let-there-be-light")
        return Parse("add", None, obj.text, "let-there-be")
    x = _person_pronoun(low, j, end) or extract_phrase(toks, j, stop_at_verbs=True)
    if verb in ("have", "let") and low[j:j + 1] and low[j] in _NEW_THING and x.words and \
            not _is_whole_image(x) and (not all(is_value_word(w) for w in x.words) if x.end >= end else (
                low[x.end] in L.ACTION_VERBS or looks_participle(low[x.end]) or low[x.end] in L.PLACE_PREPOSITIONS
                or low[x.end] in ("here", "there"))):
        return Parse("add", None, x.text, verb + "-new-thing")   # "have a bird sitting on the fence": it is new
    if len(x.words) > 1 and x.words[-1] in _VANISH:    # 'make the dog disappear' read 'disappear' into the noun
        x = Phrase(x.words[:-1], x.end - 1, x.saw_attribute, x.seen[:-1], x.proper)
    gone = _find(low, x.end, end, _VANISH) if low[x.end:x.end + 2] != ["go", "away"] else x.end   # 'go away'
    if gone is not None and x.words and not _is_whole_image(x) and not any(
            _verb_kind(w) is not None for w in low[x.end:gone]):
        return Parse("remove", x.text, None, verb + "-disappear")   # 'make the person on the right disappear'
    if _pronoun_acts(x, low, end):
        if low[x.end] in L.WEAR_VERBS:                    # 'make it wear a hat': the hat is new
            return _parse_after_subject(toks, low, x, x.end, end, verb)
        # 'make it run', 'have it fly over the lake': a thing does something, and a picture does not run; which
        # thing, 'it' does not say (it was a global edit of the whole image)
        return Parse("attribute", None, None, verb + "-pronoun-action")
    thing = _pronoun_becomes(toks, low, x, x.end, end)
    if thing is not None:
        # 'make it a cat': what 'it' is becomes a cat (it was a global edit): a replace of nothing named, as
        # 'replace it with a cat' is
        return Parse("replace", None, thing, verb + "-pronoun-thing")
    if x.words and x.words[0] in L.WHOLE_IMAGE and x.words[0] not in ("this",) and \
            not _has(low[j:end], L.BACKGROUND_WORDS):
        return Parse("global", None, None, verb + "-whole-image")      # "make the image clearer"
    acts = x.end < end and low[x.end] in L.ACTION_VERBS and low[x.end] not in L.BE_VERBS | {"turn", "get", "have",
                                                                                            "has"}
    x, tail = _split_trailing_values(x) if not acts else (x, [])   # 'make the ice cream | melt' (was 'ice', 'cream'
    if tail:                                                         # read as its new colour)
        return _inline(x, tail, low[j:x.end], verb + "-inline")
    k = x.end
    if k < end and (low[k] in L.ACTION_VERBS or low[k] in L.WEAR_VERBS or low[k] in L.BE_VERBS):
        return _parse_after_subject(toks, low, x, k, end, verb)
    if k < end and low[k] in ("a", "an", "the") and not _is_whole_image(x):
        # "make the dog a cat"
        return _classify_change(toks, low, x, low[j:k], k, end, None, verb + "-object")
    if k + 1 < end and low[k] in L.PLACE_PREPOSITIONS | {"with"} and x.words and not _is_whole_image(x):
        where = extract_phrase(toks[:end], k + 1, stop_at_verbs=True)
        q = where.end
        if where.words and q < end and (low[q] in L.WEAR_VERBS or low[q] in L.ACTION_VERBS) and \
                low[q] not in L.BE_VERBS:
            # 'make the woman in the red dress | wear a hat': which woman, then what she does (an attribute edit of
            # the woman, the hat lost)
            return _parse_after_subject(toks, low, x, q, end, verb)
    if k + 1 < end and low[k] == "in" and x.words and not _is_whole_image(x):
        worn = extract_phrase(toks[:end], k + 1)
        if worn.head in L.GARMENTS and worn.end >= end:   # 'make the man in a suit' (a replace of the background)
            return Parse("add", None, worn.text, verb + "-in-garment")
    if low[k:k + 2] == ["on", "fire"] and x.words and not _is_whole_image(x):
        return Parse("attribute", x.text, x.text, verb + "-on-fire")   # a replace of the background by 'fire'
    q = _placed_then_object(toks, low, x, k, end)
    if q is not None:
        # 'make the painting on the wall a mirror', 'make the dog on the left a cat': the place says which, 'a mirror'
        # is what it becomes (they were a replace of the background by 'wall', an attribute of the dog)
        return _classify_change(toks, low, x, low[j:k], q, end, None, verb + "-placed-object")
    if k < end and low[k] in ("in", "at", "on") and _in_is_target(low, k, end, toks):
        y_start = _strip_connectors(low, k + 1)
        rest = low[y_start:end]
        ynp = extract_phrase(toks, y_start)
        place = ynp.head in L.SCENES or ynp.head in L.WEATHER_NOUNS or ynp.proper
        if not place and _value_kind(rest) in ("value", "style", "weather"):
            return _classify_change(toks, low, x, low[j:k], y_start, end, None, verb + "-in")
        return Parse("replace", "background", ynp.text, verb + "-in-scene")
    if k < end and low[k] in ("in", "on", "at") and not any(
            low[q] in L.ACTION_VERBS or low[q] in L.WEAR_VERBS or low[q] in L.BE_VERBS for q in range(k + 1, end)):
        place = extract_phrase(toks, k + 1)
        if place.words and not _has(place.words, L.WHOLE_IMAGE) and place.head not in L.LOCATION_WORDS and \
                not is_value_word(place.head):
            return Parse("replace", "background", place.text, verb + "-placed")   # "make the dog on the moon"
    if k < end and low[k] in ("into", "to", "as", "like", "look"):
        return _classify_change(toks, low, x, low[j:k], _strip_connectors(low, k + 1), end, None, verb + "-into")
    if low[k:k + 2] == ["out", "of"] and k + 2 < end:     # "make the bench out of stone/candy": made of it
        return _inline(x, low[k + 2:end], low[j:k], verb + "-out-of")
    # "make it snowy" when "snowy" was read into the phrase, or a bare adjective phrase
    if _is_whole_image(x):
        rest = low[k:end]
        if rest and _value_kind(rest) in ("value", "style", "weather", "thing"):
            return Parse("global", None, None, verb + "-whole-image")
    if x.words and all(is_value_word(w) or w in L.WEATHER for w in x.words):
        return Parse("global", None, None, verb + "-bare-value")
    # "make the boy in the image | wave his hand": a verb after the subject's location clause
    for q in range(k, end):
        if low[q] in L.ACTION_VERBS or low[q] in L.WEAR_VERBS or low[q] in L.BE_VERBS:
            return _parse_after_subject(toks, low, x, q, end, verb)
    if k >= end and len(x.words) > 1 and _plural(x.words[-1]) and not is_value_word(x.words[-1]) and \
            (_plural(x.words[-2]) or x.words[-2] in L.HUMAN_NOUNS) and not x.proper:
        # 'make the people zombies', 'make the mountains volcanoes': two plurals, the second what the first become
        # (it was an attribute edit of 'people zombies', a thing no detector finds)
        return Parse("replace", " ".join(x.words[:-1]), x.words[-1], verb + "-plural-thing")
    return _classify_change(toks, low, x, low[j:k], None, end, None, verb)


def _pronoun_becomes(toks, low, x: Phrase, k: int, end: int) -> str | None:
    """The thing of 'make it a cat', 'turn it into a cat' (x 'it', 'a'/'an' at k and a noun phrase to the clause's
    end); None for a look, style, weather, a scene or the picture ('make it a painting', 'a sunny day', 'a beach')."""
    if x.words not in (["it"], ["them"]) or low[k:k + 1] not in (["a"], ["an"]) or _value_kind(low[k:end]) != "thing":
        return None
    ynp = extract_phrase(toks[:end], k)
    if ynp.words and ynp.end < end and _describes_new_thing(low, ynp.end, end):
        ynp = Phrase(ynp.words, end, ynp.saw_attribute, ynp.seen, ynp.proper)   # 'a cat | wearing a hat' (global)
    if not ynp.words or ynp.end < end or _is_whole_image(ynp) or ynp.head in L.SCENES or is_value_word(ynp.head) or \
            ynp.words[0] in ("bit", "lot", "little", "touch", "tad") or _has(ynp.words, L.WEATHER):
        return None
    return ynp.text


def _describes_new_thing(low: list[str], q: int, end: int) -> bool:
    """'(a cat) wearing a hat', '(a cat) with a hat', '(a dog) sitting on a sofa': what the new thing wears, has or
    does, part of the thing; not a style, weather or the picture said after it ('in the style of Van Gogh')."""
    w = low[q]
    rest = low[q:end]
    return (w in ("with", "wearing", "holding", "carrying", "who", "that") or (
        w.endswith("ing") and is_action_form(w))) and not _has(rest, L.STYLE_WORDS) and not _has(rest, L.WEATHER) \
        and not _has(rest, L.WHOLE_IMAGE) and not any(_verb_kind(t) for t in rest if t not in ("wearing", "holding"))


def _placed_then_object(toks, low, x: Phrase, k: int, end: int) -> int | None:
    """In 'make X PLACE a Y' (a place clause at k, then 'a'/'an' and a noun phrase to the clause's end), where 'a'
    stands; None when the clause is not so (no place, a verb or 'and' in it, the last phrase not reaching the end)."""
    if not x.words or _is_whole_image(x) or k >= end or low[k] not in L.PLACE_PREPOSITIONS:
        return None
    for q in range(end - 1, k + 1, -1):
        if low[q] in ("a", "an") and extract_phrase(toks[:end], q).end >= end:
            between = low[k + 1:q]
            if any(w in ("and", ",", "into", "as") or _verb_kind(w) or w in L.BE_VERBS or w in L.ACTION_VERBS
                   for w in between):
                return None
            place = extract_phrase(toks[:q], k + 1 + (low[k + 1:k + 2] in (["to"], ["of"])))
            return q if place.words and place.end >= q else None
    return None


def _plural(w: str) -> bool:
    return len(w) > 3 and w.endswith("s") and not w.endswith(("ss", "us", "is"))


# Verbs after 'make it' that a picture can do as well as a thing: 'make it turn red', 'make it glow', 'make it age'
_IMAGE_CAN = frozenset({"turn", "get", "have", "has", "age", "glow", "shine", "grow", "shrink", "tilt", "spin", "roll",
                        "rotate", "move", "fall", "float", "melt", "burn", "lower", "raise", "lift"})


def _pronoun_acts(x: Phrase, low: list[str], end: int) -> bool:
    """'it'/'them' followed by an action verb a picture cannot do ('make it run', 'let it sit', 'have them fly'):
    the subject is a thing the text does not name, not the whole image. Not a be-verb ('make it look vintage'), the
    weather ('make it rain': impersonal 'it'), nor a verb a picture can do (`_IMAGE_CAN`)."""
    if x.words not in (["it"], ["them"]) or x.end >= end:
        return False
    w = low[x.end]
    return (w in L.ACTION_VERBS or w in L.WEAR_VERBS) and w not in L.BE_VERBS and w not in _IMAGE_CAN \
        and w not in L.WEATHER and w not in L.WEATHER_NOUNS


# 'make/let X disappear': X goes (it was a background replace by 'right disappear' after 'on the right')
_VANISH = ("disappear", "vanish", "disappears", "vanishes", "gone")
_PERSON_PRONOUNS = frozenset({"him", "he", "she", "himself", "herself"})
# Pronouns of a group that are people when what they do is an expression or gesture only people make
_GROUP_PRONOUNS = frozenset({"them", "they", "everyone", "everybody", "themselves"})
_DEGREE_WORDS = frozenset({"very", "more", "less", "really", "so", "too", "slightly", "much", "extremely", "even"})
_PARTICLE_WORDS = frozenset({"up", "down", "away", "around", "back", "out", "over", "forward", "and", ","})


def _person_pronoun(low: list[str], j: int, end: int) -> Phrase | None:
    """'make him bald', 'make her smile', 'let her wear a dress': a pronoun of a person as the object is the
    concept `person` (a detector finds no 'him'). 'her' is the object, not a possessive, when no noun of hers
    follows: the clause ends, or a determiner, a be/wear verb, an action verb ending the clause, a degree word or a
    value word not before a noun comes next ('make her hair blonde', 'make her smile brighter' stay hers). They
    were an attribute edit of 'him', of 'smile', a global edit ('make her happy'), a replace of 'wear' by the
    dress."""
    w = low[j] if j < end else None
    nxt = low[j + 1] if j + 1 < end else None
    if w in _GROUP_PRONOUNS and nxt in L.HUMAN_ACTIONS:
        return Phrase(["person"], j + 1, seen=[w])      # 'make them smile', 'make everyone laugh': people's faces
    if w not in _PERSON_PRONOUNS and w != "her":
        return None
    after = low[j + 2] if j + 2 < end else None
    ends = after is None or after in L.DETERMINERS or after in L.BOUNDARY_WORDS or after in _PARTICLE_WORDS
    if w == "her" and not (nxt is None or nxt in L.DETERMINERS or nxt in L.BE_VERBS or nxt in L.WEAR_VERBS
                           or nxt in _DEGREE_WORDS
                           or (nxt in L.ACTION_VERBS and ends)
                           or (is_value_word(nxt) and (ends or is_value_word(after or "")))):
        return None
    return Phrase(["person"], j + 1, seen=[w])


def _parse_paint(toks, low, j, verb, end) -> Parse:
    if j < len(low) and low[j] in ("a", "an"):
        obj = extract_phrase(toks, j)
        return Parse("add", None, obj.text, "paint-new-object")
    x = extract_phrase(toks, j)
    x, _ = _split_trailing_values(x)
    if _is_whole_image(x):
        return Parse("global", None, None, "paint-whole-image")
    return Parse("attribute", x.text, x.text, "paint")


_MOODS = L.STYLE_HEADS | {"atmosphere", "mood", "ambience", "ambiance", "palette", "lighting", "feel", "look", "vibe",
                          "glow", "tint", "hue", "texture"}


def _parse_give(toks, low, j, verb, end) -> Parse:
    her_object = low[j:j + 1] == ["her"] and j + 1 < end and (
        low[j + 1] in L.DETERMINERS or extract_phrase(toks, j + 1).end >= end)
    if j + 1 < end and (low[j] in ("him", "them", "me", "us") or her_object):
        # "give her (a) necklace"; not "give her hair a tint"; a person pronoun is `person` ('give him long hair')
        x = Phrase(["person"] if low[j] in ("him", "her") else [low[j]], j + 1, seen=[low[j]])
    else:
        x = extract_phrase(toks, j)
        second = next((q for q in range(j + 1, x.end) if low[q] in L.DETERMINERS and low[q - 1] not in L.DETERMINERS
                       and is_word(low[q - 1])), None)
        if second is None:                                # 'give the woman | long hair' (was 'woman long hair')
            second = next((q for q in range(j + 1, x.end) if is_value_word(low[q]) and is_word(low[q - 1]) and
                           low[q - 1] not in L.DETERMINERS and not is_value_word(low[q - 1])), None)
        if second is None and not any(w in ("and", "or", ",", "of", "&") for w in low[j:x.end]):
            # 'give the red car | racing stripes', 'give the dog | sunglasses': two bare objects, the thing given
            # after the first noun (they were attribute edits of 'red car racing stripes', 'dog sunglasses')
            second = next((q for q in range(j + 1, x.end) if is_word(low[q - 1]) and is_word(low[q]) and
                           low[q - 1] not in L.DETERMINERS and low[q - 1] not in L.SIZE_WORDS and
                           not is_value_word(low[q - 1]) and not low[q - 1].endswith("'s")), None)
        if second is not None:                            # 'give the sky | some stars' (was the concept 'sky stars')
            x = extract_phrase(toks[:second], j)
    y = extract_phrase(toks, x.end)
    rest = low[x.end:end]
    kind = _value_kind(rest)
    if x.words in (["me"], ["us"]) and y.words and (y.head in L.STYLE_HEADS or _is_whole_image(y) or kind in (
            "value", "style", "weather")):
        return Parse("global", None, None, "give-me-version")   # 'give me a version in black and white' (of 'me')
    if kind == "value" and rest[:1] and looks_participle(rest[0]) and len(y.words) > 1 and \
            y.head not in L.ATTRIBUTE_VALUE_NOUNS and not is_value_word(y.head or ""):
        kind = "thing"                                    # 'racing stripes': a participle before its noun
    if _is_whole_image(x):
        return Parse("global", None, None, "give-whole-image")
    if kind in ("value", "style", "weather") or _has(rest, L.ATTRIBUTE_VALUE_NOUNS) or _has(rest, _MOODS):
        # 'give the room a cozy atmosphere': its look, no new thing (it was an add of 'cozy atmosphere')
        return Parse("attribute", x.text, x.text, "give-value")
    if y.words:
        return Parse("add", None, y.text, "give-object")
    return Parse("attribute", x.text, x.text, "give")


def _parse_state(toks, low, j, verb, end) -> Parse:
    """open/close/shut X: the same object in another state."""
    x = extract_phrase(toks, j)
    if _is_whole_image(x):
        return Parse("global", None, None, "state-whole-image")
    return Parse("attribute", x.text, x.text, "state")


def _parse_restore(toks, low, j, verb, end) -> Parse:
    if low[j:j + 1] == ["out"] and j + 1 < end:
        j += 1                                            # 'blur out the faces'
    obj = extract_phrase(toks, j)
    if obj.head in L.GLOBAL_ADJUSTMENTS or obj.head in L.DEGRADATIONS:
        k = _find(low, obj.end, end, ("of",))
        owner = extract_phrase(toks, k + 1) if k is not None else None
        if owner is None or _is_whole_image(owner):
            return Parse("global", None, None, verb + "-adjustment")
        return Parse("attribute", owner.text, owner.text, verb + "-adjust-object")
    if verb == "dress":
        k = _find(low, obj.end, end, ("in", "with"))
        new = extract_phrase(toks, k + 1) if k is not None else None
        return Parse("add", None, new.text if new else None, "dress")
    if verb == "apply":
        return Parse("global", None, None, "apply") if _is_whole_image(extract_phrase(toks, (
            _find(low, obj.end, end, ("to",)) or end) + 1)) else Parse("attribute", None, None, "apply")
    if _is_whole_image(obj):
        return Parse("global", None, None, verb + "-image")
    return Parse("attribute", obj.text, obj.text, verb + "-object")


_TURN_WORDS = frozenset({"horizontally", "vertically", "upside", "clockwise", "counterclockwise", "anticlockwise",
                         "sideways", "degrees", "left", "right", "around", "over", "by", "to", "closer", "further",
                         "farther", "tighter", "wider", "back"})


def _parse_frame(toks, low, j, verb, end) -> Parse:
    """zoom/crop: the framing of the whole picture changes, so every pixel does ('zoom in on the cat' was a default
    add of 'zoom', 'crop the image to the dog' of 'crop'); 'crop out the dog' / 'crop the dog out' removes the dog.
    flip/rotate turn the picture, or a named thing ('rotate the chair': its pose, an attribute). Before a bare noun
    the verb is the first word of a compound ('crop circles in a field', 'flip flops on the beach'): a caption, read
    as the default add of that noun."""
    nxt = low[j] if j < end else None
    if nxt is not None and is_word(nxt) and nxt not in L.OBJECT_STARTS and nxt not in L.BOUNDARY_WORDS and \
            nxt not in L.WHOLE_IMAGE and not nxt.endswith("ly") and not nxt[:1].isdigit() and nxt not in _TURN_WORDS:
        caption = extract_phrase(toks, j - 1)
        if caption.words:
            return Parse("add", None, caption.text, "frame-compound-noun")
    if verb in L.FRAMING_VERBS:
        if verb.startswith("crop"):
            obj = extract_phrase(toks, j + (low[j:j + 1] == ["out"]))
            out = low[j:j + 1] == ["out"] or (obj.end < end and low[obj.end] == "out")
            if out and obj.words and not _is_whole_image(obj):
                return Parse("remove", obj.text, None, "crop-out")
        return Parse("global", None, None, "frame")
    stop = next((q for q in range(j, end) if low[q][:1].isdigit() or low[q] in _TURN_WORDS), end)
    obj = extract_phrase(toks[:stop], j)                 # 'rotate the chair | 90 degrees', '| upside down'
    if not obj.words or _is_whole_image(obj) or obj.words[0] in L.WHOLE_IMAGE:
        return Parse("global", None, None, "orient-image")
    return Parse("attribute", obj.text, obj.text, "orient-object")


def _parse_cover(toks, low, j, verb, end) -> Parse:
    """'cover X with Y' (coat, blanket, sprinkle, drape, decorate; 'in Y' too) puts Y on X: read as 'add Y to X', so
    it is what that reads as ('cover the mountains with snow' adds snow, as 'add snow to the mountains' does; 'cover
    everything in snow', 'cover the city with fog' are the weather, global). It was a global edit by keyword. 'sprinkle
    Y on X' is 'add Y on X', 'cover up X' hides X (a remove). Without what covers ('cover the window'), X's look
    changes."""
    if low[j:j + 1] == ["up"] and j + 1 < end:           # 'cover up the scratch': hidden, as 'hide the scratch'
        gone = _parse_remove(toks[:end], low[:end], j + 1, "hide")
        return Parse(gone.edit_type, gone.source, gone.target, "cover-up-" + gone.rule)
    x = extract_phrase(toks[:end], j)
    if x.words and x.end < end and low[x.end] in ("on", "onto", "over", "across", "around"):
        put = _parse_add(toks[:end], low[:end], j, "add")   # 'sprinkle snow on the roof': what is sprinkled is new
        return Parse(put.edit_type, put.source, put.target, "cover-" + put.rule)
    # 'in snow', 'in mud' say what covers; 'in the living room' where (a place)
    k = x.end if x.end + 1 < end and low[x.end] == "in" and low[x.end + 1] not in L.DETERMINERS else \
        _find(low, x.end, end - 1, ("with",))
    if k is None and j < end and is_word(low[j]) and low[j] not in L.OBJECT_STARTS:
        caption = extract_phrase(toks, j - 1)             # 'cover photo of a cat', 'blanket fort': a compound noun
        if caption.words:
            return Parse("add", None, caption.text, "cover-compound-noun")
    if k is None:
        return Parse("global", None, None, "cover-image") if _is_whole_image(x) else \
            Parse("attribute", x.text, x.text, "cover-object")
    parse = _parse_add(["add", *toks[k + 1:end], "to", *toks[j:k]], ["add", *low[k + 1:end], "to", *low[j:k]], 1,
                       "add")
    return Parse(parse.edit_type, parse.source, parse.target, "cover-" + parse.rule)


# What, moved, moves the view rather than a thing in it ('move the camera to the left')
_VIEWPOINTS = frozenset({"camera", "view", "viewpoint", "frame", "shot", "angle", "perspective"})
# Where or how far a thing is moved, read into its phrase ('move the car | closer', '... | further apart')
_MOVED_TO = frozenset({"closer", "nearer", "further", "farther", "together", "apart", "away", "back", "forward",
                       "backward", "backwards", "up", "down", "left", "right", "higher", "lower", "aside", "slightly"})


def _parse_move(toks, low, j, verb, end) -> Parse:
    """'move the dog to the left', 'relocate the lamp next to the sofa': the thing is in both images, in another
    place, so it is looked for in both (an attribute edit, as 'rotate the chair' is); 'move the camera closer'
    moves the view, every pixel. 'move it here' names no thing: no concept (`_named`). It was a default add of
    'move' ('move' was no editing verb), or a global edit ('move it to the left')."""
    obj = extract_phrase(toks[:end], j + (low[j:j + 1] == ["over"]), stop_at_verbs=True)
    where = next((n for n, w in enumerate(obj.words) if n and w in _MOVED_TO), None)
    if where is not None:                                 # 'the red car | closer to the house'
        obj = Phrase(obj.words[:where], obj.end, obj.saw_attribute, obj.seen, obj.proper)
    if obj.head in _VIEWPOINTS or (obj.words and _is_whole_image(obj) and obj.words != ["it"]):
        return Parse("global", None, None, "move-view")
    return Parse("attribute", obj.text or None, obj.text or None, "move")


# Outpainting: the picture grows past its frame, so every pixel's place changes ('extend the image to the left' was a
# default add of 'extend'); 'extend the table' lengthens a thing and is not this
_OUTPAINT_VERBS = frozenset({"extend", "extends", "expand", "expands", "outpaint", "outpaints", "uncrop", "widen"})
_CANVAS_WORDS = frozenset({"canvas", "frame", "borders", "border", "edges", "edge", "view", "background", "scene"})


_DISPATCH = {
    "remove": lambda t, lo, j, v, e: _parse_remove(t, lo, j, v),
    "add": lambda t, lo, j, v, e: _parse_add(t, lo, j, v),
    "replace": _parse_replace,
    "change": _parse_change,
    "make": _parse_make,
    "paint": _parse_paint,
    "give": _parse_give,
    "restore": _parse_restore,
    "adjust": _parse_restore,
    "state": _parse_state,
    "frame": _parse_frame,
    "cover": _parse_cover,
    "move": _parse_move,
}


def _multiword_verb(low: list[str], i: int) -> tuple[str, int] | None:
    two = tuple(low[i:i + 2])
    three = tuple(low[i:i + 3])
    if three in (("get", "rid", "of"),):
        return "remove", i + 3
    if two in (("take", "away"), ("take", "out"), ("take", "off"), ("wipe", "out"), ("wipe", "off"),
               ("cut", "down"), ("chop", "down"),
               ("wipe", "away"), ("cut", "out"), ("clean", "up"), ("clear", "away"), ("clear", "out")):
        return "remove", i + 2
    if two in (("put", "on"),):
        return "add", i + 2
    if two in (("swap", "out"), ("switch", "out")):
        return "replace", i + 2
    if two == ("turn", "on") or two == ("turn", "off"):
        return "change", i + 1
    return None


# What 'clean up X' takes away; any other X is the place made clean ('clean up the room', 'the desk')
_MESS = frozenset({"mess", "messes", "clutter", "trash", "litter", "garbage", "rubbish", "debris", "dirt", "dust",
                   "stains", "stain", "graffiti", "junk", "leaves", "spill", "spills", "crumbs", "papers", "toys"})


def _seen_doing(toks: list[str], low: list[str], end: int) -> bool:
    """"(let's) see the cat wearing a crown": 'see X' then what X does or wears, read as 'show X ...' (a default add
    of 'see'); 'see the dog?' alone asks nothing."""
    if low[0] != "see" or len(low) < 3:
        return False
    seen = extract_phrase(toks[:end], 1, stop_at_verbs=True)
    return bool(seen.words) and seen.end < end and (low[seen.end].endswith("ing") and is_action_form(low[seen.end]))


def _parse_tokens(toks: list[str]) -> Parse | None:
    low = [t.lower() for t in toks]
    if not low:
        return None
    end = _clause_end(low, 0)
    multi = _multiword_verb(low, 0)
    if multi is not None:
        kind, j = multi
        if low[:2] == ["clean", "up"]:
            place = extract_phrase(toks[:end], j)
            if place.words and place.head not in _MESS:    # 'clean up the room': its look (a remove of the room)
                return Parse("global", None, None, "clean-up-image") if _is_whole_image(place) else \
                    Parse("attribute", place.text, place.text, "clean-up-place")
        return _DISPATCH[kind](toks, low, j, low[0], end)
    if low[0] in ("take", "get", "cut", "chop") and len(low) > 2:
        gone = extract_phrase(toks[:end], 1, stop_at_verbs=True)
        if len(gone.words) > 1 and gone.words[-1] in ("out", "down") and gone.end == end:   # 'the dog out': one
            gone = Phrase(gone.words[:-1], gone.end - 1, gone.saw_attribute, gone.seen, gone.proper)
        rest = low[gone.end:end]
        if gone.words and not _is_whole_image(gone) and rest[:1] in (["out"], ["away"], ["off"], ["down"]) and (
                len(rest) == 1 or rest[1] != "of" or _is_whole_image(extract_phrase(toks[:end], gone.end + 2))):
            # 'take the dog out', 'get the dog out of the picture' (a default add of 'take', an attribute of 'dog')
            return Parse("remove", gone.text, None, "remove-" + low[0] + "-out")
    if low[:2] in (["set", "fire"], ["sets", "fire"]) and low[2:3] in (["to"], ["on"]):
        return _on_fire(extract_phrase(toks[:end], 3), "set")   # 'set fire to the house' (a replace of 'fire')
    if low[0] in ("light", "lights") and len(low) > 2:
        up = int(low[1] == "up")                          # 'light up the room'
        lit = extract_phrase(toks[:end], 1 + up)
        if lit.words and low[lit.end:lit.end + 2] == ["on", "fire"]:
            return _on_fire(lit, "light")                 # 'light the house on fire' (a default add of 'light')
        if lit.words and low[1 + up] in _DEFINITE:       # 'light the candles': lit, a look (a default add of 'light')
            return Parse("global", None, None, "light-image") if _is_whole_image(lit) else \
                Parse("attribute", lit.text, lit.text, "light-object")
    if low[0] in _OUTPAINT_VERBS and len(low) > 1:
        what = extract_phrase(toks[:end], 1)
        if not what.words or _is_whole_image(what) or what.head in _CANVAS_WORDS:
            return Parse("global", None, None, "outpaint")   # 'extend the image to the left': the frame grows
        return Parse("attribute", what.text, what.text, "extend-object")   # 'extend the table': it is longer
    if low[0] in ("fill", "fills") and "with" in low[1:end]:
        return _parse_cover(toks, low, 1, "fill", end)   # 'fill the sky with stars' puts stars there
    if low[0] in ("keep", "leave") and low[1:2] in (["only"], ["just"]) and len(low) > 2:
        return Parse("remove", "background", None, "keep-only")   # a first 'keep only the dog': the rest goes
    if (low[0] in ("show", "depict", "imagine", "picture", "visualize", "visualise", "envision") or _seen_doing(
            toks, low, end)) and len(low) > 2 and \
            low[1] in ("the", "this", "it", "him", "her", "them", "these", "those") and "without" not in low[:end] and \
            not _has(low[:end], L.WEATHER):               # 'depict the house in winter' stays global
        # 'show the dog running', 'imagine the cat as a lion': X as it should be, as 'make X ...' (adds of 'show',
        # 'imagine'); 'show the man without glasses' is left to 'without'
        parse = _parse_tokens(["make", *toks[1:]])
        if parse is not None:
            return Parse(parse.edit_type, parse.source, parse.target, low[0] + "-" + parse.rule)
    kind = _verb_kind(low[0])
    if kind == "add" and low[0] in ("show", "drop", "bring", "set", "draw") and len(low) > 1 \
            and low[1] in ("the", "this", "it", "me"):
        kind = "change" if low[0] != "show" else None        # "draw the image as a sketch"
    if kind is not None:
        return _DISPATCH[kind](toks, low, 1, low[0], end)
    return _parse_declarative(toks, low)


def _parse_declarative(toks, low) -> Parse | None:
    """Instructions without a leading verb: 'what if X were Y', 'X should be Y', 'there is X',
    'X instead of Y', 'X removed', or a verb later in the sentence. Such a sentence names its object
    first, so the subject is read up to its verb, and the word after it (past any modal) decides
    which pattern the rest follows."""
    end = _clause_end(low, 0)
    disliked = next((len(lead) for lead in _DISLIKES if tuple(low[:len(lead)]) == lead), 0)
    if disliked:
        hated = extract_phrase(toks[:end], disliked)
        if hated.words and hated.end >= end and not _is_whole_image(hated):
            # 'I hate the car, remove it': a judgement, the car what a later 'it' is (it removed nothing named)
            return Parse("global", hated.text, None, _JUDGED)
    j = _hypothetical_lead(low)
    if low[j:j + 1] == ["there"]:
        parse = _parse_there_be(toks, low, j)
        if parse is not None:
            return parse
    subj = extract_phrase(toks, j, stop_at_verbs=True, sentence_start=j)
    k = subj.end
    if subj.words and k + 1 < end and low[k] == "of" and is_word(low[k + 1]):
        # 'the roof | of the house | should be red': the owner says which roof, as 'make the roof of the house red'
        # reads it (the predicate was looked for at 'of', and the sentence fell to a default add of 'roof')
        owner = extract_phrase(toks[:end], k + 1, stop_at_verbs=True)
        if owner.words:
            k = owner.end
    k = _past_subject_place(toks, low, subj, k, end)
    while k < end and low[k] in L.MODALS:
        k += 1
    if k + 1 < end and low[k] in ("has", "had", "have") and low[k + 1] == "been":
        low = [*low[:k + 1], "be", *low[k + 2:]]          # "the dog had been removed" is "the dog be removed"
        k += 1
    kind = _predicate_kind(low, k, end) if k < end and subj.words else None
    if kind is not None:
        return _parse_predicate(kind, toks, low, subj, j, k, end)
    if k < end and low[k] in ("-", ">", "->", "=") and (low[k] != "=" or low[k + 1:k + 2] == [">"]) and subj.words:
        q = k                                             # "the car -> a bus", "the car - > a bus", "car => bus"
        while q < end and low[q] in ("-", ">", "="):
            q += 1
        return _classify_change(toks, low, subj, low[j:k], q, end, None, "arrow")
    return _parse_late_verb_or_keywords(toks, low, end)


_SUBJECT_PLACES = L.PLACE_PREPOSITIONS | {"with", "from", "of", "inside", "outside", "between", "across", "along",
                                          "around", "against"}


def _past_subject_place(toks, low, subj: Phrase, k: int, end: int) -> int:
    """Past the places and 'with' phrases that say which subject ('the dog | on the left | should be removed', 'the
    man | with the hat | should be removed'; at most 3), when a modal or 'be' follows them; k otherwise. They were
    read as the sentence's end: a default add of the dog, an add of the hat."""
    q = k
    for _ in range(3):
        if not subj.words or q + 1 >= end or low[q] not in _SUBJECT_PLACES:
            break
        where = extract_phrase(toks[:end], q + 1, stop_at_verbs=True)
        if not where.words or where.end <= q + 1:
            break
        q = where.end
        if q < end and (low[q] in L.MODALS or low[q] in L.BE_VERBS or low[q] in L.PASSIVE_AUXILIARIES):
            return q
    return k


_DISLIKES = (("i", "hate"), ("i", "dislike"), ("i", "don't", "like"), ("i", "dont", "like"), ("i", "do", "not", "like"),
             ("we", "hate"), ("we", "don't", "like"), ("i", "can't", "stand"))
_QUESTION_LEAD_MAX = 8      # the most words of a question before its 'if' ('what would it look like if')


def _hypothetical_lead(low: list[str]) -> int:
    """How many tokens frame the sentence as a supposition ('what if', 'imagine', 'suppose that'):
    the edit is the state the rest describes, so the rest is read like any declarative."""
    if low[:2] == ["what", "if"] or low[:2] == ["imagine", "if"] or low[:2] == ["suppose", "that"]:
        return 2
    if low[:1] in (["imagine"], ["suppose"], ["if"]):
        return 1
    if len(low) > 2 and low[0] in L.MODALS and low[1] in L.DETERMINERS:
        return 1                # a yes/no question: 'can the dog be removed?' asks what 'the dog be removed' says
    # 'what would it look like if', 'how would it look if', 'what would happen if': a question about a state
    if low[:1] in (["what"], ["how"]) and "if" in low[1:_QUESTION_LEAD_MAX]:
        q = low.index("if", 1)
        if not any(_verb_kind(w) is not None for w in low[1:q]):
            return q + 1
    return 0


# 'there should not be any X', "there shouldn't be any X": X is to go
_NEGATED_BE = frozenset({"not", "shouldn't", "shouldnt", "mustn't", "isn't", "aren't", "wasn't", "weren't", "won't",
                         "wouldn't", "never"})


def _parse_there_be(toks, low, j) -> Parse | None:
    """'there should be X' asks for X to appear, unless X is weather, which changes the whole image.
    None when no object follows, so the other patterns still get their turn."""
    n = len(low)
    k = _strip_connectors(low, j + 1)
    negated = False
    while k < n and (low[k] in ("should", "must", "would", "could", "will", "was", "were", "be", "is", "are") or
                     low[k] in _NEGATED_BE):
        negated = negated or low[k] in _NEGATED_BE
        k += 1
    none = low[k:k + 1] == ["no"] or (negated and low[k:k + 1] == ["any"])
    obj = extract_phrase(toks, k + none)
    if not obj.words:
        return None
    if none and not _is_whole_image(obj):
        return Parse("remove", obj.text, None, "there-be-none")   # 'there should be no people' (an add of them)
    if obj.head in L.WEATHER_NOUNS and not _located(toks, low, obj):  # "there is snow on the roof" is local
        return Parse("global", None, None, "there-be-weather")
    if _scene_light(toks, low, obj):
        return Parse("global", None, None, "there-be-light")
    return Parse("add", None, obj.text, "there-be")


_GONE = ("removed", "deleted", "erased", "gone", "eliminated", "missing")


def _passive_participle(low: list[str], k: int, end: int) -> str | None:
    """The word after the auxiliaries at k ('is', 'was being', 'has been', 'gets'): the participle of a passive
    ('a hat is added on the man', 'the dog is being removed', 'the dog was replaced with a cat'), whatever tense;
    None when k holds no auxiliary. Only 'be' followed by 'removed'/'replaced' was read before: every other tense
    fell to an attribute edit of the subject."""
    q = k
    while q < end and low[q] in L.PASSIVE_AUXILIARIES:
        q += 1
    return low[q] if k < q < end else None


def _predicate_kind(low: list[str], k: int, end: int) -> str | None:
    """What the word after the subject (and its modals) makes of the sentence; None when it names no
    edit, so the sentence may still hold an arrow, a later verb or keywords. A passive participle,
    alone or after 'be', says what happens to the subject ('the cat should be replaced by a dog');
    a state or action verb says what it becomes or does ('the dog were a cat', 'the man wore a hat')."""
    w = low[k]
    after_be = _passive_participle(low, k, end)
    if w in L.SWAP_VERBS and k + 1 < end and low[k + 1] in L.SWAP_PLACE_NOUNS:
        return "swap"                                     # 'the dog and the cat swap places'
    if w in L.COVER_VERBS and k + 1 < end and low[k + 1] in L.OBJECT_STARTS:
        return "cover"                                    # 'snow should cover the mountains'
    if w in _GONE or w in ("disappear", "disappears", "vanish", "vanishes") or after_be in _GONE:
        return "remove"
    if w in ("has", "have", "had") and k + 1 < end and low[k + 1] in ("disappeared", "vanished", "gone", "left"):
        return "remove"                                   # 'the dog has disappeared' (was an add of 'disappeared')
    if w in L.REPLACED_PARTICIPLES or after_be in L.REPLACED_PARTICIPLES:
        return "replace"
    if w in ("added", "appears", "appear") or after_be in L.ADDED_PARTICIPLES:
        return "add"
    if low[k:k + 2] == ["instead", "of"]:
        return "instead-of"
    if w in L.DISPLAY_VERBS and k + 1 < end:
        return "display"
    if w in L.BE_VERBS or w in ("were", "was", "became", "turned", "wore", "held") or \
            w in L.ACTION_VERBS or w in L.WEAR_VERBS or is_action_form(w):
        return "state-or-action"
    if w in ("to", "into", "->", "→"):
        return "to"
    if w in ("with", "without"):
        return w
    return None


_CHANGED = frozenset({"changed", "turned", "transformed", "converted", "made", "altered", "modified"})
_FILLED = frozenset({"filled", "covered", "decorated", "full", "packed", "crowded", "littered", "dotted", "strewn",
                     "sprinkled", "topped", "lined"})


def _filled_with(low: list[str], k: int, end: int) -> int | None:
    """Where the filler starts in 'X [is/should be] filled with Y' (k at the verb); None for another predicate."""
    q = k + (low[k] in L.BE_VERBS or low[k] in ("get", "gets"))
    while q < end and low[q] in _DEGREE_WORDS | {"completely", "entirely", "totally", "all"}:
        q += 1
    if q + 2 < end and low[q] in _FILLED and low[q + 1] in ("with", "in", "of"):
        return q + 2
    return None


_JUDGED = "no-edit-named: a judgement"
_DESCRIBED = "no-edit-named: a description"
_JUDGING_VERBS = frozenset({"is", "are", "looks", "look", "seems", "seem", "appears", "appear", "'s"})


def _judgement(low: list[str], k: int, end: int) -> bool:
    """'X is ugly', 'X looks so boring': a judgement of X as it is (no modal: 'X should be ugly' asks for it)."""
    if low[k] not in _JUDGING_VERBS or (k > 0 and low[k - 1] in L.MODALS):
        return False
    said = [w for w in low[k + 1:end] if is_word(w) and w not in _DEGREE_WORDS and w not in ("kind", "of", "a", "bit",
                                                                                               "kinda", "pretty")]
    return bool(said) and all(w in L.JUDGEMENT_ADJECTIVES for w in said) and \
        any(w in L.JUDGEMENT_ADJECTIVES for w in low[k + 1:end])


def _parse_predicate(kind: str, toks, low, subj: Phrase, j: int, k: int, end: int) -> Parse | None:
    """The edit of 'SUBJECT [modal] PREDICATE', the predicate at k being of `kind`."""
    if kind == "remove":
        if subj.head in L.DEGRADATIONS:                   # "the blur should be removed": a restoration
            return Parse("global", None, None, "passive-remove-degradation")
        return Parse("remove", subj.text, None, "passive-remove")
    if kind == "cover":    # 'snow should cover the mountains' is 'cover the mountains with snow' (was keywords-global)
        said = ["cover", *toks[k + 1:end], "with", *toks[j:subj.end]]
        parse = _parse_cover(said, [t.lower() for t in said], 1, "cover", len(said))
        return Parse(parse.edit_type, parse.source, parse.target, "declarative-" + parse.rule)
    if kind == "swap":
        pair = _swap_pair(subj, "declarative-swap-pair")
        return pair if pair is not None else Parse("attribute", subj.text, subj.text, "declarative-swap")
    if kind == "replace":
        kk = _find(low, k, end, ("with", "by", "for"))
        new = extract_phrase(toks, kk + 1) if kk is not None else None
        return Parse("replace", subj.text, new.text if new else None, "passive-replace")
    if kind == "add":
        return Parse("add", None, subj.text, "passive-add")
    if kind == "display" and _is_whole_image(subj) and subj.words and not any(w in L.MODALS for w in low[j:k]):
        # 'The image shows a kitchen. Add a microwave ...': what the picture is now (an attribute edit of 'image')
        return Parse("global", None, None, _DESCRIBED)
    if kind == "display" and _is_whole_image(subj) and subj.words:
        return Parse("global", None, None, "declarative-display-whole-image")   # 'the photo should show a beach'
    if kind == "display" and subj.head not in L.HUMAN_NOUNS:  # 'the clock should show 3 o'clock': what it shows
        return Parse("attribute", subj.text, subj.text, "declarative-display")
    if kind == "display":                                  # 'the man should read a book': what he does
        kind = "state-or-action"
    if kind == "instead-of":
        old = _one_of(extract_phrase(toks, k + 2), subj)   # 'a red car instead of the blue one': the blue car
        return Parse("replace", old.text, subj.text, "instead-of")
    if kind == "state-or-action" and low[k] in L.BE_VERBS | {"been", "get", "gets"} and k + 3 < end and \
            low[k + 1] in _CHANGED and low[k + 2] in ("to", "into"):
        # 'the dress should be changed to a red gown' (it was the dress's look: 'changed' read as its value)
        return _classify_change(toks, low, subj, low[j:k], _strip_connectors(low, k + 3), end, None, "passive-to")
    filled = _filled_with(low, k, end)
    if kind == "state-or-action" and filled is not None:
        # 'the sky should be filled with stars', 'the table is covered with books': what fills or covers it is new,
        # as 'fill the sky with stars' and 'cover the table with books' read (it was an attribute edit of the sky)
        obj = extract_phrase(toks[:end], filled)
        if obj.words and not _is_whole_image(obj) and obj.head not in L.LIGHT_WORDS:
            return Parse("add", None, obj.text, "passive-filled-with")
    if kind == "state-or-action" and _judgement(low, k, end):
        # 'the car is ugly': how it looks now, said of no change (it was a replace of the car by 'ugly')
        return Parse("global", subj.text, None, _JUDGED)     # the subject: what a later 'it' is
    if kind == "state-or-action":
        if low[k] in ("were", "was", "became", "turned"):  # a state reached reads as "be": 'X were Y'
            low = [*low[:k], "be", *low[k + 1:]]
        return _parse_after_subject(toks, low, subj, k, end, "declarative")
    if kind == "to":
        return _classify_change(toks, low, subj, low[j:k], _strip_connectors(low, k + 1), end, None,
                                "declarative-to")
    obj = extract_phrase(toks, k + 1)                     # "X with Y" asks for Y, "X without Y" takes Y away
    if not obj.words:
        return None
    if kind == "with":
        return Parse("add", None, obj.text, "with-object")
    return Parse("remove", obj.text, None, "without")


def _parse_late_verb_or_keywords(toks, low, end: int) -> Parse | None:
    """No sentence pattern: an editing verb after a lead-in ('in this photo, add a cat') starts the
    real instruction; failing that, style, weather or degradation words ask for a global edit, and
    'without X' anywhere asks for X to go."""
    for q in range(1, end):
        if _verb_kind(low[q]) in ("remove", "replace", "add", "change", "make", "paint") and \
                low[q - 1] in (",", "to", "please", "and", "then", "just"):
            return _parse_tokens(toks[q:])
    if _has(low, L.STYLE_WORDS) or _has(low, L.WEATHER) or _has(low, L.DEGRADATIONS):
        return Parse("global", None, None, "keywords-global")
    if _has(low, ("without",)):
        q = low.index("without")
        obj = extract_phrase(toks, q + 1)
        if obj.words:
            return Parse("remove", obj.text, None, "without")
    return None


def _leading_fillers(low: list[str], s: int) -> int:
    """Past fillers and connectors at s ('and then please', 'first,'), keeping at least one token."""
    to_end: set[int] = set()      # positions whose connectors run to the end: not scanned again (quadratic)
    changed = True
    while changed and s < len(low):
        changed = False
        for filler in _FILLERS:
            if tuple(low[s:s + len(filler)]) == filler and len(low) - s > len(filler):
                s += len(filler)
                changed = True
                break
        if s in to_end:
            continue
        k = _skip_connectors(low, s)
        if k != s and k < len(low):
            s, changed = k, True
        elif k >= len(low):
            to_end.update(_connector_path(low, s))
    while s < len(low) and not is_word(low[s]):
        s += 1
    return s


def _connector_path(low: list[str], j: int) -> list[int]:
    """The positions `_skip_connectors(low, j)` steps through: from each, it ends where it ends from j."""
    path = []
    while j < len(low) and (low[j] in L.CLAUSE_CONNECTORS or tuple(low[j:j + 2]) == ("after", "that")):
        path.append(j)
        j += 2 if low[j] == "after" else 1
    return path


_WISHERS = frozenset({"i", "i've", "ive", "i'd", "we", "we've", "weve", "we'd"})
_WISH_ADVERBS = frozenset({"always", "really", "just", "so", "also", "still", "truly", "actually", "have", "had",
                           "would", "do", "did", "'ve", "'d"})
_WISH_VERBS = frozenset({"want", "wants", "wanted", "wish", "wished", "need", "needed", "like", "love", "loved",
                         "prefer"})
_DEFINITE = frozenset({"the", "this", "that", "these", "those", "his", "her", "its", "their", "my", "your", "our"})
# What 'put X in/on a Y' names as already there: a definite phrase or a pronoun ('put it in a frame' adds the frame;
# it added `it`, a concept no detector can find)
_KNOWN = _DEFINITE | {"it", "them", "him"}
# Pronouns put somewhere ('put it on the table'): the thing they stand for is not named
_PUT_PRONOUNS = frozenset({"it", "them", "this", "that", "these", "those"})
# Determiners of something new: 'have a dog here', 'have two cats on the bed' add it
_NEW_THING = frozenset({"a", "an", "some", "another", "several", "many", "few", "multiple", "numerous", "various",
                        "extra", "additional", "two", "three", "four", "five", "six", "seven", "eight", "nine", "ten",
                        "eleven", "twelve", "dozen"})


# Past tenses a supposition uses for an editing verb ('what if we made the sky red'), as the verb that does it
_PAST_EDITS = {"made": "make", "turned": "turn", "changed": "change", "put": "put", "gave": "give", "got": "get",
               "painted": "paint", "colored": "color", "coloured": "colour", "swapped": "swap", "moved": "move",
               "covered": "cover", "filled": "fill", "took": "take", "cut": "cut", "transformed": "transform",
               "converted": "convert", "let": "let", "had": "have", "erased": "erase", "deleted": "delete"}
_SUPPOSERS = frozenset({"we", "i", "you", "u", "they", "someone", "somebody"})
# 'it would be nice if', "it'd be great to": a wish told as what would please
_PLEASED = frozenset({"nice", "cool", "great", "good", "better", "awesome", "fun", "lovely", "interesting", "best"})


_LEAD_VERBS = frozenset({"edit", "modify", "alter", "change", "adjust", "update", "manipulate", "tweak", "process"})
_LEAD_IMAGES = frozenset({"image", "picture", "photo", "photograph", "scene", "pic", "img", "shot"})
_LEAD_JOINS = (("so", "that"), ("such", "that"), ("in", "order", "to"), ("in", "a", "way", "that"), ("so",), ("to",),
               ("by",), ("and",))
_GERUNDS = {form: verb for verb in (*sorted(_TYPO_EDIT_VERBS), "put", "get", "have", "let", "fill", "cover", "move")
            for form in (verb + "ing", verb[:-1] + "ing", verb + verb[-1] + "ing")}


_HEDGES = frozenset({"maybe", "perhaps", "possibly"})
_GERUND_LEADS = (("try",), ("how", "about"), ("what", "about"), ("consider",), ("start", "by"), ("begin", "by"),
                 ("i", "suggest"), ("i", "recommend"))


def _chat_lead(toks: list[str]) -> list[str]:
    """The edit in chat-like wording: hedges dropped ('Maybe add some clouds?', 'add clouds maybe': the concept was
    'maybe add clouds', 'clouds maybe'), a label before a colon dropped ('Task: remove the dog' was an add of 'task';
    'Add: a cat' an add of nothing), a gerund after 'try', 'how about' read as its verb ('try adding a bird' was an
    add of 'try', 'How about making the car red?' a global edit), an arrow after 'replace X' read as 'with'."""
    toks = [t for t in toks if t.lower() not in _HEDGES] or toks
    low = [t.lower() for t in toks]
    if len(low) > 2 and low[1] == ":" and is_word(low[0]):
        toks = toks[2:] if _verb_kind(low[0]) is None else [toks[0], *toks[2:]]
        low = [t.lower() for t in toks]
    rest = _version_rest(low)
    if rest is not None and rest < len(low):
        # 'same but with a dog', 'Create a version with snow', 'make a version where the car is red' (an add of
        # 'same', of 'version', an attribute of 'version'): the change asked for
        toks, low = toks[rest:], low[rest:]
        if low[0] in ("with", "without"):
            toks = ["add" if low[0] == "with" else "remove", *toks[1:]]
        elif low[0] in L.PLACE_PREPOSITIONS or low[0] in ("as", "like"):
            toks = ["make", "it", *toks]
        low = [t.lower() for t in toks]
    lead = next((len(w) for w in _GERUND_LEADS if tuple(low[:len(w)]) == w), 0)
    if lead and lead < len(low) and low[lead] in _GERUNDS:
        toks = [_GERUNDS[low[lead]], *toks[lead + 1:]]
        low = [t.lower() for t in toks]
    if low[:1] and _verb_kind(low[0]) == "replace" and "with" not in low:
        q = next((q for q in range(2, len(low)) if low[q] in ("->", "→") or low[q - 1:q + 1] in (["-", ">"],
                                                                                           ["=", ">"])), None)
        if q is not None:                                 # 'replace cat -> dog' (the dog was lost)
            toks = [*toks[:q - (low[q] == ">")], "with", *toks[q + 1:]]
    return toks


_VERSION_VERBS = frozenset({"create", "make", "generate", "give", "show", "render", "produce", "want", "need"})


def _version_rest(low: list[str]) -> int | None:
    """Where the change starts in 'same (image) but X', 'create a version (of this) where/with X'; None if not so."""
    q = low[:1] == ["the"]
    if low[q:q + 1] == ["same"]:
        q += 1 + (low[q + 1:q + 2] != [] and low[q + 1] in _LEAD_IMAGES | {"thing", "one"})
        q += low[q:q + 1] == [","]
        return q + 1 if low[q:q + 1] == ["but"] else None
    q = 0
    if low[:1] and low[0] in _VERSION_VERBS:
        q = 1 + (low[1:2] in (["me"], ["us"]))
    if low[q:q + 2] not in (["a", "version"], ["another", "version"], ["a", "variant"], ["a", "variation"]):
        return None
    q += 2
    if low[q:q + 1] == ["of"]:
        q += 2 + (low[q + 1:q + 2] in (["the"], ["this"]) and low[q + 2:q + 3] != [] and low[q + 2] in _LEAD_IMAGES)
    if low[q:q + 2] in (["in", "which"], ["so", "that"]):
        return q + 2
    if low[q:q + 1] in (["with"], ["without"]):
        return q
    return q + 1 if low[q:q + 1] in (["where"], ["but"]) else None


def _image_edit_lead(toks: list[str]) -> list[str]:
    """'Edit the image so that the car is red', 'Modify the image to include a dog', 'Alter the picture by adding a
    cat': a request to edit the picture that says the edit after it is that edit (they were global edits of the
    image): the rest, a gerund after 'by' read as its verb ('adding' -> 'add')."""
    low = [t.lower() for t in toks]
    k = int(low[:1] != [] and low[0] in _LEAD_VERBS)     # 'edit' itself may have gone already, as a filler
    k += low[k:k + 1] != [] and low[k] in ("the", "this", "that", "my", "our", "your")
    if not k or k >= len(low) or low[k] not in _LEAD_IMAGES:
        return toks
    k += 1 + (low[k + 1:k + 2] == [","])
    join = next((w for w in _LEAD_JOINS if tuple(low[k:k + len(w)]) == w), None)
    if join is None or k + len(join) >= len(low):
        return toks
    rest = toks[k + len(join):]
    if join == ("by",):
        verb = _GERUNDS.get(rest[0].lower())
        return [verb, *rest[1:]] if verb else toks
    if join in (("to",), ("and",)) and not (_verb_kind(rest[0].lower()) or rest[0].lower() in L.MAKE_VERBS):
        return toks                                   # 'change the image to a painting': the image becomes it
    return rest


_INSTEAD_LEADS = (("let", "there", "be"), ("let's", "have"), ("lets", "have"), ("let's", "use"), ("lets", "use"),
                  ("use",), ("have",), ("get",))


def _supposed_act(toks: list[str]) -> list[str]:
    """'what if we added a cat', 'what if you made the sky red', 'imagine we removed the car': a supposition of an
    edit done by us or you is that edit, so the rest is read from its verb ('we' was the subject: an add of 'we', a
    remove of 'we', a replace of 'i'). So is a wish told as what would be nice: 'it would be nice to have a dog here',
    'it would be cool if the car was red' (they were global edits of 'it'); 'it would look better without the car'
    removes the car, '... with a hat on the dog' adds the hat."""
    low = [t.lower() for t in toks]
    lead = next((len(w) for w in _INSTEAD_LEADS if tuple(low[:len(w)]) == w), 0)
    if lead and "instead" in low[lead + 1:] and low[low.index("instead", lead + 1) + 1:][:1] == ["of"]:
        # 'use a cat instead of the dog', 'have a cat instead of ...', 'I want a cat instead of ...' (as 'let there be
        # ...'): 'a cat instead of the dog', a replace (a default add of 'use', an attribute of the cat, an add)
        return toks[lead:]
    if low[:2] == ["instead", "of"] and "," in low[3:]:
        # 'instead of a dog, make it a cat' / '..., add a cat': X is what goes, 'it' the thing put in its place (it
        # was a global edit of 'it'); read as 'make the dog a cat', 'add a cat instead of a dog'
        c = low.index(",", 3)
        old = [t for t in toks[2:c] if t.lower() not in ("a", "an")]
        rest = toks[c + 1:]
        if any(t.lower() in ("it", "them") for t in rest):
            k = next(n for n, t in enumerate(rest) if t.lower() in ("it", "them"))
            return [*rest[:k], *(old if old[:1] and old[0].lower() in _DEFINITE else ["the", *old]), *rest[k + 1:]]
        return [*rest, "instead", "of", *toks[2:c]]
    q = _hypothetical_lead(low)
    if q and q < len(low) and low[q] in _SUPPOSERS:
        v = q + 1
        while v < len(low) and low[v] in L.MODALS | {"just", "also", "then", "only"}:
            v += 1
        if v < len(low):
            base = _PAST_EDITS.get(low[v], low[v])
            if _verb_kind(base) is not None or _verb_kind(low[v]) is not None:
                return [base if low[v] in _PAST_EDITS else toks[v], *toks[v + 1:]]
    lead = ["it", "would", "be"] if low[:3] == ["it", "would", "be"] else ["it'd", "be"] if low[:2] == ["it'd", "be"] \
        else None
    if lead and len(low) > len(lead) + 1 and low[len(lead)] in _PLEASED:
        k = len(lead) + 1 + (low[len(lead) + 1:len(lead) + 2] == ["if"])
        k += low[k:k + 1] == ["to"]
        if k > len(lead) + 1 and k < len(low):
            return toks[k:]
    if low[:1] in (["it"], ["would"], ["what"], ["how"]) and ("look" in low or "looks" in low):
        # 'would it look better with a hat', 'what would the room look like with a cat instead of the dog'
        q = low.index("look" if "look" in low else "looks") + 1
        while q < len(low) and low[q] in ("like", "better", "nicer", "good", "great", "more", "natural"):
            q += 1
        if q + 1 < len(low) and low[q] in ("with", "without"):
            return ["add" if low[q] == "with" else "remove", *toks[q + 1:]]
    return toks


def _wish_lead(low: list[str]) -> int:
    """How many tokens say a wish ('I want', 'ive always wanted', "we'd really love"): a first-person subject,
    any adverbs or auxiliaries, a verb of wanting; 0 when the sentence does not start so. Only 'i want', 'i would
    like', ... were known, so 'ive always wanted a dog here' fell to a default add of 'ive always'."""
    if not low or low[0] not in _WISHERS:
        return 0
    q = 1
    while q < len(low) and low[q] in _WISH_ADVERBS:
        q += 1
    if q >= len(low) or low[q] not in _WISH_VERBS:
        return 0
    # 'like'/'love' wish only as 'would like', "i'd love": 'i love this photo, add a hat' states a liking
    would = low[0].endswith("'d") or "would" in low[1:q] or "'d" in low[1:q]
    return q + 1 if low[q] not in ("like", "love", "loved") or would else 0


def _wish(toks: list[str]) -> list[str]:
    """A wish, read as the request it makes: 'I want the man to be wearing a tie' -> 'let the man be wearing a
    tie'; a new thing ('ive always wanted a dog here') -> 'let there be a dog here', an add; a known one with its
    outcome ('I want the dog removed', 'i wish the sky was blue') -> the outcome, read as a declarative, or with
    a value -> 'make the sky blue'. 'I want (you) to add ...' is left (a filler, or the verb after 'to')."""
    low = [t.lower() for t in toks]
    n = _wish_lead(low)
    if n == 0 or n >= len(low):
        return toks
    if low[n:n + 2] in (["to", "see"], ["to", "have"], ["to", "get"]) and n + 2 < len(low):
        n += 2             # "i'd love to see a dragon ...": the wish is the dragon (it replaced "i'd love" by 'see')
    if low[n] in ("to", "you", "u"):
        q = n + 1 + (low[n] != "to" and low[n + 1:n + 2] == ["to"])
        return toks[q:] if q < len(low) and _verb_kind(low[q]) is not None else toks
    if low[n] in ("that", "if"):                 # 'i wish that the sky was blue'
        n += 1
    ph = extract_phrase(toks, n, stop_at_verbs=True)
    if not ph.words:
        return toks
    if ph.end < len(low) and low[ph.end] == "to":
        return ["let", *toks[n:ph.end], *toks[ph.end + 1:]]
    if low[n] not in _DEFINITE:
        return ["let", "there", "be", *toks[n:]]
    nxt = low[ph.end] if ph.end < len(low) else None
    if nxt is not None and (nxt in L.BE_VERBS or nxt in L.MODALS or nxt in _GONE or looks_participle(nxt)):
        return toks[n:]
    if low[-1] in _GONE and len(ph.words) > 1 and ph.words[-1] == low[-1]:   # 'I want the dog gone': read as one
        return [*toks[n:-1], "removed"]
    return ["make", *toks[n:]] if nxt is not None or is_value_word(low[-1]) else toks   # 'the sky purple'


_PRONOUNS = frozenset({"it", "them", "him", "her", "they", "he", "she", "this", "that", "these", "those"})


def _np_start(low: list[str], q: int) -> bool:
    """Does a subject or object noun phrase start at q (not a value, participle, verb or preposition)?"""
    w = low[q]
    if w in ("her", "his", "their", "its") and q + 1 < len(low) and is_word(low[q + 1]) and \
            low[q + 1] not in L.BOUNDARY_WORDS and not is_value_word(low[q + 1]) and not looks_participle(low[q + 1]):
        return True                                       # '... and her dress blue': a possessive, a phrase's start
    if w in _PRONOUNS:
        return False
    if w in L.DETERMINERS:
        return True
    if w.endswith("ly") and w not in L.LY_NOUNS:
        return False                                      # ", slightly to the right": an adverb
    return (is_word(w) and not is_value_word(w) and not looks_participle(w) and w not in L.BOUNDARY_WORDS
            and w not in ("and", "or") and not _verb_at(low, q) and w not in L.WEATHER)


def _has_complement(low: list[str], ph: Phrase, end: int) -> bool:
    """The object has its own outcome or place: 'the dog | with a cat', 'a ship | on the sea',
    'the sky purple'. 'in the image' is no place."""
    if ph.end < end and low[ph.end] in L.COMPLEMENT_PREPS:
        after = [w for w in low[ph.end + 1:end] if w not in L.DETERMINERS][:1]
        return not (after and after[0] in L.WHOLE_IMAGE)
    if ph.end < end and looks_participle(low[ph.end]) and ph.end + 1 < end:
        return True                                       # "a dog | sitting next to the man"
    return bool(_split_trailing_values(ph)[1])


def _verb_kind_at(low: list[str], s: int) -> str | None:
    multi = _multiword_verb(low, s)
    return multi[0] if multi is not None else _verb_kind(low[s]) if s < len(low) else None


def _inner_split(toks: list[str], low: list[str], s: int, e: int, vlen: int) -> tuple[int, str] | None:
    """Where a clause without a second verb still holds a second edit:
    - a new subject with its own predicate: '... and the cat | should be removed' (declarative);
    - gapping, one verb for two objects that each have their own outcome: 'replace the dog with a
      cat and the ball with a mouse', 'make the sky purple and the grass yellow', or (add/remove) a
      second object after a placed one: 'remove the man on the left and the woman'.
    Plain conjoined objects stay one edit with a compound concept ('remove the cat and the dog')."""
    kind = _verb_kind_at(low, s) if vlen else None
    for p in range(s + max(vlen, 1), e):
        if low[p] in L.CONSTRAINT_STARTS:
            return None                                  # "..., ensuring that X and Y": no new edit
        if low[p] not in ("and", ","):
            continue
        q = _skip_connectors(low, p + 1)
        if q >= e or not _np_start(low, q):
            continue
        right = extract_phrase(toks[:e], q, stop_at_verbs=True)
        if not right.words:
            continue
        r = right.end
        if r < e and (low[r] in L.MODALS or low[r] in ("is", "are", "was", "were") or low[r] in L.PASSIVE_MARKERS):
            if not vlen and _bare_subject(toks, low, s, p):
                continue                                 # 'the dog and the cat | should be removed': one subject
            return p, "declarative"
        if r < e and low[r] in _NEW_THING and _wear_verb_of(low, s, p) is not None:
            return p, "gap-wear"                         # 'the dog should be wearing a hat and the cat | a scarf'
        if not vlen:
            if _be_value_clause(toks, low, s, p) and (_split_trailing_values(right)[1] or (
                    r < e and low[r] in ("a", "an"))):
                return p, "gap-be"                       # 'the flowers should be yellow and the grass | taller'
            continue
        if low[p] == "," and kind in ("add", "remove") and (r >= e or low[r] == ",") and low[q] in L.DETERMINERS and \
                extract_phrase(toks[:e], s + vlen).end <= p and extract_phrase(toks[:p], s + vlen).words:
            return p, "gap"                              # 'add a cat, a dog': a list without 'and' (the dog was lost)
        left = extract_phrase(toks[:p], s + vlen, stop_at_verbs=True)
        if kind == "make" and left.words and left.end < p and low[left.end] in ("a", "an") and r < e and \
                low[r] in ("a", "an") and not _is_whole_image(left):
            return p, "gap"                              # 'make the dog a cat and the bird | a plane' (one replace
            #                                              of the dog by 'cat and bird')
        if not left.words or not _has_complement(low, left, p):
            continue
        if _has_complement(low, right, e) or (r >= e and kind in ("add", "remove")):
            return p, "gap"
    return None


def _bare_subject(toks: list[str], low: list[str], s: int, p: int) -> bool:
    """From s to p stands only a noun phrase, no predicate of its own: the first conjunct of a compound subject ('the
    dog | and the cat should be removed'), which was split off as a clause and lost (the parse removed the cat)."""
    lead = q = s + _hypothetical_lead(low[s:p])
    if any(w in L.MODALS or w in L.BE_VERBS for w in low[lead:p]):
        return False
    while q < p:                                          # 'the car, the bus | and the bike should be red'
        subj = extract_phrase(toks[:p], q, stop_at_verbs=True, sentence_start=q)
        if not subj.words or (subj.end < p and low[subj.end] != ","):
            return False
        q = subj.end + 1
    return True


_WEAR_STEMS = (("wear", "wear"), ("wore", "wear"), ("worn", "wear"), ("hold", "hold"), ("held", "hold"),
               ("carr", "carry"))


def _wear_verb_of(low: list[str], s: int, e: int) -> str | None:
    """The base form of the wear verb ('wearing' -> 'wear', 'held' -> 'hold') after the subject of the clause from s
    to e ('the dog should be wearing a hat', 'let the man wear a hat'), None when it has none. A gapped clause after
    it leaves the verb out: '... and the cat a scarf' is 'the cat wears a scarf'."""
    for q in range(s + 1, e):
        base = next((b for stem, b in _WEAR_STEMS if low[q].startswith(stem)), None)
        if base is not None and (low[q] in L.WEAR_VERBS or is_action_form(low[q])) and low[q - 1] not in L.DETERMINERS:
            return base
    return None


def _be_value_clause(toks: list[str], low: list[str], s: int, e: int) -> bool:
    """'SUBJECT [modals] be|is|are|was|were VALUE-or-THING' from s to e: a declarative whose 'be' a gapped clause
    after it leaves out ('the flowers should be yellow and the grass taller'). Not a participle or action after 'be'
    ('should be wearing a hat', 'is removed'): that predicate is no value a second subject can take."""
    s += _hypothetical_lead(low[s:e])                    # 'what if the car were blue and the sky green'
    subj = extract_phrase(toks[:e], s, stop_at_verbs=True, sentence_start=s)
    k = subj.end
    while k < e and low[k] in L.MODALS:
        k += 1
    if not subj.words or subj.words[0] in _PRONOUNS or k + 1 >= e or low[k] not in ("be", "is", "are", "was", "were"):
        return False
    return not looks_participle(low[k + 1]) and not is_action_form(low[k + 1])


def _is_pronoun_value(low: list[str], s: int, vlen: int, e: int) -> bool:
    """'make it black' after an edit that made 'it': a value of the object just edited. So is what it does, 'add a
    dog and make it run', 'have it fly over the lake' (a global edit before: 'it' read as the whole image, so the
    prior covered every pixel)."""
    if not vlen or s + vlen >= e or low[s + vlen] not in ("it", "them"):
        return False
    nxt = low[s + vlen + 1] if s + vlen + 1 < e else ""
    if low[s] in L.MAKE_VERBS and (nxt in L.ACTION_VERBS or nxt in L.WEAR_VERBS) and nxt not in L.BE_VERBS:
        return True
    rest = low[_strip_connectors(low, s + vlen + 1):e]
    return _value_kind(rest) == "value"


def _pronoun_becomes_thing(low: list[str], s: int, vlen: int, e: int) -> bool:
    """'make it look like a crown', 'turn it into a gift', 'make it a crown' after an add or replace: the thing just
    put in should look like that, which its edit's mask already covers (it was a second, global edit: 'it' read as
    the whole image, so the prior covered every pixel). Not a style ('turn it into a painting' is the picture)."""
    if not vlen or s + vlen >= e or low[s + vlen] not in ("it", "them"):
        return False
    if low[s] not in L.MAKE_VERBS and low[s] not in ("turn", "transform", "change", "convert"):
        return False
    rest = low[_strip_connectors(low, s + vlen + 1):e]
    return rest[:1] in (["a"], ["an"]) and _value_kind(rest) == "thing"


_AS_IF = (("like",), ("as", "if"), ("as", "though"))


def _looks_as_if(low: list[str], s: int, vlen: int, e: int) -> bool:
    """'make it look like it was always there', 'make them seem as if they belong': after an edit, how the thing it
    edited should look, told as a clause about that thing (a pronoun subject), not a second edit (it was a global
    edit of the whole image). 'make it look like a painting' (a noun phrase after 'like') is not this."""
    if not vlen or low[s] not in L.MAKE_VERBS or s + vlen + 2 >= e or low[s + vlen] not in ("it", "them"):
        return False
    q = s + vlen + 1
    if low[q] not in ("look", "looks", "seem", "seems", "appear", "appears"):
        return False
    q += 1
    how = next((len(a) for a in _AS_IF if tuple(low[q:q + len(a)]) == a), 0)
    return bool(how) and q + how + 1 < e and low[q + how] in ("it", "it's", "they", "they're") \
        and is_word(low[q + how + 1])


def _sentence_edits(toks: list[str], first: bool, before: list[Parse] | None = None,
                    limit: int = MAX_EDITS) -> list[Parse]:
    """Every edit of one sentence, clause by clause. The first clause of the instruction may be
    anything the single-edit rules read; a later clause counts only when it starts with an editing
    verb, continues the previous verb (gapping), or is a declarative about a named object, and not
    when it states a constraint ('make sure it looks natural', 'keep the rest')."""
    toks = _chat_lead(toks)
    toks = _supposed_act(_wish(_image_edit_lead(toks[_leading_fillers([t.lower() for t in toks], 0):])))
    low = [t.lower() for t in toks]
    n = len(low)
    out: list[Parse] = []
    context = list(before or [])                          # edits of earlier sentences, for "it"
    prev_verb: list[str] = []
    gapped = False
    i = 0
    while i < n:
        s = _leading_fillers(low, i)
        if s >= n or not is_word(low[s]):
            break
        e = _clause_end(low, s)
        vlen = _verb_at(low, s) if not first else (_verb_at(low, s) or (1 if _verb_kind(low[s]) else 0))
        if not vlen and gapped and prev_verb:            # "..., the grass yellow and the house red"
            virtual = prev_verb + toks[s:e]
            split = _inner_split(virtual, [t.lower() for t in virtual], 0, len(virtual), len(prev_verb))
            if split is not None:
                split = (s + split[0] - len(prev_verb), split[1])
        else:
            split = _inner_split(toks, low, s, e, vlen)
        ce, how = split if split is not None else (e, None)
        clause = toks[s:ce]
        while clause and not is_word(clause[-1]):
            clause = clause[:-1]
        constraint = (low[s] in L.CONSTRAINT_STARTS or (low[s] == "not" and not first) or tuple(low[s:s + 2]) in (
            ("make", "sure"), ("make", "certain"), ("do", "not"))) and not (
            first and low[s] == "without" and not (s + 1 < n and low[s + 1].endswith("ing"))) and not (
            first and low[s] in ("keep", "leave") and low[s + 1:s + 2] in (["only"], ["just"])) and not (
            first and low[s] in ("fill", "fills") and "with" in low[s:ce])
        # a first "without X" is the edit ("without the people": remove them); "without changing X, ..." is not
        parse: Parse | None = None
        if clause and not constraint:
            if first or vlen:
                parse = _parse_tokens(clause)
            elif gapped and prev_verb and prev_verb[0] == "wear-gap":   # '... and the cat | a scarf'
                subj = extract_phrase(clause, 0, stop_at_verbs=True)
                parse = _parse_tokens(["let", *clause[:subj.end], prev_verb[1], *clause[subj.end:]])
            elif gapped and prev_verb:
                parse = _parse_tokens(prev_verb + clause)
            elif low[s] not in _PRONOUNS and low[s] not in L.WHOLE_IMAGE and low[s] not in ("rest", "result"):
                parse = _parse_declarative(clause, [t.lower() for t in clause])
                if parse is not None and parse.rule in ("keywords-global", "without"):
                    parse = None
                if parse is None and prev_verb and _verb_kind_at([w.lower() for w in prev_verb], 0) in (
                        "add", "remove") and low[s] in L.DETERMINERS and \
                        extract_phrase(clause, 0).end >= len(clause):
                    parse = _parse_tokens(prev_verb + clause)   # 'add a cat, then a dog' (the dog was lost)
        named = _it_named(toks, low, s, vlen, ce, context + out) if parse is not None and not first else None
        if named is not None:
            parse = named
        elif parse is not None and not first:
            if any(w in L.QUALITY_WORDS for w in low[s:ce]):
                parse = None                              # "and make it look natural"
            elif (context + out) and (context + out)[-1].edit_type in ("add", "replace", "attribute") and \
                    _is_pronoun_value(low, s, vlen, ce):
                parse = None                              # "add a dog and make it brown": the dog's look
            elif (context + out) and (context + out)[-1].edit_type in ("add", "replace", "attribute") and \
                    _looks_as_if(low, s, vlen, ce):
                parse = None                              # "add a hat and make it look like it was always there"
            elif (context + out) and (context + out)[-1].edit_type in ("add", "replace") and \
                    _pronoun_becomes_thing(low, s, vlen, ce):
                parse = None                              # "add a hat and make it look like a crown"
            elif (context + out) and (context + out)[-1].edit_type in ("add", "replace") and \
                    parse.rule == "put-pronoun-on-place":
                parse = None                              # "add a cat and put it on the table": where the cat goes
            elif (context + out) and (context + out)[-1].edit_type == "remove" and (context + out)[-1].source and \
                    (parse.edit_type == "add" and parse.target in ("it", "them") or
                     parse.rule == "put-pronoun-on-place"):
                # "remove the dog and add it back", "... put it on the sofa": 'it' is the dog just removed, put
                # elsewhere (the concept was 'it back'; the sofa's look)
                parse = Parse("add", None, (context + out)[-1].source, parse.rule + "-the-removed")
            elif out and out[-1].edit_type == "remove" and out[-1].source and parse.edit_type == "replace" and \
                    parse.source in ("it", "them"):
                # 'remove the cat and replace it with a dog': one replace of the cat (it was a remove of the cat and
                # a replace of nothing named)
                parse = Parse("replace", out.pop().source, parse.target, parse.rule + "-the-removed")
            elif not out and context and context[-1].edit_type == "remove" and context[-1].source and \
                    parse.edit_type == "replace" and parse.source in ("it", "them"):
                parse = Parse("replace", context[-1].source, parse.target, parse.rule + "-the-removed")
        if parse is not None and (parse.edit_type, parse.source, parse.target) not in \
                [(p.edit_type, p.source, p.target) for p in out]:
            out.append(parse)
            if len(out) >= limit:
                break
        if how == "gap-wear":
            prev_verb = ["wear-gap", _wear_verb_of(low, s, ce) or "wear"]   # the gapped '... and the cat a scarf'
        elif vlen:
            prev_verb = toks[s:s + vlen]
        elif how == "gap-be":
            prev_verb = ["make"]                          # the gapped '... and the grass taller': make it so
        gapped = how in ("gap", "gap-be", "gap-wear")
        first = first and parse is None
        i = max(ce, s + 1)
        if i < n and low[i] in (".", ";", "!", "?", "while", "but", "plus"):
            i += 1
    return out


def _it_named(toks: list[str], low: list[str], s: int, vlen: int, e: int, before: list[Parse]) -> Parse | None:
    """The edit of a later clause 'VERB it ...' whose 'it' is the object the previous clause named, where that
    gives an edit of its own: 'make the car red and turn it into a truck' (the car becomes a truck: it was a global
    edit, 'it' read as the picture), 'the sky is boring, make it blue' (after a judgement, any edit of the sky). None
    where the clause is not such, or 'it' gives nothing new (the car's look again: the edit already read)."""
    if not vlen or s + vlen >= e or low[s + vlen] not in ("it", "them") or not before:
        return None
    last = before[-1]
    judged = last.rule == _JUDGED
    thing = last.source if last.edit_type == "attribute" or judged else None
    if not thing or thing in ("person", "background"):
        return None
    said = [*toks[s:s + vlen], "the", *thing.split(), *toks[s + vlen + 1:e]]
    parse = _parse_tokens(said)
    if parse is None or not (judged or (parse.edit_type == "replace" and parse.source == thing)):
        return None
    return Parse(parse.edit_type, parse.source, parse.target, parse.rule + "-it-named")


# Where a noun is expected: after these an emoji names the thing ('remove the 🐶', 'add a 🎩 to the man')
_NOUN_SLOT = frozenset({"of", "with", "by", "into", "to", "for"})


def _emoji_name(tok: str) -> list[str] | None:
    """The words of the emoji `tok` ('🎩' -> top hat, '🐶' -> dog: an animal's face emoji is the animal), None when
    `tok` is no emoji (its first character is no symbol) or has no name."""
    import unicodedata

    if not tok or unicodedata.category(tok[0]) != "So":
        return None
    name = unicodedata.name(tok[0], "").lower()
    if name.endswith(" face") and 0x1F400 <= ord(tok[0]) <= 0x1F43F:
        name = name[:-len(" face")]
    return name.split() or None


def _emoji_as_nouns(toks: list[str]) -> list[str]:
    """An emoji where a noun is expected, after a determiner, count, preposition or editing verb, is the thing its
    name says: 'remove the 🐶' removes the dog, 'add a 🎩 to the man' adds a top hat (they were a remove and an add of
    nothing: an emoji is no word). Elsewhere ('add a cat 😊') an emoji says nothing of the edit and is left alone."""
    out: list[str] = []
    for k, tok in enumerate(toks):
        prev = toks[k - 1].lower() if k else ""
        slot = prev in L.DETERMINERS or prev in _NEW_THING or prev in _NOUN_SLOT or _verb_kind(prev) is not None
        name = _emoji_name(tok) if slot and not is_word(tok) else None
        out += name if name else [tok]
    return out


_ASIDE_STARTS = frozenset({"which", "who", "whose", "whom"})


def _without_asides(toks: list[str]) -> list[str]:
    """The sentence without its asides, ', which/who ... ,' between commas: 'The cat, which is sitting on the sofa,
    should be removed' is 'The cat should be removed' (the aside's verb was read as the subject's predicate, and the
    sentence fell to a default add of the cat). An aside not closed by a comma (', which should be black') stays."""
    out: list[str] = []
    i, n = 0, len(toks)
    while i < n:
        if toks[i] == "," and out and i + 1 < n and toks[i + 1].lower() in _ASIDE_STARTS:
            close = next((q for q in range(i + 2, n) if toks[q] in (",", ";")), None)
            if close is not None and toks[close] == "," and close + 1 < n:
                i = close + 1
                continue
        out.append(toks[i])
        i += 1
    return out


# Edit verbs that start a new clause after a noun with no comma or 'and' ('remove the dog add a cat'), and the marks
# typed between two edits in their place ('remove the dog - add a cat', '... / add a cat', '... | add a cat')
_RUN_ON_VERBS = frozenset({"add", "remove", "delete", "erase", "replace", "insert", "eliminate", "make", "change",
                           "put", "paint", "swap", "turn", "give"})
_RUN_ON_MARKS = frozenset({"-", "/", "|", "&", "+", "*", "\u2013", "\u2014", "\u2022", "//", "--"})
_RUN_ON_OBJECTS = frozenset({"a", "an", "the", "this", "that", "these", "those", "some", "his", "her", "its", "their",
                             "my", "your", "our", "all", "every", "more", "another", "it", "them", "him"})
_RUN_ON_NOT_AFTER = L.DETERMINERS | L.BOUNDARY_WORDS | L.MODALS | L.CLAUSE_CONNECTORS | _PRONOUNS | {
    "you", "u", "me", "us", "i", "we", "let's", "lets", "not", "don't", "dont", "never", "can", "help", "try", "and",
    "or", "also", "just", "why", "how", "what", "shall", "did", "do", "does"}


def _caused(toks: list[str], cause: int, i: int) -> bool:
    """Is the verb at i what the one made/let/had at `cause` does ('let the man | paint the fence'): only a short
    noun phrase between them, with no value, second article or mark ('make the sky blue | make ...' is two edits)."""
    between = [t.lower() for t in toks[cause + 1:i]] if cause >= 0 else []
    return 0 < len(between) <= 5 and all(is_word(t) and not is_value_word(t) for t in between) and \
        not any(t in L.DETERMINERS for t in between[1:])


def _run_on_split(toks: list[str]) -> list[str]:
    """'remove the dog add a cat', 'remove the dog - add a cat': two edits run on, the second verb after a noun
    with no comma (crowd-written instructions often have none), or a dash, slash, bar, '&' or '+' where the comma
    was; a comma is put there (the cat was lost: a remove of 'dog add'). Not inside 'make/let/have X VERB ...'
    ('let the man paint the fence'), and only before an object ('the', 'a', 'it', ...)."""
    out: list[str] = []
    caused = -1                                   # where the VERB of 'make/let/have X VERB' stands: an action
    for i, tok in enumerate(toks):
        w = tok.lower()
        nxt = toks[i + 1].lower() if i + 1 < len(toks) else None
        starts = w in _RUN_ON_VERBS and nxt in _RUN_ON_OBJECTS
        if w in _RUN_ON_MARKS and nxt in _RUN_ON_VERBS and i + 2 < len(toks) and toks[i + 2].lower() in _RUN_ON_OBJECTS:
            if out and out[-1] != ",":
                out.append(",")                   # a mark between two edits is their comma; a leading one no word
            continue
        if starts and out and not _caused(toks, caused, i) and is_word(out[-1]) and \
                out[-1].lower() not in _RUN_ON_NOT_AFTER and not out[-1].isdigit():
            out.append(",")
        if w in L.MAKE_VERBS or w in ("help", "helps", "watch", "see") or w in _WISH_VERBS:
            caused = i
        out.append(tok)
    return out


_NEEDERS_NOT = frozenset({"i", "we", "you", "u", "i'd", "we'd"})   # 'I need you to ...' is a filler or a wish


def _need_as_should(toks: list[str]) -> list[str]:
    """'X needs to be Y' is 'X should be Y', 'X needs a Y' is 'X should have a Y', 'there needs to be X' is 'there
    should be X': 'needs' was read into the subject ('the dog needs a hat' was a default add of 'dog needs', 'the
    sky needs to be bluer' an attribute edit of 'sky needs', 'there needs to be a cat' an add of 'needs')."""
    low = [t.lower() for t in toks]
    if "needs" not in low and "need" not in low:
        return toks
    out: list[str] = []
    k = 0
    while k < len(toks):
        if low[k] in ("needs", "need") and k > 0 and is_word(low[k - 1]) and low[k - 1] not in _NEEDERS_NOT \
                and k + 1 < len(toks):
            if low[k + 1] == "to":
                out.append("should")
                k += 2
                continue
            nxt = low[k + 1]
            if nxt in L.DETERMINERS or nxt in _NEW_THING or nxt == "more" or (
                    is_word(nxt) and nxt not in L.BOUNDARY_WORDS and not looks_participle(nxt)
                    and _verb_kind(nxt) is None and nxt not in L.MODALS):      # 'the man needs sunglasses'
                out += ["should", "have"]
                k += 1
                continue
        out.append(toks[k])
        k += 1
    return out


_WHOLE_QUOTES = (('"', '"'), ("'", "'"), ("\u201c", "\u201d"), ("\u2018", "\u2019"), ("`", "`"))


def _unquoted(text: str) -> str:
    """The instruction inside the quotes that wrap all of it ('"remove the dog"', as pasted from a data set or a
    chat): one quoted span is one literal token, so it was a default add of the text '"remove the dog"'. Only when
    the quoted text starts with an editing verb: a quoted 'HELLO' alone stays the text it is."""
    t = text.strip()
    for left, right in _WHOLE_QUOTES:
        if len(t) > 2 and t[0] == left and t[-1] == right and left not in t[1:-1] and right not in t[1:-1]:
            inner = t[1:-1].strip()
            words = _strip_fillers([w.lower() for w in tokenize(inner)])
            if words and (_verb_at(words, 0) or _multiword_verb(words, 0)):
                return inner
    return text


_BRACKETS = str.maketrans({"[": " ", "]": " ", "{": " ", "}": " "})
_ANGLED = re.compile(r"<([^<>=\-]*)>")


def _unbracketed(text: str) -> str:
    """The text without the square, curly and angle brackets that a template or a data set's markup puts around a
    concept ('replace [the dog] with [a cat]', 'remove the {dog}', 'add a <cat>'): they were read as punctuation
    that ends the phrase, so the edit had no concept. Parentheses stay a parenthetical; an arrow's '>' stays."""
    return _ANGLED.sub(r" \1 ", text.translate(_BRACKETS))


def _cut_sentence(toks: list[str]) -> list[str]:
    """The first MAX_SENTENCE_TOKENS tokens of a sentence, ended at the last clause break among them when it is longer:
    a clause cut in the middle was read as an edit of its stump ('... remove the dog remove' a remove of 'dog
    remove', '... and replace the dog with' a replace by nothing)."""
    if len(toks) <= MAX_SENTENCE_TOKENS:
        return toks
    head = toks[:MAX_SENTENCE_TOKENS]
    last = max((i for i, t in enumerate(head) if t.lower() in (",", ";", "and", "then") or t.lower() in _RUN_ON_VERBS),
               default=0)
    return head[:last] if last > 0 else head


def _join_lines(text: str) -> str:
    """The text on one line. A line that starts with an editing verb is a new sentence ("remove the cat" /
    "add a dog", one edit per line, no full stops), as after a full stop; any other line break is a wrapped
    line ("replace the dog" / "with a cat") and reads as a space."""
    lines = [" ".join(line.split()) for line in text.splitlines()]
    out = ""
    for line in (ln for ln in lines if ln):
        if out and out[-1] not in ".!?;" and _verb_at([t.lower() for t in correct(tokenize(line))[0]], 0):
            out += "."
        out = f"{out} {line}" if out else line
    return out


def parse_rules(text: str | None) -> ParsedInstruction:
    """Deterministic parse; never raises on odd text (an unparseable one is a guess, flagged). At most
    `MAX_EDITS` edits are kept: the text after the next one is not parsed, and `rule` says edits were dropped
    (only when there was one more: an instruction of exactly `MAX_EDITS` edits loses none)."""
    if text is None or not any(ch.isalnum() for ch in text):
        return ParsedInstruction(instruction=text, edit_type=None, backend="rules", rule="empty")
    # folded first: a full-width "．" or an ideographic "。" ends a sentence as "." does
    sentences = [s for s in _SENTENCE_SPLIT.split(_unquoted(_join_lines(_unbracketed(fold_text(text)))))
                 if any(c.isalnum() for c in s)]
    tokens = [tokenize(sentence) for sentence in sentences]
    read_as: dict[tuple[str, str], None] = {}  # typos, accents and abbreviations of rule words read (sigma.parse.typos)
    cut = False                # a sentence read was longer than MAX_SENTENCE_TOKENS
    clipped = False            # a concept was longer than MAX_CONCEPT_CHARS
    parses: list[Parse] = []
    read = MAX_EDITS + 1       # one past the cap: whether an edit was dropped (exactly MAX_EDITS was said to drop)
    unread: str | None = None  # why a sentence was not read as English (sigma.parse.language)
    for toks in tokens:
        if len(parses) >= read:
            break
        cut = cut or len(toks) > MAX_SENTENCE_TOKENS
        toks = _cut_sentence(toks)
        foreign = not_english(toks)                          # as written: 'remova' is no typo of 'remove'
        toks, notes = correct(toks)
        if foreign:                # read as English, its words were a default add of the whole sentence
            unread = unread or foreign
            continue
        toks = _run_on_split(_without_asides(_emoji_as_nouns(_need_as_should(toks))))
        read_as.update(dict.fromkeys(notes))
        look = _bare_look(toks)
        if look is not None:
            # 'Brighter.', 'More contrast.' (a default add of 'brighter'; after a first sentence, lost): the picture's
            # look; a colour alone after an edit of a thing ('add a dog. Brown.') is that thing's, no edit of its own
            thing = parses and parses[-1].edit_type in ("add", "replace", "attribute") and look == "value"
            if not thing and ("global", None, None) not in [(p.edit_type, p.source, p.target) for p in parses]:
                parses.append(Parse("global", None, None, "bare-look"))
            continue
        for parse in _sentence_edits(toks, first=not parses, before=parses,
                                     limit=read - len(parses)):
            unnamed = next((c for c in (parse.source, parse.target) if c and _named(c) is None), None)
            rule = f"{parse.rule}; no concept: {unnamed!r} names no object" if unnamed else parse.rule
            parse = Parse(parse.edit_type, _named(parse.source), _named(parse.target), rule)
            if (parse.edit_type, parse.source, parse.target) not in [(p.edit_type, p.source, p.target) for p in parses]:
                parses.append(parse)
    if any(p.rule not in (_JUDGED, _DESCRIBED) for p in parses):
        # 'the sky is boring, make it blue', 'The image shows a kitchen. Add a microwave': the edit is the rest
        parses = [p for p in parses if p.rule not in (_JUDGED, _DESCRIBED)]
    parses = [Parse(p.edit_type, None, None, p.rule) if p.rule == _JUDGED else p for p in parses]
    if not parses and unread:
        # no sentence is English: no edit is read, rather than one of concepts made of foreign words
        return ParsedInstruction(instruction=text, edit_type=None, backend="rules", rule=f"unknown-language: {unread}")
    if not parses:
        # Nothing matched: a caption-like request ("a cat wearing sunglasses") most often asks for the thing.
        toks = _strip_fillers(correct(tokens[0][:MAX_SENTENCE_TOKENS])[0]) if tokens else []
        phrase = extract_phrase(toks, 0) if toks else None
        low = [t.lower() for t in toks[:2]]
        if low[:1] and (low[0] in L.CONSTRAINT_STARTS or low[0] in ("nothing", "no", "never", "not")
                        or low == ["do", "not"]):
            # only a constraint or a negation ('keep the background unchanged', "don't touch the dog", 'no
            # changes'): no edit is named, and the one that was made may be anywhere (a default add of 'keep', of
            # "don't touch" asked the detector for them)
            # 'no such file' (an error message pasted as the instruction) is no 'no people': it removed 'such file'
            gone = extract_phrase(toks, 1) if low[0] == "no" and low[1:2] != ["such"] else None
            phrase = None
            if gone is not None and gone.words and not _is_whole_image(gone) and \
                    gone.head not in ("change", "changes", "edit", "edits", "difference", "differences"):
                parses = [Parse("remove", gone.text, None, "no-thing")]     # 'no people': as 'without people'
            else:
                parses = [Parse("global", None, None, "no-edit-named")]
        if phrase is not None and phrase.words and not _is_whole_image(phrase):
            parses = [Parse("add", None, phrase.text, "default-add")]
        elif not parses:
            parses = [Parse("global", None, None, "default-global")]
    edits = []
    for p in parses[:MAX_EDITS]:      # named again: the default-add above ('them')
        source, target = _bounded(_named(p.source)), _bounded(_named(p.target))
        clipped = clipped or source != _named(p.source) or target != _named(p.target)
        edits.append(Edit(edit_type=p.edit_type, source=source, target=target, rule=p.rule))
    rule = edits[0].rule if len(parses) <= MAX_EDITS else f"{edits[0].rule}; at most {MAX_EDITS} edits read"
    if cut:
        rule += f"; at most {MAX_SENTENCE_TOKENS} words of a sentence read"
    if clipped:
        rule += f"; concepts cut to {MAX_CONCEPT_CHARS} characters"
    if read_as:
        rule += _read_as_note(list(read_as))
    return ParsedInstruction(instruction=text, backend="rules", edits=edits, rule=rule)


_LOOK_FILLERS = frozenset({"more", "less", "higher", "lower", "increased", "decreased", "increase", "decrease",
                           "much", "slightly", "very", "a", "bit", "little", "and", "or", "time", "please", "lot",
                           "overall", "tone", "toned", "way", "even", "too", "some", "add", "with"})


def _bare_look(toks: list[str]) -> str | None:
    """What a sentence of a look alone, no verb, no thing ('Brighter.', 'More contrast.', 'Black and white.') names:
    'value' (colours, materials, states: a thing's look), 'global' (an adjustment, weather, style, degradation:
    the picture's); None for any other sentence."""
    words = [t.lower() for t in toks if is_word(t)]
    said = [w for w in words if w not in _LOOK_FILLERS]
    if not said or len(words) > 6 or _verb_at(words, 0):
        return None
    picture = L.GLOBAL_ADJUSTMENTS | L.WEATHER | L.STYLE_WORDS | L.DEGRADATIONS | L.WHOLE_IMAGE
    if not all(is_value_word(w) or w in picture for w in said):
        return None
    adjusted = {"brighter", "darker", "sharper", "warmer", "cooler", "clearer", "crisper", "lighter", "softer",
                "bright", "dark", "sharp", "warm", "cool", "vivid", "vibrant", "saturated", "desaturated"}
    return "global" if any(w in picture or w in adjusted for w in said) else "value"


# Words that stand for a thing without naming it: a concept of these alone gives a detector nothing to look for
_UNNAMED = frozenset({"it", "its", "them", "they", "itself", "themselves", "something", "anything", "stuff"})


# Words for people in general: a detector finds `person`, not 'everyone' ('remove everyone' asked it for 'everyone')
_EVERYONE = frozenset({"everyone", "everybody", "someone", "somebody", "anyone", "anybody"})


def _named(concept: str | None) -> str | None:
    """The concept, or None where it is only a pronoun ('put it there', 'add them', 'make them shiny' asked the
    detector for 'it', 'them'): which thing is meant the text does not say, as with 'remove this', whose
    determiner already left no concept. Edits of one sentence that use 'it' for a thing they named are read before
    this ('add a dog and make it brown')."""
    if concept in _EVERYONE:
        return "person"
    if concept is None or not all(w in _UNNAMED for w in concept.split()):
        return concept
    return None


def _bounded(concept: str | None) -> str | None:
    """The concept cut to `MAX_CONCEPT_CHARS`: at the last word break within it (no dangling 'and' or comma) when
    that keeps at least half of it, else mid-word ('red' alone would be a different concept from 'red xxxx...')."""
    if concept is None or len(concept) <= MAX_CONCEPT_CHARS:
        return concept
    head = concept[:MAX_CONCEPT_CHARS + 1]
    words = head[:head.rfind(" ")].split() if head.rfind(" ") > MAX_CONCEPT_CHARS // 2 else []
    while words and words[-1] in ("and", "or", ",", "&"):
        words.pop()
    return " ".join(words).rstrip(",") if words else concept[:MAX_CONCEPT_CHARS].rstrip()


MAX_READ_AS_SAID = 5     # the most typo readings `rule` lists (a long text of typos would make it as long)


def _read_as_note(read_as: list[tuple[str, str]]) -> str:
    """`; read 'teh' as 'the', 'remvoe' as 'remove'`: which words were read as another (`sigma.parse.typos`), so a
    parse that went wrong through a reading says so; past MAX_READ_AS_SAID, how many more."""
    said = ", ".join(f"{typo!r} as {word!r}" for typo, word in read_as[:MAX_READ_AS_SAID])
    more = len(read_as) - MAX_READ_AS_SAID
    return f"; read {said}" + (f" and {more} more" if more > 0 else "")


@register_parser("rules", "deterministic verb/pattern rules + noun phrases; no weights (default)")
def build_rules_parser(**options):
    if options:
        from sigma.errors import ConfigError
        raise ConfigError(f"the rules parser takes no options, got {sorted(options)}")

    def parse(text: str | None, **_call) -> ParsedInstruction:
        return parse_rules(text)
    return parse
