"""Record batches of an Arrow IPC file (stream or file format), each sized up from its metadata before it is read.

`save_to_disk` folders are memory-mapped, so an uncompressed batch costs nothing until a value is copied out; but
Arrow IPC may also be compressed (LZ4 or ZSTD, per buffer), and then reading a batch decompresses all of it: an
11 KB file holding one 300 MB cell of zeros took 305 MB to plan (counting rows read every batch) and as much
again to read. Here each message's flatbuffer metadata is read by hand (rows, buffers, compression: a few bytes)
and a compressed buffer's size is the 8 bytes in front of it, so neither planning nor refusing decompresses
anything; a batch is decoded only when none of its buffers is larger than its rows may need.
"""
from __future__ import annotations

import struct
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

_RECORD_BATCH = 3                 # MessageHeader union: Schema 1, DictionaryBatch 2, RecordBatch 3
_FILE_MAGIC = b"ARROW1"


class BatchMetadataError(ValueError):
    """A message whose metadata this reader cannot walk."""


@dataclass(frozen=True)
class BatchInfo:
    rows: int
    compressed: bool
    largest_buffer: int           # bytes, as decompressed


def _field(meta: bytes, table: int, index: int) -> int | None:
    """The absolute position of field `index` of the flatbuffer table at `table`, or None when absent."""
    vtable = table - struct.unpack_from("<i", meta, table)[0]
    size = struct.unpack_from("<H", meta, vtable)[0]
    slot = 4 + 2 * index
    if slot + 2 > size:
        return None
    offset = struct.unpack_from("<H", meta, vtable + slot)[0]
    return table + offset if offset else None


def batch_info(meta: bytes, body: Any) -> BatchInfo | None:
    """Rows, compression and largest (decompressed) buffer of a record batch message; None for other messages."""
    try:
        root = struct.unpack_from("<I", meta, 0)[0]
        kind = _field(meta, root, 1)
        if kind is None or meta[kind] != _RECORD_BATCH:
            return None
        where = _field(meta, root, 2)
        if where is None:
            raise BatchMetadataError("a record batch message without its header")
        batch = where + struct.unpack_from("<I", meta, where)[0]
        at = _field(meta, batch, 0)
        rows = struct.unpack_from("<q", meta, at)[0] if at is not None else 0
        compressed = _field(meta, batch, 3) is not None
        largest = 0
        at = _field(meta, batch, 2)
        if at is not None:
            vector = at + struct.unpack_from("<I", meta, at)[0]
            count = struct.unpack_from("<I", meta, vector)[0]
            if count * 16 > len(meta):
                raise BatchMetadataError(f"{count} buffers stated in {len(meta)} bytes of metadata")
            for i in range(count):
                offset, length = struct.unpack_from("<qq", meta, vector + 4 + 16 * i)
                size = length
                if compressed and length >= 8:
                    head = body[offset:offset + 8] if body is not None else b""
                    if len(head) < 8:
                        raise BatchMetadataError("a buffer outside the message body")
                    stated = struct.unpack("<q", bytes(head))[0]
                    size = length - 8 if stated == -1 else stated       # -1: stored uncompressed
                largest = max(largest, size)
    except (struct.error, IndexError, TypeError) as exc:
        raise BatchMetadataError(f"unreadable record batch metadata ({exc})") from exc
    if rows < 0 or largest < 0:
        raise BatchMetadataError("a record batch of negative size")
    return BatchInfo(rows, compressed, largest)


def _messages(file: Path):
    import pyarrow as pa

    source = pa.memory_map(str(file), "r")
    if source.read(6) == _FILE_MAGIC:     # the file format: magic, padding, then a stream, then the footer
        source.seek(8)
    else:
        source.seek(0)
    return pa.ipc.MessageReader.open_stream(source)


def read_schema(file: Path):
    import pyarrow as pa

    return pa.ipc.read_schema(_messages(file).read_next_message())


def iter_batches(file: Path) -> Iterator[tuple[BatchInfo, Any]]:
    """(info, message) for every record batch; `pyarrow.ipc.read_record_batch(message, schema)` decodes one."""
    reader = _messages(file)
    while True:
        try:
            message = reader.read_next_message()
        except StopIteration:
            return
        if message is None:
            return
        info = batch_info(message.metadata.to_pybytes(), message.body)
        if info is not None:
            yield info, message
