"""`sigma` under a low address-space limit (`ulimit -v`, RLIMIT_AS; a container's memory): one line, exit 2."""
from __future__ import annotations

import os
import subprocess
import sys

import pytest
from addresslimits import mapped_kb_after, small_changed_pair

# The real CLI (`main()` with the process's own argv) in a child whose RLIMIT_AS is set, once `sigma.cli` itself is
# imported, to what the child then maps plus a few MB: the next imports (pydantic's, numpy's or torch's libraries,
# or Python modules) or the image read are refused, as they are under `ulimit -v` (an absolute `ulimit -v` would
# depend on how large this machine's libraries are). No root needed.
CHILD = """
import resource, sys
import sigma.cli
size = next(int(line.split()[1]) * 1024 for line in open("/proc/self/status") if line.startswith("VmSize:"))
resource.setrlimit(resource.RLIMIT_AS, (size + int(sys.argv[1]) * 2**20, resource.getrlimit(resource.RLIMIT_AS)[1]))
sys.argv = ["sigma", *sys.argv[2:]]
sys.exit(sigma.cli.main())
"""


def _three_small_pairs(corpus):
    """A folder corpus of three 64x64 pairs, each with one changed square: the pairs a limit must not lose."""
    import numpy as np
    from PIL import Image

    corpus.mkdir()
    for i in range(3):
        small = np.full((64, 64, 3), 40 * i, np.uint8)
        Image.fromarray(small).save(corpus / f"p{i}_original.png")
        small[10:20, 10:20] = 255
        Image.fromarray(small).save(corpus / f"p{i}_edited.png")
    return corpus


@pytest.mark.parametrize("spare_mb", [4, 16, 32])
def test_memory_the_system_refuses_is_one_line_not_a_traceback(tmp_path, spare_mb):
    """Under `ulimit -v 800000` `sigma annotate` was an ImportError traceback (`libtorch_cpu.so: failed to map
    segment from shared object`), exit 1; a little higher, a MemoryError traceback reading the image; and with
    almost nothing left, the import of the error line's own helpers failed in its turn."""
    proc = subprocess.run([sys.executable, "-c", CHILD, str(spare_mb), "annotate", "--example", "--annotator",
                           "pixel-diff", "-o", str(tmp_path / "out")],
                          capture_output=True, text=True, timeout=120, check=False)
    assert proc.returncode == 2, proc.stderr[-3000:]
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("sigma: error [out_of_memory]: the system gave no more memory ("), \
        proc.stderr[-3000:]
    assert "ulimit -v" in lines[0]


# As CHILD, with the batch run's libraries mapped before the limit is set, so that only the pairs' decoding needs
# more; one malloc arena, or each thread's 64 MB arena would use the spare up before any image is read.
BATCH_CHILD = """
import resource, sys
import sigma.cli
import numpy, PIL.Image, pyarrow, pyarrow.parquet, torch, cv2
import sigma.batch.runner, sigma.batch.pipeline
size = next(int(line.split()[1]) * 1024 for line in open("/proc/self/status") if line.startswith("VmSize:"))
resource.setrlimit(resource.RLIMIT_AS, (size + int(sys.argv[1]) * 2**20, resource.getrlimit(resource.RLIMIT_AS)[1]))
sys.argv = ["sigma", *sys.argv[2:]]
sys.exit(sigma.cli.main())
"""


def _rows(out) -> dict[str, tuple[str, str | None]]:
    import pyarrow.parquet as pq

    return {row["pair_id"]: (row["status"], row["error_code"])
            for shard in sorted((out / "shards").glob("*.parquet")) for row in pq.read_table(shard).to_pylist()}


def test_memory_refused_decoding_a_pair_is_not_the_pairs_fault_and_resume_annotates_it(tmp_path):
    """A 6000x6000 pair (36 Mpx, within io.limits.max_pixels) whose decode the system refuses memory for (RLIMIT_AS
    250 MB above what the run's libraries map) was that pair's `image_unreadable` row, `unreadable or truncated image
    (MemoryError)`, in a published shard, exit 0: `--resume` with memory to spare said "all shards already done" and
    the good pair stayed bad for ever. Now its shard is not published (failed, or the run ends `out_of_memory`) and
    the resume annotates every pair."""
    import os

    import numpy as np
    from PIL import Image

    corpus, out = _three_small_pairs(tmp_path / "corpus"), tmp_path / "run"
    big = np.zeros((6000, 6000, 3), np.uint8)
    big[:3000] = 200
    Image.fromarray(big).save(corpus / "big_original.png")
    big[100:200, 100:200] = 9
    Image.fromarray(big).save(corpus / "big_edited.png")
    del big
    command = ["batch", "run", str(corpus), "--out", str(out), "--annotator", "pixel-diff", "--workers", "0",
               "--shard-size", "2"]
    limited = subprocess.run([sys.executable, "-c", BATCH_CHILD, "250", *command], capture_output=True, text=True,
                             timeout=300, check=False, env={**os.environ, "MALLOC_ARENA_MAX": "1"})
    assert limited.returncode in (1, 2), limited.stderr[-3000:]
    assert "Traceback" not in limited.stderr, limited.stderr[-3000:]
    assert "no more memory" in limited.stderr, limited.stderr[-3000:]
    assert "big" not in _rows(out), (_rows(out), limited.stderr[-3000:])    # no row vouches for the pair: not done
    resumed = subprocess.run([sys.executable, "-m", "sigma", *command, "--resume"], capture_output=True, text=True,
                             timeout=300, check=False)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert _rows(out) == {pair: ("ok", None) for pair in ("big", "p0", "p1", "p2")}


# As CHILD, with `sigma annotate`'s libraries mapped before the limit is set: only the image's decode needs more.
ANNOTATE_CHILD = """
import resource, sys
import sigma.cli
import numpy, PIL.Image, torch, cv2
import sigma.cli.annotate, sigma.io.images, sigma.io.pairs
size = next(int(line.split()[1]) * 1024 for line in open("/proc/self/status") if line.startswith("VmSize:"))
resource.setrlimit(resource.RLIMIT_AS, (size + int(sys.argv[1]) * 2**20, resource.getrlimit(resource.RLIMIT_AS)[1]))
sys.argv = ["sigma", *sys.argv[2:]]
sys.exit(sigma.cli.main())
"""


def big_pair(folder) -> tuple[str, str]:
    """A 6000x6000 pair (36 Mpx, within io.limits.max_pixels): 108 MB of pixels per image once decoded."""
    import numpy as np
    from PIL import Image

    big = np.zeros((6000, 6000, 3), np.uint8)
    big[:3000] = 200
    Image.fromarray(big).save(folder / "o.png")
    big[100:200, 100:200] = 9
    Image.fromarray(big).save(folder / "e.png")
    return str(folder / "o.png"), str(folder / "e.png")


def test_memory_refused_decoding_an_image_is_out_of_memory_not_the_files_fault(tmp_path):
    """`sigma annotate` of a good 36 Mpx pair with 250 MB of address space to spare: the image reader wrapped the
    decode's MemoryError as `image_unreadable: o.png: unreadable or truncated image (MemoryError)`, blaming the file.
    Now `out_of_memory`, one line, naming the file and saying it is not its fault."""
    import os

    original, edited = big_pair(tmp_path)
    proc = subprocess.run([sys.executable, "-c", ANNOTATE_CHILD, "250", "annotate", original, edited, "--annotator",
                           "pixel-diff", "-o", str(tmp_path / "out")], capture_output=True, text=True, timeout=300,
                          check=False, env={**os.environ, "MALLOC_ARENA_MAX": "1"})
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode == 2 and len(lines) == 1, proc.stderr[-3000:]
    assert lines[0].startswith("sigma: error [out_of_memory]: "), lines
    assert "o.png: the system gave no more memory to decode it" in lines[0] and "not the image's fault" in lines[0]


# As CHILD, with every sub-command's module imported (the parser built: torch, numpy, ...) before the limit is set:
# the next library to load is the command's optional extra, probed before any work (`sigma.cli.common.check_extras`).
EXTRAS_CHILD = """
import resource, sys
import sigma.cli
sigma.cli.build_parser()
size = next(int(line.split()[1]) * 1024 for line in open("/proc/self/status") if line.startswith("VmSize:"))
resource.setrlimit(resource.RLIMIT_AS, (size + int(sys.argv[1]) * 2**20, resource.getrlimit(resource.RLIMIT_AS)[1]))
sys.argv = ["sigma", *sys.argv[2:]]
sys.exit(sigma.cli.main())
"""


def test_an_installed_extra_the_system_gives_no_memory_to_load_is_out_of_memory_not_missing(tmp_path):
    """`sigma batch run` with pyarrow installed but no address space left to map it (`libarrow.so.2600: failed to map
    segment from shared object`) said `missing_extra: ... which this install lacks: pip install
    'sigma-masks[batch]'`: the user was sent to install what they have. Now the one `out_of_memory` line."""
    corpus = tmp_path / "corpus"
    corpus.mkdir()
    proc = subprocess.run([sys.executable, "-c", EXTRAS_CHILD, "8", "batch", "run", str(corpus), "--out",
                           str(tmp_path / "run"), "--annotator", "pixel-diff"],
                          capture_output=True, text=True, timeout=120, check=False)
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode == 2 and len(lines) == 1, proc.stderr[-3000:]
    assert lines[0].startswith("sigma: error [out_of_memory]: the system gave no more memory (loading a library: "), \
        lines


def test_threads_the_system_will_not_start_are_one_line_and_the_run_resumes(tmp_path):
    """`sigma batch run` where the system starts no more threads (here: `ulimit -s` of 1 GB, which every new thread's
    stack takes, with 200 MB of address space to spare; a `ulimit -u` or a container's pids limit does the same) was a
    `RuntimeError: can't start new thread` traceback from the shard writer, exit 1. Now one `out_of_threads` line,
    exit 2, and `--resume` with the limits lifted annotates every pair."""
    import os
    import resource


    corpus, out = _three_small_pairs(tmp_path / "corpus"), tmp_path / "run"
    command = ["batch", "run", str(corpus), "--out", str(out), "--annotator", "pixel-diff", "--workers", "0",
               "--no-progress"]

    def big_stacks() -> None:       # read by glibc at the child's start: the size of every thread's stack
        resource.setrlimit(resource.RLIMIT_STACK, (2**30, resource.getrlimit(resource.RLIMIT_STACK)[1]))

    # one thread for numpy's BLAS and torch: theirs, started while importing, would take 1 GB stacks each
    quiet = {"OPENBLAS_NUM_THREADS": "1", "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "MALLOC_ARENA_MAX": "1"}
    limited = subprocess.run([sys.executable, "-c", BATCH_CHILD, "200", *command], capture_output=True, text=True,
                             timeout=300, check=False, env={**os.environ, **quiet}, preexec_fn=big_stacks)
    lines = limited.stderr.strip().splitlines()
    assert limited.returncode == 2 and len(lines) == 1, limited.stderr[-3000:]
    assert lines[0].startswith("sigma: error [out_of_threads]: the system started no more threads"), lines
    resumed = subprocess.run([sys.executable, "-m", "sigma", *command, "--resume"], capture_output=True, text=True,
                             timeout=300, check=False)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert _rows(out) == {pair: ("ok", None) for pair in ("p0", "p1", "p2")}


def test_the_wording_of_memory_refused_has_one_owner():
    """"the system gave no more memory" was written in four places (the CLI's line, the image reader, a worker's
    decode outside it, a batch shard's failure), each its own copy that could drift: now `sigma.errors.no_memory`
    alone writes it, and the image reader and the worker build one error (`OutOfMemoryError.decoding`)."""
    from pathlib import Path

    from sigma.errors import OutOfMemoryError

    root = Path(__file__).resolve().parents[1]
    writers = sorted(str(path.relative_to(root)) for folder in ("sigma", "api", "workers")
                     for path in (root / folder).rglob("*.py")
                     if "the system gave no more memory" in path.read_text(encoding="utf-8"))
    assert writers == ["sigma/errors.py"], writers
    error = OutOfMemoryError.decoding("o.png", MemoryError())
    assert error.code == "out_of_memory"
    assert error.message == ("o.png: the system gave no more memory to decode it (MemoryError); not the image's "
                             "fault: retry with more memory free")


def test_an_os_error_of_memory_refused_is_out_of_memory_and_any_other_is_not(tmp_path):
    """`sigma serve api` under a low `ulimit -v` could fail importing uvicorn with `OSError: [Errno 12] Cannot
    allocate memory` (importlib's `os.listdir` of a folder on sys.path, whose opendir buffer was refused): the CLI
    said `os_error: Cannot allocate memory`, blaming no file but not saying memory either. ENOMEM is now the
    `out_of_memory` line; another OSError is still the CLI's `os_error` (its `_out_of_memory` says "")."""
    import mmap

    from sigma.cli import _out_of_memory
    from sigma.errors import memory_refused

    with pytest.raises(OSError) as refused:        # the system's own ENOMEM: 64 TiB of anonymous memory
        mmap.mmap(-1, 1 << 46)
    assert memory_refused(refused.value)
    line = _out_of_memory(refused.value)
    assert line.startswith("sigma: error [out_of_memory]: the system gave no more memory (Cannot allocate memory)")
    with pytest.raises(OSError) as missing:
        (tmp_path / "nope").read_bytes()
    assert not memory_refused(missing.value) and _out_of_memory(missing.value) == ""


def test_a_command_started_under_an_address_limit_never_dies_loading_opencvs_blas(tmp_path):
    """`sigma annotate --annotator pixel-diff` started under `prlimit --as` a few hundred MB (the limit set on the
    process before it runs, as a container or `ulimit -v` sets it) died in `import cv2`: OpenCV's OpenBLAS starts a
    thread per core as it loads, each reserving its buffer, and with the address space short it SIGSEGVs (a null
    allocator called when the thread's mmap is refused: exit -11, no message) or raises SIGINT on itself
    (`sigma: interrupted`, 130). Now a command under such a limit loads OpenBLAS with one thread: every limit from
    where the libraries no longer fit upward either annotates the pair or says `out_of_memory` in one line."""
    original, edited = small_changed_pair(tmp_path)
    base_kb = mapped_kb_after("sigma.cli")    # the interpreter and the CLI package: what any limit must leave room for
    outcomes = {}
    for spare_mb in range(250, 700, 25):
        limit = base_kb * 1024 + spare_mb * 2**20
        proc = subprocess.run(["prlimit", f"--as={limit}", sys.executable, "-m", "sigma", "annotate", original, edited,
                               "--annotator", "pixel-diff", "-o", str(tmp_path / f"out{spare_mb}")],
                              capture_output=True, text=True, timeout=120, check=False)
        outcomes[spare_mb] = proc.returncode
        assert proc.returncode in (0, 2), (spare_mb, proc.returncode, proc.stderr[-2000:])
        if proc.returncode == 2:
            lines = proc.stderr.strip().splitlines()
            assert len(lines) == 1 and lines[0].startswith("sigma: error [out_of_memory]:"), (spare_mb, proc.stderr)
        else:
            assert (tmp_path / f"out{spare_mb}" / "mask.png").exists()
    assert 0 in outcomes.values(), outcomes          # the sweep reached limits the command runs under


def test_memory_opencv_is_refused_reading_a_16_bit_pair_is_out_of_memory_not_a_traceback(tmp_path):
    """A 16-bit PNG's samples are read whole by OpenCV, whose refused allocation is a `cv2.error` "(-4:Insufficient
    memory)", not a MemoryError: `sigma annotate` of a 9-megapixel 16-bit pair under `prlimit --as` (540-620 MB
    here) ended in that traceback, exit 1. Now it is `out_of_memory`, naming the image, at every limit of the sweep;
    and with room the pair is annotated."""
    import cv2
    import numpy as np

    ramp = (np.indices((3000, 3000)).sum(0) % 256).astype(np.uint16) * 257
    picture = np.stack([ramp, ramp[::-1], ramp.T], 2)
    assert cv2.imwrite(str(tmp_path / "o.png"), picture, [cv2.IMWRITE_PNG_COMPRESSION, 1])
    picture[100:300, 100:300] = 0
    assert cv2.imwrite(str(tmp_path / "e.png"), picture, [cv2.IMWRITE_PNG_COMPRESSION, 1])
    base_kb = mapped_kb_after("sigma.cli")
    outcomes = {}
    for spare_mb in (*range(320, 700, 30), 1200):
        limit = base_kb * 1024 + spare_mb * 2**20
        proc = subprocess.run(["prlimit", f"--as={limit}", sys.executable, "-m", "sigma", "annotate",
                               str(tmp_path / "o.png"), str(tmp_path / "e.png"), "--annotator", "pixel-diff",
                               "-o", str(tmp_path / f"out{spare_mb}")],
                              capture_output=True, text=True, timeout=120, check=False)
        outcomes[spare_mb] = proc.returncode
        assert proc.returncode in (0, 2) and "Traceback" not in proc.stderr, (spare_mb, proc.stderr[-2000:])
        if proc.returncode == 2:
            lines = proc.stderr.strip().splitlines()
            assert len(lines) == 1 and lines[0].startswith("sigma: error [out_of_memory]:"), (spare_mb, proc.stderr)
    assert outcomes[1200] == 0, outcomes


# A child that builds an annotator whose load fails as oneDNN does (torch's RuntimeError "could not create a
# primitive", oneDNN's one message whatever its status) under a real RLIMIT_AS of what it maps plus argv[1] MB, or
# with no limit at all (argv[1] "none"), and prints the code the registry gave it; with an argv[2], the load fails
# with CPython's SystemError instead.
ONEDNN_CHILD = """
import resource, sys
from sigma.errors import SigmaError
from sigma.registry import ANNOTATORS, Entry, create_annotator
def primitive_refused(**options):
    raise (SystemError("error return without exception set") if len(sys.argv) > 2 else
           RuntimeError("could not create a primitive"))
ANNOTATORS._entries["dnnl"] = Entry("dnnl", primitive_refused, "test only", lambda: "none")
try:
    create_annotator("dnnl")       # once with room: the registry's own imports are done before the limit
except SigmaError:
    pass
if sys.argv[1] != "none":
    size = next(int(line.split()[1]) * 1024 for line in open("/proc/self/status") if line.startswith("VmSize:"))
    resource.setrlimit(resource.RLIMIT_AS, (size + int(sys.argv[1]) * 2**20, resource.getrlimit(resource.RLIMIT_AS)[1]))
try:
    create_annotator("dnnl")
except SigmaError as exc:
    print("RESULT", exc.code, exc.message)
"""


@pytest.mark.parametrize(("spare", "code"), [("8", "out_of_memory"), ("2048", "annotator_failed"),
                                             ("none", "annotator_failed")])
def test_onednns_could_not_create_a_primitive_is_out_of_memory_only_near_the_address_limit(spare, code):
    """Under `prlimit --as` 950-990 MB `sigma annotate --annotator sigma-lite` said `annotator_failed: ... could not be
    built: RuntimeError: could not create a primitive` (its process had 0.2 MB left under the limit): oneDNN's words
    for any failed status, out of memory among them. Now `out_of_memory` within 64 MB of a real address-space limit,
    and still the annotator's fault with room left or no limit (`sigma.errors.onednn_memory_refused`)."""
    proc = subprocess.run([sys.executable, "-c", ONEDNN_CHILD, spare], capture_output=True, text=True, timeout=120,
                          check=False)
    said = [line for line in proc.stdout.splitlines() if line.startswith("RESULT")]
    assert said and said[0].split()[1] == code, (proc.stdout[-2000:], proc.stderr[-3000:])
    if code == "out_of_memory":
        assert "could not create a primitive, with under 64 MB of address space left" in said[0], said
    else:
        assert "RuntimeError: could not create a primitive" in said[0], said


# A child that builds a torch annotator (sigma.annotators.torch_base.TorchAnnotator, as sigma-lite and feature-diff
# are) under a real RLIMIT_AS of what it maps plus argv[1] MB, then loads as they do: a parallel op (more than one
# grain of elements, so torch's OpenMP pool starts its second thread there unless it already has).
THREADS_CHILD = """
import resource, sys
import torch
from sigma.annotators.torch_base import TorchAnnotator
from sigma.errors import OutOfMemoryError
class Tiny(TorchAnnotator):
    name = "tiny"
    def working_size(self, pair):
        return pair.size
    def _forward(self, original, edited, pairs, contexts):
        return original[:, :1]
torch.set_num_threads(1)
Tiny(cpu_threads=1)                    # with room: every import done, the pool still one thread
torch.ones(2 ** 18).add_(1)
size = next(int(line.split()[1]) * 1024 for line in open("/proc/self/status") if line.startswith("VmSize:"))
resource.setrlimit(resource.RLIMIT_AS, (size + int(sys.argv[1]) * 2**20, resource.getrlimit(resource.RLIMIT_AS)[1]))
try:
    Tiny(cpu_threads=2)
    torch.ones(2 ** 18).mul_(3)        # the load's first parallel op
    print("RESULT ok", flush=True)
except OutOfMemoryError as exc:
    print("RESULT out_of_memory", exc.message, flush=True)
except RuntimeError as exc:            # torch's own refusal of the op's tensor: said, not fatal
    print("RESULT refused", exc, flush=True)
"""


@pytest.mark.parametrize("spare_mb", [6, 8, 10])
def test_torch_threads_the_limit_leaves_no_room_for_are_out_of_memory_not_libgomps_exit(spare_mb):
    """`sigma annotate --annotator sigma-lite` under `prlimit --as` 875-880 MB ended with `libgomp: Thread creation
    failed: Resource temporarily unavailable`, exit 1, no sigma line: torch's OpenMP pool started its thread in the
    model's load, the stack was refused, and libgomp ends the process (glibc's `cannot allocate memory for
    thread-local data`, 127, is the same end). A torch annotator now starts the pool as it is built, once it found
    the address space free (`sigma.annotators.thread_room`): `out_of_memory` when it is not. Here 6-10 MB spare:
    less than a thread's 8 MB stack and its slack, which is where libgomp ended the child."""
    proc = subprocess.run([sys.executable, "-c", THREADS_CHILD, str(spare_mb)], capture_output=True, text=True,
                          timeout=120, check=False, env={**os.environ, "OMP_NUM_THREADS": "2"})
    assert "libgomp" not in proc.stderr and proc.returncode == 0, (proc.returncode, proc.stderr[-3000:])
    said = [line for line in proc.stdout.splitlines() if line.startswith("RESULT")]
    assert said and said[0].startswith("RESULT out_of_memory starting torch's 2 threads: the system gave no more "
                                       "memory for their "), said


@pytest.mark.parametrize(("spare", "code"), [("8", "out_of_memory"), ("none", "annotator_failed")])
def test_a_system_error_near_the_address_limit_is_out_of_memory_and_elsewhere_the_annotators(spare, code):
    """CPython's SystemError of an extension whose allocation failed without a MemoryError (`error return without
    exception set`, `_find_and_load ... returned a result with an exception set`) made `sigma annotate --annotator
    sigma-lite` under `prlimit --as` 860-865 MB say `annotator_failed`. Now `out_of_memory` within 64 MB of a real
    address-space limit (`sigma.errors.system_error_under_pressure`); with no limit still the annotator's error."""
    proc = subprocess.run([sys.executable, "-c", ONEDNN_CHILD, spare, "system"], capture_output=True, text=True,
                          timeout=120, check=False)
    said = [line for line in proc.stdout.splitlines() if line.startswith("RESULT")]
    assert said and said[0].split()[1] == code, (proc.stdout[-2000:], proc.stderr[-3000:])
    assert "SystemError: error return without exception set" in said[0], said


def test_a_command_under_an_address_limit_gives_opencv_one_thread():
    """sigma-lite under `prlimit --as` 914-920 MB annotated the pair but printed OpenCV's `[ERROR:0@14.2] global
    parallel_impl.cpp:246 WorkerThread 0: Can't spawn new thread: res = 11` into its output: its pool's threads
    (a stack of 8 MB each) found no room. Under an address-space limit OpenCV now loads with one thread, which starts
    none, as OpenBLAS does; a value the user set is kept."""
    script = ("import os, sys; import sigma.cli, cv2; "
              "print(os.environ.get('OPENCV_FOR_THREADS_NUM'), cv2.getNumThreads())")
    env = {k: v for k, v in os.environ.items() if k != "OPENCV_FOR_THREADS_NUM"}
    limited = subprocess.run(["prlimit", f"--as={8 * 2**30}", sys.executable, "-c", script],
                             capture_output=True, text=True, timeout=120, check=True, env=env)
    assert limited.stdout.split() == ["1", "1"], limited.stdout + limited.stderr
    chosen = subprocess.run(["prlimit", f"--as={8 * 2**30}", sys.executable, "-c", script], capture_output=True,
                            text=True, timeout=120, check=True, env={**env, "OPENCV_FOR_THREADS_NUM": "2"})
    assert chosen.stdout.split()[0] == "2", chosen.stdout + chosen.stderr
