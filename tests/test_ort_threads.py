"""ONNX Runtime's intra-op threads under an address-space limit: a real ORT session in a child process whose
RLIMIT_AS leaves too little room for its pool."""
from __future__ import annotations

import subprocess
import sys
import textwrap

import pytest

pytest.importorskip("onnxruntime")
pytest.importorskip("onnx")

CHILD = textwrap.dedent("""
    import re, resource, sys
    import numpy as np
    import onnx
    import onnxruntime  # noqa: F401 - loaded before the limit: the pool is what is measured
    from onnx import TensorProto, helper
    import sigma.runtime.threads  # noqa: F401 - loaded before the limit, as an annotator has it
    from sigma.errors import OutOfMemoryError
    from sigma.runtime.ort_graph import make_session

    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [None])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [None])
    model = helper.make_model(helper.make_graph([helper.make_node("Relu", ["x"], ["y"])], "g", [x], [y]),
                              opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save(model, sys.argv[1])
    size = int(re.search(r"VmSize:\\s+(\\d+)", open("/proc/self/status").read()).group(1)) * 1024
    resource.setrlimit(resource.RLIMIT_AS, (size + 40 * 2**20, resource.RLIM_INFINITY))
    try:
        session = make_session(sys.argv[1], 8)
        print("RESULT ok", session.run(None, {"x": np.ones(3, np.float32)})[0].tolist(), flush=True)
    except OutOfMemoryError as exc:
        print("RESULT out_of_memory", exc.message, flush=True)
""")


def test_ort_threads_the_limit_leaves_no_room_for_are_out_of_memory_not_a_hang(tmp_path):
    """An ORT session of 8 intra-op threads made with 40 MB of address space left hung for ever in its constructor
    (a thread of its pool refused; with 50 MB, glibc's `cannot allocate memory for thread-local data`, exit 127).
    The room for the threads' stacks is now checked first, as torch's are: `out_of_memory`, naming ORT."""
    try:
        proc = subprocess.run([sys.executable, "-c", CHILD, str(tmp_path / "relu.onnx")], capture_output=True,
                              text=True, timeout=90, check=False)
    except subprocess.TimeoutExpired:
        pytest.fail("making the ORT session under the limit hung")
    said = [line for line in proc.stdout.splitlines() if line.startswith("RESULT")]
    assert said and said[0].startswith("RESULT out_of_memory starting ONNX Runtime's 8 threads: the system gave no "
                                       "more memory for their "), (said, proc.stderr[-2000:])


def test_without_a_limit_ort_keeps_its_own_thread_count():
    from sigma.runtime.threads import ort_threads_with_room

    assert ort_threads_with_room(None) is None and ort_threads_with_room(3) == 3
