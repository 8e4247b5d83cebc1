"""The training's own pairs/s from a `sigma train` log: the rate between the middle and the last `step` lines.

Why: the trainer logs a cumulative rate (pairs since the start over time since the start), which counts the data
workers' start and the first steps' compilation; a time-limited slot (`scripts/gpu_trial.sh`) wants the steady
rate. With cumulative rate r_k at step k and batch B, t_k = k·B / r_k, so the steady rate between steps a and b is
(b − a)·B / (t_b − t_a). Prints one number (pairs/s) on the last line, nothing when the log has under two lines.

    python scripts/probe_rate.py probe.log 64
"""
from __future__ import annotations

import re
import sys

_STEP = re.compile(r"^step (\d+)/\d+ .*?([0-9.]+) pairs/s")


def steady_rate(lines: list[str], batch: int) -> float | None:
    points = [(int(m.group(1)), float(m.group(2))) for m in map(_STEP.match, lines) if m and float(m.group(2)) > 0]
    if len(points) < 2:
        return None
    (a, ra), (b, rb) = points[len(points) // 2 - (len(points) % 2 == 0)], points[-1]
    if b <= a:
        return None
    elapsed = b * batch / rb - a * batch / ra
    return (b - a) * batch / elapsed if elapsed > 0 else None


def main(argv: list[str]) -> int:
    if len(argv) != 2 or argv[0] in ("-h", "--help"):
        print(__doc__)
        return 0 if argv[:1] in (["-h"], ["--help"]) else 2
    with open(argv[0], encoding="utf-8", errors="replace") as f:
        rate = steady_rate(f.read().splitlines(), int(argv[1]))
    if rate is None:
        print("no steady rate: fewer than two step lines", file=sys.stderr)
        return 1
    print(f"{rate:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
