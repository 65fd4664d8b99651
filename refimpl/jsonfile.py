"""Strict, bounded reading of JSON dataset files (docs/datasets.md, "Reading files").

:func:`read_json_file` turns a path into a Python object or raises one
:class:`~refimpl.errors.FileFormatError` whose one-line message names the path, the
problem and, where known, its line and column. It never reads an unbounded stream
into memory and never lets the JSON parser hit a recursion or int-conversion limit:

* at most ``max_bytes + 1`` bytes are read, in chunks (default 1 GiB, or the
  environment variable ``REFIMPL_MAX_FILE_BYTES``); a larger input is refused
  before anything is parsed;
* regular files, pipes (FIFOs) and character devices are read; directories, block
  devices and sockets are refused. The path is opened without blocking, so a FIFO
  that no writer holds open reads as empty instead of waiting;
* the text must be UTF-8 without NUL bytes; one leading UTF-8 byte order mark is
  skipped;
* before parsing, one linear scan (regular expressions and NumPy, strings skipped)
  finds the nesting depth, which must be at most :data:`MAX_DEPTH`, and every
  integer of 19 digits or more, which must lie in the int64 range;
* the parser refuses floats, ``NaN``, ``Infinity``, ``-Infinity`` and duplicate
  object keys.
"""
from __future__ import annotations

import json
import os
import re
import stat

import numpy as np

from .errors import ConfigError, FileFormatError

__all__ = ["read_json_file", "max_file_bytes", "display_name", "DEFAULT_MAX_BYTES", "ENV_MAX_BYTES", "MAX_DEPTH",
           "INT64_MIN", "INT64_MAX"]

DEFAULT_MAX_BYTES = 1 << 30
"""Largest file read when neither ``max_bytes`` nor ``REFIMPL_MAX_FILE_BYTES`` is given (1 GiB)."""
ENV_MAX_BYTES = "REFIMPL_MAX_FILE_BYTES"
MAX_DEPTH = 4
"""Deepest nesting of the dataset format: object > orders object > list of pairs > pair."""
INT64_MIN, INT64_MAX = -(1 << 63), (1 << 63) - 1

_CHUNK = 1 << 24
_NONBLOCK = getattr(os, "O_NONBLOCK", 0)
_SUFFIX = {"": 1, "K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40}
# A JSON string literal, or an unterminated one running to the end of the text.
# Possessive quantifiers: linear time, no backtracking.
_STRING = re.compile(rb'"[^"\\]*+(?:\\.[^"\\]*+)*+(?:"|\\?\Z)', re.DOTALL)
_TOKEN = re.compile(_STRING.pattern + rb"|[\[\]{}]", re.DOTALL)
_KEY_COLON = re.compile(rb"[ \t\r\n]*:")
_LONG_INT = re.compile(rb"-?[0-9]{19,}")
_FLOAT = re.compile(rb"-?[0-9]+(?:\.[0-9]+(?:[eE][+-]?[0-9]+)?|[eE][+-]?[0-9]+)")
_FLOAT_TAIL = re.compile(rb"\.[0-9]|[eE][+-]?[0-9]")
_CONSTANT = re.compile(rb"-?Infinity|NaN")
_DIGITS_TO_ZERO = bytes.maketrans(b"123456789", b"000000000")
_NOT_BRACKET = bytes(c for c in range(256) if c not in b"[]{}")
_STEP = np.zeros(256, dtype=np.int8)
_STEP[list(b"[{")] = 1
_STEP[list(b"]}")] = -1
_BOMS = ((b"\x00\x00\xfe\xff", "UTF-32"), (b"\xff\xfe\x00\x00", "UTF-32"),
         (b"\xfe\xff", "UTF-16"), (b"\xff\xfe", "UTF-16"))


class _Refused(Exception):
    """Raised by a parser hook; read_json_file turns it into a FileFormatError with a position."""

    def __init__(self, kind, text):
        super().__init__(kind, text)
        self.kind, self.text = kind, text


def _refuse_float(text):
    raise _Refused("float", text)


def _refuse_constant(text):
    raise _Refused("constant", text)


def _unique_pairs(pairs):
    obj = dict(pairs)
    if len(obj) != len(pairs):
        seen = set()
        for key, _ in pairs:
            if key in seen:
                raise _Refused("duplicate", key)
            seen.add(key)
    return obj


# ---------------------------------------------------------------- limits
def display_name(path):
    """``path`` as messages show it: as given, its middle elided beyond 160 characters."""
    name = os.fsdecode(os.fspath(path))
    return name if len(name) <= 160 else f"{name[:70]}...{name[-70:]}"


def max_file_bytes():
    """The largest file :func:`read_json_file` reads by default, in bytes.

    Returns
    -------
    int
        ``REFIMPL_MAX_FILE_BYTES`` when set (a whole number of bytes, optionally with
        a suffix K, M, G or T for powers of 1024, e.g. ``64M``), else 1 GiB.

    Raises
    ------
    ConfigError
        The environment variable is set but is not such a size, or is 0.
    """
    raw = os.environ.get(ENV_MAX_BYTES, "").strip()
    if not raw:
        return DEFAULT_MAX_BYTES
    m = re.fullmatch(r"([0-9]{1,18})\s*([KMGT]?)(?:i?B)?", raw, flags=re.IGNORECASE | re.ASCII)
    if m is None or int(m.group(1)) == 0:
        raise ConfigError(f"{ENV_MAX_BYTES}={raw[:40]!r} is not a size (a positive whole number of bytes, "
                          f"optionally with K, M, G or T)")
    return int(m.group(1)) * _SUFFIX[m.group(2).upper()]


def _limit(max_bytes):
    if max_bytes is None:
        return max_file_bytes()
    if isinstance(max_bytes, bool) or not isinstance(max_bytes, int) or max_bytes < 1:
        raise ConfigError(f"max_bytes must be a positive integer, got {max_bytes!r}"[:200])
    return max_bytes


# ---------------------------------------------------------------- reading
def _read_bounded(path, name, limit):
    """(at most ``limit`` bytes of ``path``, its st_mode); FileFormatError for what cannot be read."""
    try:
        fd = os.open(path, os.O_RDONLY | _NONBLOCK | getattr(os, "O_CLOEXEC", 0))
    except ValueError as exc:  # embedded NUL character in the path
        raise FileFormatError(f"cannot open {name}: {exc}") from None
    except OSError as exc:
        raise FileFormatError(f"cannot open {name}: {exc.strerror or exc}") from None
    try:
        st = os.fstat(fd)
        mode = st.st_mode
        if stat.S_ISDIR(mode):
            raise FileFormatError(f"{name} is a directory, not a dataset file")
        if not (stat.S_ISREG(mode) or stat.S_ISFIFO(mode) or stat.S_ISCHR(mode)):
            kind = "a block device" if stat.S_ISBLK(mode) else "a socket" if stat.S_ISSOCK(mode) \
                else "not a regular file"
            raise FileFormatError(f"{name} is {kind}; a dataset file must be a regular file, "
                                  f"a pipe or a character device")
        if stat.S_ISREG(mode) and st.st_size > limit:
            raise FileFormatError(f"{name} is larger than {limit} bytes ({st.st_size} bytes; "
                                  f"set {ENV_MAX_BYTES} to raise the limit)")
        if _NONBLOCK and not stat.S_ISREG(mode):  # the open did not wait; reads wait for data like cat
            os.set_blocking(fd, True)
        chunks, total = [], 0
        while total <= limit:
            chunk = os.read(fd, min(_CHUNK, limit + 1 - total))
            if not chunk:
                break
            chunks.append(chunk)
            total += len(chunk)
        if total > limit:
            raise FileFormatError(f"{name} is larger than {limit} bytes (reading stopped there; "
                                  f"set {ENV_MAX_BYTES} to raise the limit)")
        return b"".join(chunks), mode
    except OSError as exc:
        raise FileFormatError(f"cannot read {name}: {exc.strerror or exc}") from None
    except MemoryError:
        raise FileFormatError(f"cannot read {name}: out of memory below the limit of {limit} bytes "
                              f"(set {ENV_MAX_BYTES} lower)") from None
    finally:
        os.close(fd)


def _line_col(data, offset):
    """1-based line and column (in characters) of byte ``offset`` of UTF-8 ``data``."""
    line_start = data.rfind(b"\n", 0, offset) + 1
    col = len(data[line_start:offset].decode("utf-8", "replace")) + 1
    return data.count(b"\n", 0, offset) + 1, col


def _where(data, offset):
    line, col = _line_col(data, offset)
    return f"at line {line} column {col}"


def _decode(data, name):
    """The text of ``data`` (UTF-8, one leading BOM skipped) and the bytes it was decoded from."""
    for bom, enc in _BOMS:
        if data.startswith(bom):
            raise FileFormatError(f"{name} is {enc} text (byte order mark {bom.hex(' ').upper()}); "
                                  f"dataset files are UTF-8")
    if data.startswith(b"\xef\xbb\xbf"):
        data = data[3:]
    nul = data.find(b"\x00")
    if nul >= 0:
        raise FileFormatError(f"{name} contains a NUL byte at byte offset {nul} ({_where(data, nul)}); "
                              f"dataset files are UTF-8 JSON text, not UTF-16 or binary")
    try:
        return data.decode("utf-8"), data
    except UnicodeDecodeError as exc:
        line, _ = _line_col(data, exc.start)
        raise FileFormatError(f"{name} is not valid UTF-8: {exc.reason} 0x{data[exc.start]:02X} at byte "
                              f"offset {exc.start} (line {line})") from None


# ---------------------------------------------------------------- positions
class _Positions:
    """Map offsets in the string-stripped text back to offsets in the original bytes."""

    def __init__(self, data):
        self.data = data

    def original(self, stripped_offset):
        shift = 0
        for m in _STRING.finditer(self.data):
            if m.start() - shift >= stripped_offset:
                break
            shift += (m.end() - m.start()) - 2
        return stripped_offset + shift


def _decode_key(raw):
    try:
        return json.loads(raw.decode("utf-8"))
    except ValueError:
        return raw.decode("utf-8", "replace")


def _context(data, offset):
    """(top-level field holding byte ``offset`` or None, depth at ``offset``)."""
    depth, field = 0, None
    for m in _TOKEN.finditer(data, 0, offset):
        c = data[m.start()]
        if c == 0x22:
            if depth == 1 and _KEY_COLON.match(data, m.end()):
                field = _decode_key(m.group())
        elif c in b"[{":
            depth += 1
        else:
            depth = max(depth - 1, 0)
    return (field if depth >= 1 else None), depth


def _in_field(data, offset):
    field, _ = _context(data, offset)
    return f" in field {_short(field)}" if isinstance(field, str) else ""


def _short(text, limit=40):
    r = repr(text)
    return r if len(r) <= limit else r[:limit] + "..."


def _find_duplicate(data):
    """(key, offset of its second occurrence, where) of the first duplicate key, or None."""
    keys, names = [], []  # per open container: set of keys (object) or None (array); its field name
    last_key = None
    for m in _TOKEN.finditer(data):
        c = data[m.start()]
        if c == 0x22:
            if keys and keys[-1] is not None and _KEY_COLON.match(data, m.end()):
                key = _decode_key(m.group())
                if key in keys[-1]:
                    if len(keys) == 1:
                        where = "the top-level object"
                    elif len(keys) == 2 and isinstance(names[-1], str):
                        where = f"field {_short(names[-1])}"
                    else:
                        where = "a nested object"
                    return key, m.start(), where
                keys[-1].add(key)
                last_key = key
        elif c in b"[{":
            names.append(last_key if keys and keys[-1] is not None else None)
            keys.append(set() if c == 0x7B else None)
            last_key = None
        elif keys:
            keys.pop()
            names.pop()
    return None


# ---------------------------------------------------------------- pre-scan
def _nth_bracket(text, n):
    """Offset in ``text`` of its bracket number ``n`` (0-based), counted chunk by chunk."""
    for start in range(0, len(text), _CHUNK):
        where = np.flatnonzero(_STEP[np.frombuffer(text, np.uint8, min(_CHUNK, len(text) - start), start)])
        if n < len(where):
            return start + int(where[n])
        n -= len(where)
    raise AssertionError("fewer brackets than counted")  # pragma: no cover


def _prescan(data, name):
    """Nesting depth and long integers, found without parsing (strings skipped)."""
    stripped = _STRING.sub(b'""', data)
    brackets = stripped.translate(None, _NOT_BRACKET)
    deepest, first, depth = 0, None, 0
    for start in range(0, len(brackets), _CHUNK):  # chunks keep the depth array small
        level = depth + np.cumsum(_STEP[np.frombuffer(brackets, np.uint8, min(_CHUNK, len(brackets) - start),
                                                       start)], dtype=np.int64)
        deepest = max(deepest, int(level.max()))
        if first is None and deepest > MAX_DEPTH:
            first = start + int(np.argmax(level > MAX_DEPTH))  # the bracket that first goes too deep
        depth = int(level[-1])
    del brackets
    if first is not None:
        offset = _Positions(data).original(_nth_bracket(stripped, first))
        raise FileFormatError(f"{name}: nesting depth {deepest} exceeds the maximum {MAX_DEPTH} of the "
                              f"dataset format ({_where(data, offset)}{_in_field(data, offset)})",
                              depth=deepest, max_depth=MAX_DEPTH)
    if b"0" * 19 not in stripped.translate(_DIGITS_TO_ZERO):
        return
    positions = _Positions(data)
    for m in _LONG_INT.finditer(stripped):
        # The parser converts a run of digits to an int only where a number starts and no
        # fraction or exponent follows (the same rules as its scanner): a run after ".", "e",
        # "E" or "+" is never one, a run before ".5" or "e5" is a float, which the parser
        # refuses unconverted, and after a leading 0 the parser stops (a syntax error).
        before = stripped[m.start() - 1:m.start()] if m.start() else b""
        digits = m.group().lstrip(b"-")
        if before in (b".", b"e", b"E", b"+") or _FLOAT_TAIL.match(stripped, m.end()) or digits[:1] == b"0":
            continue
        if len(digits) <= 19 and INT64_MIN <= int(m.group()) <= INT64_MAX:
            continue
        offset = positions.original(m.start())
        shown = m.group()[:24].decode("ascii") + ("..." if len(m.group()) > 24 else "")
        size = f" ({len(digits)} digits)" if len(digits) > 19 else ""
        raise FileFormatError(f"{name}: integer {shown}{size} {_where(data, offset)}{_in_field(data, offset)} "
                              f"is outside the int64 range [{INT64_MIN}, {INT64_MAX}]",
                              position=offset)


# ---------------------------------------------------------------- parsing
def _refusal_message(exc, data, name):
    stripped = _STRING.sub(b'""', data)
    positions = _Positions(data)
    if exc.kind == "duplicate":
        found = _find_duplicate(data)
        if found is None:
            return f"{name}: duplicate key {_short(exc.text)}"
        key, offset, where = found
        return f"{name}: duplicate key {_short(key)} in {where} ({_where(data, offset)})"
    pattern = _FLOAT if exc.kind == "float" else _CONSTANT
    target = exc.text.encode("utf-8", "replace")
    offset = None
    for m in pattern.finditer(stripped):
        if m.group() == target:
            offset = positions.original(m.start())
            break
    shown = exc.text if len(exc.text) <= 24 else exc.text[:24] + "..."
    where = "" if offset is None else f" ({_where(data, offset)})"
    field, depth = _context(data, offset) if offset is not None else (None, 0)
    if exc.kind == "constant":
        place = "" if not isinstance(field, str) else f" in field {_short(field)}"
        return f"{name}: {shown}{place} is not allowed (NaN and Infinity are not JSON numbers){where}"
    if field == "vocab_size" and depth == 1:
        return f"{name}: vocab_size must be an integer, got a float {shown}{where}"
    if isinstance(field, str):
        return f"{name}: field {_short(field)} must hold integers, got a float {shown}{where}"
    return f"{name}: floats are not allowed in a dataset file, got {shown}{where}"


def read_json_file(path, *, max_bytes=None):
    """Read one JSON value from ``path``, strictly and within a size limit.

    Parameters
    ----------
    path : str or os.PathLike
        A regular file, a pipe (FIFO) or a character device. Directories, block
        devices and sockets are refused.
    max_bytes : int, optional
        Largest input read, in bytes. Default: :func:`max_file_bytes` (the
        environment variable ``REFIMPL_MAX_FILE_BYTES``, else 1 GiB). At most
        ``max_bytes + 1`` bytes are ever read.

    Returns
    -------
    object
        The JSON value: dicts, lists, str, int (all in the int64 range), bool, None.

    Raises
    ------
    FileFormatError
        One line naming ``path`` and the problem: cannot be opened or read, larger
        than the limit, not UTF-8 (or UTF-16/UTF-32, NUL bytes), nesting deeper than
        :data:`MAX_DEPTH`, an integer outside int64, a float, ``NaN`` or
        ``Infinity``, a duplicate object key, or a JSON syntax error; with line and
        column where known.
    ConfigError
        ``max_bytes`` or ``REFIMPL_MAX_FILE_BYTES`` is not a positive size.
    """
    name = display_name(path)
    limit = _limit(max_bytes)
    raw, mode = _read_bounded(path, name, limit)
    text, data = _decode(raw, name)
    del raw
    if not text.strip(" \t\r\n"):
        if text:
            raise FileFormatError(f"{name} holds only whitespace, no JSON value")
        pipe = " (a pipe that no writer held open, or that was closed without data)" if stat.S_ISFIFO(mode) else ""
        raise FileFormatError(f"{name} is empty{pipe}")
    _prescan(data, name)
    try:
        return json.loads(text, parse_float=_refuse_float, parse_constant=_refuse_constant,
                          object_pairs_hook=_unique_pairs)
    except _Refused as exc:
        raise FileFormatError(_refusal_message(exc, data, name)) from None
    except json.JSONDecodeError as exc:
        msg = exc.msg[:-3] if exc.msg.endswith(" at") else exc.msg  # "Invalid control character at"
        raise FileFormatError(f"{name} is not valid JSON: {msg} at line {exc.lineno} column {exc.colno}",
                              position=exc.pos) from None
    except MemoryError:
        raise FileFormatError(f"{name}: not enough memory to parse its {len(data)} bytes of JSON "
                              f"(set {ENV_MAX_BYTES} to refuse such files early)") from None
