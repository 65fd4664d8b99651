"""JSON file format ``refimpl/realizable-dataset@1`` (SPEC section 3), atomic writes and the
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

import json
import math
import os
import tempfile
from pathlib import Path

import numpy as np

from .data import RealizableDataset, validate
from .errors import ConfigError, FileFormatError

FORMAT_TAG = "refimpl/realizable-dataset@1"
_UMASK = os.umask(0o022)
os.umask(_UMASK)
__all__ = ["json_safe", "json_text", "FORMAT_TAG", "load_dataset", "save_dataset", "dataset_to_dict", "dataset_from_dict",
           "atomic_write_text", "atomic_write_bytes", "check_out_dir"]


def atomic_write_bytes(path, data: bytes):
    """Write ``data`` to ``path`` through a temporary file in the same folder, then rename.

    A reader never sees a half-written file; on error nothing is left behind.
    """
    path = Path(path)
    if path.is_dir():
        raise IsADirectoryError(f"{path} is a directory")
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent or ".")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.chmod(tmp, 0o666 & ~_UMASK)  # mkstemp makes 0600; give the file the usual mode
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


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
    """The file-format object of ``ds`` (plain Python ints and lists)."""
    out = {
        "format": FORMAT_TAG,
        "vocab_size": ds.vocab_size,
        "collocation": ds.collocation_pairs.tolist(),
    }
    if ds.orders is not None:
        out["orders"] = {str(q): rel.tolist() for q, rel in sorted(ds.orders.items())}
    out["sentences"] = ds.sentences()
    out["next_tokens"] = ds.next_tokens.tolist()
    return out


def _int_rows(value, what, width=None):
    if not isinstance(value, list):
        raise FileFormatError(f"field {what!r} must be a list, got {type(value).__name__}", field=what)
    for j, row in enumerate(value):
        items = row if isinstance(row, list) else None
        if items is None or (width is not None and len(items) != width) or \
                not all(isinstance(t, int) and not isinstance(t, bool) for t in items):
            shape = f"a list of {width} integers" if width else "a list of integers"
            raise FileFormatError(f"field {what!r} entry {j} must be {shape}, got {row!r}"[:300],
                                  field=what, entry=j)
    return value


def dataset_from_dict(obj):
    """Build a dataset from the file-format object; raises FileFormatError on bad structure.

    Realizability is not checked here (see :func:`load_dataset`)."""
    if not isinstance(obj, dict):
        raise FileFormatError(f"a dataset file holds one JSON object, got {type(obj).__name__}")
    tag = obj.get("format")
    if tag != FORMAT_TAG:
        raise FileFormatError(f"unknown format tag {tag!r}; expected {FORMAT_TAG!r}", format=tag)
    missing = [k for k in ("vocab_size", "collocation", "sentences", "next_tokens") if k not in obj]
    if missing:
        raise FileFormatError(f"missing field(s) {', '.join(missing)}", fields=missing)
    unknown = sorted(set(obj) - {"format", "vocab_size", "collocation", "orders", "sentences", "next_tokens"})
    if unknown:
        raise FileFormatError(f"unknown field(s) {', '.join(unknown)}", fields=unknown)
    M = obj["vocab_size"]
    if not isinstance(M, int) or isinstance(M, bool) or M < 1:
        raise FileFormatError(f"vocab_size must be a positive integer, got {M!r}", field="vocab_size")
    colloc = _int_rows(obj["collocation"], "collocation", width=2)
    sentences = _int_rows(obj["sentences"], "sentences")
    nxt = obj["next_tokens"]
    if not isinstance(nxt, list) or not all(isinstance(t, int) and not isinstance(t, bool) for t in nxt):
        raise FileFormatError("field 'next_tokens' must be a list of integers", field="next_tokens")
    orders = None
    if obj.get("orders") is not None:
        raw = obj["orders"]
        if not isinstance(raw, dict):
            raise FileFormatError("field 'orders' must be an object {query: [[lower, upper], ...]}",
                                  field="orders")
        orders = {}
        for key, rel in raw.items():
            try:
                q = int(key)
            except ValueError:
                raise FileFormatError(f"orders key {key!r} is not a token", field="orders") from None
            orders[q] = np.asarray(_int_rows(rel, f"orders[{key}]", width=2), dtype=np.int64).reshape(-1, 2)
    return RealizableDataset(M, np.asarray(colloc, dtype=np.int64).reshape(-1, 2), sentences, nxt, orders)


def load_dataset(path, *, check=True):
    """Read a dataset file (SPEC format) and, unless ``check=False``, validate it.

    Raises FileFormatError for unreadable or malformed files and the specific
    DatasetError subclass for a dataset that is not realizable.
    """
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise FileFormatError(f"cannot read {path}: {exc}") from None
    try:
        obj = json.loads(text)
    except json.JSONDecodeError as exc:
        raise FileFormatError(f"{path} is not valid JSON: {exc.msg} at line {exc.lineno} column {exc.colno}",
                              position=exc.pos) from None
    ds = dataset_from_dict(obj)
    if check:
        validate(ds)
    return ds


def save_dataset(ds, path):
    """Write ``ds`` to ``path`` in the SPEC JSON format, atomically. One sentence per line."""
    obj = dataset_to_dict(ds)
    head = {k: v for k, v in obj.items() if k not in ("sentences", "next_tokens")}
    lines = ["{"]
    for k, v in head.items():
        lines.append(f" {json.dumps(k)}: {json.dumps(v, separators=(',', ':'))},")
    sents = ",\n  ".join(json.dumps(s, separators=(",", ":")) for s in obj["sentences"])
    lines.append(f' "sentences": [\n  {sents}\n ],' if obj["sentences"] else ' "sentences": [],')
    lines.append(f' "next_tokens": {json.dumps(obj["next_tokens"], separators=(",", ":"))}')
    lines.append("}")
    atomic_write_text(path, "\n".join(lines) + "\n")
