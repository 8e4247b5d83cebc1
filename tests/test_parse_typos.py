"""Typos, accents and abbreviations of the words that drive the rules (sigma/parse/typos.py), as crowd-written
instructions (MagicBrush) type them: each is read as the rule word and said in `rule` ('; read X as Y'). A real
English word one slip from a rule word, an ambiguous slip, a concept noun and an accented concept are never
changed. Forms written from the slips MagicBrush-style text shows (swapped, doubled, dropped, changed letters)."""
from __future__ import annotations

import json

import pytest

from sigma.cli import main
from sigma.parse.phrases import known_words
from sigma.parse.rules import parse_rules
from sigma.parse.typos import REAL_NEAR_MISSES, RULE_WORDS, _variants, correct

# (text, edit_type, source, target, what `rule` says was read: [(as written, as read)])
TYPO_FORMS = [
    ("make teh car red", "attribute", "car", "car", [("teh", "the")]),
    ("remvoe the dog", "remove", "dog", None, [("remvoe", "remove")]),
    ("Remoev the cat from the sofa", "remove", "cat", None, [("Remoev", "remove")]),
    ("reomve the bird", "remove", "bird", None, [("reomve", "remove")]),
    ("remov the lamp", "remove", "lamp", None, [("remov", "remove")]),
    ("removee the chair", "remove", "chair", None, [("removee", "remove")]),
    ("delte the car", "remove", "car", None, [("delte", "delete")]),
    ("dlete the sign", "remove", "sign", None, [("dlete", "delete")]),
    ("earse the text", "remove", "text", None, [("earse", "erase")]),
    ("replcae the dog wiht a cat", "replace", "dog", "cat", [("replcae", "replace"), ("wiht", "with")]),
    ("repalce the apple with an orange", "replace", "apple", "orange", [("repalce", "replace")]),
    ("relpace the hat with a helmet", "replace", "hat", "helmet", [("relpace", "replace")]),
    ("replace the dog whith a cat", "replace", "dog", "cat", [("whith", "with")]),
    ("chnage the sky to sunset", "replace", "sky", "sunset", [("chnage", "change")]),
    ("cahnge the shirt to blue", "attribute", "shirt", "shirt", [("cahnge", "change")]),
    ("chage the car to red", "attribute", "car", "car", [("chage", "change")]),
    ("trun the cat into a lion", "replace", "cat", "lion", [("trun", "turn")]),
    ("turn the cat inot a lion", "replace", "cat", "lion", [("inot", "into")]),
    ("tunr the cat itno a lion", "replace", "cat", "lion", [("tunr", "turn"), ("itno", "into")]),
    ("mkae the sky purple", "attribute", "sky", "sky", [("mkae", "make")]),
    ("amke the grass brown", "attribute", "grass", "grass", [("amke", "make")]),
    ("add a hat ot the man", "add", None, "hat", [("ot", "to")]),
    ("addd a hat on the man", "add", None, "hat", [("addd", "add")]),
    ("put a hat on hte man", "add", None, "hat", [("hte", "the")]),
    ("inesrt a dog", "add", None, "dog", [("inesrt", "insert")]),
    ("swpa the car for a bike", "replace", "car", "bike", [("swpa", "swap")]),
    ("tranform the photo into a painting", "global", None, None, [("tranform", "transform")]),
    ("convet the image into a sketch", "global", None, None, [("convet", "convert")]),
    ("paitn the fence white", "attribute", "fence", "fence", [("paitn", "paint")]),
    ("remvoe thsi dog", "remove", "dog", None, [("remvoe", "remove"), ("thsi", "this")]),
    ("remove taht dog", "remove", "dog", None, [("taht", "that")]),
    ("remove tehse dogs", "remove", "dogs", None, [("tehse", "these")]),
    ("replace the bakcground with a beach", "replace", "background", "beach", [("bakcground", "background")]),
    ("change the backround to a forest", "replace", "background", "forest", [("backround", "background")]),
    # casing: the word is matched lowercased, and read in the token's own case
    ("REMVOE THE DOG", "remove", "dog", None, [("REMVOE", "remove")]),
    ("Please remvoe the dog", "remove", "dog", None, [("remvoe", "remove")]),
    ("can you relpace the dog with a cat", "replace", "dog", "cat", [("relpace", "replace")]),
    # a later clause's verb, after 'and' (the clause split needs the verb)
    ("remove the dog and relpace the cat wiht a bird", "remove", "dog", None,
     [("relpace", "replace"), ("wiht", "with")]),
    ("remove teh dog and add a cat", "remove", "dog", None, [("teh", "the")]),
    # accents on rule words of 4+ letters are dropped for matching
    ("rémove the dog", "remove", "dog", None, [("rémove", "remove")]),
    ("replace the dog wíth a cat", "replace", "dog", "cat", [("wíth", "with")]),
    # the participles of a declarative edit
    ("The dog should be remvoed", "remove", "dog", None, [("remvoed", "removed")]),
    ("the cat is delted", "remove", "cat", None, [("delted", "deleted")]),
    ("the tree has been replcaed by a lamp", "replace", "tree", "lamp", [("replcaed", "replaced")]),
    ("the chair should be removee", "remove", "chair", None, [("removee", "removed")]),   # 'remove' where no verb is
    # inflected forms of the edit verbs, where a verb is expected; participles anywhere
    ("remvoing the dog", "remove", "dog", None, [("remvoing", "removing")]),
    ("addding a hat to the man", "add", None, "hat", [("addding", "adding")]),
    ("replcaed the dog with a cat", "replace", "dog", "cat", [("replcaed", "replaced")]),
    ("please swappping the car for a bike", "replace", "car", "bike", [("swappping", "swapping")]),
    ("remvoes the lamp", "remove", "lamp", None, [("remvoes", "removes")]),
    ("delteing the car", "remove", "car", None, [("delteing", "deleting")]),
    ("a hat is addded on the man", "add", None, "hat", [("addded", "added")]),
    ("the cat was isnerted in the box", "add", None, "cat", [("isnerted", "inserted")]),
    # abbreviations
    ("replace the bg with a beach", "replace", "background", "beach", [("bg", "background")]),
    ("make the img brighter", "global", None, None, [("img", "image")]),
]


@pytest.mark.parametrize(("text", "edit_type", "source", "target", "read"), TYPO_FORMS, ids=[f[0] for f in TYPO_FORMS])
def test_a_typo_of_a_rule_word_is_read_as_it_and_said(text, edit_type, source, target, read):
    parsed = parse_rules(text)
    assert (parsed.edit_type, parsed.source, parsed.target) == (edit_type, source, target)
    said = ", ".join(f"{typo!r} as {word!r}" for typo, word in read)
    assert parsed.rule.endswith(f"; read {said}")


def test_a_later_clause_with_a_typo_is_its_own_edit():
    parsed = parse_rules("remove the dog and relpace the cat wiht a bird")
    assert [(e.edit_type, e.source, e.target) for e in parsed.edits] == [("remove", "dog", None),
                                                                        ("replace", "cat", "bird")]
    lines = parse_rules("remvoe the dog\nadd a cat")     # a line starting with a typo'd verb is a sentence
    assert [(e.edit_type, e.source, e.target) for e in lines.edits] == [("remove", "dog", None), ("add", None, "cat")]


@pytest.mark.parametrize(("text", "edit_type", "source", "target"), [
    ("make a b/w photo", "global", None, None),
    ("make the photo B/W", "global", None, None),
    ("make the car b&w", "attribute", "car", "car"),
])
def test_b_w_is_black_and_white(text, edit_type, source, target):
    parsed = parse_rules(text)
    assert (parsed.edit_type, parsed.source, parsed.target) == (edit_type, source, target)


# Real English words one slip from a rule word (or a concept one slip from another concept): never corrected,
# neither where a verb is expected nor after an article
NEAR_MISSES = [
    "rove", "mover", "then", "thee", "form", "wit", "whit", "hat", "ad", "urn", "tun", "chance",
    "charge", "plane", "plate", "point", "print", "pain", "saint", "faint", "remote", "crate",
    "later", "altar", "ease", "bellow", "blow", "besides", "theme", "there", "colon", "witch",
    "insect", "invert", "palace", "peace", "covert", "stitch", "twitch", "swatch", "attack", "eras",
    "erse", "bat", "dad", "fro", "int",
]


@pytest.mark.parametrize("word", NEAR_MISSES)
def test_a_real_word_near_a_rule_word_is_not_corrected(word):
    for toks in ([word, "the", "dog"], ["add", "a", word], ["and", word, "the", "dog"]):
        assert correct(toks) == (toks, [])
    for text in (f"{word} the dog", f"add a {word} on the table", f"remove the {word}"):
        assert "; read" not in parse_rules(text).rule
    if word not in known_words():      # 'then', 'there' are rule words of their own
        assert parse_rules(f"remove the {word}").source == word


@pytest.mark.parametrize(("text", "edit_type", "source", "target"), [
    ("ive made a mess, remove the cup", "remove", "cup", None),     # I've, not 'give'
    ("aint no sunshine, add a sun", "add", None, "sun"),           # ain't, not 'paint'
])
def test_a_contraction_typed_without_its_apostrophe_is_not_a_verb(text, edit_type, source, target):
    parsed = parse_rules(text)
    assert (parsed.edit_type, parsed.source, parsed.target) == (edit_type, source, target)
    assert "; read" not in parsed.rule


@pytest.mark.parametrize(("text", "target"), [
    ("add a jalapeño to the pizza", "jalapeño"),    # accents of a concept are kept
    ("add thé on the table", "thé"),                # French tea is not 'the' (accents only on 4+ letter rule words)
    ("add a remvoe sign", "remvoe sign"),          # a verb's typo is read where a verb is expected only
])
def test_a_concept_keeps_its_spelling(text, target):
    parsed = parse_rules(text)
    assert (parsed.edit_type, parsed.target) == ("add", target)
    assert "; read" not in parsed.rule


@pytest.mark.parametrize(("text", "source", "target"), [
    ("replace the word WIHT with HELLO", 'word "WIHT"', 'word "HELLO"'),
    ("replace the text TEH with THE", 'text "TEH"', 'text "THE"'),
])
def test_written_text_in_capitals_keeps_its_spelling(text, source, target):
    parsed = parse_rules(text)
    assert (parsed.edit_type, parsed.source, parsed.target) == ("replace", source, target)
    assert "; read" not in parsed.rule


def test_an_ambiguous_slip_is_left_as_written():
    # 'thise' is one letter from both 'these' and 'those'
    assert correct(["remove", "thise", "dogs"]) == (["remove", "thise", "dogs"], [])


def test_the_real_words_listed_are_slips_of_rule_words():
    """REAL_NEAR_MISSES is made from `_variants`: a word in it that no longer is one is stale."""
    slips = set().union(*(_variants(w) for w in RULE_WORDS))
    assert not REAL_NEAR_MISSES - slips
    assert not REAL_NEAR_MISSES & RULE_WORDS


def test_the_cli_says_what_was_read(capsys):
    assert main(["parse", "remvoe teh dog"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert (out["edit_type"], out["source"]) == ("remove", "dog")
    assert out["rule"] == "remove; read 'remvoe' as 'remove', 'teh' as 'the'"
    assert out["instruction"] == "remvoe teh dog"      # the instruction is reported as given


def test_the_readings_said_are_bounded():
    text = "relpace the dog wiht teh cat. tunr the cat itno a lion. mkae the sky purple. cahnge the car to red"
    rule = parse_rules(text).rule
    assert rule == ("replace; read 'relpace' as 'replace', 'wiht' as 'with', 'teh' as 'the', 'tunr' as 'turn', "
                    "'itno' as 'into' and 2 more")


def test_only_the_sentences_read_are_said():
    """Past MAX_EDITS the text is not parsed, so its typos are not said to have been read."""
    text = ". ".join(f"remove the dog{k}" for k in range(9)) + ". remvoe teh cat"
    assert "; read" not in parse_rules(text).rule


# Chat shorthand around an instruction: 'pls', 'plz', 'can u' lead it, 'please', 'pls', 'thanks', 'thx' may end it
@pytest.mark.parametrize(("text", "edit_type", "source", "target"), [
    ("pls add a hat", "add", None, "hat"),
    ("plz make the sky blue", "attribute", "sky", "sky"),
    ("can u make the sky blue", "attribute", "sky", "sky"),
    ("could u remove the dog", "remove", "dog", None),
    ("pls remvoe the dog", "remove", "dog", None),
    ("remove the dog please", "remove", "dog", None),
    ("remove the dog pls", "remove", "dog", None),
    ("remove the dog thanks", "remove", "dog", None),
    ("remove the dog thx", "remove", "dog", None),
])
def test_chat_shorthand_is_no_part_of_the_edit(text, edit_type, source, target):
    parsed = parse_rules(text)
    assert (parsed.edit_type, parsed.source, parsed.target) == (edit_type, source, target)


def test_please_between_two_edits_ends_the_first_object():
    parsed = parse_rules("remove the dog please and add a cat")
    assert [(e.edit_type, e.source, e.target) for e in parsed.edits] == [("remove", "dog", None), ("add", None, "cat")]


@pytest.mark.parametrize(("text", "edit_type", "source", "target"), [
    ("add a watercolor paintng", "add", None, "watercolor paintng"),   # a verb form where no verb is: as written
    ("add a remvoing sign", "add", None, "remvoing sign"),
])
def test_an_inflected_verb_is_read_only_where_a_verb_is(text, edit_type, source, target):
    parsed = parse_rules(text)
    assert (parsed.edit_type, parsed.source, parsed.target) == (edit_type, source, target)
    assert "; read" not in parsed.rule


@pytest.mark.parametrize(("text", "edit_type", "source", "target"), [
    ("add a ino sign", "add", None, "ino sign"),            # after a determiner: a name, not 'into'
    ("remove the ino", "remove", "ino", None),
    ("remove the oto box", "remove", "oto box", None),
    ("add a sign that says ino", "add", None, "sign"),      # at the end: nothing for a preposition to govern
    ("put the cat ino box", "add", None, "cat ino box"),    # a short slip only before a determiner or pronoun
])
def test_a_preposition_slip_is_read_only_where_a_preposition_can_stand(text, edit_type, source, target):
    """'ino'/'oto' (into/onto with a letter dropped) were read anywhere: 'add a ino sign' added nothing (the
    concept 'a into sign' ends at the preposition), 'remove the ino' removed nothing. Where a preposition can
    stand, the slip is still read: 'put the cat ino the box', 'replace the dog, wiht a cat'."""
    parsed = parse_rules(text)
    assert (parsed.edit_type, parsed.source, parsed.target) == (edit_type, source, target)
    assert "; read" not in parsed.rule
    for placed, word in (("put the cat ino the box", "into"), ("put the dog oto it", "onto"),
                         ("replace the dog, wiht a cat", "with")):
        assert parse_rules(placed).rule.endswith(f"as {word!r}"), placed
