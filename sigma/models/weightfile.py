"""A safetensors file streamed into exactly the path it is given, byte for byte what `safetensors.torch.save_file`
writes.

Why not `save_file` itself: since safetensors 0.7 it writes through a temporary file of its own beside the target
(`.tmpXXXXXX`, Rust's tempfile crate) and renames that at the end. A process killed mid-write (the OOM killer, a
scheduler's SIGKILL, a file-size limit) left that file, the size of the weights, in the model folder for good: it
holds no pid, so no sweep of `sigma.tempfiles` may tell a dead writer's from a live one's. Written here, the bytes go
into the caller's own temporary name (`temp_name`, swept once its writer is dead), one tensor at a time from its
memory (no second copy of the weights, as `save_file` streams them too)."""
from __future__ import annotations

import json
import struct
from pathlib import Path

import torch

# safetensors' dtype names, in its order of a file's tensors (its Dtype enum, largest first; then by name)
_ORDER = [(torch.int64, "I64"), (torch.float64, "F64"), (torch.float32, "F32"), (torch.int32, "I32"),
          (torch.bfloat16, "BF16"), (torch.float16, "F16"), (torch.int16, "I16"), (torch.int8, "I8"),
          (torch.uint8, "U8"), (torch.bool, "BOOL")]
_NAME = {dtype: name for dtype, name in _ORDER}
_RANK = {dtype: rank for rank, (dtype, _) in enumerate(_ORDER)}


def write_safetensors(state: dict[str, torch.Tensor], path: Path, metadata: dict[str, str] | None = None) -> None:
    """`state` (contiguous CPU tensors of the dtypes above) as a safetensors file at `path`, written in place."""
    for key, tensor in state.items():
        if tensor.dtype not in _NAME or tensor.device.type != "cpu" or not tensor.is_contiguous():
            raise ValueError(f"{key}: a {tensor.dtype} tensor on {tensor.device} (contiguous: "
                             f"{tensor.is_contiguous()}) is not one this writer streams")
    names = sorted(state, key=lambda key: (_RANK[state[key].dtype], key))
    header: dict[str, object] = {"__metadata__": metadata} if metadata else {}
    offset = 0
    for key in names:
        tensor = state[key]
        size = tensor.numel() * tensor.element_size()
        header[key] = {"dtype": _NAME[tensor.dtype], "shape": list(tensor.shape),
                       "data_offsets": [offset, offset + size]}
        offset += size
    text = json.dumps(header, separators=(",", ":"), ensure_ascii=False).encode()
    text += b" " * (-len(text) % 8)           # the data starts 8-byte aligned, as safetensors pads it
    with open(path, "wb") as handle:
        handle.write(struct.pack("<Q", len(text)) + text)
        for key in names:
            tensor = state[key]
            if tensor.numel():
                handle.write(memoryview(tensor.reshape(-1).view(torch.uint8).numpy()))
