"""Tokens and noun phrases: the pieces the rules parser is built from.

A concept is what an open-vocabulary detector should be asked for, so extraction drops what a
detector cannot use: articles, counts, size words, location clauses, participle clauses,
parentheticals ("the streetcar (tram) in the foreground" -> "streetcar").
"""
from __future__ import annotations

import functools
import re
import unicodedata
from dataclasses import dataclass, field

from sigma.parse import lexicon as L

# A word is letters and digits of any script ("jalapeño", "café", "猫"), not ASCII alone: an accented letter
# was a token of its own, so "the jalapeño" gave the concept "jalape ñ o".
# Combining marks (Unicode category M) belong to the letter before them: Devanagari, Bengali or Tamil vowel signs
# and viramas, and marks NFKC cannot compose ("d\u0308"). They are not \w to `re`, so "कुत्ता" was cut at its
# first vowel sign and the concept was "क".


# Where a mark can be: a non-ASCII character that is neither a word character nor a space to `re`
_MAYBE_MARK = re.compile(r"[^\w\s\x00-\x7f]")


def _marks_in(text: str) -> str:
    """The combining marks (category M) `text` holds, each once, sorted: those of its odd characters only."""
    return "".join(sorted({ch for ch in set(_MAYBE_MARK.findall(text)) if unicodedata.category(ch)[0] == "M"}))


@functools.lru_cache(maxsize=64)
def _token_pattern(marks: str = "") -> re.Pattern[str]:
    """The token pattern for a text holding `marks` (`_marks_in`): a mark continues a word. The text's own marks,
    not every mark of Unicode: the pattern of all of them scanned 130 000 code points on the first parse (0.07 to
    0.14 s), while a text names a handful, found by one C-speed search (most texts none: the plain pattern)."""
    part = rf"(?:[^\W_]|[{re.escape(marks)}])" if marks else r"[^\W_]"
    word = rf"[^\W_]{part}*"
    return re.compile(rf"{word}(?:[-']{word})*'?|[^\s\w]|_")


# A character that stands for text that could not be read: U+FFFD (a decoder's replacement character; the batch
# path puts it for a lone surrogate) and a lone UTF-16 surrogate itself (a JSON "\\ud800", a non-UTF-8 byte of
# argv). The front ends refuse a surrogate (`invalid_text`) but the parser is a library and a batch goes on.
_UNREADABLE = "\ufffd"


def _control(ch: str) -> bool:
    """A control character that is no line break or tab (NUL, BEL, ESC, DEL, the C1 controls), a lone surrogate or
    U+FFFD: not text, so a word break as a control is (`_split_at_controls`). Read as punctuation, it ended the noun
    phrase before it began: "remove the \\ud800dog" (or "the \\ufffddog", what the batch path hands on) lost its
    concept, a remove of nothing."""
    cat = unicodedata.category(ch)
    return (cat == "Cc" and not ch.isspace()) or cat == "Cs" or ch == _UNREADABLE


# Every word the lexicon knows: a control character between two pieces that make one of these is inside a word
_KNOWN_WORDS = frozenset().union(*(v for v in vars(L).values() if isinstance(v, frozenset)))
_CONTROL_MARK = "\x00"


def known_words() -> frozenset[str]:
    """Every word the lexicon knows (`sigma.parse.typos` never reads one as a typo of another)."""
    return _KNOWN_WORDS


def _fragment(piece: str) -> bool:
    """A lone letter that is no word ("d" of "d<ESC>og", each letter of UTF-16 text read as bytes)."""
    return len(piece) == 1 and piece.isalpha() and piece.lower() not in _KNOWN_WORDS


def _split_at_controls(chunk: str) -> str:
    """A run of text without spaces that holds control characters (marked `_CONTROL_MARK`): each is a word break
    ("the<NUL>dog" is "the dog": dropped, it made the detector's concept "thedog"), except inside a word: where a
    piece beside it is a lone letter ("d<ESC>o<DEL>g", "r<NUL>e<NUL>m...") or the pieces make a word the lexicon
    knows ("re<NUL>move": a break there lost the verb and the edit)."""
    pieces = [piece for piece in chunk.split(_CONTROL_MARK) if piece]
    words = pieces[:1]
    for before, piece in zip(pieces, pieces[1:]):
        if _fragment(before) or _fragment(piece) or (words[-1] + piece).lower() in _KNOWN_WORDS:
            words[-1] += piece
        else:
            words.append(piece)
    return " ".join(words)


# The full stop and enumeration comma of Chinese and Japanese text, which NFKC keeps: typed with an IME between two
# edits ("remove the 猫。add a dog"), they end a sentence or a clause as "." and "," do; read as neither, the second
# edit was lost.
_IDEOGRAPHIC_PUNCTUATION = str.maketrans({"\u3002": ".", "\u3001": ","})


def fold_text(text: str) -> str:
    """The text as the rules match it: NFKC, so the compatibility forms an East-Asian IME types are the letters
    they stand for (full-width "ｒｅｍｏｖｅ" is "remove", "，" is ",", half-width "ｶﾒﾗ" is "カメラ", a ligature
    "ﬁ" is "fi"; under NFC "ｒｅｍｏｖｅ the dog" was an add of "ｒｅｍｏｖｅ"), and a decomposed "é" one letter;
    the ideographic full stop and comma are "." and ",". Concepts are read from the folded text, so a detector is
    asked for "dog", not "ｄｏｇ" (its text encoder learnt the ASCII word); the instruction is reported as given."""
    return unicodedata.normalize("NFKC", text).translate(_IDEOGRAPHIC_PUNCTUATION)


# Quotes made plain. Curly quotes are '"' and "'"; the quotes a Chinese or Japanese keyboard types are '"': corner
# brackets 「」 and white corner brackets 『』 (their half-width ｢｣ and vertical ﹁﹂﹃﹄ forms are these under NFKC)
# and the double prime quotes 〝〞〟; read as punctuation, "add 「OPEN」 sign" was an add with no target. They become
# '"', not "'", as a single quote opens only after a non-word character and CJK text runs on without spaces
# ("写「OPEN」"); the full-width '＂' is '"' under NFKC already. European quotes likewise: guillemets « » and single
# guillemets ‹ › (either way round: » « in German) are '"', as are the low-9 and reversed double quotes „ ‟ (German
# and Polish „OPEN“ / „OPEN”); the single low-9 and reversed quotes ‚ ‛ are "'" like the ‘ ’ that close them.
# "add «OPEN» sign" was an add with no target. French puts a no-break space inside « »: NFKC makes it a space, and
# `tokenize` drops the spaces at a quoted span's ends.
_PLAIN_QUOTES = str.maketrans({"\u2018": "'", "\u2019": "'", "\u201c": '"', "\u201d": '"',
                               "\u300c": '"', "\u300d": '"', "\u300e": '"', "\u300f": '"',
                               "\u301d": '"', "\u301e": '"', "\u301f": '"',
                               "\u00ab": '"', "\u00bb": '"', "\u2039": '"', "\u203a": '"',
                               "\u201e": '"', "\u201f": '"', "\u201a": "'", "\u201b": "'"})


# Unicode's Stream-Safe Text Format (UAX #15, section 13) allows at most 30 combining marks in a row: no writing
# system needs more ("zalgo" text stacks thousands on one letter)
MAX_MARKS_IN_A_ROW = 30


def _stream_safe(text: str) -> str:
    """`text` with each run of combining marks cut to `MAX_MARKS_IN_A_ROW`. A mark continues the word before it
    (`_token_pattern`), so "add a d" and 5,000 marks made a 5,001-character concept for the detector and every
    result row; now the letter and its first 30 marks. Text without an unusual character costs one search."""
    marks = _marks_in(text)
    if not marks:
        return text
    run = re.compile(f"([{re.escape(marks)}]{{{MAX_MARKS_IN_A_ROW}}})[{re.escape(marks)}]+")
    return run.sub(r"\1", text)


def clean_text(text: str) -> str:
    """`fold_text` (compatibility forms and ideographic punctuation), at most 30 combining marks in a row
    (`_stream_safe`), quotes made plain (curly, CJK and European ones:
    `_PLAIN_QUOTES`), line breaks and tabs a space, format characters (zero-width joiner, direction mark, soft
    hyphen) dropped, so they neither split a word ("ca<ZWJ>t") nor stand between a verb and its object, and control
    and unreadable characters (`_control`) read as word breaks (`_split_at_controls`)."""
    text = _stream_safe(fold_text(text).translate(_PLAIN_QUOTES))
    if not text.isprintable() or _UNREADABLE in text:   # a control, format or unreadable character: one by one
        text = "".join(_CONTROL_MARK if _control(ch) else ch for ch in text if unicodedata.category(ch) != "Cf")
    if _CONTROL_MARK in text:
        return " ".join(" ".join(_split_at_controls(chunk) for chunk in text.split()).split())
    return " ".join(text.split())


# A quoted span is one token, the text an edit writes or changes ("the sign 'SALE'"); a single quote
# opens only after a non-word character, so possessives ("the dogs' bowl") are not quotes.
_QUOTED = re.compile(r'"([^"]{1,80})"|(?<![\w\'])\'([^\'\s](?:[^\']{0,78}[^\'\s])?)\'(?![\w])')


def tokenize(text: str) -> list[str]:
    """Words, punctuation, and quoted spans as one literal token `"..."` (case kept)."""
    text = clean_text(text)
    pattern = _token_pattern(_marks_in(text))
    out: list[str] = []
    pos = 0
    for m in _QUOTED.finditer(text):
        literal = " ".join((m.group(1) or m.group(2) or "").split())
        if not any(c.isalnum() for c in literal):
            continue
        out += pattern.findall(text[pos:m.start()])
        out.append(f'"{literal}"')
        pos = m.end()
    return _expand_slash_abbreviations(out + pattern.findall(text[pos:]))


def _expand_slash_abbreviations(toks: list[str]) -> list[str]:
    """'w/' and 'w/o', as typed in casual requests ("replace the sandwich w/ a burger"), are 'with' and 'without':
    as tokens 'w' '/' they cut the phrase ('sandwich w') and hid the new object. 'b/w' and 'b&w' are
    'black-and-white' (a value, as 'make the car black-and-white' is): "make a b/w photo" was an attribute edit of
    'b'."""
    out: list[str] = []
    k = 0
    while k < len(toks):
        if (toks[k].lower() == "b" and k + 2 < len(toks) and toks[k + 1] in ("/", "&")
                and toks[k + 2].lower() == "w"):
            out.append("black-and-white")
            k += 3
            continue
        if toks[k].lower() == "w" and k + 1 < len(toks) and toks[k + 1] == "/":
            if k + 2 < len(toks) and toks[k + 2].lower() == "o":
                out.append("without")
                k += 3
                continue
            out.append("with")
            k += 2
            continue
        out.append(toks[k])
        k += 1
    return out


def is_literal(tok: str) -> bool:
    """A quoted text token made by `tokenize` ('"SOLD OUT"')."""
    return len(tok) > 2 and tok[0] == '"' and tok[-1] == '"'


def is_caps_word(tok: str) -> bool:
    """An ALL-CAPS word ("OPEN", "STOP"): written text when it follows a text noun."""
    return len(tok) > 1 and tok.isalpha() and tok.isupper()


def is_word(tok: str) -> bool:
    return bool(tok) and (tok[0].isalnum() or is_literal(tok))


def _stem_candidates(w: str, suffix: str) -> list[str]:
    base = w[: -len(suffix)]
    out = [base, base + "e"]
    if len(base) > 2 and base[-1] == base[-2]:
        out.append(base[:-1])           # sitting -> sit
    if base.endswith("i"):
        out.append(base[:-1] + "y")     # carried -> carry
    if suffix == "s" and base.endswith("ie"):
        out.append(base[:-2] + "y")     # flies -> fly
    return out


def is_action_form(w: str) -> bool:
    """An -ing/-ed/-s form of an action verb ("wearing", "holding", "sits")."""
    for suffix in ("ing", "ed", "s"):
        if w.endswith(suffix) and any(c in L.ACTION_VERBS or c in L.WEAR_VERBS
                                      for c in _stem_candidates(w, suffix)):
            return True
    return False


def looks_participle(w: str) -> bool:
    if w.endswith("ing") and len(w) > 4 and w not in L.ING_NOUNS:
        return True
    return w.endswith("ed") and len(w) > 3 and w not in L.ED_KEEP


def subject_then_verb(toks: list[str], k: int) -> bool:
    """Does a new clause start at k, a short subject and its wear or be verb ('... a scarf and | the cat wear a
    bow': the object was 'scarf and cat wear')?"""
    low = [t.lower() for t in toks[k:k + 5]]
    q = 0
    while q < len(low) and low[q] in L.DETERMINERS:
        q += 1
    return 0 < q < len(low) - 1 and any(w in L.WEAR_VERBS or w in ("is", "are", "should", "be")
                                        for w in low[q + 1:q + 3]) and is_word(low[q])


def is_adverb(w: str) -> bool:
    """An adverb in -ly ('slightly', 'quickly', 'completely'), which ends a noun phrase: 'make the sky slightly
    brighter' asked the detector for 'sky slightly', 'remove the car quickly' for 'car quickly'. Not a noun
    (`LY_NOUNS`: lily, family, butterfly) nor an adjective (`LY_ADJECTIVES`, or a value: curly, ugly, sparkly)."""
    return len(w) > 4 and w.endswith("ly") and w.isalpha() and w not in L.LY_NOUNS and \
        w not in L.LY_ADJECTIVES and not is_value_word(w)


def is_value_word(w: str) -> bool:
    """A word that names a value of an attribute: a colour, material, state or comparative."""
    if w in L.COLOURS or w in L.MATERIALS or w in L.STATE_ADJECTIVES or w in L.COLOUR_MODIFIERS or \
            w in L.LOOK_ADJECTIVES:
        return True
    if w.endswith(("-colored", "-coloured", "-haired", "-eyed", "-skinned", "-toned")):
        return True
    if _comparative_of_value(w):
        return True
    if w.endswith("ish") and len(w) > 5:                 # 'bluish', 'reddish', 'pinkish' (was read as a noun)
        base = w[:-3]
        if any(b in L.COLOURS for b in (base, base + "e", base[:-1] if base[-1:] == base[-2:-1] else base)):
            return True
    return any("-" in w and part in L.COLOURS for part in w.split("-"))


def _comparative_of_value(w: str) -> bool:
    """'calmer', 'rougher', 'shinier', 'rustiest', 'wetter', 'stormier': a comparative or superlative of a listed
    value or weather word ('calm', 'rough', 'shiny', 'rusty', 'wet', 'stormy'). Only a closed list of comparatives
    was known, so 'make the boat bigger and the sea calmer' read 'sea calmer' into one compound concept with the
    boat, and 'make the road wetter' made the concept 'road wetter'."""
    for suffix in ("er", "est"):
        if not w.endswith(suffix) or len(w) < len(suffix) + 3:
            continue
        stem = w[:-len(suffix)]
        stems = [stem, stem + "e"]                       # calm-er, wid(e)-er
        if stem.endswith("i"):
            stems.append(stem[:-1] + "y")                # shini-er -> shiny
        if len(stem) > 2 and stem[-1] == stem[-2]:
            stems.append(stem[:-1])                      # wett-er -> wet
        if any(x in L.STATE_ADJECTIVES or x in L.LOOK_ADJECTIVES or x in L.COLOURS or x in L.WEATHER for x in stems):
            return True
    return False


@dataclass
class Phrase:
    """A noun phrase found in a token list: its words, where it ended, and what it passed over."""

    words: list[str]
    end: int
    saw_attribute: bool = False        # "colour of X", "X's fur", "X colour": the edit is on X itself
    seen: list[str] = field(default_factory=list)   # every lowercased token consumed
    proper: bool = False               # contains a capitalised word mid-sentence (a name, a place)

    @property
    def text(self) -> str | None:
        return " ".join(self.words).replace(" ,", ",") if self.words else None

    @property
    def literal(self) -> str | None:
        """The quoted text the phrase names ('"OPEN"' in 'text "OPEN"'), if any."""
        return next((w for w in self.words if is_literal(w)), None)

    @property
    def nouns(self) -> list[str]:
        """The words that are not quoted text."""
        return [w for w in self.words if not is_literal(w)]

    @property
    def head(self) -> str | None:
        return self.words[-1] if self.words else None


_PRONOUNS = frozenset(["him", "her", "them", "it", "himself", "herself", "itself", "themselves", "me", "us", "you"])


def _next_word(toks: list[str], j: int) -> str | None:
    while j < len(toks):
        w = toks[j].lower()
        if w not in L.DETERMINERS:
            return w
        j += 1
    return None


def _simple_np_end(toks: list[str], k: int) -> int:
    """Where a plain noun phrase (determiners, then words that are not verbs, prepositions or
    participles) starting at k ends; k when there is none."""
    n = len(toks)
    while k < n and toks[k].lower() in L.DETERMINERS:
        k += 1
    start = k
    while k < n and is_word(toks[k]):
        w = toks[k].lower()
        if (w in L.BOUNDARY_WORDS or w in ("and", "or") or w in L.DETERMINERS or looks_participle(w)
                or w in L.ADD_VERBS or w in L.REMOVE_VERBS or w in L.REPLACE_VERBS or w in L.CHANGE_VERBS
                or w in L.MAKE_VERBS or w in L.PAINT_VERBS or w in L.GIVE_VERBS):
            break
        k += 1
    return max(k, start)


def _list_follows(toks: list[str], j: int) -> bool:
    """toks[j] is a comma: does a list of plain noun phrases follow, closed by 'and'/'or'
    ("a cat, a dog and a rabbit", "cups, plates, and napkins")?"""
    n = len(toks)
    k = j
    while k < n:
        if toks[k] == ",":
            k += 1
        last = k < n and toks[k].lower() in ("and", "or")
        if last:
            k += 1
        end = _simple_np_end(toks, k)
        if end == k or (end > k and all(t.lower() in L.DETERMINERS for t in toks[k:end])):
            return False
        if last:
            return True
        k = end
        if not (k < n and (toks[k] == "," or toks[k].lower() in ("and", "or"))):
            return False
    return False


def _values_then_noun(toks: list[str], j: int) -> bool:
    """After 'and' at j-1: value words then a noun ("red and | blue kite"), not values alone."""
    k = j
    while k < len(toks) and is_value_word(toks[k].lower()):
        k += 1
    return k > j and k < len(toks) and is_word(toks[k]) and toks[k].lower() not in L.BOUNDARY_WORDS \
        and toks[k].lower() not in ("and", "or") and not looks_participle(toks[k].lower())


def extract_phrase(toks: list[str], i: int, *, stop_at_verbs: bool = False,
                   stop_at_determiner: bool = True, sentence_start: int = 0,
                   caps_literal: bool = False) -> Phrase:
    """Read a noun phrase starting at toks[i].

    stop_at_verbs: end the phrase at an action verb ("make the man | smile").
    stop_at_determiner: a second article starts a new phrase ("make the dog | a cat").
    caps_literal: ALL-CAPS words at the start are written text ("with | CLOSED"); after a text
    noun they always are ("the text OPEN").
    """
    return _PhraseReader(toks, i, stop_at_verbs=stop_at_verbs, stop_at_determiner=stop_at_determiner,
                         sentence_start=sentence_start, caps_literal=caps_literal).read()


_RELATIVE_WORDS = frozenset(["that", "which", "who", "whose", "where"])
_SAYING_WORDS = frozenset(["says", "say", "saying", "reads", "reading", "spelling"])
_CONJUNCTIONS = frozenset(["and", "or", "&"])
_PARTICLES = frozenset(["up", "down", "away", "around", "back", "out", "over", "forward"])

# How or where a thing moves after an action verb ('make the plane fly | higher'; the concept was 'plane fly higher')
_HOW_IT_MOVES = frozenset({"higher", "lower", "faster", "slower", "closer", "farther", "further", "high", "low", "fast",
                           "upward", "upwards", "downward", "downwards", "backward", "backwards", "together", "apart"})

# Plurals that are also the -s form of an action verb ('the ocean waves', 'bread rolls', 'the stairs steps'): a noun
_S_FORM_NOUNS = frozenset({"waves", "rolls", "falls", "steps", "stands", "faces", "points", "drinks", "plays",
                           "lies", "rests", "turns", "folds", "shakes", "throws", "reads", "looks", "kicks", "dives",
                           "floats", "skates", "skis", "hops", "bows", "crosses", "catches", "reaches", "bends",
                           "sinks", "drives", "spins", "flaps", "tilts"})


# Past participles not in -ed that open a passive clause after a noun ('the umbrella held by the woman')
_IRREGULAR_PARTICIPLES = frozenset({"held", "worn", "ridden", "driven", "drawn", "eaten", "thrown", "made", "built",
                                    "taken", "caught", "bitten", "shot", "hit", "left", "brought", "sent", "kept",
                                    "painted", "written", "grown", "blown", "shaken", "hidden", "sung", "swum"})


def _third_person_action(w: str, prev: str, nxt: str | None) -> bool:
    """'the dog | jumps over the fence', 'the cat | sleeps on the sofa': a singular subject then the -s form of an
    action verb, then its place, object or nothing: the subject does it. A plural before it ('the ocean waves'),
    a noun after it, or an -s form that is a common plural noun keeps the compound."""
    if not w.endswith("s") or (w in _S_FORM_NOUNS and nxt not in L.DETERMINERS) or w in L.BE_VERBS or \
            prev.endswith("s") or not is_action_form(w):   # 'the boy kicks | the ball': a noun takes no article
        return False
    return nxt is None or not is_word(nxt) or nxt in L.BOUNDARY_WORDS or nxt in L.DETERMINERS \
        or nxt in _PARTICLES or nxt in _PRONOUNS or nxt.endswith("ly") or nxt in _HOW_IT_MOVES


_NUMERIC_ORDINAL = re.compile(r"[0-9]+(?:st|nd|rd|th)")


def _is_ordinal(w: str) -> bool:
    return w in L.ORDINALS or bool(_NUMERIC_ORDINAL.fullmatch(w))


def _is_edit_verb(w: str) -> bool:
    """A verb that begins an edit of its own, so after 'and' it opens a new clause, not a conjunct."""
    return (w in L.ADD_VERBS or w in L.REMOVE_VERBS or w in L.REPLACE_VERBS or w in L.CHANGE_VERBS
            or w in L.MAKE_VERBS or w in L.PAINT_VERBS)


class _PhraseReader:
    """One left-to-right pass over a noun phrase, one method per kind of token.

    Each method returns True to read on, or False when the phrase is over; `j` is then where the
    caller's next reader starts (usually the token that ended it, past it where the token belongs to
    this phrase, like an owner's attribute nouns). The state is what later tokens depend on:
    `words` (the concept so far), `seen` (every token consumed, for callers that look for words the
    concept drops), `saw_attr` (the edit is on the thing itself: "the colour of X"), `proper` (a name
    or place) and `after_and` (the last word was 'and' or a list comma, so an article or size word
    that follows opens the next conjunct instead of a new phrase).
    """

    def __init__(self, toks: list[str], i: int, *, stop_at_verbs: bool, stop_at_determiner: bool,
                 sentence_start: int, caps_literal: bool):
        self.toks = toks
        self.n = len(toks)
        self.j = i
        self.stop_at_verbs = stop_at_verbs
        self.stop_at_determiner = stop_at_determiner
        self.sentence_start = sentence_start
        self.caps_literal = caps_literal
        self.words: list[str] = []
        self.seen: list[str] = []
        self.saw_attr = False
        self.proper = False
        self.after_and = False

    def read(self) -> Phrase:
        while self.j < self.n and self._step():
            pass
        return self._finish()

    def _step(self) -> bool:
        """Dispatch one token; the order is part of the rules (a quoted word is text before it is
        anything else, a relative pronoun ends the phrase before it could count as a determiner)."""
        tok = self.toks[self.j]
        w = tok.lower()
        if w == "(":
            return self._parenthetical()
        if is_literal(tok):
            return self._text(tok, self.j + 1)
        if self._caps_are_text(tok):
            return self._caps_text()
        if not is_word(w):
            return self._punctuation(w)
        if self.words and not self.after_and and (w in _RELATIVE_WORDS or w in _SAYING_WORDS):
            return False                                   # "the sign | that says EXIT", "a sign | reading OPEN"
        # a size word right after 'and' is read as a word ("red and | big kites"); _tidy drops it
        if w in L.DETERMINERS or w.isdigit() or (w in L.SIZE_WORDS and not (self.words and self.after_and)):
            return self._determiner_or_size(w)
        ordinal = self._ordinal_says_which(w)
        if ordinal:                                        # "the second car" is a car
            self.seen.extend(t.lower() for t in self.toks[self.j:self.j + ordinal])
            self.j += ordinal
            self.after_and = False
            return True
        self.after_and = False
        if w == "of":
            return self._of()
        if w in _CONJUNCTIONS:
            return self._conjunction(w)
        if w in L.BOUNDARY_WORDS or self._verb_ends_phrase(w) or self._participle_ends_phrase(w):
            return False
        if w == "out" and self.words and self.j + 1 < self.n and self.toks[self.j + 1].lower() == "of":
            return False                                   # "the bench | out of stone", "the cat | out of the box"
        if w.endswith("'s") or (w.endswith("'") and len(w) > 1):
            return self._possessive(tok, w)
        if self.words and is_adverb(w):
            return False                                   # 'the sky | slightly brighter', 'the car | quickly'
        if self.words and w == "made" and self.toks[self.j + 1:self.j + 2] and \
                self.toks[self.j + 1].lower() in ("of", "from", "out", "entirely", "completely", "fully"):
            return False                                   # 'the table | made of glass' (was 'table made')
        return self._word(tok, w)

    def _parenthetical(self) -> bool:
        """A parenthetical restates or comments ("the streetcar (tram)"); a detector needs none of it."""
        k = self.j
        while k < self.n and self.toks[k] != ")":
            k += 1
        # an unclosed '(' is a stray mark, read past ('give the dog ( a bone'): skipping to the end put `j` past the
        # tokens, and the caller's index into them raised IndexError (a traceback from `sigma parse`)
        self.j = k + 1 if k < self.n else self.j + 1
        return True

    def _caps_are_text(self, tok: str) -> bool:
        """An ALL-CAPS word is written text where text is expected: before any noun when the verb
        writes (caps_literal: 'write | CLOSED'), and right after a text noun ('the sign text OPEN')."""
        return is_caps_word(tok) and (self.caps_literal and not [x for x in self.words if not is_literal(x)]
                                      or bool(self.words) and self.words[-1] in L.TEXT_NOUNS)

    def _caps_text(self) -> bool:
        """A run of ALL-CAPS words is one piece of text ('the text SOLD OUT' -> "SOLD OUT")."""
        k = self.j
        while k < self.n and is_caps_word(self.toks[k]):
            k += 1
        return self._text('"' + " ".join(self.toks[self.j:k]) + '"', k)

    def _text(self, literal: str, end: int) -> bool:
        """Quoted text stays in the concept with its case: what it says is how the edit finds it."""
        self.words.append(literal)
        self.seen.append(literal.lower())
        self.j = end
        self.after_and = False
        return True

    def _punctuation(self, w: str) -> bool:
        """Punctuation ends a phrase, except a comma between stacked adjectives ('futuristic, metallic
        structures') or one inside a list closed by and/or ('a cat, a dog and a rabbit')."""
        toks, j = self.toks, self.j
        if w == "," and self.words and j + 1 < self.n and is_word(toks[j + 1]):
            nxt = toks[j + 1].lower()
            if (all(is_value_word(x) for x in self.words) and nxt not in L.BOUNDARY_WORDS
                    and nxt not in L.DETERMINERS and not looks_participle(nxt)):
                self.j += 1
                return True
            if not self.after_and and _list_follows(toks, j):
                self.words.append(",")
                self.seen.append(",")
                self.after_and = True
                self.j += 1
                return True
        return False

    def _determiner_or_size(self, w: str) -> bool:
        """Articles, counts and size words say which, how many or how big, which a detector cannot
        use. A second article after a noun starts another phrase ('make the dog | a cat') unless the
        caller reads past it (stop_at_determiner=False) or it opens the next conjunct ('and the dog')."""
        if self.words and not self.after_and and self.stop_at_determiner and w in ("a", "an", "the"):
            return False
        self.seen.append(w)
        self.j += 1
        return True

    def _ordinal_says_which(self, w: str) -> int:
        """How many tokens an ordinal before the phrase's noun spans ('the second car', 'the 3rd window', 'the
        first and second cars': 2, the ordinal and the 'and'), 0 where there is none. It picks one of several,
        which a detector cannot tell, so it is dropped like a count (the concept was 'second car'). Not when it and
        the next word are one noun ('first aid kit', 'the second floor'), nor as the last word ('the second one')."""
        if (self.words and not self.after_and) or not _is_ordinal(w):
            return 0
        low = [t.lower() for t in self.toks[self.j + 1:self.j + 4]]
        nxt = low[0] if low else None
        if nxt in _CONJUNCTIONS or nxt == ",":          # 'the first and (the) second cars': both say which
            rest = [t for t in low[1:] if t not in ("the", "a", "an")]
            return 2 if rest and _is_ordinal(rest[0]) else 0
        return int(nxt is not None and is_word(nxt) and nxt not in L.BOUNDARY_WORDS and nxt not in ("of", "one", "ones")
                   and (w, nxt) not in L.ORDINAL_COMPOUNDS and nxt not in L.ORDINAL_POSITIONS)

    def _of(self) -> bool:
        """'X of Y' names Y when X only counts, describes or locates a part of it ('a pair of | shoes',
        'the colour of | the sky': the edit is on the sky itself, 'the front of | the house'). Any
        other 'of' starts an owner or place that is not the object ('the roof | of the house')."""
        head = self.words[-1] if self.words else None
        if head is None or head in L.QUANTIFIER_NOUNS or head in L.ATTRIBUTE_NOUNS or head in L.PART_OF_NOUNS:
            if head in L.ATTRIBUTE_NOUNS:
                self.saw_attr = True
            self.words = []
            self.seen.append("of")
            self.j += 1
            return True
        return False

    def _conjunction(self, w: str) -> bool:
        """'and' joins two things into one compound concept ('the cat and the dog') unless what
        follows starts something else: a new edit or constraint ('the dog | and remove the cat',
        '| and fill the area'), a place or participle clause, or another value of the same thing
        ('red | and shiny'; but 'red and blue kites' is one compound value before its noun)."""
        toks, j, words = self.toks, self.j, self.words
        nxt = _next_word(toks, j + 1)
        compound_value = all(is_value_word(x) for x in words) and _values_then_noun(toks, j + 1)
        if (not words or nxt is None or nxt in L.BOUNDARY_WORDS or _is_edit_verb(nxt) or looks_participle(nxt)
                or nxt in L.CONSTRAINT_STARTS or (not self.stop_at_verbs and subject_then_verb(toks, j + 1))
                or is_value_word(nxt) and words and is_value_word(words[-1]) and not compound_value):
            return False
        words.append("and")
        self.after_and = True
        self.seen.append(w)
        self.j += 1
        return True

    def _verb_ends_phrase(self, w: str) -> bool:
        """For a subject (stop_at_verbs: 'make the man | smile'), an action, wear or be verb ends the
        phrase when what follows reads as its object, particle or complement ('| wear a hat',
        '| look up', '| turn red'); before a plain noun it is part of a compound ('the ski jump ramp')."""
        nxt = self.toks[self.j + 1].lower() if self.j + 1 < self.n else None
        if self.words and self.stop_at_verbs and w in ("get", "gets", "got") and nxt is not None \
                and looks_participle(nxt):
            return True           # a passive with 'get': 'the dog | gets removed' (was the subject 'dog gets')
        if self.words and self.stop_at_verbs and w in L.DISPLAY_VERBS and nxt is not None and (
                nxt in L.DETERMINERS or nxt[:1].isdigit() or nxt[:1] in "\"'" or self.toks[self.j + 1].isupper()
                or (w in _SAYING_WORDS and is_word(nxt)) or (is_word(nxt) and (
                    self.j + 2 >= self.n or not is_word(self.toks[self.j + 2])
                    or self.toks[self.j + 2].lower() in L.BOUNDARY_WORDS))):
            # 'make the sign | say hello', 'make the clock | show noon' (the concepts 'sign say', 'clock show noon')
            return True           # 'the screen | shows a cat' (was the subject 'screen shows'); 'the show room' stays
        if self.words and self.stop_at_verbs and w in L.COVER_VERBS and nxt in L.DETERMINERS:
            return True           # 'snow | covers the roof' (was the subject 'snow covers'); 'the cover of' stays
        if self.words and self.stop_at_verbs and w in L.SWAP_VERBS and nxt in L.SWAP_PLACE_NOUNS:
            return True           # 'the dog and the cat | swap places' (was the subject 'dog and cat swap places')
        if self.words and self.stop_at_verbs and _third_person_action(w, self.words[-1], nxt):
            return True           # 'the dog | jumps over the fence' (was the subject 'dog jumps', a default add)
        if not (self.words and self.stop_at_verbs and (w in L.ACTION_VERBS or w in L.WEAR_VERBS or w in L.BE_VERBS)):
            return False
        # A wear verb names no part of a compound noun, and a human does what the verb after it says ('let the man
        # | wear sunglasses', 'let the kids | play football'), so a bare plural or mass noun after either is the
        # object (these read as the compound 'man wear sunglasses'), as an article after them already was.
        return (w in L.BE_VERBS or w in L.WEAR_VERBS or self.words[-1] in L.HUMAN_NOUNS or nxt is None
                or not is_word(nxt) or nxt in L.BOUNDARY_WORDS or nxt in L.DETERMINERS or nxt in _PRONOUNS
                or nxt.endswith("ly") or is_value_word(nxt) or nxt in _PARTICLES or nxt in _HOW_IT_MOVES)

    def _participle_ends_phrase(self, w: str) -> bool:
        """A participle after a noun opens a clause about it ('the boy | sitting on the bench', 'the
        man | wearing a hat'); one right before a noun modifies it ('the sun dried tomatoes')."""
        nxt = self.toks[self.j + 1].lower() if self.j + 1 < self.n else None
        if self.words and nxt == "by" and w in _IRREGULAR_PARTICIPLES:
            return True           # 'the umbrella | held by the woman' (was the concept 'umbrella held')
        if not (self.words and looks_participle(w)):
            return False
        return (nxt is None or not is_word(nxt) or nxt in L.BOUNDARY_WORDS or nxt in L.DETERMINERS
                or is_action_form(w))

    def _possessive(self, tok: str, w: str) -> bool:
        """A possessive hands the phrase to what is owned ('the woman's | hat' -> hat), except a name
        mid-sentence, which is part of the concept ('Rubik's cube', 'McDonald's sign'), and an owned
        attribute, where the edit is on the owner itself ('the animal's fur colour' -> animal)."""
        toks, n, j = self.toks, self.n, self.j
        owner = w[:-2] if w.endswith("'s") else w[:-1]
        k = j + 1
        if k + 1 < n and toks[k].lower() in L.ATTRIBUTE_MODIFIERS and toks[k + 1].lower() in L.ATTRIBUTE_NOUNS:
            k += 1                                        # past "facial" in "the person's facial expression"
        nxt = toks[k].lower() if k < n else None
        self.seen.append(w)
        if tok[0].isupper() and j > self.sentence_start and nxt not in L.ATTRIBUTE_NOUNS:
            self.words.append(w)
            self.proper = True
            self.j += 1
            return True
        if nxt in L.ATTRIBUTE_NOUNS:
            self.words.append(owner)
            self.saw_attr = True
            self.j = k
            while self.j < n and toks[self.j].lower() in L.ATTRIBUTE_NOUNS:
                self.seen.append(toks[self.j].lower())
                self.j += 1
            return False
        self.words = []
        self.j += 1
        return True

    def _word(self, tok: str, w: str) -> bool:
        """Any other word is part of the concept; a capital past the sentence start marks a name or
        place, which callers treat as a destination ('make the dog in Paris')."""
        if tok[0].isupper() and self.j > self.sentence_start:
            self.proper = True
        self.words.append(w)
        self.seen.append(w)
        self.j += 1
        return True

    def _finish(self) -> Phrase:
        """A trailing attribute noun or generic scene word names no object of its own: 'the car
        colour' is the car (and the edit is on the car itself), 'the mountain scene' the mountain."""
        words = _tidy(self.words)
        saw_attr = self.saw_attr
        if words and words[-1] in L.SURFACE_NOUNS and all(is_value_word(w) for w in words[:-1]):
            return Phrase(words, self.j, saw_attr, self.seen, self.proper)   # "a stone wall" is a wall, not "stone"
        if len(words) > 1 and words[-1] in L.ATTRIBUTE_NOUNS:
            saw_attr = True
        while len(words) > 1 and words[-1] in L.ATTRIBUTE_NOUNS:
            words.pop()
        while len(words) > 1 and words[-1] in L.GENERIC_SCENE_TAILS:
            words.pop()
        return Phrase(words, self.j, saw_attr, self.seen, self.proper)


def _tidy(words: list[str]) -> list[str]:
    out = [w for k, w in enumerate(words)
           if not (w in L.DETERMINERS or (w in L.SIZE_WORDS and (k == 0 or words[k - 1] in ("and", ","))))]
    out = [w for k, w in enumerate(out) if not (w == "," and k + 1 < len(out) and out[k + 1] in ("and", "or"))]
    while out and out[-1] in ("and", ","):
        out.pop()
    while out and out[0] in ("and", ","):
        out.pop(0)
    return out


# ---- concept comparison (the metric of `sigma parse --file`) ------------------------------------
_IRREGULAR = {"people": "person", "men": "man", "women": "woman", "children": "child", "mice": "mouse",
              "geese": "goose", "feet": "foot", "teeth": "tooth", "leaves": "leaf", "knives": "knife",
              "wolves": "wolf", "shelves": "shelf", "loaves": "loaf", "halves": "half", "lives": "life",
              "wives": "wife", "calves": "calf", "scarves": "scarf", "humans": "human", "oxen": "ox",
              "cherries": "cherry", "fish": "fish", "sheep": "sheep", "deer": "deer"}
_NO_S = ("ss", "us", "is", "ous")


def singular(w: str) -> str:
    if w in _IRREGULAR:
        return _IRREGULAR[w]
    if len(w) <= 3 or w.endswith(_NO_S):
        return w
    if w.endswith("ies"):
        return w[:-3] + "y"
    if w.endswith(("ches", "shes", "xes", "sses", "zes", "oes")):
        return w[:-2]
    if w.endswith("s"):
        return w[:-1]
    return w


def normalize_concept(text: str | None) -> tuple[str, ...]:
    """Compatibility forms folded (`fold_text`), lowercase, split hyphens, drop articles/counts/size words and generic
    scene words, singularise."""
    if not text:
        return ()
    text = fold_text(text)              # an expected "ｄｏｇ" is the "dog" the rules read from the same words
    toks = [t for t in re.split(r"[\s\-/]+", re.sub(r"[^\w\s'\-/]", " ", text.lower())) if t]
    toks = [t for t in toks if t not in L.DETERMINERS and t not in L.SIZE_WORDS]
    core = [t for t in toks if t not in L.GENERIC_SCENE_TAILS] or toks
    return tuple(singular(t) for t in core)


def concept_match(predicted: str | None, expected: str | None, max_extra: int = 2) -> bool:
    """Same concept for a detector: both absent, or the same head noun with at most `max_extra`
    modifiers more or less ("skateboard" ~ "giant skateboard", "cube" ~ "rubik's cube";
    "red" !~ "red bell pepper", "person riding skateboard" !~ "person")."""
    p, e = normalize_concept(predicted), normalize_concept(expected)
    if not p or not e:
        return not p and not e
    if p == e:
        return True
    short, long_ = (p, e) if len(p) <= len(e) else (e, p)
    return long_[-len(short):] == short and len(long_) - len(short) <= max_extra
