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

:func:`read_json_arrays` applies the same rules but hands chosen top-level arrays
(a dataset's sentences) to a sink chunk by chunk, so they never exist as Python
objects all at once; :func:`refimpl.io.load_dataset` reads dataset files with it.
"""
from __future__ import annotations

import json
import os
import re
import stat

import numpy as np

from . import budget
from .errors import ConfigError, FileFormatError

__all__ = ["read_json_file", "read_json_arrays", "max_file_bytes", "display_name", "DEFAULT_MAX_BYTES",
           "ENV_MAX_BYTES", "MAX_DEPTH", "ARRAY_CHUNK", "INT64_MIN", "INT64_MAX"]

DEFAULT_MAX_BYTES = 1 << 30
"""Largest file read when neither ``max_bytes`` nor ``REFIMPL_MAX_FILE_BYTES`` is given (1 GiB)."""
ENV_MAX_BYTES = "REFIMPL_MAX_FILE_BYTES"
MAX_DEPTH = 4
"""Deepest nesting of the dataset format: object > orders object > list of pairs > pair."""
INT64_MIN, INT64_MAX = -(1 << 63), (1 << 63) - 1

_CHUNK = 1 << 24
ARRAY_CHUNK = 1 << 18
"""Bytes of a chunked array (:func:`read_json_arrays`) parsed at a time, about: a piece ends at
the first separator after this many bytes. Its Python objects take about ten times as much
(some 2.5 MB at 256 KiB); larger pieces saved no time in bench/bench_validate.py."""
_MAX_STRIP_LOOP = 200_000  # quotes up to which strings are stripped by a Python loop (one copy)
_MAX_LAYOUT_EVENTS = 1000  # brackets at the top two levels beyond which no array is chunked
_MAX_CUT_TRIES = 1000  # separators at the wrong depth tried for one cut before the rest is one chunk
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
_BLANK = re.compile(rb"[ \t\r\n]*\Z")
_COLON_TO_END = re.compile(rb"[ \t\r\n]*:[ \t\r\n]*")
# Where a chunk of an array may end: a comma right after a closing bracket (rows) or a digit (flat lists).
_ROW_END = re.compile(rb"\],")
_NUMBER_END = re.compile(rb"[0-9],")
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
        expected = st.st_size + 1 if stat.S_ISREG(mode) else 0  # one read, so no second copy when joined
        while total <= limit:
            want = max(expected - total, 1) if total < expected else _CHUNK
            chunk = os.read(fd, min(want, limit + 1 - total))
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


def _decode(data, name, *, text=True):
    """The text of ``data`` (UTF-8, one leading BOM skipped) and the bytes it was decoded from.

    With ``text=False`` the text is checked but not kept (None is returned for it), and
    ASCII input is not decoded at all."""
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
        if not text:
            if not data.isascii():
                data.decode("utf-8")
            return None, data
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


def _step():
    """Bytes or brackets handled at a time by the scans: their temporary arrays stay a few MB."""
    return min(_CHUNK, 1 << 18)


def _strip_strings(data):
    """``data`` with every string literal replaced by ``""`` (bytes or bytearray).

    With few strings the result is built in place, one copy of ``data``;
    ``re.sub`` would hold the pieces and their join at once, two copies.
    """
    if data.count(b'"') > _MAX_STRIP_LOOP:
        return _STRING.sub(b'""', data)
    out = bytearray(len(data))
    n = prev = 0
    with memoryview(data) as src, memoryview(out) as dst:  # copies between views: no temporaries
        for m in _STRING.finditer(data):
            dst[n:n + m.start() - prev] = src[prev:m.start()]
            n += m.start() - prev
            dst[n:n + 2] = b'""'
            n, prev = n + 2, m.end()
        dst[n:n + len(data) - prev] = src[prev:]
    del out[n + len(data) - prev:]
    return out


def _prescan(data, name, keys=()):
    """Nesting depth and long integers, found without parsing (strings skipped).

    Returns the layout of the top-level object for ``keys`` (:func:`_top_level_arrays`),
    or None when ``keys`` is empty.
    """
    stripped = _strip_strings(data)
    brackets = stripped.translate(None, _NOT_BRACKET)
    deepest, first, depth = 0, None, 0
    events, n_events = ([] if keys else None), 0  # (bracket numbers, levels after them) at the top two levels
    step = _step()
    for start in range(0, len(brackets), step):  # chunks keep the depth array small
        steps = _STEP[np.frombuffer(brackets, np.uint8, min(step, len(brackets) - start), start)]
        level = depth + np.cumsum(steps, dtype=np.int64)
        deepest = max(deepest, int(level.max()))
        if first is None and deepest > MAX_DEPTH:
            first = start + int(np.argmax(level > MAX_DEPTH))  # the bracket that first goes too deep
        depth = int(level[-1])
        if events is not None:
            top = np.flatnonzero(level - (steps > 0) <= 1)  # openers to level <= 2, closers to level <= 1
            n_events += len(top)
            if n_events > _MAX_LAYOUT_EVENTS:
                events = None  # not the few values of a dataset object: nothing is chunked
            else:
                events.append((start + top, level[top]))
        del steps, level
    del brackets
    if first is not None:
        offset = _Positions(data).original(_nth_bracket(stripped, first))
        raise FileFormatError(f"{name}: nesting depth {deepest} exceeds the maximum {MAX_DEPTH} of the "
                              f"dataset format ({_where(data, offset)}{_in_field(data, offset)})",
                              depth=deepest, max_depth=MAX_DEPTH)
    if _has_long_run(stripped):
        _check_long_ints(data, stripped, name)
    if not keys:
        return None
    if not events:
        return {}
    return _top_level_arrays(data, stripped, np.concatenate([e[0] for e in events]).tolist(),
                             np.concatenate([e[1] for e in events]).tolist(), keys)


def _has_long_run(stripped):
    """True if ``stripped`` holds a run of 19 digits or more (chunk by chunk, no copy of the whole)."""
    step = _step()
    for start in range(0, len(stripped), step):
        if b"0" * 19 in stripped[start:start + step + 18].translate(_DIGITS_TO_ZERO):
            return True
    return False


def _check_long_ints(data, stripped, name):
    """FileFormatError for the first integer of 19 digits or more outside the int64 range."""
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


# ---------------------------------------------------------------- layout
def _bracket_offsets(text, numbers):
    """Offsets in ``text`` of its brackets number ``numbers`` (sorted, 0-based), chunk by chunk."""
    out, k, seen, step = [], 0, 0, _step()
    for start in range(0, len(text), step):
        if k == len(numbers):
            break
        end = min(start + step, len(text))
        n = sum(text.count(b, start, end) for b in (b"[", b"]", b"{", b"}"))
        if numbers[k] < seen + n:
            where = np.flatnonzero(_STEP[np.frombuffer(text, np.uint8, end - start, start)])
            while k < len(numbers) and numbers[k] < seen + n:
                out.append(start + int(where[numbers[k] - seen]))
                k += 1
        seen += n
    return out


def _original_offsets(data, offsets):
    """:meth:`_Positions.original` of sorted ``offsets`` (outside strings), in one pass."""
    out, shift, k = [], 0, 0
    for m in _STRING.finditer(data):
        while k < len(offsets) and offsets[k] <= m.start() - shift:
            out.append(offsets[k] + shift)
            k += 1
        if k == len(offsets):
            return out
        shift += (m.end() - m.start()) - 2
    return out + [o + shift for o in offsets[k:]]


def _top_level_arrays(data, stripped, numbers, levels, keys):
    """{key: (start, end)}: byte offsets of the brackets of the top-level arrays named ``keys``.

    ``numbers`` and ``levels`` are the brackets at the top two levels (their numbers among
    all brackets outside strings, and the depth after each). An array is listed when it is
    the value of a key of ``keys`` in the top-level object, that key names no other
    container, and it holds no string; the parser still checks everything else.
    """
    if not levels or levels[0] != 1:
        return {}
    pairs = []  # (opening, closing) bracket numbers of the containers in the top-level object
    i = 1
    while i + 1 < len(levels) and levels[i] == 2 and levels[i + 1] == 1:
        pairs.append((numbers[i], numbers[i + 1]))
        i += 2
    wanted = [numbers[0]] + [b for pair in pairs for b in pair]
    offsets = _original_offsets(data, _bracket_offsets(stripped, wanted))
    if data[offsets[0]] != 0x7B:  # "{"
        return {}
    found = {}
    for j in range(len(pairs)):
        prev, start, end = offsets[2 * j], offsets[2 * j + 1], offsets[2 * j + 2]
        key = None
        for m in _STRING.finditer(data, prev + 1, start):  # the object's text between two containers
            key = m
        if key is None or not _COLON_TO_END.fullmatch(data, key.end(), start):
            continue
        name = _decode_key(key.group())
        found.setdefault(name, []).append((start, end))
    return {k: v[0] for k, v in found.items()
            if k in keys and len(v) == 1 and data[v[0][0]] == 0x5B and data[v[0][1]] == 0x5D
            and data.find(b'"', v[0][0], v[0][1]) < 0}


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
    name, text, data = _read_checked(path, max_bytes, text=True)
    _prescan(data, name)
    return _parse_text(text, data, name)


def read_json_arrays(path, sink, *, max_bytes=None, bytes_per_byte=None):
    """Read one JSON value like :func:`read_json_file`, chosen top-level arrays in chunks.

    The arrays that are values of the keys ``sink.keys`` in the top-level object are
    cut between elements into pieces of about :data:`ARRAY_CHUNK` bytes; each piece is
    parsed by the same strict parser and handed to ``sink`` before the next is read, so
    the elements never exist as Python objects all at once. The rest of the document,
    with those arrays replaced by ``[]``, is parsed as one value. The same rules apply,
    with the same messages and positions as :func:`read_json_file` for the same file.

    Parameters
    ----------
    path : str or os.PathLike
        As for :func:`read_json_file`.
    sink : object
        ``sink.keys``: the top-level keys whose arrays are chunked.
        ``sink.long_rows`` (optional): those of them whose elements (rows) may be cut
        too, between two numbers, when a row is longer than a piece.
        ``sink.begin(key, commas)``: called before the first piece of the array of ``key``,
        with the number of commas in its text (so at most ``commas + 1`` elements, or
        integers in all its rows).
        ``sink.add(key, index, items, carried, open_end)``: the elements ``items`` (a
        list) of the array of ``key``, the first of them being element number ``index``.
        When ``carried > 0``, ``items[0]`` continues that element, of which ``carried``
        items came in earlier calls; when ``open_end``, ``items[-1]`` goes on in the next
        call.
    max_bytes : int, optional
        Largest input read, as for :func:`read_json_file`.
    bytes_per_byte : float, optional
        When given, :func:`refimpl.budget.check_bytes` is asked for this many bytes per
        byte of input before anything is parsed.

    Returns
    -------
    value : object
        The JSON value, each chunked array replaced by an empty list.
    chunked : set of str
        The keys whose arrays went to ``sink``. Only when the value is returned whole
        (``chunked`` empty) may the sink have been given pieces that are not part of it.

    Raises
    ------
    FileFormatError
        As :func:`read_json_file`, with the same message.
    ConfigError
        ``max_bytes`` or ``REFIMPL_MAX_FILE_BYTES`` is not a positive size.
    ResourceError
        The file needs more memory than :func:`refimpl.budget.memory_limit` allows.
    """
    name, _, data = _read_checked(path, max_bytes, text=False)
    if bytes_per_byte:
        budget.check_bytes(bytes_per_byte * len(data), f"reading {name} ({len(data)} bytes)")
    spans = sorted((start, end, key) for key, (start, end) in _prescan(data, name, tuple(sink.keys)).items())
    pieces, prev = [], 0
    for start, end, _ in spans:
        pieces += [data[prev:start], b"[]"]
        prev = end + 1
    pieces.append(data[prev:])
    rest = b"".join(pieces).decode("utf-8")
    del pieces
    if not spans:
        return _parse_text(rest, data, name), set()
    rest_error, value = None, None
    try:
        value = _loads(rest)
    except (_Refused, json.JSONDecodeError) as exc:
        rest_error = exc
    except MemoryError:
        raise _out_of_memory(name, data) from None
    # The whole parser would stop at the first problem in text order: parse the arrays
    # before a syntax error of the rest, or all of them for a refused value (whose
    # position is not known) and keep the one that comes first.
    stop = len(data)
    if isinstance(rest_error, json.JSONDecodeError):
        stop = _rest_to_data(rest, rest_error.pos, spans)
        if stop is None:
            return _whole(data, name, bytes_per_byte)
    del rest
    chunked = set()
    for start, end, key in spans:
        if start >= stop:
            break
        failure = _parse_array(data, start, end, key, name, sink if rest_error is None else None)
        if failure is _UNPLACED or (failure is not None and isinstance(rest_error, _Refused)):
            return _whole(data, name, bytes_per_byte)
        if failure is not None:
            raise failure
        chunked.add(key)
    if isinstance(rest_error, _Refused):
        raise FileFormatError(_refusal_message(rest_error, data, name))
    if rest_error is not None:
        line, col = _line_col(data, stop)
        raise _syntax_error(name, rest_error.msg, line, col, _char_offset(data, stop))
    return value, chunked


def _read_checked(path, max_bytes, *, text):
    """(display name, text or None, bytes) of ``path``: read within the limit, UTF-8, not blank."""
    name = display_name(path)
    limit = _limit(max_bytes)
    raw, mode = _read_bounded(path, name, limit)
    decoded, data = _decode(raw, name, text=text)
    del raw
    if _BLANK.match(data):
        if data:
            raise FileFormatError(f"{name} holds only whitespace, no JSON value")
        pipe = " (a pipe that no writer held open, or that was closed without data)" if stat.S_ISFIFO(mode) else ""
        raise FileFormatError(f"{name} is empty{pipe}")
    return name, decoded, data


def _loads(text):
    return json.loads(text, parse_float=_refuse_float, parse_constant=_refuse_constant,
                      object_pairs_hook=_unique_pairs)


def _parse_text(text, data, name):
    """The JSON value of ``text`` (decoded from ``data``), or FileFormatError."""
    try:
        return _loads(text)
    except _Refused as exc:
        raise FileFormatError(_refusal_message(exc, data, name)) from None
    except json.JSONDecodeError as exc:
        raise _syntax_error(name, exc.msg, exc.lineno, exc.colno, exc.pos) from None
    except MemoryError:
        raise _out_of_memory(name, data) from None


def _syntax_error(name, msg, line, col, position):
    msg = msg[:-3] if msg.endswith(" at") else msg  # "Invalid control character at"
    return FileFormatError(f"{name} is not valid JSON: {msg} at line {line} column {col}", position=position)


def _out_of_memory(name, data):
    return FileFormatError(f"{name}: not enough memory to parse its {len(data)} bytes of JSON "
                           f"(set {ENV_MAX_BYTES} to refuse such files early)")


def _char_offset(data, offset):
    """The number of characters of UTF-8 ``data`` before byte ``offset``."""
    continuation = 0
    for start in range(0, offset, _CHUNK):
        chunk = np.frombuffer(data, np.uint8, min(_CHUNK, offset - start), start)
        continuation += int(np.count_nonzero((chunk & 0xC0) == 0x80))
    return offset - continuation


# ---------------------------------------------------------------- chunked arrays
_UNPLACED = object()  # a parse error whose position lies outside the array: the whole parser decides
_WHOLE_BYTES_PER_BYTE = 48  # peak bytes per byte of the whole-file parse (measured 15 to 45)


def _whole(data, name, bytes_per_byte):
    """Parse ``data`` in one piece, for the rare malformed file whose first error the chunked parse
    cannot place; (value, empty set) or FileFormatError."""
    if bytes_per_byte:
        budget.check_bytes(_WHOLE_BYTES_PER_BYTE * len(data),
                           f"reading {name} ({len(data)} bytes) in one piece to place its first error")
    return _parse_text(data.decode("utf-8"), data, name), set()


def _rest_to_data(rest, pos, spans):
    """Byte offset in the file of character ``pos`` of the text with ``spans`` replaced by ``[]``;
    None inside such a placeholder."""
    offset = pos if rest.isascii() else len(rest[:pos].encode("utf-8"))
    removed = 0
    for start, end, _ in spans:
        if offset < start - removed:
            break
        if offset < start - removed + 2:
            return None
        removed += end + 1 - start - 2
    return offset + removed


def _balance(data, start, end):
    """Opening minus closing brackets in ``data[start:end]`` (a range without strings)."""
    return (data.count(b"[", start, end) + data.count(b"{", start, end)
            - data.count(b"]", start, end) - data.count(b"}", start, end))


class _Depth:
    """The bracket depth at offsets of a string-free range, relative to its start, counted
    from the last offset asked for (forwards or backwards)."""

    def __init__(self, data, start):
        self.data, self.pos, self.depth = data, start, 0

    def at(self, offset):
        if offset >= self.pos:
            self.depth += _balance(self.data, self.pos, offset)
        else:
            self.depth -= _balance(self.data, offset, self.pos)
        self.pos = offset
        return self.depth


def _next_cut(data, depth, pattern, levels, lo, hi):
    """(offset, depth) of the comma of the first match of ``pattern`` in ``data[lo:hi]`` whose
    depth is in ``levels``, or None (also after :data:`_MAX_CUT_TRIES` matches at other depths)."""
    for _ in range(_MAX_CUT_TRIES):
        m = pattern.search(data, lo, hi) if lo < hi else None
        if m is None:
            return None
        comma = m.end() - 1
        level = depth.at(comma)
        if level in levels:
            return comma, level
        lo = comma + 1
    return None


_HEADS = (b"", b"[0", b"[[0")  # text before a piece starting at the "[" (0) or at a comma at depth 1 or 2
_TAILS = (b"", b"]", b"]]")  # text after a piece ending at the "]" (0) or before a comma at depth 1 or 2


def _parse_array(data, start, end, key, name, sink):
    """Parse the array ``data[start:end + 1]`` (no strings in it) piece by piece.

    A piece ends at a comma between two elements (at depth 1, right after a closing
    bracket or a digit) and is parsed as ``"[" + elements + "]"``; a later piece is
    parsed as ``"[0" + ",elements" + "]"`` and its dummy first element dropped, so the
    parser meets every byte in the same state as in the whole file and fails with the
    same message at the same place. The rows of the keys ``sink.long_rows`` may also be
    cut between two numbers (a comma at depth 2, when a row is longer than a piece),
    with ``"[[0"`` and ``"]]"`` around the piece.

    Returns None, or the FileFormatError of the first problem (:data:`_UNPLACED` if
    its position falls outside the array).
    """
    if sink is not None:
        sink.begin(key, data.count(b",", start, end))
    rows = data.find(b"[", start + 1, end) >= 0
    long_rows = rows and key in getattr(sink, "long_rows", ())
    depth = _Depth(data, start)
    piece, level, index, carried = start, 0, 0, 0  # level: depth of the comma the piece starts at
    while True:
        target, cut = piece + ARRAY_CHUNK, None
        if target < end and not rows:
            cut = _next_cut(data, depth, _NUMBER_END, (1,), target, end)
        elif target < end:
            cut = _next_cut(data, depth, _ROW_END, (1,), target, min(end, target + ARRAY_CHUNK))
            if cut is None and long_rows:
                cut = _next_cut(data, depth, _NUMBER_END, (1, 2), target, end)
            elif cut is None:
                cut = _next_cut(data, depth, _ROW_END, (1,), target + ARRAY_CHUNK, end)
        cut, cut_level = cut or (end + 1, 0)
        head = _HEADS[level]
        text = b"".join((head, data[piece:cut], _TAILS[cut_level])).decode("utf-8")
        try:
            items = _loads(text)
        except _Refused as exc:
            return FileFormatError(_refusal_message(exc, data, name))
        except json.JSONDecodeError as exc:
            offset = piece - len(head) + (exc.pos if text.isascii() else len(text[:exc.pos].encode("utf-8")))
            if not start <= offset <= end:
                return _UNPLACED
            line, col = _line_col(data, offset)
            return _syntax_error(name, exc.msg, line, col, _char_offset(data, offset))
        except MemoryError:
            raise _out_of_memory(name, data) from None
        del text
        if level == 1:
            del items[0]
        elif level == 2:
            del items[0][0]  # items[0] continues the row begun in the previous piece
        if sink is not None:
            sink.add(key, index, items, carried, cut_level == 2)
        if cut > end:
            return None
        if cut_level == 2:  # items[-1] goes on in the next piece
            carried = len(items[-1]) + (carried if len(items) == 1 else 0)
            index += len(items) - 1
        else:
            carried, index = 0, index + len(items)
        del items
        piece, level = cut, cut_level
