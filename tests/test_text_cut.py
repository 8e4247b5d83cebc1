"""`sigma.text.cut_long_values`, the one cut of user-given values in messages (CLI error lines, HTTP answers, a
batch task's error): the punctuation after a cut value stays after its `(N characters)` note, and a cut message
is at most its limit, so cutting it again changes nothing."""
from __future__ import annotations

import pytest

from sigma.text import MAX_MESSAGE, cut_long_values, shown

VALUE = "x" * 5001


@pytest.mark.parametrize("message, expected", [
    (f"{VALUE}: not a usable output folder", f"{shown(VALUE)}: not a usable output folder"),
    (f"out {VALUE}.", f"out {shown(VALUE)}."),
    (f"(at {VALUE})", f"(at {shown(VALUE)})"),
    (f"a {VALUE}, b {VALUE};", f"a {shown(VALUE)}, b {shown(VALUE)};"),
    (f"'{VALUE}': unknown", f"'{shown(VALUE)}': unknown"),
])
def test_the_punctuation_after_a_cut_value_stays_after_its_length(message, expected):
    """It was cut with the value: `xxx…xxx: (5001 characters) not a usable output folder`, the length counting
    the colon."""
    assert cut_long_values(message) == expected
    assert "(5001 characters)" in cut_long_values(message)


def test_the_shown_format_is_kept():
    assert shown(VALUE) == f"{'x' * 32}…{'x' * 32} (5001 characters)"
    assert cut_long_values(f"{VALUE}:") == f"{'x' * 32}…{'x' * 32} (5001 characters):"


def test_a_long_run_of_punctuation_is_a_value_and_is_cut():
    assert cut_long_values("." * 300) == shown("." * 300)
    assert cut_long_values(f"{VALUE}{'.' * 300}") == shown(f"{VALUE}{'.' * 300}")


def test_short_values_and_their_punctuation_are_untouched():
    message = f"{'y' * 128}: short enough, (at a.b[2]); done."
    assert cut_long_values(message) == message


@pytest.mark.parametrize("message", [
    "w " * 1500 + VALUE,
    "word " * 2000,
    "a: " + "b " * 3000 + "'" + VALUE + "'.",
])
@pytest.mark.parametrize("limit", [MAX_MESSAGE, 4000, 300])
def test_a_cut_message_is_at_most_its_limit_and_cutting_it_again_changes_nothing(message, limit):
    """`shown` adds its note past its limit: a 2000-character cut was 2019 characters, and the second cut where
    every API answer is built (a message `batches.scrub` had cut) cut it again, saying the first cut's length."""
    once, values_cut = cut_long_values(message, limit), message.replace(VALUE, shown(VALUE))
    assert len(once) <= limit
    assert once == values_cut if len(values_cut) <= limit else once.endswith(f" ({len(values_cut)} characters)")
    assert cut_long_values(once, limit) == once


def test_the_place_of_a_surrogate_costs_no_more_than_the_value_searched():
    """find_surrogate spelt the place of every value in full before looking at it: ten 20 000-character keys around a
    list of 2000 numbers (206 KB of JSON) made 400 MB of places. Each place is now kept to the 120 characters said."""
    from heappeak import heap_peak

    from sigma.text import find_surrogate

    data: dict = {}
    cur = data
    for level in range(10):
        cur[f"{level}" + "k" * 20_000] = cur = {}
    cur["l"] = [0] * 1999 + ["bad \ud800"]
    measured = heap_peak(find_surrogate, data)         # in a fresh interpreter (tests/heappeak.py)
    where, peak = measured.value, measured.peak
    assert where is not None and len(where) == 120 and where.startswith("0kkk")
    assert peak < 5_000_000, f"{peak} bytes to search a 206 KB value"
    assert find_surrogate({"a": {"b": [1, "x\ud800"]}}) == "a.b[1]"
    assert find_surrogate({"ok": 1, "\udcff": 2}) == "<key>"
