"""`--plugin MODULE` on every command that takes `--annotator NAME`, through the real CLI in a subprocess.

`sigma batch run` and `sigma worker` took `--plugin`; `sigma annotate`, `sigma eval` and `sigma serve all` did not
(argparse: "unrecognized arguments"), so an annotator a plugin registers could be reached only in-process. The
plugins here are tests/service_plugins.py (the child finds it on PYTHONPATH, as the service tests' workers do).
"""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from PIL import Image
from pluginkit import FORMAT_PLUGIN, plugin_batch
from servicekit import TESTS, base_env, make_pair

from sigma.io.corpora.synthetic import synthetic_pairs, write_pairs_jsonl


def sigma_cli(*args: str, pythonpath: list[Path] = (), timeout: float = 180) -> subprocess.CompletedProcess:
    env = base_env("redis://127.0.0.1:1/0")          # PYTHONPATH with tests/ first; no Redis is reached here
    env["PYTHONPATH"] = ":".join([*map(str, pythonpath), env["PYTHONPATH"]])
    return subprocess.run([sys.executable, "-m", "sigma", *args], capture_output=True, text=True, timeout=timeout,
                          env=env, cwd=str(TESTS.parent), check=False)


@pytest.fixture
def pair(tmp_path: Path) -> tuple[str, str]:
    original, edited = make_pair(seed=3)
    Image.fromarray(original).save(tmp_path / "o.png")
    Image.fromarray(edited).save(tmp_path / "e.png")
    return str(tmp_path / "o.png"), str(tmp_path / "e.png")


def test_sigma_annotate_reaches_a_plugins_annotator(pair, tmp_path):
    out = tmp_path / "out"
    proc = sigma_cli("annotate", *pair, "-i", "an odd one", "--plugin", "service_plugins", "--annotator", "odd-keys",
                     "-o", str(out))
    assert proc.returncode == 0, proc.stderr
    assert "marked by odd-keys" in proc.stdout, proc.stdout
    result = json.loads((out / "result.json").read_text())
    # the plugin's own extras (odd-keys on "odd"), written as batch rows write them: a set as a sorted list
    assert result["annotator"] == "odd-keys" and result["config"]["annotator"] == "odd-keys", result
    assert result["ints"] == [1, 9, 10] and result["blob"] == {"bytes": 3}, result


def test_sigma_eval_reaches_a_plugins_annotator(tmp_path):
    write_pairs_jsonl(tmp_path / "set", list(synthetic_pairs(3, size=32)))
    proc = sigma_cli("eval", "--data", str(tmp_path / "set"), "--plugin", "service_plugins", "--annotator",
                     "slow-diff", "--set", "options.delay_ms=1", "--out", str(tmp_path / "eval"))
    assert proc.returncode == 0, proc.stderr
    assert "annotator: slow-diff" in proc.stdout, proc.stdout
    metrics = json.loads((tmp_path / "eval" / "metrics.json").read_text())
    assert metrics["config"]["annotator"] == "slow-diff" and metrics["config"]["options"] == {"delay_ms": 1}


@pytest.mark.parametrize("command", ["annotate", "eval"])
def test_a_plugin_that_cannot_be_imported_or_raises_is_one_line_and_exit_2(command, pair, tmp_path):
    (tmp_path / "mods").mkdir()
    (tmp_path / "mods" / "raising_plugin.py").write_text("raise RuntimeError('no GPU here')\n")
    target = [*pair, "-o", str(tmp_path / "out")] if command == "annotate" else ["--data", str(tmp_path),
                                                                                 "--out", str(tmp_path / "ev")]
    for module, said in [("no_such_plugin_here", "--plugin: cannot import 'no_such_plugin_here' (No module named "),
                         ("raising_plugin", "--plugin: importing 'raising_plugin' failed: RuntimeError: no GPU here")]:
        proc = sigma_cli(command, *target, "--plugin", module, "--annotator", "pixel-diff",
                         pythonpath=[tmp_path / "mods"])
        assert proc.returncode == 2, (proc.stdout, proc.stderr)
        assert proc.stderr.startswith(f"sigma: error [invalid_config]: {said}"), proc.stderr
        assert "Traceback" not in proc.stderr and proc.stderr.count("\n") == 1, proc.stderr
    assert not (tmp_path / "out").exists() and not (tmp_path / "ev").exists()     # said before any work


OPTION_PLUGIN = """
from typing import Any, ClassVar

from pydantic import Field, model_validator

from sigma.annotators.pixel_diff import PixelDiff, PixelDiffConfig
from sigma.registry import ANNOTATORS


class RaisingConfig(PixelDiffConfig):
    x: int = 0

    @model_validator(mode="after")
    def _check(self):
        if self.x == 7:
            raise RuntimeError("seven is not allowed")
        return self


class AliasConfig(PixelDiffConfig):
    image_size: int = Field(64, alias="imageSize")


class OnlyReadAliasConfig(PixelDiffConfig):
    image_size: int = Field(64, validation_alias="imageSize")


for name, config in (("raising-config", RaisingConfig), ("alias-config", AliasConfig),
                     ("read-alias-config", OnlyReadAliasConfig)):
    kind = type(name.replace("-", "_"), (PixelDiff,), {"name": name, "config_cls": config})
    ANNOTATORS.register(name, "test only", config_cls=config)(lambda kind=kind, **options: kind(**options))
"""


@pytest.mark.parametrize("command", ["annotate", "eval"])
def test_a_plugins_options_are_read_as_its_config_reads_them_or_refused_in_one_line(command, pair, tmp_path):
    """annotate and eval read the options through the annotator's config before building it (to record them as it
    reads them): a plugin config whose validator raised RuntimeError was a traceback there (building it said
    annotator_failed), and a field known by its alias (`imageSize`) took no exponent (`3.2e1`: "unable to parse
    string as an integer") and was written back by its name and refused ("image_size: Extra inputs are not
    permitted"). The first is one annotator_failed line; the second runs, its options recorded by the alias its
    config reads (as given where the config reads an alias it does not write)."""
    (tmp_path / "mods").mkdir()
    (tmp_path / "mods" / "option_plugin.py").write_text(OPTION_PLUGIN)
    write_pairs_jsonl(tmp_path / "set", list(synthetic_pairs(2, size=32)))

    def run(annotator: str, option: str, out: str) -> subprocess.CompletedProcess:
        target = [*pair, "-o", str(tmp_path / out)] if command == "annotate" else [
            "--data", str(tmp_path / "set"), "--out", str(tmp_path / out)]
        return sigma_cli(command, *target, "--plugin", "option_plugin", "--annotator", annotator, "--set",
                         f"options.{option}", pythonpath=[tmp_path / "mods"])

    proc = run("raising-config", "x=7", "raised")
    assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr
    assert proc.stderr == ("sigma: error [annotator_failed]: annotator 'raising-config' could not read its options: "
                           "RuntimeError: seven is not allowed\n"), proc.stderr
    assert not (tmp_path / "raised").exists()
    for annotator in ("alias-config", "read-alias-config"):
        proc = run(annotator, "imageSize=3.2e1", annotator)
        assert proc.returncode == 0, proc.stderr
        record = tmp_path / annotator / ("result.json" if command == "annotate" else "metrics.json")
        assert json.loads(record.read_text())["config"]["options"] == (
            {"imageSize": 32} if annotator == "alias-config" else {"imageSize": "3.2e1"}), record.read_text()


@pytest.mark.parametrize("how", [["all", "--plugin", "no_such_plugin_here"], ["api", "--plugin", "no_such_plugin_here"],
                                 ["api", "--set", "api.plugins=[no_such_plugin_here]"]])
def test_sigma_serve_refuses_a_bad_plugin_before_starting(how):
    what, *flags = how
    proc = sigma_cli("serve", what, "--port", "1", *flags)
    where = "--plugin" if "--plugin" in flags else "api.plugins"
    assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr
    assert proc.stderr.startswith(f"sigma: error [invalid_config]: {where}: cannot import 'no_such_plugin_here'"), \
        proc.stderr
    assert proc.stderr.count("\n") == 1, proc.stderr


def test_a_standalone_api_accepts_a_batch_naming_a_plugins_annotator_only_with_the_plugin(redis_server, tmp_path):
    """`sigma serve api` imported no plugin, so POST /v1/batches naming a plugin's annotator was refused although
    the workers had it; `--plugin` (or api.plugins) makes the API import it at start-up."""
    from servicekit import Proc, ServiceUnderTest, wait_until

    root = tmp_path / "root"
    write_pairs_jsonl(root / "corpus", list(synthetic_pairs(2, size=32)))
    s = ServiceUnderTest(redis_server, tmp_path, overrides=["api.annotators=[odd-keys]", f"api.batch_root={root}"])
    answers = {}
    try:
        for label, flags in [("none", []), ("flag", ["--plugin", "service_plugins"]),
                             ("setting", ["--set", "api.plugins=[service_plugins]"])]:
            proc = Proc(["serve", "api", "--port", str(s.port), "--log-level", "warning", *s.sets(), *flags], s.env,
                        tmp_path / f"api-{label}.log")
            try:
                wait_until(lambda: s.http.get("/healthz").status_code == 200, 60, f"API up\n{proc.output()}", 0.2)
                answers[label] = s.http.post("/v1/batches", headers=s.headers(), json={
                    "input": "corpus", "out": f"runs/{label}", "annotator": "odd-keys", "options": {"threshold": 0.2}})
            finally:
                assert proc.stop(timeout=20) == 0, proc.output()
    finally:
        s.http.close()
    refused = answers["none"]
    assert refused.status_code == 422 and refused.json()["error"]["code"] == "unknown_name", refused.text
    assert "odd-keys" in refused.json()["error"]["message"], refused.text
    for label in ("flag", "setting"):
        resp = answers[label]
        assert resp.status_code == 202 and resp.json()["queued"] == 1, (label, resp.text)
        assert json.loads((root / "runs" / label / "run.json").read_text())["config"]["annotator"] == "odd-keys"


def test_sigma_serve_all_serves_a_plugins_annotator(redis_server, tmp_path):
    from servicekit import Proc, ServiceUnderTest, wait_until

    s = ServiceUnderTest(redis_server, tmp_path, overrides=["api.annotators=[odd-keys]"])
    proc = Proc(["serve", "all", "--port", str(s.port), "--log-level", "warning", "--plugin", "service_plugins",
                 "--annotator", "odd-keys", *s.sets()], s.env, tmp_path / "all.log")
    try:
        wait_until(lambda: s.http.get("/readyz").status_code == 200, 60, f"serve all ready\n{proc.output()}", 0.2)
        original, edited = make_pair(seed=9)
        resp = s.submit(original, edited, data={"instruction": "an odd one"}, path="/v1/annotate")
        assert resp.status_code == 200 and resp.json()["status"] == "done", resp.text
        result = resp.json()["result"]
        assert result["annotator"] == "odd-keys" and result["ints"] == [1, 9, 10], result   # the plugin's extras
    finally:
        assert proc.stop(timeout=20) == 0, proc.output()
        s.http.close()


@pytest.mark.parametrize("command", ["run", "submit"])
def test_a_corpus_format_of_a_plugin_named_in_the_same_config_file(command, redis_server, tmp_path):
    """`plugins:` in a config file was imported only once the config was read (where the run built its annotator),
    too late for a `format:` beside it: `sigma batch run|submit --config FILE` failed at once, invalid_config
    `Unknown corpus format 'tagged-jsonl'` (docs/batch.md called it a limitation; only --plugin was imported first).
    Now the config's plugins are imported before it is validated: the run reads its corpus with the plugin's reader
    (every pair id tagged), the submission queues its tasks. A config plugin that cannot be imported is said as
    such, not as an unknown format."""
    import uuid

    import pyarrow.parquet as pq

    config = plugin_batch(tmp_path, {"tagged_format_plugin": FORMAT_PLUGIN},
                          "plugins: [tagged_format_plugin]\ninput:\n  format: tagged-jsonl\n  shard_size: 2\n"
                          "annotator: pixel-diff\nworkers: 0\n")
    out, prefix = tmp_path / "out", f"t{uuid.uuid4().hex[:10]}"
    extra = ["--no-progress"] if command == "run" else ["--redis", redis_server.url, "--key-prefix", prefix]
    proc = sigma_cli("batch", command, str(tmp_path / "set"), "--out", str(out), "--config", str(config), *extra,
                     pythonpath=[tmp_path / "mods"])
    assert proc.returncode == 0, (proc.stdout, proc.stderr)
    run = json.loads((out / "run.json").read_text())
    assert run["config"]["input"]["format"] == "tagged-jsonl" and run["config"]["plugins"] == ["tagged_format_plugin"]
    if command == "run":
        rows = [row for f in sorted((out / "shards").glob("*.parquet")) for row in pq.read_table(f).to_pylist()]
        assert len(rows) == 4 and all(row["pair_id"].startswith("tagged:") for row in rows), rows
        assert all(row["status"] == "ok" for row in rows), rows
    else:
        assert "queued 2 shard task(s)" in proc.stdout, proc.stdout
        assert redis_server.client().xlen(f"{prefix}:batch:tasks") == 2

    config.write_text(config.read_text().replace("[tagged_format_plugin]", "[no_such_format_plugin]"))
    proc = sigma_cli("batch", command, str(tmp_path / "set"), "--out", str(tmp_path / "out2"), "--config",
                     str(config), *extra, pythonpath=[tmp_path / "mods"])
    assert proc.returncode == 2, (proc.stdout, proc.stderr)
    assert proc.stderr.startswith("sigma: error [invalid_config]: plugins: cannot import 'no_such_format_plugin'"), \
        proc.stderr
    assert "Traceback" not in proc.stderr and proc.stderr.count("\n") == 1, proc.stderr


MARKED_PLUGIN = """
from sigma.annotators.pixel_diff import PixelDiff
from sigma.registry import ANNOTATORS


class MarkedDiff(PixelDiff):
    name = "marked-diff"


if "marked-diff" not in ANNOTATORS:
    ANNOTATORS.register("marked-diff", "test only: pixel-diff under a plugin's name")(lambda **o: MarkedDiff(**o))
"""


@pytest.mark.parametrize("command", ["run", "submit"])
def test_batch_plugin_flags_add_to_the_config_files_plugins(command, redis_server, tmp_path):
    """`sigma batch run|submit --plugin M` replaced the config file's `plugins:` (where `sigma serve` and `sigma
    worker` add to theirs): the config's own plugin, whose corpus format the same file names, was dropped and the
    run was invalid_config `Unknown corpus format 'tagged-jsonl'`. Now --plugin adds (each module once, in the order
    first named): the run reads with the config plugin's reader and annotates with the flag plugin's annotator, and
    run.json and every queued task record that one list (the list the workers import and check)."""
    import uuid

    import pyarrow.parquet as pq

    config = plugin_batch(tmp_path, {"tagged_format_plugin": FORMAT_PLUGIN, "marked_plugin": MARKED_PLUGIN},
                          "plugins: [tagged_format_plugin]\ninput:\n  format: tagged-jsonl\n  shard_size: 2\n"
                          "workers: 0\n")
    out, prefix = tmp_path / "out", f"t{uuid.uuid4().hex[:10]}"
    extra = ["--no-progress"] if command == "run" else ["--redis", redis_server.url, "--key-prefix", prefix]
    proc = sigma_cli("batch", command, str(tmp_path / "set"), "--out", str(out), "--config", str(config),
                     "--plugin", "marked_plugin", "--plugin", "tagged_format_plugin", "--plugin", "marked_plugin",
                     "--annotator", "marked-diff", *extra, pythonpath=[tmp_path / "mods"])
    assert proc.returncode == 0, (proc.stdout, proc.stderr)
    expected = ["tagged_format_plugin", "marked_plugin"]
    run = json.loads((out / "run.json").read_text())
    assert run["config"]["plugins"] == expected and run["config"]["annotator"] == "marked-diff", run["config"]
    if command == "run":
        rows = [row for f in sorted((out / "shards").glob("*.parquet")) for row in pq.read_table(f).to_pylist()]
        assert len(rows) == 4 and all(row["pair_id"].startswith("tagged:") for row in rows), rows
        assert all(row["status"] == "ok" for row in rows), rows
    else:
        tasks = redis_server.client().xrange(f"{prefix}:batch:tasks")
        assert len(tasks) == 2, tasks
        assert all(json.loads(fields[b"plugins"]) == expected for _, fields in tasks), tasks

    # the flag alone, without the config's plugin: still the config's format, read by the config's plugin
    proc = sigma_cli("batch", command, str(tmp_path / "set"), "--out", str(tmp_path / "out2"), "--config",
                     str(config), "--plugin", "marked_plugin", "--annotator", "marked-diff", *extra,
                     pythonpath=[tmp_path / "mods"])
    assert proc.returncode == 0, (proc.stdout, proc.stderr)
    assert json.loads((tmp_path / "out2" / "run.json").read_text())["config"]["plugins"] == expected


def test_sigma_serve_all_plugin_flags_add_to_the_configured_plugins(redis_server, tmp_path):
    """`sigma serve all --plugin M` adds M to the config file's api.plugins and worker.plugins (as `sigma batch` now
    adds to `plugins:`): the API accepts batches naming the annotator of the config's plugin and of the flag's, and
    the worker it starts serves the config plugin's annotator."""
    from servicekit import Proc, ServiceUnderTest, wait_until

    (tmp_path / "mods").mkdir()
    (tmp_path / "mods" / "marked_plugin.py").write_text(MARKED_PLUGIN)
    root = tmp_path / "root"
    write_pairs_jsonl(root / "corpus", list(synthetic_pairs(2, size=32)))
    config = tmp_path / "serve.yaml"
    config.write_text("api:\n  plugins: [marked_plugin]\nworker:\n  plugins: [marked_plugin]\n")
    s = ServiceUnderTest(redis_server, tmp_path, overrides=["api.annotators=[marked-diff,odd-keys]",
                                                            f"api.batch_root={root}"])
    s.env["PYTHONPATH"] = f"{tmp_path / 'mods'}:{s.env['PYTHONPATH']}"
    proc = Proc(["serve", "all", "--port", str(s.port), "--log-level", "warning", "--config", str(config),
                 "--plugin", "service_plugins", "--plugin", "service_plugins", "--annotator", "marked-diff",
                 *s.sets()], s.env, tmp_path / "all.log")
    try:
        wait_until(lambda: s.http.get("/readyz").status_code == 200, 60, f"serve all ready\n{proc.output()}", 0.2)
        for annotator in ("marked-diff", "odd-keys"):          # the config's plugin, the flag's
            resp = s.http.post("/v1/batches", headers=s.headers(), json={
                "input": "corpus", "out": f"runs/{annotator}", "annotator": annotator})
            assert resp.status_code == 202, (annotator, resp.text)
        original, edited = make_pair(seed=9)
        resp = s.submit(original, edited, data={"instruction": "mark it"}, path="/v1/annotate")
        assert resp.status_code == 200 and resp.json()["status"] == "done", resp.text
        assert resp.json()["result"]["annotator"] == "marked-diff", resp.json()
    finally:
        assert proc.stop(timeout=20) == 0, proc.output()
        s.http.close()


def test_a_plugin_named_twice_by_a_config_is_one_plugin_on_every_route(redis_server, tmp_path):
    """Only `--plugin` merged its modules each once (`with_plugin_args`): `plugins: [m, m]` in a batch config file was
    recorded as given, run.json saying [m, m], and the same run submitted again with `--plugin m` (the list [m])
    was refused, run_modified "its plugins [m, m] are not this submission's [m]". Now every plugin list a config
    holds (a file, --set, the environment; `plugins`, `api.plugins`, `worker.plugins`) names each module once."""
    import uuid

    from sigma.service.settings import load_serve_config

    config = plugin_batch(tmp_path, {"marked_plugin": MARKED_PLUGIN},
                          "plugins: [marked_plugin, marked_plugin]\nannotator: marked-diff\ninput:\n  shard_size: 2\n"
                          "workers: 0\n")
    out = tmp_path / "out"
    proc = sigma_cli("batch", "run", str(tmp_path / "set"), "--out", str(out), "--config", str(config),
                     "--no-progress", pythonpath=[tmp_path / "mods"])
    assert proc.returncode == 0, (proc.stdout, proc.stderr)
    assert json.loads((out / "run.json").read_text())["config"]["plugins"] == ["marked_plugin"]
    again = sigma_cli("batch", "submit", str(tmp_path / "set"), "--out", str(out), "--config", str(config),
                      "--plugin", "marked_plugin", "--redis", redis_server.url, "--key-prefix",
                      f"t{uuid.uuid4().hex[:10]}", pythonpath=[tmp_path / "mods"])
    assert again.returncode == 0, (again.stdout, again.stderr)
    # a run.json an older sigma wrote with the module twice (plugins are outside the run hash) is the same run
    record = json.loads((out / "run.json").read_text())
    record["config"]["plugins"] = ["marked_plugin", "marked_plugin"]
    (out / "run.json").write_text(json.dumps(record))
    older = sigma_cli("batch", "submit", str(tmp_path / "set"), "--out", str(out), "--config", str(config),
                      "--redis", redis_server.url, "--key-prefix", f"t{uuid.uuid4().hex[:10]}",
                      pythonpath=[tmp_path / "mods"])
    assert older.returncode == 0, (older.stdout, older.stderr)

    cfg = load_serve_config(None, ["api.plugins=[service_plugins,service_plugins]",
                                   "worker.plugins=[service_plugins,json,service_plugins]"])
    assert cfg.api.plugins == ["service_plugins"] and cfg.worker.plugins == ["service_plugins", "json"]


@pytest.mark.parametrize("how", [["worker", "--plugin", "service_plugins"], ["worker", "--set",
                                 "worker.plugins=[service_plugins]"], ["serve", "all", "--port", "1", "--set",
                                 "worker.plugins=[service_plugins]"]])
def test_a_plugin_annotators_worker_options_are_checked_as_a_built_ins_are(how):
    """A plugin's annotator was not registered when worker.options were checked, so its options were checked where
    it was built: `sigma worker` first waited for Redis, then said `slow-diff: dealy_s: Extra inputs are not
    permitted` (the key cut, no did-you-mean); the plugins are now imported first, and it is the loader's line."""
    proc = sigma_cli(*how, "--set", "worker.annotator=slow-diff", "--set", "worker.options.dealy_s=1")
    assert proc.returncode == 2 and proc.stderr == (
        "sigma: error [invalid_config]: invalid ServeConfig: worker.options.dealy_s: Extra inputs are not permitted "
        "(did you mean 'worker.options.delay_ms'?)\n"), proc.stderr
