"""Where a config value came from, and what it holds, said so the user can find and see it.

The service's unused-settings warning read its settings file once per setting it named; text values from the
environment, `--set` and YAML that end in a carriage return (a CRLF env file) were taken with the `\\r`; value errors
did not show the value, so an invisible character (a BOM, a zero-width space) in it could not be seen; and a NUL byte
in a file or a `--set` value was said without the file (and line) or the argument. Real files, the real CLI.
"""
from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
from servicekit import TESTS, base_env

from sigma.cli.serve import warn_unused_settings
from sigma.errors import ConfigError
from sigma.service.settings import load_serve_config

# the list each open()'s path is appended to while a test counts opens, else none. An audit hook cannot be removed:
# installed at import and recording always, it kept every path any later test of the process opened (the whole
# suite's, since pytest imports every module first), and test_export_coco_images' memory bound failed after it
_counting: list[list[str]] = []
_hooked = False


def _count_opens(event: str, args: tuple) -> None:
    if _counting and event == "open" and args and isinstance(args[0], (str, bytes, os.PathLike)):
        _counting[-1].append(os.fsdecode(args[0]))


@contextmanager
def opens_counted() -> Iterator[list[str]]:
    """The paths opened (Python's own `open` audit events) inside the block."""
    global _hooked
    if not _hooked:
        sys.addaudithook(_count_opens)
        _hooked = True
    opened: list[str] = []
    _counting.append(opened)
    try:
        yield opened
    finally:
        _counting.remove(opened)


def test_the_unused_settings_warning_reads_the_settings_file_once(tmp_path, capsys):
    """Six settings a batch worker does not use, from one file: the warning opened the file once per setting (seven
    opens with the load's), each able to find another file than the one loaded. Now once for the whole warning."""
    path = tmp_path / "serve.yaml"
    path.write_text("worker:\n  max_wait_ms: 7\n  max_batch_size: 3\n  load_retry_s: 9\n  decode_pool_retry_s: 4\n"
                    "api:\n  wait_timeout_s: 9\nlimits:\n  max_queue_length: 7\n")
    cfg = load_serve_config(str(path), env={})
    with opens_counted() as opened:
        warn_unused_settings("sigma worker --batch", cfg, str(path))
    reads = [name for name in opened if name == str(path)]
    err = capsys.readouterr().err
    assert err.count("sigma: warning: sigma worker --batch does not use") == 3, err
    assert err.count(f"(from {path})") == 3, err
    assert len(reads) == 1, reads


def sigma(*args: str, env: dict[str, str] | None = None, cwd: Path | None = None) -> subprocess.CompletedProcess:
    """The real CLI; Redis unreachable, so a config that loads would wait for it (the timeout then fails the test)."""
    return subprocess.run([sys.executable, "-m", "sigma", *args], capture_output=True, text=True, timeout=60,
                          env={**base_env("redis://127.0.0.1:1/0"), **(env or {})}, cwd=str(cwd or TESTS.parent),
                          check=False)


def refused(proc: subprocess.CompletedProcess, code: str = "invalid_config") -> str:
    assert proc.returncode == 2, (proc.returncode, proc.stderr[-2000:])
    assert proc.stderr.startswith(f"sigma: error [{code}]: ") and proc.stderr.count("\n") == 1, proc.stderr
    return proc.stderr


def test_a_nul_byte_is_said_with_the_file_and_line_or_the_argument_it_came_from(tmp_path):
    """`"a\\0b"` on line 3 of a settings file was "queue.group: holds a NUL byte", naming no file; a `--set` value
    likewise named no argument; a raw NUL byte was "(... in "<unicode string>", position 17)". Now the file and its
    line, the argument as typed, the file and line and column."""
    escaped = tmp_path / "escaped.yaml"
    escaped.write_text('queue:\n  lease_ms: 9000\n  group: "a\\0b"\n')
    err = refused(sigma("worker", "--config", str(escaped)))
    assert f"[invalid_config]: {escaped}, line 3: queue.group: holds a NUL byte ('a\\x00b')" in err, err
    err = refused(sigma("worker", env={"SIGMA_SERVE_CONFIG": str(escaped)}))
    assert f"{escaped} (SIGMA_SERVE_CONFIG), line 3: queue.group: holds a NUL byte" in err, err
    annotate = tmp_path / "annotate.yaml"
    annotate.write_text('io:\n  align: false\nannotator: "pix\\0el"\n"k\\0": 1\n')
    err = refused(sigma("annotate", "a.png", "b.png", "-i", "x", "-o", str(tmp_path / "o"), "--config", str(annotate)))
    assert f"{annotate}, line 3: annotator: holds a NUL byte" in err and f"{annotate}, line 4: 'k\\x00'" in err, err
    err = refused(sigma("worker", "--set", 'queue.group="a\\0b"'))
    assert "[invalid_config]: override queue.group=\"a\\0b\": queue.group: holds a NUL byte" in err, err
    raw = tmp_path / "raw.yaml"
    raw.write_bytes(b"queue:\n  group: a\0b\n")
    err = refused(sigma("worker", "--config", str(raw)))
    assert f"{raw}: not valid YAML at line 2, column 11 (unacceptable character #x0000 (a NUL byte): " in err, err
    assert "<unicode string>" not in err and "position" not in err, err


CR = "holds a carriage return at its end ('g\\r'); no setting's text ends in one (a line end of a file saved with " \
     "Windows line ends, CRLF?): remove it"


def test_a_text_ending_in_a_carriage_return_is_refused_from_every_source(tmp_path):
    """`SIGMA__QUEUE__GROUP=$'g\\r'` (an env file saved with CRLF, sourced by a shell) ran a worker in the consumer
    group 'g\\r', not 'g'; `--set` and a flag the same. Refused, naming where, from every source alike; a CRLF file
    and a number with a CR (YAML reads the CR as a line end) load as before."""
    err = refused(sigma("worker", env={"SIGMA__QUEUE__GROUP": "g\r"}))
    assert err == f"sigma: error [invalid_config]: SIGMA__QUEUE__GROUP: queue.group: {CR}\n", err
    err = refused(sigma("worker", "--set", "queue.group=g\r"))
    assert err == f"sigma: error [invalid_config]: override queue.group=g\\r: queue.group: {CR}\n", err
    err = refused(sigma("worker", "--consumer", "g\r"), code="bad_arguments")
    assert err == f"sigma: error [bad_arguments]: --consumer: worker.consumer: {CR}\n", err
    escaped = tmp_path / "cr.yaml"
    escaped.write_text('queue:\n  group: "g\\r"\n')
    err = refused(sigma("worker", "--config", str(escaped)))
    assert err == f"sigma: error [invalid_config]: {escaped}, line 2: queue.group: {CR}\n", err
    crlf = tmp_path / "crlf.yaml"
    crlf.write_bytes(b"queue:\r\n  group: g\r\n  lease_ms: 9000\r\n")
    cfg = load_serve_config(str(crlf), env={"SIGMA__QUEUE__BLOCK_MS": "700\r"})
    assert (cfg.queue.group, cfg.queue.lease_ms, cfg.queue.block_ms) == ("g", 9000, 700)


@pytest.mark.parametrize("argument, said", [
    ("threshold=0.\ufeff1", "threshold: Input should be a valid number, unable to parse string as a number (the value "
                            "is '0.\\ufeff1': it holds U+FEFF ZERO WIDTH NO-BREAK SPACE, which does not show)"),
    ("io.align=tr\u200bue", "io.align: Input should be a valid boolean, unable to interpret input (the value is "
                            "'tr\\u200bue': it holds U+200B ZERO WIDTH SPACE, which does not show)"),
    ("batch_size=1\ufeff0\x01", "batch_size: Input should be a valid integer, unable to parse string as an "
                                "integer (the value is '1\\ufeff0\\x01': it holds U+FEFF ZERO WIDTH NO-BREAK SPACE, "
                                "U+0001 a control character, which do not show)"),
])
def test_a_value_error_shows_the_characters_that_do_not_show(tmp_path, argument, said):
    """A BOM inside a number (pasted from a file a Windows editor saved) was "threshold: Input should be a valid
    number, unable to parse string as a number": the value was not shown, and what the user looked at read as a
    number. Now the value, escaped, and each invisible character named."""
    err = refused(sigma("annotate", "a.png", "b.png", "-i", "x", "-o", str(tmp_path / "o"), "--set", argument))
    assert err == f"sigma: error [invalid_config]: invalid AnnotateConfig: {said}\n", err


def test_an_unknown_section_from_the_environment_names_its_variable():
    """`SIGMA__BOGUS__X=1` was "invalid ServeConfig: bogus: Extra inputs are not permitted", the one error of a
    variable's value said without the variable (`SIGMA__QUEUE__LEASEMS` names it): the user looked for `bogus` in the
    config file. A section a file gives too is left unnamed (the file is as much its source)."""
    with pytest.raises(ConfigError) as caught:
        load_serve_config(env={"SIGMA__BOGUS__X": "1", "SIGMA__BOGUS__Y": "2"})
    assert caught.value.message == ("invalid ServeConfig: SIGMA__BOGUS__X, SIGMA__BOGUS__Y: bogus: Extra inputs are "
                                    "not permitted"), caught.value.message
    with pytest.raises(ConfigError) as caught:
        load_serve_config(env={"SIGMA__QUEUEE__LEASE_MS": "1"})
    assert caught.value.message == ("invalid ServeConfig: SIGMA__QUEUEE__LEASE_MS: queuee: Extra inputs are not "
                                    "permitted (did you mean 'queue'?)"), caught.value.message


def test_a_config_of_many_refused_values_is_refused_in_seconds(tmp_path):
    """20000 options holding a NUL byte (a 500 KB file, inside the 4 MiB bound) took 8 minutes to be refused: each of
    pydantic's errors was compared with each of the loader's problems. Now within the CLI's timeout, one line."""
    many = tmp_path / "many.yaml"
    many.write_text("options:\n" + "".join(f'  k{i}: "v\\0"\n' for i in range(20000)))
    err = refused(sigma("annotate", "a.png", "b.png", "-i", "x", "-o", str(tmp_path / "o"), "--config", str(many)))
    assert f"{many}, line 2: options.k0: holds a NUL byte" in err, err[:500]
    assert f"{many}, line 3: options.k1: holds a NUL byte" in err, err[:500]    # each value's own line


def test_a_value_is_said_at_its_own_line_among_equal_values(tmp_path):
    """The line of a refused value was looked up by its text: of two options holding the same "v\\0", both were said
    at the line of the last one. Now each at its own."""
    two = tmp_path / "two.yaml"
    two.write_text('options:\n  k0: "v\\0"\n  k1: "v\\0"\n  k2: x\n')
    err = refused(sigma("annotate", "a.png", "b.png", "-i", "x", "-o", str(tmp_path / "o"), "--config", str(two)))
    assert f"{two}, line 2: options.k0: holds a NUL byte" in err and f"{two}, line 3: options.k1: holds" in err, err
