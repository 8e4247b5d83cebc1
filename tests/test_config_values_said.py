"""What a config error shows of the value it refuses, through the real CLI: a printable value a field could not read
was not echoed ("unable to parse string as a number", and the user saw a number in the file)."""
from __future__ import annotations

import sigma.cli


def refused(capsys, tmp_path, *args: str) -> str:
    code = sigma.cli.main(["annotate", "--example", "-o", str(tmp_path / "out"), *args])
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1 and err.startswith("sigma: error [invalid_config]: "), err
    assert not (tmp_path / "out").exists()
    return err


def test_a_value_a_field_cannot_read_is_echoed(capsys, tmp_path):
    config = tmp_path / "c.yaml"
    config.write_text("threshold: O.5\nbatch_size: four\nio:\n  align: maybe\n")     # a letter O, not a zero
    err = refused(capsys, tmp_path, "--config", str(config))
    assert "threshold: Input should be a valid number, unable to parse string as a number, got 'O.5'; " in err, err
    assert "batch_size: Input should be a valid integer, unable to parse string as an integer, got 'four'; " in err
    assert "io.align: Input should be a valid boolean, unable to interpret input, got 'maybe'" in err, err
    err = refused(capsys, tmp_path, "--set", "threshold=1,5")
    assert err.endswith("threshold: Input should be a valid number, unable to parse string as a number, got '1,5'\n")


def test_a_long_value_is_cut_as_every_error_line_cuts_one(capsys, tmp_path):
    """A value of spaces and words (which the CLI's own cut of runs without a space leaves whole) is cut here."""
    value = ("one two " * 5000).rstrip()      # no space at its end: `--set` refuses one there
    err = refused(capsys, tmp_path, "--set", f"batch_size={value}")
    assert f"got {value[:80]!r}…{value[-80:]!r} ({len(value)} characters)" in err, err[:600]
    assert len(err) < 600, len(err)


def test_a_value_another_note_shows_is_not_said_twice(capsys, tmp_path):
    err = refused(capsys, tmp_path, "--set", "batch_size=1:00")
    assert err.count("'1:00'") == 1 and "got" not in err, err


def test_two_keys_alike_to_the_eye_are_told_apart(capsys, tmp_path):
    """`café` composed (U+00E9) and decomposed (e + U+0301, as macOS and some editors write it) are two keys to YAML
    and to the config: both unknown, they were said "io.café: Extra inputs are not permitted" twice, alike."""
    config = tmp_path / "c.yaml"
    config.write_text("io:\n  caf\u00e9: 1\n  cafe\u0301: 2\n", encoding="utf-8")
    err = refused(capsys, tmp_path, "--config", str(config))
    assert "io.caf\u00e9: Extra inputs are not permitted; " in err, err
    assert ("io.cafe\\u0301: Extra inputs are not permitted (cafe\\u0301 is written decomposed, with U+0301 COMBINING "
            "ACUTE ACCENT: a key other than its composed form 'caf\u00e9')") in err, err
    assert "cafe\u0301" not in err, err


def test_a_dotted_key_in_a_file_says_it_is_one_key_not_a_path(capsys, tmp_path):
    """`io.align: true` in a YAML file is one key with a dot in it (only `--set` reads dots as a path): it was said
    "io.align: Extra inputs are not permitted", the very setting the user meant, refused without a why."""
    config = tmp_path / "c.yaml"
    config.write_text('io.align: true\nio:\n  "limits.max_pixels": 5\n"x.y": 1\n')
    err = refused(capsys, tmp_path, "--config", str(config))
    assert ("io.align: Extra inputs are not permitted (the key 'io.align' is one key with dots in it, not a path: in a "
            "YAML file nest it, io: {align: ...}; on the command line a dotted key is a path, --set io.align=...)") \
        in err, err
    assert ("io.limits.max_pixels: Extra inputs are not permitted (the key 'limits.max_pixels' is one key with dots in "
            "it, not a path: in a YAML file nest it, limits: {max_pixels: ...};") in err, err
    assert "did you mean" not in err, err
    assert err.rstrip().endswith("x.y: Extra inputs are not permitted (one key, 'x.y', with a dot in it)"), err
