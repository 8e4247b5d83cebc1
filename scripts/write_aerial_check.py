"""Write the synthetic check set of the aerial change family (issue 14, run l's selection): aerial tiles only,
every pair with an unlabelled land-cover change and illumination / season change, buildings (drawn roofs with
the config's roof_p, else another tile's texture; removals; re-coloured roofs) labelled, from a run's own data
config.

    python scripts/write_aerial_check.py runs/sigma-lite-ii-l/config.yaml runs/val/aerial-check [N] [SEED]

Then `sigma eval --data runs/val/aerial-check --set options.weights=RUN/best --set options.mask_mode=semantic`.
"""
from __future__ import annotations

import json
from pathlib import Path


def main(config: str, out: str, n: int = 96, seed: int = 778) -> None:
    from _cli import write_check_set

    dest, tiles = Path(out), []

    def change(data):
        if not data.cache:
            raise SystemExit("the config has no data.cache: the check set is drawn from the cached photos")
        pattern = data.aerial.pattern.lower()
        index = json.loads((Path(data.cache) / "index.json").read_text())
        index["files"] = [f for f in index["files"] if pattern in str(f.get("photo", f["file"])).lower()]
        if len(index["files"]) < 2:
            raise SystemExit(f"fewer than 2 cached photos match the aerial pattern {pattern!r}")
        tiles.append(len(index["files"]))
        dest.parent.mkdir(parents=True, exist_ok=True)
        frozen = dest.with_name(dest.name + "-index.json")
        frozen.write_text(json.dumps(index))
        aerial = data.aerial.model_copy(update={"struct_p": 1.0, "landcover_p": 1.0})   # roofs: the config's roof_p
        illum = data.perturb.illum.model_copy(update={"aerial_p": 1.0})
        return {"cache_index": str(frozen), "crop": 160, "aerial": aerial,
                "perturb": data.perturb.model_copy(update={"illum": illum})}

    write_check_set(config, dest, n, seed, change)
    print(f"wrote {n} aerial change pairs ({tiles[0]} tiles, seed {seed}) to {out}")

if __name__ == "__main__":
    from _cli import CHECK_SET_HELPS, run

    run(main, __doc__, CHECK_SET_HELPS)
