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
