"""Plugin modules and the batch set-up around them, for tests that run the real CLI with a plugin on its path."""
from __future__ import annotations

from pathlib import Path

from sigma.io.corpora.synthetic import synthetic_pairs, write_pairs_jsonl

# A corpus format of a plugin (`tagged_format_plugin`): jsonl whose pair ids say this reader read them.
FORMAT_PLUGIN = """
from sigma.io.corpora import CORPUS_READERS
from sigma.io.corpora.manifest import ManifestCorpus


class TaggedJsonl(ManifestCorpus):
    format = "tagged-jsonl"

    def read(self, shard):
        for item in super().read(shard):
            item.pair_id = "tagged:" + item.pair_id
            yield item


if "tagged-jsonl" not in CORPUS_READERS:
    CORPUS_READERS.register("tagged-jsonl", "test only: jsonl whose pair ids say this reader read them")(TaggedJsonl)
"""


def plugin_batch(tmp_path: Path, plugins: dict[str, str], config_text: str, pairs: int = 4) -> Path:
    """`tmp_path/mods/NAME.py` for each of `plugins` (name → source; `mods` goes on the CLI's PYTHONPATH), a
    pairs.jsonl corpus of `pairs` synthetic pairs at `tmp_path/set`, and `tmp_path/run.yaml` holding `config_text`,
    whose path is returned."""
    (tmp_path / "mods").mkdir()
    for name, source in plugins.items():
        (tmp_path / "mods" / f"{name}.py").write_text(source)
    write_pairs_jsonl(tmp_path / "set", list(synthetic_pairs(pairs, size=32)))
    config = tmp_path / "run.yaml"
    config.write_text(config_text)
    return config
