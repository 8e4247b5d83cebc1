"""Tokens and noun phrases: the pieces the rules parser is built from.

A concept is what an open-vocabulary detector should be asked for, so extraction drops what a
detector cannot use: articles, counts, size words, location clauses, participle clauses,
parentheticals ("the streetcar (tram) in the foreground" -> "streetcar").
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field

from sigma.parse import lexicon as L

_TOKEN = re.compile(r"[A-Za-z0-9]+(?:[-'][A-Za-z0-9]+)*'?|[^\sA-Za-z0-9]")


def clean_text(text: str) -> str:
    text = text.replace("\u2019", "'").replace("\u2018", "'").replace("\u201c", '"').replace("\u201d", '"')
    return " ".join(text.split())


# A quoted span is one token, the text an edit writes or changes ("the sign 'SALE'"); a single quote
# opens only after a non-word character, so possessives ("the dogs' bowl") are not quotes.
_QUOTED = re.compile(r'"([^"]{1,80})"|(?<![\w\'])\'([^\'\s](?:[^\']{0,78}[^\'\s])?)\'(?![\w])')


def tokenize(text: str) -> list[str]:
    """Words, punctuation, and quoted spans as one literal token `"..."` (case kept)."""
    text = clean_text(text)
    out: list[str] = []
    pos = 0
    for m in _QUOTED.finditer(text):
        literal = " ".join((m.group(1) or m.group(2) or "").split())
        if not any(c.isalnum() for c in literal):
            continue
        out += _TOKEN.findall(text[pos:m.start()])
        out.append(f'"{literal}"')
        pos = m.end()
    return out + _TOKEN.findall(text[pos:])


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


def is_value_word(w: str) -> bool:
    """A word that names a value of an attribute: a colour, material, state or comparative."""
    if w in L.COLOURS or w in L.MATERIALS or w in L.STATE_ADJECTIVES or w in L.COLOUR_MODIFIERS:
        return True
    if w.endswith(("-colored", "-coloured", "-haired", "-eyed", "-skinned", "-toned")):
        return True
    return any("-" in w and part in L.COLOURS for part in w.split("-"))


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
    words: list[str] = []
    seen: list[str] = []
    saw_attr = False
    proper = False
    n = len(toks)
    j = i
    after_and = False
    while j < n:
        tok = toks[j]
        w = tok.lower()
        if w == "(":                                    # parentheticals add nothing a detector needs
            k = j
            while k < n and toks[k] != ")":
                k += 1
            j = k + 1
            continue
        caps = is_caps_word(tok) and (caps_literal and not [x for x in words if not is_literal(x)]
                                      or bool(words) and words[-1] in L.TEXT_NOUNS)
        if is_literal(tok) or caps:
            if caps:                                     # "the text SOLD OUT" -> one literal
                k = j
                while k < n and is_caps_word(toks[k]):
                    k += 1
                tok, j = '"' + " ".join(toks[j:k]) + '"', k - 1
            words.append(tok)
            seen.append(tok.lower())
            j += 1
            after_and = False
            continue
        if not is_word(w):
            if w == "," and words and j + 1 < n and is_word(toks[j + 1]):
                nxt = toks[j + 1].lower()
                if (all(is_value_word(x) for x in words) and nxt not in L.BOUNDARY_WORDS
                        and nxt not in L.DETERMINERS and not looks_participle(nxt)):
                    j += 1                               # "futuristic, metallic structures"
                    continue
                if not after_and and _list_follows(toks, j):
                    words.append(",")                    # "a cat, a dog and a rabbit"
                    seen.append(",")
                    after_and = True
                    j += 1
                    continue
            break
        if words and not after_and and (w in ("that", "which", "who", "whose", "where")
                                        or w in ("says", "say", "saying", "reads", "reading", "spelling")):
            break                                         # "the sign | that says EXIT", "a sign | reading OPEN"
        if w in L.DETERMINERS or w.isdigit() or (w in L.SIZE_WORDS and not words):
            if words and not after_and and stop_at_determiner and w in ("a", "an", "the"):
                break
            seen.append(w)
            j += 1
            continue
        if w in L.SIZE_WORDS and words and not after_and:
            seen.append(w)
            j += 1
            continue
        after_and = False
        if w == "of":
            head = words[-1] if words else None
            if head is None or head in L.QUANTIFIER_NOUNS or head in L.ATTRIBUTE_NOUNS or head in L.PART_OF_NOUNS:
                if head in L.ATTRIBUTE_NOUNS:
                    saw_attr = True
                words = []
                seen.append(w)
                j += 1
                continue
            break
        if w in ("and", "or", "&"):
            nxt = _next_word(toks, j + 1)
            compound_value = all(is_value_word(x) for x in words) and _values_then_noun(toks, j + 1)
            if (not words or nxt is None or nxt in L.BOUNDARY_WORDS or nxt in L.ADD_VERBS
                    or nxt in L.REMOVE_VERBS or nxt in L.REPLACE_VERBS or nxt in L.CHANGE_VERBS
                    or nxt in L.MAKE_VERBS or nxt in L.PAINT_VERBS or looks_participle(nxt)
                    or nxt in L.CONSTRAINT_STARTS                 # "the dog | and fill the area ..."
                    or is_value_word(nxt) and words and is_value_word(words[-1]) and not compound_value):
                break
            words.append("and")
            after_and = True
            seen.append(w)
            j += 1
            continue
        if w in L.BOUNDARY_WORDS:
            break
        if words and stop_at_verbs and (w in L.ACTION_VERBS or w in L.WEAR_VERBS or w in L.BE_VERBS):
            nxt = toks[j + 1].lower() if j + 1 < n else None
            if (w in L.BE_VERBS or nxt is None or not is_word(nxt) or nxt in L.BOUNDARY_WORDS
                    or nxt in L.DETERMINERS or nxt in _PRONOUNS or nxt.endswith("ly") or is_value_word(nxt)
                    or nxt in ("up", "down", "away", "around", "back", "out", "over", "forward")):
                break
        if words and looks_participle(w):
            nxt = toks[j + 1].lower() if j + 1 < n else None
            if (nxt is None or not is_word(nxt) or nxt in L.BOUNDARY_WORDS or nxt in L.DETERMINERS
                    or is_action_form(w)):
                break
        if w.endswith("'s") or (w.endswith("'") and len(w) > 1):
            owner = w[:-2] if w.endswith("'s") else w[:-1]
            k = j + 1                                     # the word after the possessive ...
            if k + 1 < n and toks[k].lower() in L.ATTRIBUTE_MODIFIERS and toks[k + 1].lower() in L.ATTRIBUTE_NOUNS:
                k += 1                                    # ... past "facial" in "the person's facial expression"
            nxt = toks[k].lower() if k < n else None
            if tok[0].isupper() and j > sentence_start and nxt not in L.ATTRIBUTE_NOUNS:
                words.append(w)                           # a name: "Rubik's cube", "McDonald's sign"
                proper = True
                seen.append(w)
                j += 1
                continue
            seen.append(w)
            if nxt in L.ATTRIBUTE_NOUNS:                  # "the animal's fur colour" -> animal
                j = k
                words.append(owner)
                saw_attr = True
                while j < n and toks[j].lower() in L.ATTRIBUTE_NOUNS:
                    seen.append(toks[j].lower())
                    j += 1
                break
            j += 1
            words = []                                    # "the woman's hat" -> hat
            continue
        if tok[0].isupper() and j > sentence_start:
            proper = True
        words.append(w)
        seen.append(w)
        j += 1
    words = _tidy(words)
    if len(words) > 1 and words[-1] in L.ATTRIBUTE_NOUNS:
        saw_attr = True
    while len(words) > 1 and words[-1] in L.ATTRIBUTE_NOUNS:
        words.pop()
    while len(words) > 1 and words[-1] in L.GENERIC_SCENE_TAILS:
        words.pop()
    return Phrase(words, j, saw_attr, seen, proper)


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
    """Lowercase, split hyphens, drop articles/counts/size words and generic scene words, singularise."""
    if not text:
        return ()
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
