"""What the CLI echoes back of user-given names: a control character in a file, folder or set name is escaped
(`sigma.text.printable`) on every line it prints, never written raw to the terminal; the files keep the true name."""
from __future__ import annotations

import json

import numpy as np
from PIL import Image
from test_eval import make_pair_set

import sigma.cli
from sigma.io.unfinished import UNFINISHED
from sigma.text import printable

HOSTILE = "a\x1b[2Jb\nFAKE"          # clears the screen, then forges a line of its own


def _raw_in(text: str) -> bool:
    return "\x1b" in text or "\nFAKE" in text


def test_printable_escapes_controls_as_repr_and_keeps_names_and_surrogates():
    assert printable(HOSTILE) == "a\\x1b[2Jb\\nFAKE"
    assert printable("set\u202eexe\x7f\x9b\u2028") == "set\\u202eexe\\x7f\\x9b\\u2028"
    assert printable("ok name é 猫.png") == "ok name é 猫.png"
    assert printable("r\udcff") == "r\udcff"     # the stream writes the byte back (stdout) or escapes it (stderr)


def test_annotate_status_line_escapes_a_hostile_file_name_and_result_json_keeps_it(tmp_path, capsys):
    rng = np.random.default_rng(0)
    orig = rng.integers(40, 200, size=(30, 40, 3), dtype=np.uint8)
    edited = orig.copy()
    edited[5:15, 10:30] = 250
    Image.fromarray(orig).save(tmp_path / f"{HOSTILE}.png")
    Image.fromarray(edited).save(tmp_path / "edited.png")
    out = tmp_path / f"out{HOSTILE}"
    code = sigma.cli.main(["annotate", str(tmp_path / f"{HOSTILE}.png"), str(tmp_path / "edited.png"),
                           "--annotator", "pixel-diff", "-o", str(out)])
    said = capsys.readouterr()
    assert code == 0, said.err
    assert not _raw_in(said.out) and not _raw_in(said.err), said
    assert said.out.count("\n") == 1 and said.out.startswith("a\\x1b[2Jb\\nFAKE: ")
    assert "outa\\x1b[2Jb\\nFAKE/" in said.out
    assert json.loads((out / "result.json").read_text())["pair_id"] == HOSTILE


def test_eval_table_escapes_a_hostile_set_name_and_metrics_keep_it(tmp_path, capsys):
    root = tmp_path / "eval"
    make_pair_set(root, f"s{HOSTILE}", 2)
    make_pair_set(root, "plain", 2, seed=1)
    out = tmp_path / "ev"
    code = sigma.cli.main(["eval", "--data", str(root), "--annotator", "pixel-diff", "--out", str(out)])
    said = capsys.readouterr()
    assert code == 0, said.err
    assert not _raw_in(said.out), said.out
    assert any(line.startswith("sa\\x1b[2Jb\\nFAKE ") for line in said.out.splitlines()), said.out
    metrics = json.loads((out / "metrics.json").read_text())
    assert f"s{HOSTILE}" in {row["set"] for row in metrics["per_pair"]["none"]}


def test_an_error_line_naming_a_hostile_folder_escapes_it(tmp_path, capsys):
    folder = tmp_path / f"set{HOSTILE}"
    folder.mkdir()
    (folder / UNFINISHED).write_text("{}")
    code = sigma.cli.main(["eval", "--data", str(folder), "--annotator", "pixel-diff", "--out",
                           str(tmp_path / "ev")])
    err = capsys.readouterr().err
    assert code == 2
    assert err.count("\n") == 1 and "\x1b" not in err, err
    assert err.startswith("sigma: error [unfinished_synth_set]: ") and "seta\\x1b[2Jb FAKE" in err


# legitimate names str.isprintable() calls unprintable: an emoji ZWJ sequence, a Japanese name with an ideographic
# space, a Persian word with its zero-width non-joiner, a no-break space, an emoji newer than Python's Unicode tables
NAMES = ("👨\u200d👩\u200d👧", "🏳\ufe0f\u200d🌈", "日本\u3000語", "می\u200cخواهم", "a\u00a0b", "\U0001fae8")


def test_legitimate_names_print_unchanged_in_the_status_and_error_lines(tmp_path, capsys):
    """`sigma annotate '👨‍👩‍👧 a.png' ...` printed `👨\\u200d👩\\u200d👧 a: ...`: the joiners of an emoji sequence,
    an ideographic space, a ZWNJ of Persian were escaped as the controls are, though a terminal shows them as the
    name meant; they print as they are, the controls and bidi overrides (above) escaped still."""
    for name in NAMES:
        assert printable(f"{name}.png") == f"{name}.png"
    rng = np.random.default_rng(0)
    orig = rng.integers(40, 200, size=(30, 40, 3), dtype=np.uint8)
    Image.fromarray(orig).save(tmp_path / f"{NAMES[0]} a.png")
    Image.fromarray(255 - orig).save(tmp_path / "edited.png")
    code = sigma.cli.main(["annotate", str(tmp_path / f"{NAMES[0]} a.png"), str(tmp_path / "edited.png"),
                           "--annotator", "pixel-diff", "-o", str(tmp_path / "out")])
    said = capsys.readouterr()
    assert code == 0, said.err
    assert said.out.startswith(f"{NAMES[0]} a: "), said.out
    code = sigma.cli.main(["annotate", str(tmp_path / f"{NAMES[1]}.png"), str(tmp_path / "edited.png"),
                           "--annotator", "pixel-diff", "-o", str(tmp_path / "out2")])
    err = capsys.readouterr().err
    assert code == 2 and f"{NAMES[1]}.png: file not found" in err and "\\u" not in err, err
