"""JSON file format ``refimpl/realizable-dataset@1`` (docs/datasets.md), atomic writes and the
one JSON encoding of reports (:func:`json_safe`, :func:`json_text`).

::

    {"format": "refimpl/realizable-dataset@1",
     "vocab_size": 20,
     "collocation": [[x, n_x], ...],
     "orders": {"<q>": [[lower, upper], ...], ...},     (optional)
     "sentences": [[t1, ..., q], ...],
     "next_tokens": [y, ...]}
"""
from __future__ import annotations

import itertools
import json
import math
import re
from pathlib import Path

import numpy as np

from .data import FORMAT_TAG, RealizableDataset, require_dataset, ensure_valid, validate
from .errors import ConfigError, CountMismatchError, FileFormatError, OptimalTokenMismatchError
from .jsonfile import INT64_MAX, INT64_MIN, display_name, read_json_arrays

_FIELDS = ("format", "vocab_size", "collocation", "orders", "sentences", "next_tokens", "optimal")
__all__ = ["json_safe", "json_text", "FORMAT_TAG", "load_dataset", "save_dataset", "dataset_to_dict", "dataset_from_dict",
           "atomic_write_text", "atomic_write_bytes", "check_out_dir", "check_file_optimal"]


def atomic_write_bytes(path, data: bytes):
    """Write ``data`` to ``path`` through a temporary file in the same folder, then rename.

    A reader never sees a half-written file; on error nothing is left behind. Symbolic
    links are written through; a folder, device, FIFO or socket is refused
    (:func:`refimpl.outputs.write_file_atomic`, whose OutputError names ``path``).
    """
    from .outputs import write_file_atomic
    write_file_atomic(path, data)


def check_out_dir(out_dir):
    """``Path(out_dir)``, after checking it can be an output folder (absent, or a directory).

    Called before any work starts, so a bad folder fails fast and nothing is written.
    Raises ConfigError naming the path.
    """
    out = Path(out_dir)
    if out.exists() and not out.is_dir():
        raise ConfigError(f"output folder {str(out)!r} exists and is not a directory")
    return out


def json_safe(obj):
    """Plain-Python copy of a report for standard JSON: dicts, lists and tuples recursively,
    NumPy scalars as Python numbers, NaN as None and +-inf as the strings "inf" / "-inf"
    (JSON has no non-finite numbers; Python's ``Infinity`` is not JSON)."""
    if isinstance(obj, dict):
        return {k: json_safe(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [json_safe(v) for v in obj]
    if isinstance(obj, np.generic):
        obj = obj.item()
    if isinstance(obj, float) and not math.isfinite(obj):
        return None if math.isnan(obj) else ("inf" if obj > 0 else "-inf")
    return obj


def json_text(obj):
    """``json_safe(obj)`` as indented standard JSON text ending in a newline (reports, stdout)."""
    return json.dumps(json_safe(obj), indent=1, allow_nan=False) + "\n"


def atomic_write_text(path, text: str):
    """Text version of :func:`atomic_write_bytes` (UTF-8)."""
    atomic_write_bytes(path, text.encode("utf-8"))


def dataset_to_dict(ds):
    """The file-format object of ``ds`` (plain Python ints and lists): ``ds.to_dict()``."""
    return ds.to_dict()


_QUERY_KEY = re.compile(r"0|[1-9][0-9]*", re.ASCII)
_INT64_RANGE = "the int64 range [-2^63, 2^63-1]"


def _int_text(value):
    """``value`` (an int) for a message: its digits, shortened; never ``str()`` of a huge int."""
    if abs(value).bit_length() > 128:
        return f"an integer of about {int(abs(value).bit_length() * 0.30103) + 1} digits"
    text = str(value)
    return text if len(text) <= 24 else f"{text[:20]}... ({len(text.lstrip('-'))} digits)"


def _show(value, limit=80):
    """A short, safe rendering of a (JSON-like) value for a one-line message."""
    def render(v, depth):
        if isinstance(v, bool) or v is None or isinstance(v, float):
            return repr(v)
        if isinstance(v, int):
            return _int_text(v)
        if isinstance(v, str):
            return repr(v) if len(v) <= 30 else repr(v[:30]) + "..."
        if isinstance(v, list):
            if depth > 2:
                return "[...]"
            items = [render(x, depth + 1) for x in v[:6]] + (["..."] if len(v) > 6 else [])
            return "[" + ", ".join(items) + "]"
        if isinstance(v, dict):
            return "{...}"
        return f"<{type(v).__name__}>"
    text = render(value, 0)
    return text if len(text) <= limit else text[:limit] + "..."


def _describe(value):
    """What ``value`` is, in JSON terms, for "must be ..., got ..." messages."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return f"a boolean ({'true' if value else 'false'})"
    if isinstance(value, int):
        return f"the integer {_int_text(value)}"
    if isinstance(value, float):
        return f"a float ({value!r})"
    if isinstance(value, str):
        return f"a string ({_show(value)})"
    if isinstance(value, list):
        return f"a list ({_show(value)})"
    if isinstance(value, dict):
        return "an object"
    return f"a value of type {type(value).__name__}"


def _all_int64(values):
    """True if every item of the list ``values`` is an int (not a bool) in the int64 range."""
    types = set(map(type, values))
    if not types <= {int} and not all(issubclass(t, int) and not issubclass(t, bool) for t in types):
        return False
    return not values or (min(values) >= INT64_MIN and max(values) <= INT64_MAX)


def _check_int(value, what):
    """FileFormatError unless ``value`` is an int (not a bool) in the int64 range."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise FileFormatError(f"{what} must be an integer, got {_describe(value)}")
    if not INT64_MIN <= value <= INT64_MAX:
        raise FileFormatError(f"{what} is {_int_text(value)}, outside {_INT64_RANGE}")


def _int_rows(value, what, width=None):
    """``value`` after checking it is a list of lists of ints in the int64 range (of ``width``
    ints each when given); FileFormatError naming the first bad entry otherwise."""
    if not isinstance(value, list):
        raise FileFormatError(f"field {what!r} must be a list, got {_describe(value)}", field=what)
    row_types = set(map(type, value))
    if row_types <= {list} or all(issubclass(t, list) for t in row_types):
        if width is None or set(map(len, value)) <= {width}:
            if _all_int64(list(itertools.chain.from_iterable(value))):
                return value
    shape = f"a list of {width} integers" if width else "a list of integers"
    for j, row in enumerate(value):  # name the first bad entry
        if not isinstance(row, list) or (width is not None and len(row) != width):
            raise FileFormatError(f"field {what!r} entry {j} must be {shape}, got {_describe(row)}",
                                  field=what, entry=j)
        for i, t in enumerate(row):
            _check_int_entry(t, f"field {what!r} entry {j} item {i}", what, j)
    return value


def _check_int_entry(value, place, what, entry):
    try:
        _check_int(value, place)
    except FileFormatError as exc:
        raise FileFormatError(str(exc), field=what, entry=entry) from None


def _query_key(key):
    """The query token of an ``orders`` key: canonical decimal text (or a Python int)."""
    if isinstance(key, str):
        if _QUERY_KEY.fullmatch(key):
            if len(key) <= 19 and int(key) <= INT64_MAX:
                return int(key)
            raise FileFormatError(f"orders key {_show(key)} is outside {_INT64_RANGE}", field="orders")
        raise FileFormatError(f"orders key {_show(key)} is not a query token: keys are decimal numbers "
                              f"without sign, spaces, underscores or leading zeros, such as '4'", field="orders")
    if isinstance(key, int) and not isinstance(key, bool):
        _check_int(key, "orders key")
        return key
    raise FileFormatError(f"orders key {_show(key)} is not a query token (a decimal string such as '4')",
                          field="orders")


def _int_list(value, field):
    """``value`` if it is a flat list of int64 integers, else FileFormatError naming the field
    and the first bad entry."""
    if not isinstance(value, list):
        raise FileFormatError(f"field {field!r} must be a list of integers, got {_describe(value)}",
                              field=field)
    if not _all_int64(value):
        for j, t in enumerate(value):
            _check_int_entry(t, f"field {field!r} entry {j}", field, j)
    return value


def dataset_from_dict(obj):
    """Build a dataset from the file-format object; raises FileFormatError on bad structure.

    Parameters
    ----------
    obj : dict
        The object of a dataset file (module docstring), from a file or built in Python.

    Returns
    -------
    RealizableDataset
        Not validated: realizability and value ranges (``vocab_size`` at least 2,
        tokens in ``0..M-1``, a non-empty dataset) are checked by :func:`validate`,
        which :func:`load_dataset` runs.

    Raises
    ------
    FileFormatError
        ``obj`` is not an object with the format tag and exactly the known fields;
        ``vocab_size`` is not an integer; a list field does not hold integers in the
        right shape; an integer lies outside the int64 range; an ``orders`` key is not
        a query written in canonical decimal (``"4"``, not ``"04"``, ``" 4"``,
        ``"+4"`` or ``"4_0"``), or two keys name the same query.
    """
    if not isinstance(obj, dict):
        raise FileFormatError(f"a dataset file holds one JSON object, got {_describe(obj)}")
    if "format" not in obj:
        raise FileFormatError(f"missing field 'format' (the format tag {FORMAT_TAG!r})", fields=["format"])
    tag = obj["format"]
    if tag != FORMAT_TAG:
        raise FileFormatError(f"unknown format tag {_show(tag)}; expected {FORMAT_TAG!r}",
                              format=tag if isinstance(tag, str) else None)
    unknown = sorted((k for k in obj if k not in _FIELDS), key=repr)
    if unknown:
        raise FileFormatError(f"unknown field(s) {', '.join(_show(k) for k in unknown[:5])}"
                              f"{' ...' if len(unknown) > 5 else ''}", fields=[_show(k) for k in unknown[:5]])
    missing = [k for k in ("vocab_size", "collocation", "sentences", "next_tokens") if k not in obj]
    if missing:
        raise FileFormatError(f"missing field(s) {', '.join(missing)}", fields=missing)
    M = obj["vocab_size"]
    try:
        _check_int(M, "vocab_size")
    except FileFormatError as exc:
        raise FileFormatError(str(exc), field="vocab_size") from None
    colloc = _int_rows(obj["collocation"], "collocation", width=2)
    sentences = _int_rows(obj["sentences"], "sentences")
    nxt = _int_list(obj["next_tokens"], "next_tokens")
    optimal = obj.get("optimal")
    if optimal is not None:
        _int_list(optimal, "optimal")
    orders = None
    if obj.get("orders") is not None:
        raw = obj["orders"]
        if not isinstance(raw, dict):
            raise FileFormatError(f"field 'orders' must be an object {{query: [[lower, upper], ...]}}, "
                                  f"got {_describe(raw)}", field="orders")
        orders = {}
        for key, rel in raw.items():
            q = _query_key(key)
            if q in orders:
                raise FileFormatError(f"orders keys {_show(key)} and an earlier key both name query {q}",
                                      field="orders", query=q)
            rows = _int_rows(rel, f"orders[{q}]", width=2)
            orders[q] = np.asarray(rows, dtype=np.int64).reshape(-1, 2)
    ds = RealizableDataset(M, np.asarray(colloc, dtype=np.int64).reshape(-1, 2), sentences, nxt, orders)
    return _attach_optimal(ds, None if optimal is None else np.asarray(optimal, dtype=np.int64))


def _attach_optimal(ds, optimal):
    """Keep a file's ``optimal`` field on ``ds`` (checked by :func:`check_file_optimal`)."""
    if optimal is not None:
        if len(optimal) != ds.n_sentences:
            raise CountMismatchError(f"{ds.n_sentences} sentences but {len(optimal)} optimal tokens",
                                     n_sentences=ds.n_sentences, n_optimal=len(optimal))
        ds._file_optimal = optimal
    return ds


def check_file_optimal(ds):
    """Compare a file's ``optimal`` field (if it had one) with the validated optimal tokens.

    Parameters
    ----------
    ds : RealizableDataset
        A dataset read by :func:`dataset_from_dict` or :func:`load_dataset`.

    Returns
    -------
    None

    Raises
    ------
    OptimalTokenMismatchError
        At the first sentence whose stored optimal token differs, naming both tokens.
    DatasetError
        ``ds`` is not realizable (validation runs first).

    Examples
    --------
    >>> import refimpl as ri
    >>> ds = ri.io.dataset_from_dict(ri.generate(vocab_size=5, n_sentences=4, seed=1).to_dict())
    >>> ri.io.check_file_optimal(ds)
    """
    stored = getattr(ds, "_file_optimal", None)
    if stored is None:
        return
    ensure_valid(ds)
    bad = np.flatnonzero(stored != ds.optimal)
    if len(bad):
        i = int(bad[0])
        sent = ds.sentence(i)
        raise OptimalTokenMismatchError(
            f"sentence {i} (query {sent[-1]}): the file gives optimal token {stored[i]}, but the optimal "
            f"token is {ds.optimal[i]}", sentence=i, tokens=sent[:64], query=sent[-1],
            stored=int(stored[i]), computed=int(ds.optimal[i]))


_CHUNKED_FIELDS = ("collocation", "sentences", "next_tokens", "optimal")  # in the order dataset_from_dict checks them
LOAD_BYTES_PER_BYTE = 6
"""Peak memory of reading a dataset file per byte of file, asked of :func:`refimpl.budget.check_bytes`
before parsing. Measured (bench/bench_validate.py): 2.1 to 2.3 with tokens of 8 digits, 3.4 with 3
digits, 4.7 to 5.3 with one digit (two bytes of text per 8-byte token). Validation is not included."""


class _IntArraySink:
    """Receives the chunks of a dataset file's list fields (:func:`refimpl.jsonfile.read_json_arrays`),
    checks them as :func:`dataset_from_dict` does and stores their integers in int64 buffers."""

    keys = _CHUNKED_FIELDS
    long_rows = ("sentences",)  # rows that may come in parts
    _WIDTH = {"collocation": 2, "sentences": None, "next_tokens": 0, "optimal": 0}  # 0: a flat list of integers

    def __init__(self):
        self.values, self.count, self.lengths, self.errors = {}, {}, {}, {}

    def begin(self, key, commas):
        self.values[key] = np.empty(commas + 1, dtype=np.int64)  # enough for a well-formed array
        self.count[key], self.lengths[key] = 0, []

    def add(self, key, index, items, carried=0, open_end=False):
        """Check and store ``items``, the elements of ``key`` from number ``index`` on; ``items[0]``
        continues a row of which ``carried`` integers came before, and ``items[-1]`` goes on in the
        next call when ``open_end``."""
        if key in self.errors:  # only the first bad entry is reported; later pieces are parsed, not stored
            return
        width, lengths, flat = self._WIDTH[key], None, items
        if width != 0:
            if not set(map(type, items)) <= {list}:
                return self._find_bad(key, index, items, carried)
            lengths = np.fromiter(map(len, items), dtype=np.int64, count=len(items))
            if width is not None and np.any(lengths != width):
                return self._find_bad(key, index, items, carried)
            flat = list(itertools.chain.from_iterable(items))
        if not set(map(type, flat)) <= {int}:
            return self._find_bad(key, index, items, carried)
        n, buf = self.count[key], self.values[key]
        if n + len(flat) > len(buf):  # not reached for well-formed text
            buf = self.values[key] = np.concatenate([buf[:n], np.empty(max(len(flat), n), dtype=np.int64)])
        try:
            buf[n:n + len(flat)] = flat
        except OverflowError:
            return self._find_bad(key, index, items, carried)
        self.count[key] = n + len(flat)
        if lengths is not None:
            if len(lengths):
                lengths[0] += carried
            self.lengths[key].append(lengths[:-1] if open_end else lengths)

    def _find_bad(self, key, index, items, carried):
        """Record the error :func:`dataset_from_dict` raises for the first bad entry among ``items``."""
        width = self._WIDTH[key]
        shape = f"a list of {width} integers" if width else "a list of integers"
        try:
            for j, item in enumerate(items, start=index):
                if width == 0:
                    _check_int_entry(item, f"field {key!r} entry {j}", key, j)
                    continue
                if not isinstance(item, list) or (width is not None and len(item) != width):
                    raise FileFormatError(f"field {key!r} entry {j} must be {shape}, got {_describe(item)}",
                                          field=key, entry=j)
                for i, t in enumerate(item, start=carried if j == index else 0):
                    _check_int_entry(t, f"field {key!r} entry {j} item {i}", key, j)
        except FileFormatError as exc:
            self.errors[key] = exc

    def array(self, key):
        """The integers of ``key``, int64 (a view of its buffer)."""
        return self.values[key][:self.count[key]]

    def offsets(self, key):
        """int64 (rows + 1,): where each row of ``key`` starts in :meth:`array`, then its end."""
        lengths = self.lengths[key]
        out = np.zeros(sum(map(len, lengths)) + 1, dtype=np.int64)
        np.cumsum(np.concatenate(lengths) if lengths else out[:0], out=out[1:])
        return out


def _dataset_from_chunks(obj, sink, chunked):
    """:func:`dataset_from_dict` for a document whose fields ``chunked`` went to ``sink``
    (and are ``[]`` in ``obj``): the same dataset, or the same first error."""
    bad = next((k for k in _CHUNKED_FIELDS if k in chunked and k in sink.errors), None)
    if bad is not None:
        earlier = dict(obj)  # the fields checked before ``bad`` as they are, the others made harmless
        for k in _CHUNKED_FIELDS[_CHUNKED_FIELDS.index(bad):]:
            if k in earlier:
                earlier[k] = []
        if earlier.get("orders") is not None:
            earlier["orders"] = None
        dataset_from_dict(earlier)
        raise sink.errors[bad]
    ds = dataset_from_dict(obj)
    if not chunked:
        return ds
    colloc = sink.array("collocation").reshape(-1, 2) if "collocation" in chunked else ds.collocation_pairs
    if "sentences" in chunked:
        flat, offsets = sink.array("sentences"), sink.offsets("sentences")
    else:
        flat, offsets = ds.flat_tokens, ds.offsets
    nxt = sink.array("next_tokens") if "next_tokens" in chunked else ds.next_tokens
    optimal = sink.array("optimal") if "optimal" in chunked else getattr(ds, "_file_optimal", None)
    out = RealizableDataset.from_flat(ds.vocab_size, colloc, flat, offsets, nxt, ds.orders)
    return _attach_optimal(out, optimal)


def load_dataset(path, *, check=True, max_bytes=None):
    """Read a dataset file and, unless ``check=False``, validate it.

    Parameters
    ----------
    path : str or os.PathLike
        The file (a regular file, a pipe or a character device), read by
        :func:`refimpl.jsonfile.read_json_arrays`: strict JSON, UTF-8, within a size limit,
        with the same rules and messages as :func:`refimpl.jsonfile.read_json_file`. The
        ``collocation``, ``sentences`` and ``next_tokens`` lists are parsed in pieces
        straight into int64 arrays, so the peak memory of reading is a few times the file
        size; it is checked against :func:`refimpl.budget.memory_limit` first.
    check : bool
        Run :func:`validate` (realizability) after reading.
    max_bytes : int, optional
        Largest file read; default ``REFIMPL_MAX_FILE_BYTES`` or 1 GiB.

    Returns
    -------
    RealizableDataset

    Raises
    ------
    FileFormatError
        Unreadable or malformed files (docs/datasets.md, "Reading files: limits and
        strictness"), with a one-line message naming the path.
    DatasetError
        The specific subclass for a dataset that is not realizable.
    ResourceError
        Reading the file would need more memory than this machine allows.

    Examples
    --------
    >>> import os, tempfile
    >>> import refimpl as ri
    >>> path = os.path.join(tempfile.mkdtemp(), "ds.json")
    >>> ri.save_dataset(ri.generate(vocab_size=6, n_sentences=20, seed=4), path)
    >>> ri.load_dataset(path)
    RealizableDataset(M=6, N=20, |C|=6, Lmax=6, orders=induced)
    """
    sink = _IntArraySink()
    obj, chunked = read_json_arrays(path, sink, max_bytes=max_bytes, bytes_per_byte=LOAD_BYTES_PER_BYTE)
    try:
        ds = _dataset_from_chunks(obj, sink, chunked)
    except FileFormatError as exc:
        exc.args = (f"{display_name(path)}: {exc}",)  # name the file; the witness stays as it is
        raise
    del obj, sink
    if check:
        validate(ds)
        check_file_optimal(ds)
    return ds


def save_dataset(ds, path):
    """Write ``ds`` to ``path`` in the dataset file format (docs/datasets.md), atomically.

    One sentence per line. The data goes to a temporary file in the same folder that then
    replaces ``path`` (:func:`refimpl.outputs.write_file_atomic`): a reader sees the old
    file or the new one, never a part.

    Parameters
    ----------
    ds : RealizableDataset
    path : str or os.PathLike
        The file; a symbolic link is written through.

    Returns
    -------
    None

    Raises
    ------
    TypeError
        ``ds`` is not a RealizableDataset (naming what was given).
    OutputError
        ``path`` is a directory, device, FIFO or socket, its folder does not exist, or the
        system refuses the write (one line naming ``path``, never the temporary file).

    Examples
    --------
    >>> import os, tempfile
    >>> import refimpl as ri
    >>> ds = ri.generate(vocab_size=6, n_sentences=20, seed=4)
    >>> path = os.path.join(tempfile.mkdtemp(), "ds.json")
    >>> ri.save_dataset(ds, path)
    >>> ri.load_dataset(path) == ds
    True
    """
    require_dataset(ds, "save_dataset")
    atomic_write_text(path, ds.to_json_text())
