"""Where the CLI front ends write: a run's own folders refused as any command's output folder, names put into the
files an export writes (the dataset card) and the review page escaped, over-long paths said as bad input."""
from __future__ import annotations

from pathlib import Path

import pytest

from sigma.batch import BatchConfig, run_batch
from sigma.cli import main
from sigma.io.corpora.synthetic import synthetic_pairs, write_pairs_jsonl


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> Path:
    """One set of three synthetic pairs (a folder with pairs.jsonl: `sigma eval --data` and `sigma batch run`)."""
    root = tmp_path_factory.mktemp("corpus")
    write_pairs_jsonl(root / "alpha", synthetic_pairs(3))
    return root


@pytest.fixture(scope="module")
def run_dir(corpus, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("runs") / "run"
    cfg = BatchConfig.model_validate({"input": {"path": str(corpus), "shard_size": 4}, "annotator": "pixel-diff",
                                      "workers": 0})
    assert run_batch(cfg, out, progress=False).status["ok"] == 3
    return out


def _training_run(folder: Path) -> Path:
    """A training run's folder as every reader knows one (`sigma.io.runmarks`: its checkpoint and metrics), with the
    folders of its saved weights."""
    for sub in ("best", "model", "final"):
        (folder / sub).mkdir(parents=True)
        (folder / sub / "config.json").write_text("{}")
    for name in ("checkpoint.pt", "metrics.jsonl", "config.yaml"):
        (folder / name).write_bytes(b"x")
    return folder


def _tree(root: Path) -> dict[str, bytes | None]:
    return {str(p.relative_to(root)): (p.read_bytes() if p.is_file() else None) for p in root.rglob("*")}


def test_no_output_folder_lands_in_a_runs_own_folders(corpus, run_dir, tmp_path, capsys):
    """`sigma annotate -o RUN/status` wrote result.json, config.yaml and the masks among the batch run's shard status
    files; `sigma export hf RUN TRAIN/model` a README.md and data/ into a training run's saved model;
    `sigma eval --out TRAIN/best` and `sigma annotate -o TRAIN/best/x` their files among the best weights'. Each is
    `out_is_run_file` now, before any work, nothing written; a new folder of either run is still fine."""
    train = _training_run(tmp_path / "train")
    runs_before, train_before = _tree(run_dir), _tree(train)
    cases = [
        (["annotate", "--example", "--annotator", "pixel-diff", "-o", str(run_dir / "status")],
         run_dir / "status", "batch run's own status/"),
        (["annotate", "--example", "--annotator", "pixel-diff", "-o", str(run_dir / "masks" / "x")],
         run_dir / "masks" / "x", "batch run's own masks/"),
        (["annotate", "--example", "--annotator", "pixel-diff", "-o", str(train / "best" / "x")],
         train / "best" / "x", "training run's own best/"),
        (["eval", "--data", str(corpus), "--annotator", "pixel-diff", "--out", str(train / "best")],
         train / "best", "training run's own best/"),
        (["export", "hf", str(run_dir), str(train / "model")], train / "model", "training run's own model/"),
        (["export", "imdl-benco", str(run_dir), "--out", str(train / "final" / "benco")],
         train / "final" / "benco", "training run's own final/"),
        (["export", "coco", str(run_dir), "--out", str(tmp_path / "c.json"), "--images", str(train / "model")],
         train / "model", "training run's own model/"),
        (["batch", "run", str(corpus), "--out", str(train / "model" / "r"), "--annotator", "pixel-diff"],
         train / "model" / "r", "training run's own model/"),
    ]
    for argv, out, what in cases:
        assert main(argv) == 2, argv
        err = capsys.readouterr().err
        assert f"[out_is_run_file]: {out}: inside the {what}" in err, (argv, err)
    assert _tree(run_dir) == runs_before and _tree(train) == train_before
    # a new folder of the training run is not one of its own
    assert main(["annotate", "--example", "--annotator", "pixel-diff", "-o", str(train / "notes")]) == 0
    assert (train / "notes" / "result.json").is_file()


def _rendered(card: str) -> str:
    """The card's Markdown body as the Hub renders it (CommonMark), below its YAML front matter."""
    markdown_it = pytest.importorskip("markdown_it")
    return markdown_it.MarkdownIt("commonmark").render(card.split("---\n", 2)[2])


def test_the_dataset_card_shows_names_as_text_never_as_markup(tmp_path, capsys):
    """`sigma export hf RUN OUT --name '[x](javascript:alert(1)) <script>...'` put the name into the card's Markdown as
    it was: a javascript: link and a raw <script> on the Hub's page; a name with a line break began a heading (or the
    YAML front matter's `---`) of its own, and a corpus folder named `a<img src=x onerror=...>` was HTML in the card's
    text. Names are escaped in the card now (shown as typed); a --name holding a control character, a line break or a
    bidi override is refused before any work (`bad_arguments`), nothing written."""
    import yaml

    corpus = tmp_path / "c<img src=x onerror=alert(2)>`x"
    write_pairs_jsonl(corpus / "alpha", synthetic_pairs(2))
    run = tmp_path / "run"
    cfg = BatchConfig.model_validate({"input": {"path": str(corpus), "shard_size": 4}, "annotator": "pixel-diff",
                                      "workers": 0})
    assert run_batch(cfg, run, progress=False).status["ok"] == 2
    for bad in ("x\n# Heading", "x\n---\nlicense: evil", "abc\u202edef", "a\x1b[2Jb", " "):
        assert main(["export", "hf", str(run), str(tmp_path / "refused"), "--name", bad]) == 2
        assert "[bad_arguments]: --name" in capsys.readouterr().err
    assert not (tmp_path / "refused").exists()
    name = "x</a><script>alert(1)</script> [y](javascript:alert(1)) my_set & *b* `c` #1 | <!--"
    assert main(["export", "hf", str(run), str(tmp_path / "hf"), "--name", name]) == 0
    card = (tmp_path / "hf" / "README.md").read_text()
    assert yaml.safe_load(card.split("---\n")[1])["pretty_name"] == name
    html = _rendered(card)
    assert "<script" not in html and "<a " not in html and "<img" not in html and "<em>" not in html, html
    heading = html.split("</h1>")[0]
    assert heading == "<h1>" + name.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;"), heading
    assert html.count("<h1>") == 1 and "onerror=alert(2)&gt;`x" in html, html


def test_the_review_page_shows_bidi_and_control_characters_visibly(tmp_path, capsys):
    """`sigma report`: a pair id, set folder or instruction holding U+202E (right-to-left override) was put on the
    page as it was, so the text after it showed reversed (`id\\u202ecba` read `idabc`), and an ESC or another control
    character showed as nothing. The page's text shows each as `repr` writes it (`\\u202e`, `\\x1b`); the pair, the
    set and the filters are still the same (attribute values are kept)."""
    import html.parser
    import json
    import shutil

    corpus = tmp_path / "bidi"
    folder = corpus / "s\u202eab"
    write_pairs_jsonl(folder, synthetic_pairs(2))
    records = [json.loads(line) for line in (folder / "pairs.jsonl").read_text().splitlines()]
    shutil.move(folder / records[0]["edited"], folder / "evil\u202egnp.exe")
    records[0].update(id="id\u202ecba", edited="evil\u202egnp.exe", instruction="remove the \u202eboat\x1b[2J")
    records.append({"id": "bad\u202e1", "original": "gone\u202e.png", "edited": "x.png"})
    (folder / "pairs.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    run = tmp_path / "run"
    assert main(["batch", "run", str(corpus), "--out", str(run), "--annotator", "pixel-diff"]) == 0
    page = tmp_path / "report.html"
    assert main(["report", str(run), "--out", str(page)]) == 0
    capsys.readouterr()

    class Text(html.parser.HTMLParser):
        def __init__(self) -> None:
            super().__init__()
            self.text: list[str] = []
            self.values: list[str] = []
            self.tag = ""

        def handle_starttag(self, tag, attrs):
            self.tag = tag
            self.values += [v for _, v in attrs if v]

        def handle_data(self, data):
            if self.tag != "script":
                self.text.append(data)

    parser = Text()
    parser.feed(page.read_text(encoding="utf-8"))
    shown = "".join(parser.text)
    assert "\u202e" not in shown and "\x1b" not in shown, [t for t in parser.text if "\u202e" in t or "\x1b" in t]
    for visible in ("id\\u202ecba", "remove the \\u202eboat\\x1b[2J", "s\\u202eab", "bad\\u202e1"):
        assert visible in shown, visible
    assert "s\u202eab" in parser.values      # the set filter's value is the set's own name, as each figure's


def test_eval_and_annotate_never_replace_each_others_record(corpus, tmp_path, capsys):
    """`sigma eval --out X` where `sigma annotate -o X` had written a pair put the eval's config.yaml over the
    annotation's (`sigma annotate ... --config X/config.yaml` then ran an eval's settings, and result.json sat beside a
    config that was not its own); `sigma annotate -o X` into an eval's X replaced the eval's config.yaml. Both are
    `out_is_run_file` now, nothing written; each command again into its own folder is still fine."""
    ann, ev = tmp_path / "ann", tmp_path / "ev"
    annotate = ["annotate", "--example", "--annotator", "pixel-diff"]
    assert main([*annotate, "-o", str(ann)]) == 0
    assert main(["eval", "--data", str(corpus), "--annotator", "pixel-diff", "--out", str(ev)]) == 0
    capsys.readouterr()
    before = {folder: _tree(folder) for folder in (ann, ev)}
    assert main(["eval", "--data", str(corpus), "--annotator", "pixel-diff", "--out", str(ann)]) == 2
    assert f"[out_is_run_file]: {ann}: the output folder of a `sigma annotate -o` (it holds result.json)" \
        in capsys.readouterr().err
    assert main([*annotate, "-o", str(ev), "--threshold", "0.2"]) == 2
    assert f"[out_is_run_file]: {ev}: the output folder of a `sigma eval --out` (it holds metrics.json)" \
        in capsys.readouterr().err
    assert {folder: _tree(folder) for folder in (ann, ev)} == before
    assert main([*annotate, "-o", str(ann), "--threshold", "0.2"]) == 0
    assert main(["eval", "--data", str(corpus), "--annotator", "pixel-diff", "--out", str(ev)]) == 0
