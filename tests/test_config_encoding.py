"""A config file is read as UTF-8 whatever the locale, and one that is not UTF-8 is one invalid_config line.

`read_yaml` opened configs in the locale's encoding: under LC_ALL=C (a cron job, a bare container, `env -i`) with
Python's UTF-8 mode off, the project's own configs/annotate.yaml (a `τ` in a comment) was "cannot read ('ascii'
codec can't decode byte 0xcf ...)". Every command runs in a subprocess under that locale, so the locale is real."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from test_synth import make_photos

ROOT = Path(__file__).resolve().parents[1]
STAGE1 = ROOT / "configs/train/tiny-stage1.yaml"

pytestmark = pytest.mark.timeout(180)


def _c_locale_env() -> dict[str, str]:
    """The C locale with UTF-8 mode off: the file system, stdout and `open()` all say ASCII."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("LC_", "LANG", "PYTHONUTF8", "PYTHONIOENCODING"))}
    return {**env, "LC_ALL": "C", "PYTHONUTF8": "0", "OMP_NUM_THREADS": "1"}


def _run(*args: str) -> subprocess.CompletedProcess:
    try:
        return subprocess.run([sys.executable, *args], capture_output=True, text=True, errors="replace",
                              env=_c_locale_env(), timeout=150)
    except subprocess.TimeoutExpired:
        raise AssertionError(f"{' '.join(args)} hung") from None


def test_a_utf8_config_with_non_ascii_text_reads_the_same_under_the_c_locale(tmp_path):
    (tmp_path / "cfg.yaml").write_text("name: café-run  # é, τ, →\nnote: [Zürich, 東京]\n", encoding="utf-8")
    script = (f"from sigma.config.loader import read_yaml\n"
              f"print(ascii(read_yaml({str(tmp_path / 'cfg.yaml')!r})))\n")
    script += "import locale; print(locale.getpreferredencoding(False))\n"   # what `open()` reads in, untold
    done = _run("-c", script)
    assert done.returncode == 0, done.stderr[-2000:]
    read, encoding = done.stdout.splitlines()
    assert encoding.lower() in ("ascii", "ansi_x3.4-1968"), encoding     # the locale proves something
    assert read == ascii({"name": "café-run", "note": ["Zürich", "東京"]}), done.stdout


def test_the_shipped_annotate_config_works_under_the_c_locale(tmp_path):
    """configs/annotate.yaml holds a `τ`: `sigma annotate --config configs/annotate.yaml` ended at once."""
    photos = make_photos(tmp_path / "photos", n=2)
    done = _run("-m", "sigma", "annotate", str(photos / "p0.png"), str(photos / "p1.png"), "--config",
                str(ROOT / "configs/annotate.yaml"), "--annotator", "pixel-diff", "-o", str(tmp_path / "out"))
    assert done.returncode == 0, done.stderr[-2000:]


@pytest.mark.parametrize(("encoding", "said"), [
    ("latin-1", "not UTF-8 text (byte 0xe9 on line 2: Latin-1 or another legacy encoding?)"),
    ("utf-16", "UTF-16 text (it starts with a UTF-16 byte-order mark)"),
])
@pytest.mark.parametrize("command", ["train", "annotate"])
def test_a_config_that_is_not_utf8_is_one_invalid_config_line(tmp_path, encoding, said, command):
    """A Latin-1 or UTF-16 config was "cannot read ('utf-8' codec can't decode byte 0xe9 in position 101: invalid
    continuation byte)" (or 'ascii', by the locale). Now it says what the file is and that a config is UTF-8."""
    body = STAGE1.read_text(encoding="utf-8") if command == "train" else "annotator: pixel-diff\n"
    config = tmp_path / "config.yaml"
    config.write_bytes(f"# a line\n# réglages: {encoding}\n{body}".encode(encoding))
    args = (["train", str(config), f"out_dir={tmp_path / 'runs'}"] if command == "train"
            else ["annotate", "a.png", "b.png", "--config", str(config), "-o", str(tmp_path / "o")])
    done = _run("-m", "sigma", *args)
    assert done.returncode == 2, done.stderr[-2000:]
    assert done.stderr == (f"sigma: error [invalid_config]: {config}: {said}; a config file is read as UTF-8, "
                           "save it as UTF-8\n"), done.stderr


def test_a_name_the_locale_cannot_write_as_a_folder_is_one_invalid_text_line(tmp_path):
    """The config now reads under the C locale, but its `name: café-run` made into the run's folder was a
    UnicodeEncodeError traceback from pathlib (the file-name encoding is ASCII there); now one line and exit 2."""
    config = tmp_path / "config.yaml"
    config.write_text(STAGE1.read_text(encoding="utf-8").replace("name: tiny-stage1", "name: café-run"),
                      encoding="utf-8")
    assert "café-run" in config.read_text(encoding="utf-8")
    done = _run("-m", "sigma", "train", str(config), f"out_dir={tmp_path / 'runs'}")
    assert done.returncode == 2, done.stderr[-2000:]
    assert "Traceback" not in done.stderr, done.stderr[-2000:]
    line = done.stderr.strip()
    assert line.startswith("sigma: error [invalid_text]: ") and "\\xe9" in line and "PYTHONUTF8=1" in line, line
    assert len(done.stderr.splitlines()) == 1, done.stderr
