"""Check a tar's members before anything is extracted from it.

:func:`check_members` walks from header to header (ustar, GNU long names and
pax records) over a memory map of the file, skipping file data by
arithmetic: milliseconds for thousands of members. A member is unsafe when
its name is absolute or has a ``..`` component, when a link target is
absolute or has a ``..`` component (targets then only ever point down into
the tree, so no chain of links leaves it), or when it is not a regular
file, directory or link. A header with a bad checksum is refused too: GNU
tar would skip ahead to the next header it recognises, which this walk
never saw.
"""

from __future__ import annotations

import mmap
import zlib
from pathlib import Path

_BLOCK = 512
_REGULAR = frozenset(b"0\x007")
_LINKS = frozenset(b"12")
_NO_DATA = frozenset(b"125")  # hard link, symlink, directory
_META = frozenset(b"LKx")
_ZERO = bytes(_BLOCK)


class UnsafeMember(ValueError):
    """A tar member that could write outside the directory it is extracted into."""


def check_path(name: str, what: str = "member") -> None:
    """Refuse a member name or link target that is absolute or climbs with ``..``."""
    if not name or name.startswith("/") or ".." in name.split("/") or "\\" in name:
        raise UnsafeMember(f"{what} {name!r} is empty, absolute or leaves the pack with '..'")


def _cstr(field: bytes) -> str:
    return field.split(b"\0", 1)[0].decode("utf-8", "surrogateescape")


def _number(field: bytes) -> int:
    if field[:1] and field[0] & 0x80:  # GNU base-256 for large values
        return int.from_bytes(bytes([field[0] & 0x7F]) + field[1:], "big")
    text = field.split(b"\0", 1)[0].strip()
    try:
        return int(text, 8) if text else 0
    except ValueError:
        raise UnsafeMember(f"malformed number {field!r} in a tar header") from None


def _decimal(text: str) -> int:
    try:
        return int(text, 10)
    except ValueError:
        raise UnsafeMember(f"malformed pax size {text!r}") from None


def _byte_sum(data: bytes) -> int:
    """The sum of up to 256 bytes, in C: adler32's low half is 1 + the sum, modulo 65521."""
    return (zlib.adler32(data) & 0xFFFF) - 1


def _checksum_ok(block: bytes) -> bool:
    stored = _number(block[148:156])
    computed = (_byte_sum(block[:148]) + 8 * 32 + _byte_sum(block[156:412])
                + _byte_sum(block[412:]))
    return stored == computed


def _pax_records(data: bytes) -> dict[str, str]:
    out: dict[str, str] = {}
    pos = 0
    while pos < len(data):
        space = data.find(b" ", pos)
        try:
            length = int(data[pos:space])
        except ValueError:
            raise UnsafeMember("malformed pax header") from None
        if space < 0 or length <= 0:
            raise UnsafeMember("malformed pax header")
        key, _, value = data[space + 1 : pos + length - 1].partition(b"=")
        out[key.decode("utf-8", "replace")] = value.decode("utf-8", "surrogateescape")
        pos += length
    return out


def _padded(size: int) -> int:
    return -(-size // _BLOCK) * _BLOCK


def _check(kind: int, name: str, link: str) -> None:
    if kind not in _REGULAR and kind not in _NO_DATA:
        raise UnsafeMember(f"member {name!r} has type {chr(kind)!r}, not a file, "
                           "directory or link")
    check_path(name.removeprefix("./"))
    if kind in _LINKS:
        check_path(link, "link target")


def check_members(buf: bytes | mmap.mmap) -> int:
    """Check every member of the tar held in ``buf``; returns how many there are.

    Raises :class:`UnsafeMember` for the first unsafe member, a bad header,
    or a tar that ends early.
    """
    pos, end, count, zeros = 0, len(buf), 0, 0
    long_name: str | None = None
    long_link: str | None = None
    pax_size: int | None = None
    while zeros < 2:
        if pos + _BLOCK > end:
            raise UnsafeMember("the tar ends in the middle of a member (truncated)")
        block = buf[pos : pos + _BLOCK]
        pos += _BLOCK
        if block == _ZERO:
            zeros += 1
            continue
        zeros = 0
        if not _checksum_ok(block):
            raise UnsafeMember(f"the tar header at byte {pos - _BLOCK} has a bad checksum")
        kind, size = block[156], _number(block[124:136])
        if kind in _META:
            if pos + size > end:
                raise UnsafeMember("the tar ends in the middle of a member (truncated)")
            data = bytes(buf[pos : pos + size])
            pos += _padded(size)
            if kind == ord("L"):
                long_name = _cstr(data)
            elif kind == ord("K"):
                long_link = _cstr(data)
            else:
                records = _pax_records(data)
                long_name = records.get("path", long_name)
                long_link = records.get("linkpath", long_link)
                if "size" in records:
                    pax_size = _decimal(records["size"])
            continue
        if kind == ord("g"):
            pos += _padded(size)
            continue
        name, link = _cstr(block[0:100]), _cstr(block[157:257])
        if block[257:263] == b"ustar\x00" and block[345]:
            name = _cstr(block[345:500]) + "/" + name
        _check(kind, long_name if long_name is not None else name,
               long_link if long_link is not None else link)
        if pax_size is not None:
            size = pax_size
        long_name = long_link = pax_size = None
        count += 1
        if kind in _REGULAR:
            pos += _padded(size)
    return count


def check_file(path: Path) -> int:
    """:func:`check_members` on the tar file at ``path``, through a memory map."""
    with open(path, "rb") as fh:
        if fh.seek(0, 2) == 0:
            raise UnsafeMember("the tar is empty")
        with mmap.mmap(fh.fileno(), 0, access=mmap.ACCESS_READ) as mm:
            return check_members(mm)
