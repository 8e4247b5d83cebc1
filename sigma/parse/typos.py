"""Typos, accents and abbreviations in the few words that drive the rules, read as those words.

Crowd-written instructions (MagicBrush above all) are full of slips: "remvoe the dog" was an add of 'remvoe' (no
verb was found), "make teh car red" an attribute of 'teh car', an accented "rémove" no verb, "the bg" a concept
'bg'. Only the closed classes the rules are keyed on are read through a typo (`EDIT_VERBS`, `FUNCTION_WORDS`,
`PARTICIPLES`): never a concept noun, since a concept must stay what the user wrote ("bat" is not "cat").

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
PARTICIPLES = L._words("removed deleted erased replaced added")
RULE_WORDS = EDIT_VERBS | FUNCTION_WORDS | PARTICIPLES
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
abode addend adder addled adjusts adust after aided alder alger altar alters apter aster attack backgrounds bedside
behinds bellow besides betide blow cerate chance chang changed changer changes charge chose codify colo colon colors
concert convect convent converts covert crate crease created creates cremate crenate crete dad daw dded delate
deletes deplete depleted dolor ease eased eliminated eliminates eras eraser erases erose erse exchanged exchanger
exchanges faint falter form fro fromm gadded generated generates gie halter hat his hose included includes inert
insect inserts inset insider insides int introduced introduces invert ito lace later mae nad nuder ocreate ono
onside ont pace padded pain paine pains paints painty palace palter pant peace pint placed placer places placet
plage plaice plaint plane plate ploce point prase print rase rased raw recolors remote remover removes replacer
replaces replayed reside rewove rom saint salter sap snitch som somme stitch substituted substitutes sunder swatch
taint tat thebe thee thees theme there theses thess thole transforms tun twitch udder urn venerate wadded walter
whose wit witch
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
        verbs = words & EDIT_VERBS
        words = verbs if verbs and (k == 0 or toks[k - 1].lower() in VERB_OPENERS) else words - EDIT_VERBS
        word = next(iter(words)) if len(words) == 1 else None     # a slip of two words (of 'these', 'those') is left
        if word is None:
            out.append(tok)
            continue
        out.append(_cased_like(word, tok))
        notes[(tok, word)] = None
    return out, list(notes)
