"""Typos, accents and abbreviations in the few words that drive the rules, read as those words.

Crowd-written instructions (MagicBrush above all) are full of slips: "remvoe the dog" was an add of 'remvoe' (no
verb was found), "make teh car red" an attribute of 'teh car', an accented "rémove" no verb, "the bg" a concept
'bg'. Only the closed classes the rules are keyed on are read through a typo (`EDIT_VERBS`, `FUNCTION_WORDS`,
`PARTICIPLES`, and the inflected verb forms
`VERB_FORMS`: 'remvoing', 'addding'): never a concept noun, since a concept must stay what the user wrote ("bat"
is not "cat").

A typo is one slip from a rule word (`_variants`): two adjacent letters swapped, a letter doubled or (words of 4+
letters) dropped, and in words of 5+ letters one letter changed or inserted. It is read as that word only when it is
unambiguous and no word itself: a slip of two rule words is left as written ("thise": these or those) unless the
place tells them apart (a verb where a verb is expected: "removee the chair" is remove, "the chair should be
removee" removed), and so is a real English word ("rove", "mover", "then", "thee", "form", "wit"):
`REAL_NEAR_MISSES` lists every word of a 170 000-word English dictionary (Debian's wamerican-large) that is one such
slip from a rule word, made once by the script in that constant's comment; the lexicon's own words and casual ones
no dictionary has ("ive", "aint": `INFORMAL_WORDS`) are never corrected either. An edit verb is read through a typo
only where a verb is expected (the sentence's first word, or after a clause opener: `VERB_OPENERS`), so a proper
noun elsewhere keeps its spelling; an ALL-CAPS word in a sentence not all in capitals is written text or an acronym
("the word WIHT", "an OT sign") and is kept. Accents are dropped for matching a rule word of 4+ letters only
("rémove", "wíth"; "thé", French tea, is not "the"); the concept text keeps them. What was read is said in the
parse's `rule` (`sigma.parse.rules.parse_rules`: `; read 'teh' as 'the'`).
"""
from __future__ import annotations

import functools
import string
import unicodedata

from sigma.parse import lexicon as L

EDIT_VERBS = L._words("""
add remove delete erase eliminate replace swap substitute exchange switch change turn transform convert modify
alter adjust make insert place paint recolor recolour color colour give create generate draw include attach
introduce
""")
FUNCTION_WORDS = L._words("""
the this that these those some with without into onto from instead behind beside between above below under
inside and background
""")
# The participles a declarative edit turns on ("the cat should be remvoed"): read anywhere, as the function words
PARTICIPLES = L._words("removed deleted erased eliminated replaced swapped substituted added inserted placed")
_IRREGULAR = {"make": ("makes", "making", "made"), "give": ("gives", "giving", "gave", "given"),
              "draw": ("draws", "drawing", "drew", "drawn")}


def _inflections(verb: str) -> set[str]:
    """The -s, -ing and -ed forms of an edit verb ('removes', 'removing', 'removed'; 'swapping'; 'modifies')."""
    if verb in _IRREGULAR:
        return set(_IRREGULAR[verb])
    if verb.endswith("e") and not verb.endswith("ee"):
        return {verb + "s", verb[:-1] + "ing", verb + "d"}
    if verb.endswith("y") and verb[-2:-1] not in "aeiou":
        return {verb[:-1] + "ies", verb + "ing", verb[:-1] + "ied"}
    stem = verb + verb[-1] if len(verb) <= 4 and _cvc(verb) else verb       # swap -> swapping, swapped
    s = verb + "es" if verb.endswith(("s", "x", "z", "ch", "sh")) else verb + "s"
    return {s, stem + "ing", stem + "ed"}


def _cvc(word: str) -> bool:
    """Consonant, vowel, consonant at the end (not w, x, y): a short verb doubles it ('swap' -> 'swapping')."""
    vowels = "aeiou"
    return len(word) >= 3 and word[-1] not in vowels + "wxy" and word[-2] in vowels and word[-3] not in vowels


# Every inflected form of an edit verb: read through a typo where a verb is expected, as the verb itself
# ("remvoing the dog", "addding a hat"; a participle anywhere, as PARTICIPLES)
VERB_FORMS = frozenset().union(*(_inflections(v) for v in EDIT_VERBS)) - EDIT_VERBS
RULE_WORDS = EDIT_VERBS | VERB_FORMS | FUNCTION_WORDS | PARTICIPLES
# Common misspellings no one-slip rule makes: a 4-letter word's inserted letter ("whith"), a 2-letter word's swap
KNOWN_MISSPELLINGS = {"whith": "with", "ot": "to"}
# Short forms typed in casual requests, read as the rule word they stand for ('b/w' and 'w/': phrases.tokenize)
ABBREVIATIONS = {"bg": "background", "bgd": "background", "img": "image", "imgs": "images", "pics": "pictures"}
# Tokens after which a verb is expected: a sentence's fillers and clause joints ("please remvoe", "and relpace")
VERB_OPENERS = L._words(", ; : - and then also please pls plz kindly just now simply to you u lets let's us finally")
# Every word of Debian's wamerican-large (lowercased, possessives dropped) that is one `_variants` slip from a rule
# word: a real word is never read as another. Made by: words = the dictionary's lines, lowercased;
# sorted({v for w in RULE_WORDS for v in _variants(w)} & words - RULE_WORDS).
REAL_NEAR_MISSES = L._words("""
abode addend adder addled addling adjuster ads adust after afters aided aiding alder alders alger altar altars apter
arawn aster asters attack attacked attacking ave backgrounds bakes baking bedside behinds bellow besides betide blow
brawn burned burning burns cakes caking cerate cerated cerates chance chanced chances chancing chang changer changers
chanted chanting charge charged charges charging cheated cheating chose clanged clanging codified codifies codify
codifying colo colon colons coloreds colorer colorings concert concerted concerting concerts convect convected
convecting convects convent convents converged converging conversed conversing converter coors covert coverts crate
crated crates crating craws creaked creaking creamed creaming crease creased creases creasing creatine cremate
cremated cremates cremating crenate crested cresting crete dad dads daw dawn daws dded dding dds delate deplete
depleted depletes depleting dew dives diving dolor dolors drabs drags drain drams draping drawings drawl drawling
drawls drays drown ease eased eases easing eras eraser erasers erises erose eroses erse exchanger exchangers eyases
faint fainted fainting faints fakes faking falter faltered faltering falters fives form fro fromm gadded gadding gibes
gibing gie giles gites givens giver givers givings gyves gyving hakes halter haltered haltering halters hanged hanging
hat his hives hiving hose incudes inert insect insects inset insets insetted insetting insider insides int invert
inverted inverting inverts ito ives jakes jives jiving lace laced laces lacing lakes later liven lives living maces
macing mad madding mae mages maker makers makings makos males manes mares marking masking mates mating maxes maxing
mazes mikes miking modifier modifiers mokes nad nuder ocreate ogives ono onside ont pace paced paces pacing padded
padding pain paine pained paining pains painter paintings painty palace palaces palter paltered paltering palters pant
panted panting pants peace peaces pint pints placer placers placet placid placings plage plages plaice plaices plaint
plaints plane planed planes planing plate plated plates plating played playing ploce point pointed pointing points
prase prawn print printed printing prints rakes raking rase rased rases rasing raw remote remotes remover removers
replacer replayed replaying reside rewove riven rives riving rom saint sainted saints sakes salter sap sapped sapping
saps slapped slapping slaps snapped snapping snaps snitch snitched snitches snitching soaps som somme stitch stitched
stitches stitching sunder swabs swags swamped swamping swamps swans swapper swatch swatches swats sways switcher
switchers swopped swopping swops taint tainted tainting taints takes taking tarns tat terns thebe thee thees theme
there theses thess thole transformer treated treating tun tuned tuning tuns turds turfed turfing turfs turing turks
turner turnings turps twitch twitched twitches twitching udder urn urns venerate venerated venerates venerating wadded
wadding wakes waking walter walters whose wit witch witched witches witching wives wiving
""")

# Words of casual typing no dictionary lists, kept as written: contractions without their apostrophe ("ive always
# wanted a dog here" was read 'give ...', "aint" 'paint') and chat shorthand
INFORMAL_WORDS = L._words("""
ive aint tis im id ill dont cant wont isnt arent wasnt werent doesnt didnt hasnt havent hadnt shouldnt wouldnt
couldnt thats whats theres heres lets youre theyre hes shes youve weve theyve youll itll ya ur pls plz thx gonna
wanna gotta kinda sorta
""")


def _variants(word: str) -> set[str]:
    """The one-slip misspellings of `word` (see the module docstring), of 3 letters or more."""
    out = {word[:k] + word[k + 1] + word[k] + word[k + 2:] for k in range(len(word) - 1)}     # swapped
    out |= {word[:k + 1] + word[k:] for k in range(len(word))}                                # doubled
    if len(word) >= 4:
        out |= {word[:k] + word[k + 1:] for k in range(len(word))}                            # dropped
    if len(word) >= 5:
        for k in range(len(word) + 1):
            for c in string.ascii_lowercase:
                out.add(word[:k] + c + word[k:])                                              # inserted
                if k < len(word):
                    out.add(word[:k] + c + word[k + 1:])                                      # changed
    return {v for v in out if len(v) >= 3 and v != word}


@functools.cache
def _typo_table() -> dict[str, frozenset[str]]:
    """typo -> the rule words it is a slip of, for the slips that are no word themselves. Built on first use."""
    from sigma.parse.phrases import known_words
    owners: dict[str, set[str]] = {}
    for word in RULE_WORDS:
        for typo in _variants(word):
            owners.setdefault(typo, set()).add(word)
    taken = known_words() | REAL_NEAR_MISSES | INFORMAL_WORDS | RULE_WORDS
    return {typo: frozenset(words) for typo, words in owners.items() if typo not in taken}


def _unaccented(word: str) -> str:
    return "".join(c for c in unicodedata.normalize("NFD", word) if not unicodedata.combining(c))


def _rule_words(tok: str) -> frozenset[str]:
    """The rule words (or abbreviation's word) `tok` is a slip or accented form of; none when it is itself one."""
    low = tok.lower()
    if low in RULE_WORDS or not low.isalpha():
        return frozenset()
    if low in ABBREVIATIONS or low in KNOWN_MISSPELLINGS:
        return frozenset({ABBREVIATIONS.get(low) or KNOWN_MISSPELLINGS[low]})
    if not low.isascii():
        low = _unaccented(low)
        if not low.isascii():
            return frozenset()
        if low in RULE_WORDS:
            return frozenset({low}) if len(low) >= 4 else frozenset()
    return _typo_table().get(low, frozenset())


# The rule words that are prepositions: read only where a preposition can stand (`_preposition_expected`)
PREPOSITIONS = (FUNCTION_WORDS - L.DETERMINERS - {"and", "background"}) | {"to"}
# What a noun phrase after a short preposition starts with ('ino the box', 'oto it')
_PHRASE_OPENERS = L.DETERMINERS | L._words("it them him her me us a an")


def _preposition_expected(toks: list[str], k: int) -> bool:
    """Can the slip of a preposition at k be one? It follows no determiner and comes before more
    words ('put the cat ino the box'); a short slip (3 letters or fewer: 'ino', 'oto', 'ot'), where a real word or
    name is likelier, only before a determiner or pronoun. A slip was read anywhere: 'add a ino sign' added
    nothing ('a into sign'), 'remove the ino' removed nothing."""
    if k + 1 >= len(toks) or (k > 0 and toks[k - 1].lower() in L.DETERMINERS):
        return False
    return len(toks[k]) > 3 or (k > 0 and toks[k + 1].lower() in _PHRASE_OPENERS)


def _cased_like(word: str, tok: str) -> str:
    if tok.isupper() and len(tok) > 1:
        return word.upper()
    return word.capitalize() if tok[:1].isupper() else word


def correct(toks: list[str]) -> tuple[list[str], list[tuple[str, str]]]:
    """`toks` with each slip of a rule word read as that word, and the (as written, as read) pairs."""
    out: list[str] = []
    notes: dict[tuple[str, str], None] = {}
    shouted = all(t.isupper() for t in toks if any(c.isalpha() for c in t))
    for k, tok in enumerate(toks):
        # an ALL-CAPS word in a sentence that is not all capitals is written text or an acronym ("the word WIHT",
        # "an OT sign"): as written
        words = frozenset() if tok.isupper() and len(tok) > 1 and not shouted else _rule_words(tok)
        # a verb where a verb is expected (then it is preferred: "removee the chair" is not 'removed'), else no verb
        # (of two forms, the base verb: "removee the chair" is remove, not removed; elsewhere only a participle)
        verbs = words & (EDIT_VERBS | VERB_FORMS)
        if verbs and (k == 0 or toks[k - 1].lower() in VERB_OPENERS):
            words = (verbs & EDIT_VERBS) or verbs
        else:
            words = words - EDIT_VERBS - (VERB_FORMS - PARTICIPLES)
        word = next(iter(words)) if len(words) == 1 else None     # a slip of two words (of 'these', 'those') is left
        if word in PREPOSITIONS and not _preposition_expected(toks, k):
            word = None
        if word is None:
            out.append(tok)
            continue
        out.append(_cased_like(word, tok))
        notes[(tok, word)] = None
    return out, list(notes)
