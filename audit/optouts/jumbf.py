"""Bounded readers for the two binary formats C2PA manifests are made of: JUMBF boxes and CBOR.

Both are written for hostile input: every length is checked against the bytes that remain, nesting
depth and item counts are capped, and a problem raises `FormatProblem` (never IndexError or
MemoryError) so `embedded` can record it as a not_evaluable signal. We read; we do not verify
signatures or hashes.

JUMBF (ISO/IEC 19566-5): a box is LBox (u32 big-endian, 1 = a u64 XLBox follows, 0 = to the end)
and a 4-byte TBox. A `jumb` superbox starts with a `jumd` description box (16-byte type UUID, a toggles
byte, then a NUL-terminated label when toggles & 2) followed by content boxes and nested superboxes.

>>> decode_cbor(bytes.fromhex("a1 67 656e7472696573 a0".replace(" ", "")))
{'entries': {}}
"""

from __future__ import annotations

import struct
from dataclasses import dataclass, field
from typing import Any

MAX_DEPTH = 32
MAX_ITEMS = 100_000


class FormatProblem(ValueError):
    """Bytes that are not a valid JUMBF box tree or CBOR item."""


@dataclass
class Superbox:
    label: str
    type_uuid: bytes
    children: list[Superbox] = field(default_factory=list)
    contents: list[tuple[str, bytes]] = field(default_factory=list)  # (box type, payload)

    def child(self, label: str) -> Superbox | None:
        return next((c for c in self.children if c.label == label), None)


def _boxes(data: bytes, start: int, end: int) -> list[tuple[str, int, int]]:
    """(type, payload start, payload end) of the boxes laid end to end in data[start:end]."""
    out = []
    pos = start
    while pos + 8 <= end:
        lbox = int.from_bytes(data[pos : pos + 4], "big")
        tbox = data[pos + 4 : pos + 8].decode("latin-1")
        header = 8
        if lbox == 1:
            if pos + 16 > end:
                raise FormatProblem(f"box {tbox!r} at {pos}: XLBox cut off")
            lbox, header = int.from_bytes(data[pos + 8 : pos + 16], "big"), 16
        elif lbox == 0:
            lbox = end - pos
        if lbox < header or pos + lbox > end:
            raise FormatProblem(f"box {tbox!r} at {pos}: length {lbox} outside its container")
        out.append((tbox, pos + header, pos + lbox))
        pos += lbox
        if len(out) > MAX_ITEMS:
            raise FormatProblem("too many boxes")
    return out


def parse_superbox(data: bytes, start: int = 0, end: int | None = None, depth: int = 0) -> Superbox:
    """The `jumb` superbox whose header starts at `start`."""
    end = len(data) if end is None else end
    boxes = _boxes(data, start, end)
    if not boxes or boxes[0][0] != "jumb":
        raise FormatProblem(f"expected a jumb box at {start}")
    return _superbox(data, boxes[0][1], boxes[0][2], depth)


def _superbox(data: bytes, start: int, end: int, depth: int) -> Superbox:
    if depth > MAX_DEPTH:
        raise FormatProblem("JUMBF nested too deep")
    children = _boxes(data, start, end)
    if not children or children[0][0] != "jumd":
        raise FormatProblem(f"jumb box at {start} has no jumd description")
    _, d0, d1 = children[0]
    if d1 - d0 < 17:
        raise FormatProblem(f"jumd box at {d0} too short")
    uuid, toggles = data[d0 : d0 + 16], data[d0 + 16]
    label = ""
    if toggles & 0x02:
        nul = data.find(b"\x00", d0 + 17, d1)
        label = data[d0 + 17 : nul if nul >= 0 else d1].decode("utf-8", "replace")
    box = Superbox(label, uuid)
    for tbox, p0, p1 in children[1:]:
        if tbox == "jumb":
            box.children.append(_superbox(data, p0, p1, depth + 1))
        else:
            box.contents.append((tbox, data[p0:p1]))
    return box


def decode_cbor(data: bytes) -> Any:
    """One CBOR item (RFC 8949) from `data`; tags are dropped, byte strings stay bytes."""
    value = _Cbor(data).item(0)
    if value is _BREAK:
        raise FormatProblem("CBOR: a break code where an item was expected")
    return value


_BREAK = object()


class _Cbor:
    def __init__(self, data: bytes) -> None:
        self.data, self.pos, self.items = data, 0, 0

    def _take(self, n: int) -> bytes:
        if n < 0 or self.pos + n > len(self.data):
            raise FormatProblem(
                f"CBOR: {n} bytes wanted at {self.pos}, {len(self.data) - self.pos} left"
            )
        chunk = self.data[self.pos : self.pos + n]
        self.pos += n
        return chunk

    def _argument(self, info: int) -> int | None:
        if info < 24:
            return info
        if info in (24, 25, 26, 27):
            return int.from_bytes(self._take(1 << (info - 24)), "big")
        if info == 31:
            return None  # indefinite length
        raise FormatProblem(f"CBOR: reserved additional info {info} at {self.pos - 1}")

    def item(self, depth: int) -> Any:
        if depth > MAX_DEPTH:
            raise FormatProblem("CBOR nested too deep")
        self.items += 1
        if self.items > MAX_ITEMS:
            raise FormatProblem("CBOR has too many items")
        initial = self._take(1)[0]
        major, info = initial >> 5, initial & 0x1F
        if major == 7:
            return self._simple(info)
        arg = self._argument(info)
        if major == 0:
            return arg if arg is not None else self._bad(initial)
        if major == 1:
            return -1 - arg if arg is not None else self._bad(initial)
        if major in (2, 3):
            if arg is None:  # indefinite: definite chunks of the same major type until break
                chunks = []
                while (part := self.item(depth + 1)) is not _BREAK:
                    chunks.append(part if isinstance(part, bytes) else str(part).encode())
                raw = b"".join(chunks)
            else:
                raw = self._take(arg)
            return raw if major == 2 else raw.decode("utf-8", "replace")
        if major == 4:
            return self._sequence(arg, depth)
        if major == 5:
            flat = self._sequence(None if arg is None else 2 * arg, depth)
            if len(flat) % 2:
                raise FormatProblem("CBOR map with a key and no value")
            return {_hashable(k): v for k, v in zip(flat[::2], flat[1::2], strict=True)}
        # major 6: a tag; the tagged item is what we want
        return self.item(depth + 1)

    def _sequence(self, count: int | None, depth: int) -> list[Any]:
        out: list[Any] = []
        if count is None:
            while (value := self.item(depth + 1)) is not _BREAK:
                out.append(value)
            return out
        if count > len(self.data) - self.pos:  # every item takes at least one byte
            raise FormatProblem(
                f"CBOR: {count} items declared, {len(self.data) - self.pos} bytes left"
            )
        for _ in range(count):
            value = self.item(depth + 1)
            if value is _BREAK:
                raise FormatProblem("CBOR: break inside a definite-length item")
            out.append(value)
        return out

    def _simple(self, info: int) -> Any:
        if info == 20:
            return False
        if info == 21:
            return True
        if info in (22, 23):
            return None
        if info == 24:
            return self._take(1)[0]
        if info == 25:
            return struct.unpack(">e", self._take(2))[0]
        if info == 26:
            return struct.unpack(">f", self._take(4))[0]
        if info == 27:
            return struct.unpack(">d", self._take(8))[0]
        if info == 31:
            return _BREAK
        if info < 20:
            return info
        raise FormatProblem(f"CBOR: reserved simple value {info}")

    def _bad(self, initial: int) -> Any:
        raise FormatProblem(f"CBOR: indefinite length on an integer (0x{initial:02x})")


def _hashable(key: Any) -> Any:
    try:
        hash(key)
    except TypeError:
        return repr(key)
    return key
