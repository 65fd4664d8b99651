"""Chunked loading of dataset files (``load_dataset`` via ``refimpl.jsonfile.read_json_arrays``).

The ``collocation``, ``sentences`` and ``next_tokens`` arrays are parsed in pieces of
about ``refimpl.jsonfile.ARRAY_CHUNK`` bytes straight into int64 arrays. These tests
make the pieces tiny and check the result against the whole-file path
(``dataset_from_dict(read_json_file(path))``): the same dataset for valid files, and
the same exception with the same message for broken ones.
"""
import json
import os
import random
import re
import subprocess
import sys
import textwrap
from contextlib import contextmanager
from pathlib import Path
from unittest import mock

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import refimpl as ri
from refimpl import errors, io, jsonfile
from refimpl.io import dataset_from_dict, load_dataset
from refimpl.jsonfile import display_name, read_json_file
from refimpl.testing import realizable_datasets

HOSTILE = Path(__file__).parent / "data" / "hostile"
DEFAULT_CHUNK = jsonfile.ARRAY_CHUNK
CHUNKS = (1, 2, 3, 5, 8, 13, 64, DEFAULT_CHUNK)


# --------------------------------------------------------------- helpers
def load_whole(path):
    """The whole-file path: one ``json.loads`` of the file, then ``dataset_from_dict``."""
    obj = read_json_file(path)
    try:
        return dataset_from_dict(obj)
    except errors.FileFormatError as exc:
        exc.args = (f"{display_name(path)}: {exc}",)
        raise


@contextmanager
def chunk_size(n):
    with mock.patch.object(jsonfile, "ARRAY_CHUNK", n):
        yield


def load_chunked(path, chunk):
    with chunk_size(chunk):
        return load_dataset(path, check=False)


def snapshot(ds):
    """Everything a loaded dataset holds, as plain Python values (and the array dtypes)."""
    arrays = (ds.collocation_pairs, ds.flat_tokens, ds.offsets, ds.next_tokens)
    assert all(a.dtype == np.int64 for a in arrays)
    orders = None if ds.orders is None else {q: r.tolist() for q, r in sorted(ds.orders.items())}
    return (ds.vocab_size, ds.collocation_pairs.shape, *(a.tolist() for a in arrays), orders)


def outcome(load, path, *args):
    """("ok", snapshot) or (exception class name, message)."""
    try:
        ds = load(path, *args)
    except errors.DatasetError as exc:
        return type(exc).__name__, str(exc)
    return "ok", snapshot(ds)


def assert_same(path, chunks=CHUNKS):
    """Chunked loading at every size in ``chunks`` gives what the whole-file path gives."""
    expected = outcome(load_whole, path)
    for chunk in chunks:
        assert outcome(load_chunked, path, chunk) == expected, (chunk, Path(path).read_bytes()[:300])
    return expected


def dump(value, rng, key_escapes=False):
    """``value`` as JSON text with random whitespace (spaces, tabs, CR, LF) between all tokens."""
    def ws():
        return "".join(rng.choice([" ", "\t", "\n", "\r\n", "  \n   "]) for _ in range(rng.choice([0, 0, 1, 2])))

    def key(k):
        text = json.dumps(k)
        return text.replace("e", "\\u0065") if key_escapes else text

    if isinstance(value, dict):
        items = [f"{ws()}{key(k)}{ws()}:{ws()}{dump(v, rng, key_escapes)}{ws()}" for k, v in value.items()]
        return "{" + ",".join(items) + ws() + "}"
    if isinstance(value, list):
        return "[" + ws() + ",".join(f"{ws()}{dump(v, rng, key_escapes)}{ws()}" for v in value) + ws() + "]"
    return json.dumps(value)


def write(path, text, bom=False):
    path.write_bytes((b"\xef\xbb\xbf" if bom else b"") + text.encode("utf-8"))
    return path


# --------------------------------------------------------------- valid files
@settings(max_examples=40)
@given(ds=realizable_datasets(max_vocab=30, max_sentences=30, max_len=8, orders="either"),
       chunk=st.sampled_from(CHUNKS))
def test_saved_datasets_load_identically(tmp_path_factory, ds, chunk):
    path = tmp_path_factory.mktemp("saved") / "d.json"
    ds.save(path)
    got = load_chunked(path, chunk)
    assert got == ds
    assert snapshot(got) == snapshot(load_whole(path))


@settings(max_examples=40)
@given(ds=realizable_datasets(max_vocab=30, max_sentences=20, max_len=8, orders="either"),
       seed=st.integers(0, 2**32 - 1), bom=st.booleans(), key_escapes=st.booleans(),
       shuffle=st.booleans())
def test_odd_whitespace_bom_escaped_keys_and_field_order(tmp_path_factory, ds, seed, bom, key_escapes, shuffle):
    rng = random.Random(seed)
    obj = ds.to_dict()
    if shuffle:
        keys = list(obj)
        rng.shuffle(keys)
        obj = {k: obj[k] for k in keys}
    path = write(tmp_path_factory.mktemp("odd") / "d.json", dump(obj, rng, key_escapes) + "\n", bom)
    kind, snap = assert_same(path, chunks=(1, 4, 32, DEFAULT_CHUNK))
    assert kind == "ok" and snap == snapshot(ds)


def test_chunk_boundaries_at_every_position(tmp_path):
    """A small file with every possible piece size: every comma between elements is a cut
    for some size, and long sentences are cut between their numbers too."""
    ds = ri.generate(12, 25, 1, 9, seed=3, store_orders=True)
    path = tmp_path / "d.json"
    ds.save(path)
    expected = snapshot(ds)
    for chunk in range(1, len(path.read_bytes()) + 2):
        assert snapshot(load_chunked(path, chunk)) == expected, chunk


def test_pieces_really_are_small(tmp_path):
    """With a piece size of 1 every sentence and every number of next_tokens comes alone,
    and a long sentence comes in parts."""
    ds = ri.RealizableDataset(50, {i: (i + 1) % 50 for i in range(50)}, [[1, 2], list(range(40)), [7]], [3, 40, 8])
    path = tmp_path / "d.json"
    ds.save(path)
    calls = []
    real_add = io._IntArraySink.add

    def spy(self, key, index, items, carried=0, open_end=False):
        calls.append((key, index, len(items), carried, open_end))
        return real_add(self, key, index, items, carried, open_end)

    with mock.patch.object(io._IntArraySink, "add", spy):
        got = load_chunked(path, 1)
    assert snapshot(got) == snapshot(ds)
    sentences = [c for c in calls if c[0] == "sentences"]
    assert len(sentences) > 3 and any(c[4] for c in sentences) and any(c[3] for c in sentences)
    assert max(c[2] for c in sentences) <= 2
    assert [c[1] for c in calls if c[0] == "next_tokens"] == [0, 1, 2]
    assert len([c for c in calls if c[0] == "collocation"]) == 50


@pytest.mark.parametrize("text", [
    '{"format": "refimpl/realizable-dataset@1", "vocab_size": 3, "collocation": [], "sentences": [], '
    '"next_tokens": []}',
    '{"next_tokens":[1],"sentences":[[0]],"collocation":[[0,1]],"vocab_size":3,'
    '"format":"refimpl/realizable-dataset@1"}',
    '{"format": "refimpl/realizable-dataset@1", "vocab_size": 3, "collocation": [[0, 1]], '
    '"sentences": [[], [0], []], "next_tokens": [1, 1, 1]}',
    '{"format": "refimpl/realizable-dataset@1", "vocab_size": 3, "collocation": [[0, 1]], '
    '"sentences": [[0, -0, 0]], "next_tokens": [-0], "orders": null}',
    '{"format": "refimpl/realizable-dataset@1", "vocab_size": 3, "collocation": [[0, 1]], '
    '"sentences": [[0, 9223372036854775807, -9223372036854775808]], "next_tokens": [1]}',
])
def test_small_valid_documents(tmp_path, text):
    kind, _ = assert_same(write(tmp_path / "d.json", text))
    assert kind == "ok"


# --------------------------------------------------------------- broken files
VALID = ('{"format": "refimpl/realizable-dataset@1", "vocab_size": 50,\n'
         ' "collocation": [[0, 1], [1, 2], [2, 3], [3, 4], [4, 5]],\n'
         ' "orders": {"4": [[0, 4], [4, 1]]},\n'
         ' "sentences": [\n  [0, 1, 4],\n  [1, 2, 3, 4, 2, 1, 0, 4],\n  [3, 3],\n  [2, 4]\n ],\n'
         ' "next_tokens": [2, 3, 4, 4]}\n')

# Text put in place of one number of VALID: every kind of value the format refuses, and
# syntax errors of every shape.
PLANTED = ["1.5", "2e3", "-0.0", "true", "false", "null", '"7"', "[3]", "[]", "{}", "[[1]]",
           "99999999999999999999", "-9223372036854775809", "9223372036854775808", "NaN", "-Infinity",
           "", "1 2", "1,,2", "1,", ",1", "]", "[", "}", "{", "01", "-", "+1", "1.", "é", "1]", "[1",
           "tru", '"sentences": [[1]]']


def number_spans(text):
    return [m.span() for m in re.finditer(r"-?\d+", text)]


@pytest.mark.parametrize("planted", PLANTED)
def test_planted_values_give_identical_errors(tmp_path, planted):
    """The bad value at every number of the file: same exception, same message, for tiny
    pieces and for one piece."""
    path = tmp_path / "d.json"
    errors_seen = 0
    for a, b in number_spans(VALID):
        write(path, VALID[:a] + planted + VALID[b:])
        kind, _ = assert_same(path, chunks=(1, 2, 6, DEFAULT_CHUNK))
        errors_seen += kind != "ok"
    assert errors_seen > 0


@pytest.mark.parametrize("text,expected", [
    # a "sentences" key in a string, in a nested object, twice, or as a string value
    (VALID.replace('"refimpl/realizable-dataset@1"', '"x\\"sentences\\": [[1]]"'), "unknown format tag"),
    (VALID.replace('"orders": {"4"', '"orders": {"sentences"'), "orders key 'sentences' is not a query token"),
    (VALID.replace('"orders": {"4": [[0, 4], [4, 1]]}', '"sentences": [[1, 2]]'),
     "duplicate key 'sentences' in the top-level object"),
    (VALID.replace('"orders": {"4": [[0, 4], [4, 1]]}', '"sentences": 5'),
     "duplicate key 'sentences' in the top-level object"),
    (VALID.replace('"orders"', '"sentences"'), "duplicate key 'sentences'"),
    # errors in the rest of the document, before and after the chunked arrays
    (VALID.replace('"vocab_size": 50', '"vocab_size": 5.0'), "vocab_size must be an integer, got a float 5.0"),
    (VALID.replace('4, 4]}', '4, 4]} x'), "Extra data at line 10"),
    (VALID.replace('4, 4]}', '4, 4]'), "Expecting ',' delimiter at line 11 column 1"),
    (VALID.replace('4, 4]}', '4, 4], "next_tokens": [1]}'), "duplicate key 'next_tokens'"),
    (VALID.replace('4, 4]}', '4, 4], "extra": 1.5}'), "got a float 1.5"),
    (VALID.replace('4, 4]}', '4, 4], "extra": 1}'), "unknown field(s) 'extra'"),
    (VALID.replace('"vocab_size": 50', '"vocab_size": true'), "vocab_size must be an integer, got a boolean"),
    # two problems: the first in the text (or in dataset_from_dict's order) wins
    (VALID.replace("[3, 3]", "[3, 1.5]").replace('"vocab_size": 50', '"vocab_size": 2.5'), "got a float 2.5"),
    (VALID.replace("[3, 3]", "[3, ,]").replace('4, 4]}', '4, 4], "x": 2.5}'), "Expecting value at line 7"),
    (VALID.replace("[3, 3]", "[3, true]").replace('"vocab_size": 50', '"vocab_size": "5"'),
     "vocab_size must be an integer, got a string"),
    (VALID.replace("[3, 3]", "[3, true]").replace('4, 4]}', '4, null]}'),
     "field 'sentences' entry 2 item 1 must be an integer, got a boolean"),
    (VALID.replace("[3, 3]", "[3, true]").replace('[[0, 1]', '[[0, 1, 2]'),
     "field 'collocation' entry 0 must be a list of 2 integers"),
    (VALID.replace("[3, 3]", "[3, true]").replace('"orders": {"4"', '"orders": {"04"'),
     "field 'sentences' entry 2 item 1"),
    (VALID.replace('"format": "refimpl/realizable-dataset@1", ', ''), "missing field 'format'"),
    (VALID.replace('4, 4]}', '4, null]}').replace('"vocab_size": 50,', ''), "missing field(s) vocab_size"),
    (VALID.replace('\n "next_tokens": [2, 3, 4, 4]', '').replace('[2, 4]\n ],', '[2, true]\n ]'),
     "missing field(s) next_tokens"),
    (VALID.replace("[1, 2, 3, 4, 2, 1, 0, 4]", "[1, 2, 3, 4, 2, 1, 0, [4]]"),
     "field 'sentences' entry 1 item 7 must be an integer, got a list ([4])"),
])
def test_specific_errors_are_identical(tmp_path, text, expected):
    assert text != VALID
    path = write(tmp_path / "d.json", text)
    kind, message = assert_same(path)
    assert expected in message, message


def test_long_sentence_cut_between_numbers_names_the_right_item(tmp_path):
    """A bad item deep in a sentence that arrives in parts: the same entry and item numbers."""
    sentence = list(range(3, 200))
    for bad_at in (0, 1, 57, 196):
        bad = list(sentence)
        bad[bad_at] = True
        obj = {"format": "refimpl/realizable-dataset@1", "vocab_size": 300, "collocation": [[0, 1]],
               "sentences": [[1, 2], bad, [0]], "next_tokens": [1, 1, 1]}
        path = write(tmp_path / "d.json", json.dumps(obj))
        kind, message = assert_same(path)
        assert f"field 'sentences' entry 1 item {bad_at} must be an integer, got a boolean (true)" in message


def test_random_damage_gives_identical_results(tmp_path):
    """Bytes inserted, deleted and repeated at random in a valid file: loading in tiny
    pieces gives the same dataset or the same error as the whole-file path."""
    rng = random.Random(20240611)
    base = VALID.encode()
    alphabet = [b"[", b"]", b"{", b"}", b'"', b"\\", b",", b":", b"-", b".", b"e", b"0", b"9" * 25, b"1e999",
                b"NaN", b"\xff", b"\xef\xbb\xbf", b" ", b"\n", b"true", b"null", b'"4"', b"],[", b"1,"]
    path = tmp_path / "damaged.json"
    for _ in range(300):
        data = bytearray(base)
        for _ in range(rng.randint(1, 3)):
            at = rng.randrange(len(data) + 1)
            op = rng.random()
            if op < 0.5:
                data[at:at] = rng.choice(alphabet)
            elif op < 0.8:
                del data[at:at + rng.randint(1, 8)]
            else:
                data[at:at] = data[at:at + rng.randint(1, 30)]
        path.write_bytes(bytes(data))
        assert_same(path, chunks=(1, 3, DEFAULT_CHUNK))


@pytest.mark.parametrize("name", sorted(p.name for p in HOSTILE.iterdir()))
def test_hostile_corpus_is_identical_in_tiny_pieces(name):
    assert_same(HOSTILE / name, chunks=(1, 4, DEFAULT_CHUNK))


# --------------------------------------------------------------- memory
def test_memory_check_before_parsing(tmp_path, monkeypatch):
    """A file too big for the memory limit: one-line ResourceError (exit 2), nothing parsed."""
    ds = ri.generate(12, 3000, seed=1)
    path = tmp_path / "d.json"
    ds.save(path)
    size = path.stat().st_size
    monkeypatch.setenv("REFIMPL_MAX_MEMORY", str(size * io.LOAD_BYTES_PER_BYTE // 2))
    with pytest.raises(errors.ResourceError, match=rf"reading .*d\.json \({size} bytes\) needs about"):
        load_dataset(path)
    proc = subprocess.run([sys.executable, "-m", "refimpl", "validate", str(path)], capture_output=True,
                          text=True, timeout=120, env={**os.environ})
    assert proc.returncode == 2 and proc.stderr.count("\n") == 1 and "needs about" in proc.stderr
    monkeypatch.setenv("REFIMPL_MAX_MEMORY", str(size * io.LOAD_BYTES_PER_BYTE * 2))
    assert load_dataset(path) == ds


MEMORY_CHILD = textwrap.dedent(r"""
    import re, sys
    import refimpl.io

    def status(key):
        with open("/proc/self/status") as f:
            return int(re.search(key + r":\s+(\d+)", f.read()).group(1)) * 1024

    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")  # reset the peak resident memory to the current one
    base = status("VmRSS")
    ds = refimpl.io.load_dataset(sys.argv[1], check=False)
    print(status("VmHWM") - base, len(ds.flat_tokens))
""")


@pytest.mark.skipif(not os.access("/proc/self/clear_refs", os.W_OK), reason="needs Linux /proc/self/clear_refs")
def test_peak_memory_of_loading_is_a_small_multiple_of_the_file(tmp_path):
    """Loading a 19 MiB file (1.9 million tokens of up to 8 digits) stays below 6 times its size
    above the interpreter. Measured: 2.3 times (44 MiB); the whole-file path took 7.3 times (141 MiB)."""
    rng = np.random.default_rng(0)
    N = 215_000
    lengths = rng.integers(2, 17, size=N)
    tokens = rng.integers(0, 100_000_000, size=int(lengths.sum()))
    ends = np.cumsum(lengths)
    path = tmp_path / "big.json"
    with open(path, "w") as f:
        f.write('{"format": "refimpl/realizable-dataset@1", "vocab_size": 100000000,\n'
                ' "collocation": [[0, 1]],\n "sentences": [\n  ')
        f.write(",\n  ".join("[" + ",".join(map(str, row)) + "]" for row in np.split(tokens, ends[:-1])))
        f.write('\n ],\n "next_tokens": [' + ",".join(map(str, rng.integers(0, 10**8, size=N))) + "]}\n")
    size = path.stat().st_size
    assert size > 19 * 2**20
    proc = subprocess.run([sys.executable, "-c", MEMORY_CHILD, str(path)], capture_output=True, text=True,
                          timeout=300, check=True)
    extra, n_tokens = map(int, proc.stdout.split())
    assert n_tokens == len(tokens)
    assert extra < 6 * size, f"peak {extra / 2**20:.1f} MB above the baseline for a {size / 2**20:.1f} MB file"
