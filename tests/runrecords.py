"""Run folders made to look as another planning left them, for tests of how readers and resumers judge a record."""
from __future__ import annotations

import hashlib
import json
from pathlib import Path


def rehash_shards(run: Path, run_hash: str) -> None:
    """Every finished shard of `run` as a run hashed `run_hash` wrote it: its file renamed to carry that hash, its
    rows' `run_hash` column set to it, and its status (output, bytes, sha256) to match."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    for status in (run / "status").glob("*.json"):
        st = json.loads(status.read_text())
        shard = run / st["output"]
        table = pq.read_table(shard)
        column = pa.array([run_hash] * table.num_rows, pa.string())
        target = shard.with_name(f"{shard.name.rsplit('.', 2)[0]}.{run_hash}.parquet")
        pq.write_table(table.set_column(table.schema.get_field_index("run_hash"), "run_hash", column), target)
        shard.unlink()
        st.update(run_hash=run_hash, output=str(target.relative_to(run)), bytes=target.stat().st_size,
                  sha256=hashlib.sha256(target.read_bytes()).hexdigest())
        status.write_text(json.dumps(st))


def grown_run(folder: Path, rows: int, shards: int = 100, side: int = 128, images: bool = False,
              composite_every: int = 1) -> Path:
    """A finished run of `rows` rows in `shards` shard files, as `sigma batch run` leaves it, without annotating
    `rows` pairs: a synthetic corpus of `shards` pairs is run (pixel-diff, one pair per shard), then each shard file
    is written again with rows/shards rows copied from its own row (fresh pair ids and indexes, masks of side x side
    whose RLE is as long as a real edit's, a confidence spread over [0, 1)) and its status given the new file's size
    and sha256. For exports' memory (bench/bench_export_memory.py, tests/test_export_memory.py).

    `images`: the pairs are there to read again (`export coco --images`): the corpus holds all `rows` pairs (every one
    the same three 32x32 PNG files, so it is written fast) in shards of rows/shards, run once (pixel-diff; ~3 ms a
    pair), and each row keeps its own pair id, index and images' sha256. `composite_every`: only every n-th pair is
    a composite (the others have no footprint mask: `--mask footprint` skips them)."""
    import numpy as np
    import pyarrow as pa
    import pyarrow.parquet as pq

    from sigma.batch import BatchConfig, run_batch
    from sigma.batch.rows import arrow_schema
    from sigma.io.corpora.synthetic import synthetic_pairs, write_pairs_jsonl
    from sigma.rle import encode_rle, mask_bbox

    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[:side, :side]
    masks = []
    for n in range(16):          # an ellipse and a rectangle each; the last one empty (no annotation)
        cx, cy, r = (int(v) for v in rng.integers(side // 8, 3 * side // 8, 3))
        m = ((xx - cx * 2) ** 2 + (yy - cy) ** 2) < r * r
        x0, y0 = (int(v) for v in rng.integers(0, side // 2, 2))
        m[y0:y0 + side // 5, x0:x0 + side // 7] = True
        m &= n != 15
        masks.append((encode_rle(m)["counts"], [int(v) for v in mask_bbox(m)], int(m.sum())))
    per = rows // shards
    if images:
        corpus = folder / "corpus"
        corpus.mkdir(parents=True)
        pair = next(synthetic_pairs(1, size=32))
        for role in ("original", "edited", "mask"):
            (corpus / f"t_{role}.png").write_bytes(pair[role])
        with open(corpus / "pairs.jsonl", "w") as handle:
            for k in range(per * shards):
                handle.write(json.dumps({"id": f"q{k:08d}", "instruction": "edit it", "edit_type": pair["edit_type"],
                                         **{role: f"t_{role}.png" for role in ("original", "edited", "mask")}}) + "\n")
    else:
        write_pairs_jsonl(folder / "corpus", synthetic_pairs(shards, size=32))
    run = folder / "run"
    cfg = BatchConfig.model_validate({"input": {"path": str(folder / "corpus"), "shard_size": per if images else 1},
                                      "annotator": "pixel-diff", "workers": 0})
    run_batch(cfg, run, progress=False)
    k = 0
    for status in sorted((run / "status").glob("*.json")):
        st = json.loads(status.read_text())
        path = run / st["output"]
        made = pq.read_table(path).to_pylist()
        template = made[0]
        out = []
        for i in range(per):
            own = made[i] if images else {**template, "pair_id": f"q{k:08d}", "index": template["index"] + i}
            counts, bbox, area = masks[k % len(masks)]
            composite = k % composite_every == 0
            out.append({**own, "status": "ok",
                        "height": side, "width": side, "rle_counts": counts, "bbox": bbox, "area": area,
                        "area_fraction": area / side / side, "confidence": (k * 7919 % 1000) / 1000,
                        "mask_mode": "semantic", "mask_source": "semantic", "semantic_rle": counts,
                        "footprint_rle": counts if composite else None, "is_composite": composite,
                        "composite": json.dumps({"is_composite": composite})})
            k += 1
        pq.write_table(pa.Table.from_pylist(out, schema=arrow_schema()), path, compression="zstd")
        data = path.read_bytes()
        st.update(bytes=len(data), sha256=hashlib.sha256(data).hexdigest(), pairs=per)
        status.write_text(json.dumps(st))
    return run


def assert_skipped_counted(info: dict, printed, total: int, reason: str, first_id: str, id_prefix: str) -> None:
    """An export that skipped `total` pairs for one `reason` counts them (`Skipped`: the first EXAMPLES kept, the
    total and the count per reason) and its CLI line (`printed`: capsys' capture of the same export run by `main`)
    says the total, names 20 of them and gives the counts per reason."""
    from sigma.export.select import Skipped

    assert (info["skipped_total"], info["skipped_by_reason"]) == (total, {reason: total})
    assert len(info["skipped"]) == Skipped.EXAMPLES
    assert info["skipped"][0] == {"pair_id": first_id, "reason": reason}
    assert json.loads(printed.out.splitlines()[0])["skipped"] == total
    warnings = printed.err.splitlines() + printed.out.splitlines()[1:]
    assert sum(f"sigma: warning: skipped {id_prefix}" in line for line in warnings) == 20, warnings[:3]
    assert any(f"skipped {total} pair(s) in all: {total}: {reason}" in line for line in warnings), warnings[-3:]
