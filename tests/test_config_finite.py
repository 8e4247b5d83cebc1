"""Numbers no machine holds, in every config: NaN and the infinities in a float field, an integer past 64 bits.

Before: only the training config, the annotators' options and the thresholds refused a float that is no finite number.
`stall_s: .inf` (batch), `--set worker.batch_timeout_s=inf`, `api.wait_timeout_s=inf`, `ray.actor_timeout_s=inf`,
`min_change=inf` (synth) were taken, and NaN said "greater than 0" (it fails every comparison, the bound checked first
spoke). `queue.lease_ms=1e400` (a whole number of 401 digits) was taken and met Redis later. Now each is one
`invalid_config` line naming the field (exit 2), and `io.limits.max_aspect_change`, where infinity means "no limit",
takes `.inf` and refuses NaN.

The fields are found by walking the config models (`number_places`), so a float or integer field added later is
covered here without a word; each command's fields are set wrong at once (`--set` NaN, a YAML file of `.inf`, `1e400`
for integers) and the one message must name every one of them, through the real CLI in a subprocess.
"""
from __future__ import annotations

import math
import os
import re
import subprocess
import sys
import typing
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml
from PIL import Image
from pydantic import BaseModel
from sigmamodels import sigma_models

from sigma.batch.config import BatchConfig
from sigma.cli.annotate import AnnotateConfig
from sigma.cli.eval import EvalConfig
from sigma.config.loader import load_config
from sigma.config.schema import MAX_CONFIG_INT, LimitsConfig, type_arms
from sigma.data.synth.engine import SynthConfig
from sigma.errors import ConfigError
from sigma.service.settings import ServeConfig, load_serve_config
from sigma.training.config import TrainConfig

REPO = Path(__file__).resolve().parents[1]
FINITE = r"Input should be a (finite number|number >= 0, or \.inf for no limit, got nan)"
TOO_LARGE = re.escape(f"Input should be at most {MAX_CONFIG_INT}")


@dataclass(frozen=True)
class Place:
    """A number field of a config: its dotted key, the shape of its value, and what a wrong value of it is."""

    key: str
    shape: str              # "scalar", "sequence" (tuple / list of numbers) or "mapping" (dict[str, number])
    size: int = 1           # items to write for a sequence
    item_key: str = "x"     # the key to write for a mapping
    lifts_limit: bool = False   # infinity means "no limit" here (sigma.config.schema.LimitOrInfinity)

    def value(self, bad: Any) -> Any:
        if self.shape == "sequence":
            return [bad] * self.size
        return {self.item_key: bad} if self.shape == "mapping" else bad

    def said(self, what: str) -> re.Pattern:
        """The place (an item's index or key after it) followed by `what`, in an invalid_config message."""
        return re.compile(rf"(?<![\w.]){re.escape(self.key)}(\.\w+)?: {what}")


def _number_arm(annotation: Any, kind: type) -> tuple[str, Any] | None:
    """("scalar" | "sequence" | "mapping", the number type) when a field of `annotation` takes numbers of `kind`."""
    for arm in type_arms(annotation):
        origin, args = typing.get_origin(arm), typing.get_args(arm)
        if arm is kind:
            return "scalar", arm
        if origin in (tuple, list) and args and all(a is kind or a is Ellipsis for a in args):
            return "sequence", kind
        if origin is dict and len(args) == 2 and args[1] is kind:
            return "mapping", kind
    return None


def _section(annotation: Any) -> type[BaseModel] | None:
    """The one config model a field holds (`io: IOConfig`), None for a union of several or none."""
    models = [arm for arm in type_arms(annotation) if isinstance(arm, type) and issubclass(arm, BaseModel)]
    return models[0] if len(models) == 1 else None


def _bounded_above(field: Any) -> bool:
    return any(getattr(m, "le", None) is not None or getattr(m, "lt", None) is not None for m in field.metadata)


def number_places(model: type[BaseModel], kind: type, prefix: str = "", unbounded: bool = False) -> list[Place]:
    """Every field of `model` and its sections that takes numbers of `kind` (float, or int: `unbounded` keeps only
    the fields without an upper bound of their own, which `Strict` bounds at MAX_CONFIG_INT)."""
    places = []
    for name, field in model.model_fields.items():
        key = f"{prefix}{name}"
        if section := _section(field.annotation):
            places += number_places(section, kind, f"{key}.", unbounded)
            continue
        found = _number_arm(field.annotation, kind)
        if found is None or unbounded and (found[0] != "scalar" or _bounded_above(field)):
            continue
        default = field.get_default(call_default_factory=True)
        places.append(Place(key, found[0], size=len(default) if isinstance(default, (tuple, list)) and default else 2,
                            item_key=next(iter(default), "x") if isinstance(default, dict) else "x",
                            lifts_limit=any(getattr(m, "allow_inf_nan", None) is True for m in field.metadata)))
    return places


def nested(places: list[Place], bad: Any) -> dict:
    """A config tree holding `bad` at every place (a YAML file's content)."""
    tree: dict = {}
    for place in places:
        *parents, last = place.key.split(".")
        node = tree
        for part in parents:
            node = node.setdefault(part, {})
        node[last] = place.value(bad)
    return tree


def set_text(place: Place, bad: str) -> str:
    """`key=value` for a place: YAML flow syntax for a sequence or a mapping."""
    if place.shape == "sequence":
        return f"{place.key}=[{', '.join([bad] * place.size)}]"
    return f"{place.key}={{{place.item_key}: {bad}}}" if place.shape == "mapping" else f"{place.key}={bad}"


def sigma_cli(*args: str, cwd: Path, settings: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    """The real CLI in a subprocess, this checkout's package first on the path; `settings`: SIGMA__* variables."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("SIGMA__")}
    env = {**env, **(settings or {}), "PYTHONWARNINGS": "ignore",
           "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])}
    return subprocess.run([sys.executable, "-m", "sigma", *args], capture_output=True, text=True, timeout=300,
                          cwd=cwd, env=env, check=False)


def refused_naming(proc: subprocess.CompletedProcess, places: list[Place], what: str) -> str:
    """Exit 2, one invalid_config line without a traceback, naming every place with `what`."""
    assert proc.returncode == 2, (proc.returncode, proc.stdout[-500:], proc.stderr[-3000:])
    assert proc.stderr.startswith("sigma: error [invalid_config]: ") and proc.stderr.count("\n") == 1, proc.stderr
    missed = [p.key for p in places if not p.said(what).search(proc.stderr)]
    assert not missed, (missed, proc.stderr)
    return proc.stderr


@pytest.fixture
def work(tmp_path: Path) -> Path:
    """A pair, a one-pair corpus folder and an empty config file, for the commands to be given."""
    Image.new("RGB", (64, 64)).save(tmp_path / "o.png")
    Image.new("RGB", (64, 64), "red").save(tmp_path / "e.png")
    (tmp_path / "set").mkdir()
    Image.new("RGB", (64, 64)).save(tmp_path / "set" / "a_original.png")
    (tmp_path / "empty.yaml").write_text("{}\n")
    return tmp_path


def _sets(items: list[str]) -> list[str]:
    return [arg for item in items for arg in ("--set", item)]


# each command: its config model, and its command line for a config file and key=value items
COMMANDS = {
    "annotate": (AnnotateConfig, lambda w, cfg, kv: ["annotate", str(w / "o.png"), str(w / "e.png"), "-o",
                                                      str(w / "out"), "--config", cfg, *_sets(kv)]),
    "eval": (EvalConfig, lambda w, cfg, kv: ["eval", "--data", str(w / "set"), "--out", str(w / "out"),
                                              "--config", cfg, *_sets(kv)]),
    "batch": (BatchConfig, lambda w, cfg, kv: ["batch", "run", str(w / "set"), "--out", str(w / "out"),
                                                "--config", cfg, *_sets(kv)]),
    "train": (TrainConfig, lambda w, cfg, kv: ["train", cfg, *kv]),
    "serve": (ServeConfig, lambda w, cfg, kv: ["serve", "all", "--config", cfg]),
}


def run_command(command: str, work: Path, config: Path, items: list[str]) -> subprocess.CompletedProcess:
    """`command` with a config file and key=value items. The service's as SIGMA__SECTION__FIELD variables (the same
    loader, `sigma.service.settings.env_overrides`): no one mode of `sigma serve` takes `--set` for every section
    (`serve all` refuses worker.max_defer_s, which only `sigma worker --batch` reads)."""
    settings = {}
    if command == "serve":
        settings = {"SIGMA__" + key.upper().replace(".", "__"): value for key, _, value in
                    (item.partition("=") for item in items)}
    return sigma_cli(*COMMANDS[command][1](work, str(config), items), cwd=work, settings=settings)


def test_the_walk_finds_the_fields_this_file_is_about():
    """The walk over the models finds the fields the failures were seen in, so the tests below cover them."""
    floats = {p.key for p in number_places(ServeConfig, float)}
    assert {"api.wait_timeout_s", "worker.batch_timeout_s", "redis.connect_timeout_s",
            "limits.max_aspect_change"} <= floats
    assert {"stall_s", "ray.actor_timeout_s", "io.limits.max_aspect_change"} <= {
        p.key for p in number_places(BatchConfig, float)}
    assert {"data.min_change", "data.mix", "data.scale_range", "lr"} <= {
        p.key for p in number_places(TrainConfig, float)}
    assert [p.key for p in number_places(ServeConfig, float) if p.lifts_limit] == ["limits.max_aspect_change"]
    assert {"queue.dead_letter_maxlen", "limits.max_pixels"} <= {
        p.key for p in number_places(ServeConfig, int, unbounded=True)}


@pytest.mark.parametrize("command", sorted(COMMANDS))
def test_nan_in_every_float_field_by_key_value_is_named(work, command):
    """`--set FIELD=nan` (key=value for `sigma train`) for every float field of the command's config at once: each
    named, "Input should be a finite number" (or "... or .inf for no limit, got nan" where infinity lifts a limit);
    nothing made."""
    model = COMMANDS[command][0]
    places = number_places(model, float)
    refused_naming(run_command(command, work, work / "empty.yaml", [set_text(p, "nan") for p in places]), places,
                   FINITE)
    assert not (work / "out").exists()


@pytest.mark.parametrize("command", sorted(COMMANDS))
def test_infinity_in_every_float_field_of_a_yaml_file_is_named(work, command):
    """A YAML file with `.inf` in every float field (and `-.inf` in a second run): each named but those where
    infinity means "no limit", which take +inf (and say `-inf` is below 0)."""
    model = COMMANDS[command][0]
    places = number_places(model, float)
    config = work / "c.yaml"
    config.write_text(yaml.safe_dump(nested(places, math.inf)))
    err = refused_naming(run_command(command, work, config, []),
                         [p for p in places if not p.lifts_limit], FINITE)
    assert not [p.key for p in places if p.lifts_limit and p.said("").search(err)], err
    config.write_text(yaml.safe_dump(nested(places, -math.inf)))
    refused_naming(run_command(command, work, config, []), places,
                   r"Input should be (a finite number|greater than or equal to 0)")


@pytest.mark.parametrize("command", sorted(COMMANDS))
def test_huge_integers_in_every_unbounded_integer_field_are_named(work, command):
    """`1e400` (a whole number, 401 digits) by key=value and a 4000-digit integer in a YAML file, for every integer
    field without an upper bound of its own: each named, "at most 9223372036854775807", not taken."""
    model = COMMANDS[command][0]
    places = number_places(model, int, unbounded=True)
    if not places:
        pytest.skip(f"{model.__name__} has no integer field without an upper bound")
    refused_naming(run_command(command, work, work / "empty.yaml", [set_text(p, "1e400") for p in places]), places,
                   TOO_LARGE)
    config = work / "c.yaml"
    config.write_text(yaml.safe_dump(nested(places, 10 ** 3999)).replace("...\n", ""))
    refused_naming(run_command(command, work, config, []), places, TOO_LARGE)


def test_synth_refuses_non_finite_floats_by_key_value(work):
    """`sigma synth` takes SynthConfig overrides as key=value (no config file): each float field's `inf` named."""
    places = number_places(SynthConfig, float)
    proc = sigma_cli("synth", "--out", str(work / "out"), "-n", "2", *[set_text(p, "inf") for p in places], cwd=work)
    refused_naming(proc, places, FINITE)


def test_a_5000_digit_integer_is_invalid_config(work):
    """5000 digits (past Python's 4300-digit bound on int(str)) in a YAML file and in key=value: invalid_config, no
    traceback, no hang."""
    digits = "7" * 5000
    config = work / "c.yaml"
    config.write_text(f"batch_size: {digits}\n")
    for command, file, items in (("annotate", config, []), ("annotate", work / "empty.yaml", [f"batch_size={digits}"]),
                                 ("serve", work / "empty.yaml", [f"queue.lease_ms={digits}"])):
        proc = run_command(command, work, file, items)
        assert proc.returncode == 2 and "[invalid_config]" in proc.stderr, proc.stderr[-2000:]
        assert "more than 4300 digits" in proc.stderr and "Traceback" not in proc.stderr, proc.stderr[-2000:]


@pytest.mark.parametrize("place", number_places(ServeConfig, float), ids=lambda p: p.key)
@pytest.mark.parametrize("bad", ["nan", "inf", "-.inf", "1e400"])
def test_the_settings_loader_refuses_each_non_finite_float(place, bad):
    """The service settings from the environment (SIGMA__SECTION__FIELD), one field at a time: NaN, infinities and
    `1e400` (text a float field reads as inf) are ConfigError naming the field, but +inf where infinity lifts a
    limit."""
    env = {"SIGMA__" + place.key.upper().replace(".", "__"): set_text(place, bad).split("=", 1)[1]}
    if place.lifts_limit and bad in ("inf", "1e400"):
        assert getattr(load_serve_config(None, [], env=env).limits, place.key.rsplit(".", 1)[1]) == math.inf
        return
    with pytest.raises(ConfigError) as caught:
        load_serve_config(None, [], env=env)
    assert place.said(r"Input should be (a finite number|a number >= 0, or \.inf|greater than or equal to 0)").search(
        caught.value.message), caught.value.message


@pytest.mark.parametrize("place", number_places(ServeConfig, int, unbounded=True), ids=lambda p: p.key)
def test_the_settings_loader_refuses_each_huge_integer(place):
    """1e400 and 2**63 for an integer setting without a bound of its own: ConfigError naming it; 2**63 - 1 taken."""
    for text in ("1e400", str(2**63)):
        with pytest.raises(ConfigError) as caught:
            load_serve_config(None, [f"{place.key}={text}"], env={})
        assert place.said(TOO_LARGE).search(caught.value.message), caught.value.message
    load_serve_config(None, [f"{place.key}={MAX_CONFIG_INT}"], env={})


@pytest.mark.parametrize("text, value", [(".inf", math.inf), ("inf", math.inf), ("1e400", math.inf), ("0.2", 0.2)])
def test_max_aspect_change_takes_infinity_for_no_limit(tmp_path, text, value):
    """Infinity is `io.limits.max_aspect_change`'s "no limit" (sigma.io.geometry.check_aspect then refuses no
    pair): taken from a YAML file and key=value, and written back as `.inf` in a resolved config."""
    config = tmp_path / "c.yaml"
    config.write_text(f"io:\n  limits:\n    max_aspect_change: {text}\n")
    assert load_config(AnnotateConfig, config).io.limits.max_aspect_change == value
    assert load_config(AnnotateConfig, None, [f"io.limits.max_aspect_change={text}"]).io.limits.max_aspect_change \
        == value


@pytest.mark.parametrize("bad", [".nan", "nan", "NaN", "-.inf"])
def test_max_aspect_change_refuses_nan_and_minus_infinity(bad):
    """NaN took the limit away as infinity does (every comparison false), unsaid; its message named `>= 0`."""
    with pytest.raises(ConfigError) as caught:
        load_config(AnnotateConfig, None, [f"io.limits.max_aspect_change={bad}"])
    message = caught.value.message
    assert "io.limits.max_aspect_change: Input should be " in message, message
    assert ("a number >= 0, or .inf for no limit, got nan" if "n" in bad.lower().replace("inf", "") else
            "greater than or equal to 0") in message, message
    with pytest.raises(ValueError, match="or .inf for no limit"):
        LimitsConfig(max_aspect_change=math.nan)


def test_free_form_option_text_inf_stays_text_and_the_typed_parse_refuses_it():
    """`inf` as text where no field types the value (feature-diff's `hf_config`, handed to transformers' DINOv2
    config) stays text: the loader cannot know it is meant as a number, and the config that reads it is typed and
    refuses it (invalid_config naming the field), where YAML's float `.inf` there is the loader's own refusal
    (tests/test_config_all_errors.py). A typed option (`options.scale=inf`) is refused at once as not finite."""
    with pytest.raises(ConfigError) as caught:
        load_config(AnnotateConfig, None, ["annotator=feature-diff", "options.scale=inf"])
    assert "options.scale: Input should be a finite number" in caught.value.message, caught.value.message
    cfg = load_config(AnnotateConfig, None, ["annotator=feature-diff", "options.hf_config.layer_norm_eps=inf"])
    assert cfg.options["hf_config"]["layer_norm_eps"] == "inf"
    pytest.importorskip("transformers")
    from sigma.models.size import hf_dinov2_config

    with pytest.raises(ConfigError, match=r"DINOv2 hf_config: .*'layer_norm_eps'"):
        hf_dinov2_config({"hidden_size": 32, "num_attention_heads": 2, "num_hidden_layers": 1, "patch_size": 14,
                          "image_size": 28, **cfg.options["hf_config"]})


def test_a_batch_run_without_an_aspect_limit_can_be_resumed(work):
    """`io.limits.max_aspect_change=inf` was taken, but run.json (JSON, no infinity) held it as null, which no float
    field reads: `--resume` said run_modified ("Input should be a valid number"). Now it is written `"inf"` in run.json
    (and `inf` in config.yaml), read back as infinity, and the run resumes under the same run hash."""
    Image.new("RGB", (64, 64), "red").save(work / "set" / "a_edited.png")
    args = ["batch", "run", str(work / "set"), "--out", str(work / "out"), "--annotator", "pixel-diff",
            "--set", "io.limits.max_aspect_change=inf"]
    first = sigma_cli(*args, cwd=work)
    assert first.returncode == 0, first.stderr[-2000:]
    assert '"max_aspect_change": "inf"' in (work / "out" / "run.json").read_text()
    assert load_config(BatchConfig, work / "out" / "config.yaml").io.limits.max_aspect_change == math.inf
    again = sigma_cli(*args, "--resume", cwd=work)
    assert again.returncode == 0, again.stderr[-2000:]
    assert re.findall(r"run (\w+):", first.stdout + first.stderr) == re.findall(r"run (\w+):", again.stdout +
                                                                                again.stderr), again.stderr


def _all_models() -> list[type[BaseModel]]:
    """Every pydantic model of sigma's (configs, settings, API bodies, parse results)."""
    return sigma_models()


def test_no_model_anywhere_takes_a_non_finite_float():
    """A guard for what comes next: every float field of every model here (a new config section, a new setting, an
    API body's field) refuses NaN and +-inf, but a `LimitOrInfinity` field +inf. `Strict` models get it from their
    base; any other model must say `allow_inf_nan=False` or use `UnitInterval` / `NonNegative`."""
    taken = []
    models = _all_models()
    assert {"ServeConfig", "BatchConfig", "TrainConfig", "AnnotateOptions", "BatchRequest"} <= {m.__name__ for m in
                                                                                                  models}
    for model in models:
        for name, field in model.model_fields.items():
            if _number_arm(field.annotation, float) is None or _section(field.annotation):
                continue
            place = number_places(model, float)
            lifts = any(p.key == name and p.lifts_limit for p in place)
            for bad in [math.nan, -math.inf] + ([] if lifts else [math.inf]):
                shape = next((p for p in place if p.key == name), Place(name, "scalar"))
                try:
                    model.__pydantic_validator__.validate_assignment(model.model_construct(), name, shape.value(bad))
                except ValueError:
                    continue
                taken.append(f"{model.__module__}.{model.__qualname__}.{name}={bad}")
    assert not taken, taken
