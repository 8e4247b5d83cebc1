"""Where a config value came from, and what it holds, said so the user can find and see it.

The service's unused-settings warning read its settings file once per setting it named; text values from the
environment, `--set` and YAML that end in a carriage return (a CRLF env file) were taken with the `\\r`; value errors
did not show the value, so an invisible character (a BOM, a zero-width space) in it could not be seen; and a NUL byte
in a file or a `--set` value was said without the file (and line) or the argument. Real files, the real CLI.
"""
from __future__ import annotations

import os
import sys

from sigma.cli.serve import warn_unused_settings
from sigma.service.settings import load_serve_config

_opened: list[str] = []


def _count_opens(event: str, args: tuple) -> None:
    if event == "open" and args and isinstance(args[0], (str, bytes, os.PathLike)):
        _opened.append(os.fsdecode(args[0]))


sys.addaudithook(_count_opens)      # a real open() of the real file, counted by Python's own audit events


def test_the_unused_settings_warning_reads_the_settings_file_once(tmp_path, capsys):
    """Six settings a batch worker does not use, from one file: the warning opened the file once per setting (seven
    opens with the load's), each able to find another file than the one loaded. Now once for the whole warning."""
    path = tmp_path / "serve.yaml"
    path.write_text("worker:\n  max_wait_ms: 7\n  max_batch_size: 3\n  load_retry_s: 9\n  decode_pool_retry_s: 4\n"
                    "api:\n  wait_timeout_s: 9\nlimits:\n  max_queue_length: 7\n")
    cfg = load_serve_config(str(path), env={})
    _opened.clear()
    warn_unused_settings("sigma worker --batch", cfg, str(path))
    reads = [name for name in _opened if name == str(path)]
    err = capsys.readouterr().err
    assert err.count("sigma: warning: sigma worker --batch does not use") == 3, err
    assert err.count(f"(from {path})") == 3, err
    assert len(reads) == 1, reads
