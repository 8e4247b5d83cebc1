"""`sigma batch run --columns` and `input.columns:` checked by one function (`presets.column_problem`)."""
from __future__ import annotations

import pytest

from sigma.cli import main
from sigma.io.corpora.synthetic import synthetic_pairs, write_pairs_jsonl


@pytest.fixture
def corpus(tmp_path):
    write_pairs_jsonl(tmp_path / "set", synthetic_pairs(2, size=32))
    return tmp_path / "set"


@pytest.mark.parametrize("given,said", [
    ("", "--columns: empty"), (" ", "--columns: empty"), (",", "an empty role=column between commas"),
    ("original=a,,edited=b", "an empty role=column between commas"), ("=x", "--columns: a column with no role"),
    ("original=", "--columns: original= names no column"), ("edited= ", "--columns: edited= names no column"),
    ("orignal=x", "unknown role 'orignal' (did you mean original?)"), ("original=a,original=b", "given twice")])
def test_a_columns_flag_that_maps_nothing_is_refused_naming_the_flag(given, said, corpus, tmp_path, capsys):
    """`--columns ''` was ignored and `--columns ','` replaced the mapping with nothing, without a word; `=x` and
    `original=` mapped a role or a column named '' (the latter said as a missing column `original=`)."""
    out = tmp_path / "out"
    rc = main(["batch", "run", str(corpus), "--out", str(out), "--annotator", "pixel-diff", "--workers", "0",
               "--no-progress", "--columns", given])
    err = capsys.readouterr().err
    assert rc == 2 and "[invalid_config]" in err and said in err, err
    assert "--columns" in err and not out.exists()


@pytest.mark.parametrize("mapping,said", [("{original: ''}", "original= names no column"),
                                          ("{'': x}", "a column with no role"),
                                          ("{bogus: x}", "unknown role 'bogus'")])
def test_the_same_mapping_in_a_config_file_is_refused_the_same_way(mapping, said, corpus, tmp_path, capsys):
    """`input.columns:` (and POST /v1/batches' `columns`) goes through the same check, named by its key: an unknown
    role was taken by a tar set without a word, a blank column was the column named ''."""
    config = tmp_path / "c.yaml"
    config.write_text(f"input:\n  columns: {mapping}\n", encoding="utf-8")
    rc = main(["batch", "run", str(corpus), "--out", str(tmp_path / "out"), "--annotator", "pixel-diff",
               "--workers", "0", "--no-progress", "--config", str(config)])
    err = capsys.readouterr().err
    assert rc == 2 and "[invalid_config]" in err and "input.columns" in err and said in err, err


def test_a_tar_set_no_longer_takes_an_unknown_role(tmp_path, capsys):
    """A WebDataset reader looks up only the roles it knows: `--columns bogus=x` ran as if not given."""
    from sigma.io.corpora.synthetic import write_webdataset

    write_webdataset(tmp_path / "wds", synthetic_pairs(2, size=32), per_tar=2)
    rc = main(["batch", "run", str(tmp_path / "wds"), "--out", str(tmp_path / "out"), "--annotator", "pixel-diff",
               "--workers", "0", "--no-progress", "--columns", "bogus=x"])
    assert rc == 2 and "unknown role 'bogus'" in capsys.readouterr().err


def test_a_good_mapping_still_runs(corpus, tmp_path, capsys):
    rc = main(["batch", "run", str(corpus), "--out", str(tmp_path / "out"), "--annotator", "pixel-diff",
               "--workers", "0", "--no-progress", "--columns", "original=original, edited=edited"])
    assert rc == 0, capsys.readouterr().err
