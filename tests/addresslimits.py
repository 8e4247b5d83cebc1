"""Set-up shared by the tests that start `sigma` under an address-space limit (`prlimit --as`): a small pair and what
a child maps before its work, the base such a limit is set above."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path


def small_changed_pair(folder: Path) -> tuple[str, str]:
    """Paths of a 64x64 grey pair written in `folder` (`o.png`, `e.png`) whose edit is one bright 10x10 square."""
    import numpy as np
    from PIL import Image

    picture = np.full((64, 64, 3), 90, np.uint8)
    Image.fromarray(picture).save(folder / "o.png")
    picture[10:20, 10:20] = 250
    Image.fromarray(picture).save(folder / "e.png")
    return str(folder / "o.png"), str(folder / "e.png")


def mapped_kb_after(imports: str, env: dict[str, str] | None = None) -> int:
    """VmSize (KiB) of a fresh interpreter once it has imported `imports` (a comma-separated list of modules)."""
    probe = subprocess.run([sys.executable, "-c", f"import {imports}; print(next(int(line.split()[1]) for line in "
                            "open('/proc/self/status') if line.startswith('VmSize:')))"],
                           capture_output=True, text=True, timeout=60, check=True, env={**os.environ, **(env or {})})
    return int(probe.stdout)
