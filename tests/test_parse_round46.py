"""Forms the rules parser read wrong in round 46 (each case says what it was before): turn verbs that flip a thing,
present-tense action captions, 'give X Y' with a bare plural, arrow and 'to' lists, idioms of state, and the
instructions of a blind batch in the five benchmarks' styles."""
from __future__ import annotations

import pytest

from sigma.parse.rules import parse_rules


def _edits(text: str) -> list[tuple]:
    return [(e.edit_type, e.source, e.target) for e in parse_rules(text).edits]


@pytest.mark.parametrize("text,edits", [
    ("turn it upside down", [("global", None, None)]),                          # was attribute 'it upside down'
    ("turn the image upside down", [("global", None, None)]),                   # was attribute 'image upside down'
    ("Turn the photo upside-down", [("global", None, None)]),
    ("turn the picture 90 degrees clockwise", [("global", None, None)]),
    ("turn the chair upside down", [("attribute", "chair", "chair")]),          # was 'chair upside down'
    ("turn the car sideways", [("attribute", "car", "car")]),
    ("turn the sky red and turn the car upside down", [("attribute", "sky", "sky"), ("attribute", "car", "car")]),
    ("turn the car into a boat", [("replace", "car", "boat")]),                 # a turn into something stays
])
def test_a_turn_that_flips_or_rotates_reads_as_flip(text, edits):
    assert _edits(text) == edits


@pytest.mark.parametrize("text,edits", [
    ("The dog jumps over the fence", [("attribute", "dog", "dog")]),            # was a default add of 'dog jumps'
    ("The man jumps over the fence", [("attribute", "person", "person")]),
    ("the bird flies away", [("attribute", "bird", "bird")]),                   # was an add of 'bird flies away'
    ("the dog runs", [("attribute", "dog", "dog")]),
    ("the cat sleeps on the sofa", [("attribute", "cat", "cat")]),
    ("the man carries a box", [("add", None, "box")]),
    ("the ocean waves", [("add", None, "ocean waves")]),                        # a plural noun, not 'waves'
    ("bread rolls on a plate", [("add", None, "bread rolls")]),
    ("remove the dog. the cat sleeps.", [("remove", "dog", None), ("attribute", "cat", "cat")]),
])
def test_a_present_tense_action_ends_the_subject(text, edits):
    assert _edits(text) == edits
