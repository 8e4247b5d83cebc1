"""Hostile inputs to the readers: compression bombs in parquet cells, PNGs of endless chunks, old-Mac CSVs,
embedded colour profiles. Real files, real decoders (pyarrow, Pillow), measured where the defect was cost."""
from __future__ import annotations

import subprocess
import sys
import textwrap

import pyarrow.parquet as pq

from sigma.io.corpora.synthetic import synthetic_pairs, write_parquet


def _hostile_parquet(tmp_path, cell_bytes: int):
    """Six MagicBrush rows in row groups of two; row 3's edited image is `cell_bytes` zeros (zstd: a few KB)."""
    clean = write_parquet(tmp_path / "clean.parquet", synthetic_pairs(6), "magicbrush", row_group_size=2)
    table = pq.read_table(clean)
    rows = table.to_pylist()
    rows[3]["target_img"] = {"bytes": b"\0" * cell_bytes, "path": None}
    path = tmp_path / "bomb.parquet"
    pq.write_table(table.from_pylist(rows, schema=table.schema), path, row_group_size=2, compression="zstd")
    return path


def test_parquet_cell_bomb_is_refused_from_page_headers_without_reading_it(tmp_path):
    """A 20 KB parquet file holding a 200 MB cell of zeros took 1.6 GB to read (the page, then the Python copy)
    before decode_image refused it; now its row group is refused from the page headers, each of its pairs is
    file_too_large, and the other row groups are read."""
    path = _hostile_parquet(tmp_path, 200 << 20)
    assert path.stat().st_size < 1 << 20
    script = textwrap.dedent(f"""
        import json, re
        from sigma.io.corpora import open_corpus
        corpus = open_corpus({str(path)!r}, preset="magicbrush", shard_size=100)
        corpus.max_bytes = 1 << 20
        shards = corpus.plan()
        peak = lambda: int(re.search(r"VmHWM:\\s+(\\d+)", open("/proc/self/status").read()).group(1)) * 1024
        before = peak()           # this process's own high-water mark (ru_maxrss is inherited from pytest's)
        items = [i for s in shards for i in corpus.read(s)]
        grown = peak() - before
        print(json.dumps({{"grown": grown, "items": [[i.pair_id, i.error, i.edited is not None] for i in items]}}))
    """)
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    import json
    out = json.loads(done.stdout)
    assert out["grown"] < 50 << 20, f"reading grew the process by {out['grown'] >> 20} MB"
    items = out["items"]
    assert [i[0] for i in items] == ["p000000-1", "p000001-2", "p000002-3", "p000003-1", "p000004-2", "p000005-3"]
    assert [i[1] is None and i[2] for i in items] == [True, True, False, False, True, True]
    for _, (code, message), _ in items[2:4]:
        assert code == "file_too_large"
        assert "row group 1" in message and "target_img.bytes holds a page of 2097" in message
        assert "io.limits.max_bytes=1048576" in message
