"""The sizes of a parquet column chunk's pages, read from their headers without decompressing anything.

A parquet cell has no size of its own in the file's metadata, and the Arrow reader decompresses a whole page
(the size its header states) before any value of it can be looked at: a 12 KB file holding one 300 MB cell of
zeros took 1.6 GB to read, one of 2 GB would take 8 GB. So before a row group is decoded, the header of every
page of the columns to be read is walked (a few bytes each, the data skipped by seeking) and a page larger than
its values may need is refused. The headers are what Arrow itself allocates by, so they cannot understate.

Page headers are Thrift compact-protocol structs (parquet.thrift `PageHeader`); only the few fields read here
are decoded, every other field (statistics, CRC, encodings) is skipped by its length.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import BinaryIO

_READ = 4096
MAX_HEADER_BYTES = 1 << 20          # a page header is tens of bytes (statistics: a few KB); more is not a header
MAX_HEADER_STEPS = 4096             # bytes parsed one by one and values skipped in a header (blobs are seeked over)
MAX_CHUNK_STEPS = 4_000_000         # ... in all the headers of one column chunk: a hostile chunk costs ~1 s at most
MAX_DEPTH = 16                      # nested structs inside a header; PageHeader needs 3


class PageHeaderError(ValueError):
    """The bytes at a page offset are not a page header this reader can walk."""


@dataclass(frozen=True)
class PageInfo:
    kind: int                      # 0 data, 1 index, 2 dictionary, 3 data v2
    uncompressed: int
    compressed: int
    values: int | None             # num_values (data and dictionary pages)


class _Compact:
    """A Thrift compact-protocol reader over a seekable file, reading small chunks and seeking over blobs."""

    def __init__(self, handle: BinaryIO, pos: int):
        self.handle, self.start, self.pos = handle, pos, pos
        self.buf, self.buf_at = b"", pos
        self.steps = 0

    def step(self) -> None:
        """One byte parsed or one value skipped: a list of 2**63 doubles or a map of bools reads no byte per
        element, so the bound counts values too, not only bytes."""
        self.steps += 1
        if self.steps > MAX_HEADER_STEPS:
            raise PageHeaderError(f"a page header of more than {MAX_HEADER_STEPS} fields and values")

    def byte(self) -> int:
        self.step()
        i = self.pos - self.buf_at
        if i >= len(self.buf):
            if self.pos - self.start > MAX_HEADER_BYTES:
                raise PageHeaderError(f"a page header longer than {MAX_HEADER_BYTES} bytes")
            self.handle.seek(self.pos)
            self.buf, self.buf_at, i = self.handle.read(_READ), self.pos, 0
            if not self.buf:
                raise PageHeaderError("the file ends inside a page header")
        self.pos += 1
        return self.buf[i]

    def varint(self) -> int:
        out = shift = 0
        while True:
            c = self.byte()
            out |= (c & 0x7F) << shift
            if not c & 0x80:
                return out
            shift += 7
            if shift > 63:
                raise PageHeaderError("a varint longer than 10 bytes")

    def zigzag(self) -> int:
        v = self.varint()
        return (v >> 1) ^ -(v & 1)

    def skip(self, kind: int, depth: int) -> None:
        self.step()
        if kind in (1, 2):                                  # bool: the value is in the type nibble
            return
        if kind == 3:
            self.pos += 1
        elif kind in (4, 5, 6):
            self.varint()
        elif kind == 7:
            self.pos += 8
        elif kind == 8:                                     # binary: statistics' min/max, seeked over
            length = self.varint()                          # (read before `pos` is: varint() moves it)
            self.pos += length
        elif kind in (9, 10):
            head = self.byte()
            count = self.varint() if head >> 4 == 15 else head >> 4
            for _ in range(count):
                self.byte() if head & 15 in (1, 2) else self.skip(head & 15, depth)
        elif kind == 11:
            count = self.varint()
            types = self.byte() if count else 0
            for _ in range(count):
                self.skip(types >> 4, depth)
                self.skip(types & 15, depth)
        elif kind == 12:
            self.fields(lambda _fid, _kind: False, depth + 1)
        else:
            raise PageHeaderError(f"unknown thrift type {kind}")

    def fields(self, take, depth: int = 0) -> None:
        """Calls take(field id, type) for each field of a struct; a field it does not read is skipped."""
        if depth > MAX_DEPTH:
            raise PageHeaderError("page header structs nested too deeply")
        last = 0
        while True:
            head = self.byte()
            if head == 0:
                return
            kind, delta = head & 15, head >> 4
            last = last + delta if delta else self.zigzag()
            if not take(last, kind):
                self.skip(kind, depth)


def read_page_header(handle: BinaryIO, pos: int) -> tuple[PageInfo, int, int]:
    """The page header at `pos`, the length of the header itself and the bytes parsed one by one."""
    r = _Compact(handle, pos)
    top: dict[int, int] = {}
    values: list[int] = []

    def sub(fid: int, kind: int) -> bool:
        if fid == 1 and kind == 5:                          # num_values of data, dictionary and v2 headers
            values.append(r.zigzag())
            return True
        return False

    def take(fid: int, kind: int) -> bool:
        if fid in (1, 2, 3) and kind == 5:                  # type, uncompressed_page_size, compressed_page_size
            top[fid] = r.zigzag()
            return True
        if fid in (5, 7, 8) and kind == 12:
            r.fields(sub, 1)
            return True
        return False

    r.fields(take)
    if not {1, 2, 3} <= top.keys() or top[2] < 0 or top[3] < 0:
        raise PageHeaderError("a page header without its type and sizes")
    return PageInfo(top[1], top[2], top[3], values[0] if values else None), r.pos - pos, r.steps


def column_pages(handle: BinaryIO, start: int, length: int, max_pages: int = 100_000) -> list[PageInfo]:
    """Every page of the column chunk stored in bytes [start, start + length) of the file. A chunk of more than
    `max_pages` pages (a page holds at least one value: 100000 image pages would be a row group of 100 GB) is an
    error, so walking one costs at most that many header reads."""
    pages: list[PageInfo] = []
    pos, end, steps = start, start + length, 0
    while pos < end:
        page, header, parsed = read_page_header(handle, pos)
        pages.append(page)
        steps += parsed
        if len(pages) > max_pages or steps > MAX_CHUNK_STEPS:
            raise PageHeaderError(f"a column chunk of more than {min(len(pages), max_pages)} pages or "
                                  f"{MAX_CHUNK_STEPS} header bytes")
        pos += header + page.compressed
    return pages
