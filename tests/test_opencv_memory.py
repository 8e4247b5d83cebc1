"""OpenCV refusing memory (`cv2.error`, code StsNoMem: "(-4:Insufficient memory)", an Exception and not a
MemoryError) anywhere in a command's work, not only in the image reader: `sigma annotate` of a 6000x6000 composite
pair under `prlimit --as` ~1.6 GB ended in a traceback from `footprint.residual_map`'s `cv2.absdiff`, exit 1. Now
the CLI says `out_of_memory` in one line, and a batch run fails the shard unpublished (no pair's error row for good)
so `--resume` with more memory annotates it. The OpenCV call here is a plugin's resize of its probability map to a
size given by `$SIGMA_TEST_CV_HUGE` (as a model resizes its map to the image's), under a real RLIMIT_AS."""
from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import numpy as np
import pyarrow.parquet as pq
import pytest
from PIL import Image

PLUGIN = textwrap.dedent('''
    import os

    import cv2

    from sigma.annotators.pixel_diff import PixelDiff, PixelDiffConfig
    from sigma.registry import ANNOTATORS


    class CvHugeDiff(PixelDiff):
        name = "cv-huge-diff"

        def _predict_batch(self, pairs):
            side = int(os.environ.get("SIGMA_TEST_CV_HUGE", "0"))
            results = super()._predict_batch(pairs)
            for pair in pairs:
                if side and "torch" in (pair.instruction or ""):    # torch's: a RuntimeError "can't allocate memory"
                    import torch

                    torch.ones((side, side))
                elif side and "huge" in (pair.instruction or ""):
                    cv2.resize(results[0][0].astype("float32"), (side, side))   # side*side*4 bytes
            return results


    ANNOTATORS.register("cv-huge-diff", "test only: pixel-diff resizing its map to $SIGMA_TEST_CV_HUGE squared",
                        config_cls=PixelDiffConfig)(lambda **kw: CvHugeDiff(**kw))
''')

# The real CLI in a child whose RLIMIT_AS is set, once its libraries are mapped, to what it maps plus 600 MB: the
# plugin's 6.4 GB resize is refused by the system, whatever this machine's libraries weigh.
CHILD = """
import resource, sys
import sigma.cli
import numpy, PIL.Image, cv2, pyarrow, pyarrow.parquet, torch
import sigma.batch.runner, sigma.batch.pipeline, sigma.cli.annotate
size = next(int(line.split()[1]) * 1024 for line in open("/proc/self/status") if line.startswith("VmSize:"))
resource.setrlimit(resource.RLIMIT_AS, (size + 600 * 2**20, resource.getrlimit(resource.RLIMIT_AS)[1]))
sys.argv = ["sigma", *sys.argv[1:]]
sys.exit(sigma.cli.main())
"""


def _env(tmp_path, huge: bool) -> dict[str, str]:
    (tmp_path / "cv_huge_plugin.py").write_text(PLUGIN, encoding="utf-8")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(tmp_path), os.environ.get("PYTHONPATH", "")]),
           "MALLOC_ARENA_MAX": "1", "OPENBLAS_NUM_THREADS": "1"}
    if huge:
        env["SIGMA_TEST_CV_HUGE"] = "40000"
    return env


def _pair(folder, stem: str, shade: int) -> None:
    picture = np.full((64, 64, 3), shade, np.uint8)
    Image.fromarray(picture).save(folder / f"{stem}_original.png")
    picture[10:20, 10:20] = 255
    Image.fromarray(picture).save(folder / f"{stem}_edited.png")


@pytest.mark.parametrize(("instruction", "said"), [("make it huge", "Insufficient memory"),
                                                   ("torch huge", "can't allocate memory")])
def test_a_library_refusing_memory_in_a_commands_work_is_one_out_of_memory_line(tmp_path, instruction, said):
    """OpenCV's cv2.error, and torch's RuntimeError `DefaultCPUAllocator: can't allocate memory` (a traceback of
    `sigma annotate` with sigma-lite under `prlimit --as` 0.9 GB): the one `out_of_memory` line."""
    _pair(tmp_path, "p", 40)
    proc = subprocess.run([sys.executable, "-c", CHILD, "annotate", str(tmp_path / "p_original.png"),
                           str(tmp_path / "p_edited.png"), "-i", instruction, "--plugin", "cv_huge_plugin",
                           "--annotator", "cv-huge-diff", "-o", str(tmp_path / "out")],
                          capture_output=True, text=True, timeout=300, check=False, env=_env(tmp_path, huge=True))
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode == 2 and len(lines) == 1, proc.stderr[-3000:]
    assert lines[0].startswith("sigma: error [out_of_memory]: the system gave no more memory ("), lines
    assert said in lines[0] and "ulimit -v" in lines[0], lines


def _rows(out) -> dict[str, tuple[str, str | None]]:
    return {row["pair_id"]: (row["status"], row["error_code"])
            for shard in sorted((out / "shards").glob("*.parquet")) for row in pq.read_table(shard).to_pylist()}


def test_opencv_refusing_memory_to_a_batch_pair_fails_its_shard_and_resume_annotates_it(tmp_path):
    """The pair whose model step OpenCV refused memory was that pair's `annotator_failed` row ("error: Insufficient
    memory") in a published shard: `--resume` with memory to spare never redid it."""
    corpus, out = tmp_path / "corpus", tmp_path / "run"
    corpus.mkdir()
    for i, stem in enumerate(("a", "b", "c")):
        _pair(corpus, stem, 40 * i)
    (corpus / "instructions.json").write_text('{"b": "make it huge"}', encoding="utf-8")
    command = ["batch", "run", str(corpus), "--out", str(out), "--plugin", "cv_huge_plugin", "--annotator",
               "cv-huge-diff", "--workers", "0", "--no-progress"]
    limited = subprocess.run([sys.executable, "-c", CHILD, *command], capture_output=True, text=True, timeout=300,
                             check=False, env=_env(tmp_path, huge=True))
    assert "Traceback" not in limited.stderr, limited.stderr[-3000:]
    assert limited.returncode != 0 and "no more memory" in limited.stderr, limited.stderr[-3000:]
    assert "b" not in _rows(out), (_rows(out), limited.stderr[-3000:])
    resumed = subprocess.run([sys.executable, "-m", "sigma", *command, "--resume"], capture_output=True, text=True,
                             timeout=300, check=False, env=_env(tmp_path, huge=False))
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert _rows(out) == {pair: ("ok", None) for pair in ("a", "b", "c")}


def test_a_workers_job_refused_memory_by_torch_is_out_of_memory_not_model_error():
    """torch's allocator refusing memory is a RuntimeError "DefaultCPUAllocator: can't allocate memory", not a
    MemoryError: a worker recorded such a job `model_error` (the model blamed, no redelivery as a shortage). Here a
    real refusal: 16 TiB asked of the allocator."""
    import torch

    from sigma.service.annotation import error_record

    with pytest.raises(RuntimeError) as refused:
        torch.empty((1 << 42,))
    assert error_record(refused.value)["code"] == "out_of_memory"
    assert error_record(RuntimeError("model crashed"))["code"] == "model_error"
