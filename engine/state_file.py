"""A producer state on disk: plain data in a versioned binary layout, never code.

The states folder sits beside the checkpoint, where anyone who can write there could replace a
file: so a state is read as data only (JSON and the roaring bitmap's own portable format, which
pyroaring validates as it reads), and a file that is not exactly what this module writes is
refused as a whole, never half-believed. Layout, all integers little-endian::

    b"OZBSTATE"              8 bytes   magic
    version                  u16       FORMAT_VERSION
    header length            u32
    header                   JSON      everything but the bitmap (see _header)
    bitmap length            u64
    bitmap                   bytes     pyroaring BitMap64.serialize()
    checksum                 32 bytes  BLAKE2b-256 of every byte before it

The checksum catches a torn or damaged file; the strict checks of every field catch a crafted
one (a crafted file with a right checksum can at worst describe a wrong position, which is no
worse than a wrong input: it cannot run anything).
"""

from __future__ import annotations

import codecs
import hashlib
import struct
from typing import Any

import orjson
from pyroaring import BitMap64

from engine.batcher import ProducerState
from engine.records import InputCounts
from engine.settings import MAX_BATCH
from engine.source import FileLayout, ReadPosition

MAGIC = b"OZBSTATE"
FORMAT_VERSION = 1
SUFFIX = ".ozstate"
_VERSION = struct.Struct("<H")
_HEADER_LENGTH = struct.Struct("<I")
_BITMAP_LENGTH = struct.Struct("<Q")
_CHECKSUM_BYTES = 32
# E.164 numbers have at most 15 digits; lines and counts fit a machine word with room to spare.
MAX_NUMBER = 10**15
MAX_COUNT = 2**62
# A header holds fewer than a chunk's numbers and a layout per input file: far below this.
MAX_HEADER_BYTES = 16 * 1024 * 1024


class MalformedState(ValueError):
    """The bytes are not a producer state this version wrote (damaged, crafted or foreign)."""


def encode(state: ProducerState) -> bytes:
    """The bytes of ``state`` in the layout above."""
    header = orjson.dumps(_header(state))
    body = b"".join((
        MAGIC, _VERSION.pack(FORMAT_VERSION), _HEADER_LENGTH.pack(len(header)), header,
        _BITMAP_LENGTH.pack(len(state.seen)), state.seen,
    ))  # fmt: skip
    return body + hashlib.blake2b(body, digest_size=_CHECKSUM_BYTES).digest()


def decode(data: bytes) -> ProducerState:
    """The state in ``data``; :class:`MalformedState` for anything else, with the reason."""
    if not data.startswith(MAGIC):
        raise MalformedState("not an ozbulk producer state (an older pickle, or another file)")
    if len(data) < len(MAGIC) + _VERSION.size + _CHECKSUM_BYTES:
        raise MalformedState("truncated")
    body, checksum = data[:-_CHECKSUM_BYTES], data[-_CHECKSUM_BYTES:]
    if hashlib.blake2b(body, digest_size=_CHECKSUM_BYTES).digest() != checksum:
        raise MalformedState("checksum mismatch: the file is damaged")
    offset = len(MAGIC)
    (version,) = _VERSION.unpack_from(body, offset)
    if version != FORMAT_VERSION:
        raise MalformedState(f"format version {version}, this ozbulk reads {FORMAT_VERSION}")
    offset += _VERSION.size
    header_bytes, offset = _field(body, offset, _HEADER_LENGTH, MAX_HEADER_BYTES)
    seen, offset = _field(body, offset, _BITMAP_LENGTH, len(body))
    if offset != len(body):
        raise MalformedState("trailing bytes")
    try:
        header = orjson.loads(header_bytes)
    except orjson.JSONDecodeError as error:
        raise MalformedState(f"header is not JSON: {error}") from None
    return _state(header, seen)


def _field(body: bytes, offset: int, length: struct.Struct, limit: int) -> tuple[bytes, int]:
    if offset + length.size > len(body):
        raise MalformedState("truncated")
    (size,) = length.unpack_from(body, offset)
    offset += length.size
    if size > limit or offset + size > len(body):
        raise MalformedState("a length points past the end of the file")
    return body[offset : offset + size], offset + size


def _header(state: ProducerState) -> dict[str, Any]:
    c, p = state.counts, state.position
    return {
        "file_index": state.file_index,
        "position": [p.records, p.skip, p.line],
        "counts": [c.rows, c.accepted, c.rejected, c.duplicates, c.chunks, c.finished],
        "numbers": state.numbers,
        "files": state.files,
        "lines": state.lines,
        "layouts": [
            [x.name, x.encoding, x.delimiter, x.column_index, x.column_label, x.has_header,
             x.compressed, x.sep_line]
            for x in state.layouts
        ],
    }  # fmt: skip


def _int(value: Any, what: str) -> int:
    # bool is an int to Python, and JSON true is no count.
    if type(value) is not int or not 0 <= value < MAX_COUNT:
        raise MalformedState(f"{what} is not a count: {value!r:.40}")
    return value


def _bool(value: Any, what: str) -> bool:
    if type(value) is not bool:
        raise MalformedState(f"{what} is not true or false: {value!r:.40}")
    return value


def _str(value: Any, what: str) -> str:
    if type(value) is not str or len(value) > 4096:
        raise MalformedState(f"{what} is not a short text")
    return value


def _ints(value: Any, what: str, size: int) -> list[int]:
    if type(value) is not list or len(value) > size:
        raise MalformedState(f"{what} is not a list of at most {size} numbers")
    return [_int(item, what) for item in value]


def _layout(value: Any) -> FileLayout:
    if type(value) is not list or len(value) != 8:
        raise MalformedState("a file layout has the wrong shape")
    name, encoding, delimiter = (_str(value[i], "a layout's text") for i in range(3))
    try:
        codecs.lookup(encoding)
    except LookupError:
        raise MalformedState(f"unknown encoding {encoding!r:.40}") from None
    if len(delimiter) != 1:
        raise MalformedState("a delimiter is one character")
    return FileLayout(
        name, encoding, delimiter, _int(value[3], "a column index"),
        _str(value[4], "a column label"), _bool(value[5], "has_header"),
        _bool(value[6], "compressed"), _bool(value[7], "sep_line"),
    )  # fmt: skip


def _state(header: Any, seen: bytes) -> ProducerState:
    expected = {"file_index", "position", "counts", "numbers", "files", "lines", "layouts"}
    if type(header) is not dict or set(header) != expected:
        raise MalformedState("the header does not hold a producer state's fields")
    position = _ints(header["position"], "the position", 3)
    counts = header["counts"]
    if len(position) != 3 or type(counts) is not list or len(counts) != 6:
        raise MalformedState("the position or the counts have the wrong shape")
    rows, accepted, rejected, duplicates, chunks = _ints(counts[:5], "a count", 5)
    if rows != accepted + rejected + duplicates:
        raise MalformedState("the counts do not add up")
    numbers = _ints(header["numbers"], "the next chunk's numbers", MAX_BATCH)
    if any(number >= MAX_NUMBER for number in numbers):
        raise MalformedState("a number has more than 15 digits")
    files = _ints(header["files"], "the next chunk's files", MAX_BATCH)
    lines = _ints(header["lines"], "the next chunk's lines", MAX_BATCH)
    if not len(numbers) == len(files) == len(lines):
        raise MalformedState("the next chunk's numbers, files and lines differ in length")
    try:
        marked = len(BitMap64.deserialize(seen))
    except (ValueError, IndexError):
        raise MalformedState("the dedupe bitmap does not deserialize") from None
    if marked != accepted:
        raise MalformedState(f"the dedupe bitmap holds {marked} numbers, not {accepted}")
    layouts = header["layouts"]
    if type(layouts) is not list:
        raise MalformedState("the layouts are not a list")
    file_index = _int(header["file_index"], "the file index")
    if len(layouts) != file_index:
        raise MalformedState("one layout is needed for each file before the current one")
    return ProducerState(
        file_index,
        ReadPosition(*position),
        InputCounts(rows, accepted, rejected, duplicates, chunks, _bool(counts[5], "finished")),
        numbers,
        files,
        lines,
        seen,
        [_layout(layout) for layout in layouts],
    )
