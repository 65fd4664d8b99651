"""Hostile inputs to ``refimpl validate``: every case ends in exit 2 with one stderr line
naming the problem, or is a documented valid dataset (exit 0). Never a traceback, a hang
or an unbounded read.

The small cases are files in ``tests/data/hostile/`` (expectations in :data:`CORPUS`);
large and special cases (100000 digits, nesting 100000, files over the size limit,
devices, FIFOs, sockets, unreadable paths) are made at test time.
"""
import os
import socket
import stat
import subprocess
import sys
import threading
from pathlib import Path

import pytest

import refimpl as ri
from refimpl import errors
from refimpl.cli import main
from refimpl.io import dataset_from_dict
from refimpl.jsonfile import DEFAULT_MAX_BYTES, read_json_file

HOSTILE = Path(__file__).parent / "data" / "hostile"
VALID = object()       # a valid dataset: exit 0
VALIDATION = object()  # realizability validation's own message: exit 2, one line, text not checked here
TAG = "refimpl/realizable-dataset@1"
INT64 = "outside the int64 range"
NOT_KEY = "is not a query token"

# file in tests/data/hostile -> distinctive part of the message (or VALID / VALIDATION)
CORPUS = {
    # --- text level
    "empty.json": "empty.json is empty",
    "whitespace_only.json": "holds only whitespace",
    "top_empty_list.json": "holds one JSON object, got a list",
    "top_null.json": "holds one JSON object, got null",
    "top_string.json": "holds one JSON object, got a string",
    "top_number.json": "holds one JSON object, got the integer 5",
    "top_true.json": "holds one JSON object, got a boolean",
    "truncated.json": "is not valid JSON: Expecting value at line 1 column",
    "truncated_in_string.json": "Unterminated string starting at line 1 column 12",
    "trailing_garbage.json": "is not valid JSON: Extra data at line 1",
    "two_objects.json": "Extra data at line 2 column 1",
    "single_quotes.json": "Expecting property name enclosed in double quotes at line 1 column 2",
    "trailing_comma.json": "is not valid JSON: Expecting value",
    "comment.json": "is not valid JSON: Expecting value at line 1 column 1",
    "unquoted_key.json": "Expecting property name enclosed in double quotes",
    "unbalanced_closers.json": "is not valid JSON",
    "control_char_in_string.json": "Invalid control character at line 1 column 41",
    # --- encodings
    "utf16le_bom.json": "is UTF-16 text (byte order mark FF FE)",
    "utf16be_bom.json": "is UTF-16 text (byte order mark FE FF)",
    "utf16le_no_bom.json": "contains a NUL byte at byte offset 1",
    "utf32_bom.json": "is UTF-32 text",
    "latin1_byte.json": "is not valid UTF-8: invalid continuation byte 0xE9 at byte offset 21",
    "invalid_utf8_ff.json": "is not valid UTF-8: invalid start byte 0xFF at byte offset 168",
    "overlong_utf8.json": "is not valid UTF-8: invalid start byte 0xC0",
    "utf8_surrogate.json": "is not valid UTF-8: invalid continuation byte 0xED",
    "bom_valid.json": VALID,  # one leading UTF-8 byte order mark is skipped
    "double_bom.json": "Unexpected UTF-8 BOM",
    "nul_byte.json": "contains a NUL byte at byte offset 116",
    "nul_in_string.json": "contains a NUL byte at byte offset 40",
    "lone_surrogate_escape_key.json": "unknown field(s) '\\ud800'",
    "long_unknown_key.json": "unknown field(s) 'kkkkkkkkkk",
    # --- NaN, Infinity and floats
    "nan.json": "NaN in field 'vocab_size' is not allowed",
    "infinity.json": "Infinity in field 'sentences' is not allowed",
    "minus_infinity.json": "-Infinity in field 'next_tokens' is not allowed",
    "vocab_float_1e30.json": "vocab_size must be an integer, got a float 1e30 (at line 1 column 58)",
    "vocab_float_5_0.json": "vocab_size must be an integer, got a float 5.0",
    "vocab_float_huge_exponent.json": "vocab_size must be an integer, got a float 1e999999",
    "float_in_sentence.json": "field 'sentences' must hold integers, got a float 3.5",
    "float_exponent_token.json": "field 'next_tokens' must hold integers, got a float 4E0",
    "float_minus_zero_collocation.json": "field 'collocation' must hold integers, got a float -0.0",
    "float_long_fraction.json": "field 'sentences' must hold integers, got a float 3.000",
    # --- integers beyond int64 (2^63, -2^63-1, 2^64 in each field)
    **{f"int_{tag}_{field}.json": f"integer {value} {size}at line 1 column {col} in field '{where}' is {INT64}"
       for tag, value, size in (("2p63", 2**63, ""), ("m2p63m1", -2**63 - 1, ""),
                                ("2p64", 2**64, "(20 digits) "))
       for field, col, where in (("vocab_size", 58, "vocab_size"), ("collocation", 113, "collocation"),
                                 ("sentences", 155, "sentences"), ("next_tokens", 182, "next_tokens"),
                                 ("orders_relation", 155, "orders"))},
    "int_2p63_orders_key.json": f"orders key '{2**63}' is {INT64}",
    "int_2p64_orders_key.json": f"orders key '{2**64}' is {INT64}",
    "int_m2p63m1_orders_key.json": f"orders key '{-2**63 - 1}' {NOT_KEY}",
    "int_30_digit_orders_key.json": f"orders key '{'9' * 30}' is {INT64}",
    "int_25_digits.json": f"integer 123456789012345678901234... (25 digits) at line 1 column 58",
    "int_4301_digits.json": "(4301 digits) at line 1 column 158 in field 'sentences'",
    "int_5000_digits_then_dot.json": "(5001 digits) at line 1 column 158",  # "1000.]" is an int, then an error
    "int_5000_digits_then_e.json": "(5001 digits) at line 1 column 158",
    "int_5000_digits_then_e_plus.json": "(5001 digits) at line 1 column 158",
    "int_leading_zero_then_5000_digits.json": "is not valid JSON: Expecting ',' delimiter at line 1 column 159",
    "float_5000_digit_exponent.json": "field 'sentences' must hold integers, got a float 1e-1111",
    "int64_max_token.json": VALIDATION,   # in int64, outside 0..M-1
    "int64_min_next_token.json": VALIDATION,
    "digits_in_string.json": "unknown format tag 'refimpl/realizable-dataset@123",
    # --- nesting
    "depth5_sentences.json": "nesting depth 5 exceeds the maximum 4 of the dataset format (at line 1 column 159 "
                             "in field 'sentences')",
    "depth5_orders.json": "nesting depth 5 exceeds the maximum 4 of the dataset format (at line 1 column 155 "
                          "in field 'orders')",
    "depth_1000.json": "nesting depth 1000 exceeds the maximum 4",
    "depth_1000_unclosed.json": "nesting depth 1001 exceeds the maximum 4",
    "brackets_in_string.json": "unknown format tag '[[[[[[{{{{{{'",  # brackets in strings do not nest
    "depth4_nested_token.json": "field 'sentences' entry 2 item 1 must be an integer, got a list ([3])",
    # --- duplicate keys
    "duplicate_vocab_size.json": "duplicate key 'vocab_size' in the top-level object (at line 1 column 61)",
    "duplicate_format.json": "duplicate key 'format' in the top-level object",
    "duplicate_escaped_key.json": "duplicate key 'vocab_size' in the top-level object",
    "duplicate_orders_key.json": "duplicate key '4' in field 'orders'",
    # --- orders keys: canonical decimal only
    "orders_key_spaces.json": f"orders key ' 4 ' {NOT_KEY}",
    "orders_key_leading_zero.json": f"orders key '04' {NOT_KEY}",
    "orders_key_underscore.json": f"orders key '0_4' {NOT_KEY}",
    "orders_key_fullwidth.json": f"orders key '\uff14' {NOT_KEY}",
    "orders_key_arabic_indic.json": f"orders key '\u0664' {NOT_KEY}",
    "orders_key_plus.json": f"orders key '+4' {NOT_KEY}",
    "orders_key_minus.json": f"orders key '-1' {NOT_KEY}",
    "orders_key_decimal_point.json": f"orders key '4.0' {NOT_KEY}",
    "orders_key_empty.json": f"orders key '' {NOT_KEY}",
    "orders_key_exponent.json": f"orders key '1e1' {NOT_KEY}",
    "orders_key_hex.json": f"orders key '0x4' {NOT_KEY}",
    "orders_key_newline.json": f"orders key '4\\n' {NOT_KEY}",
    "orders_key_word.json": f"orders key 'four' {NOT_KEY}",
    "orders_keys_4_and_04.json": f"orders key '04' {NOT_KEY}",
    "orders_key_zero_valid.json": VALID,
    # --- structure
    "wrong_format_tag.json": "unknown format tag 'refimpl/realizable-dataset@2'",
    "format_tag_int.json": "unknown format tag 1;",
    "missing_format.json": "missing field 'format'",
    "missing_vocab_size.json": "missing field(s) vocab_size",
    "missing_next_tokens.json": "missing field(s) next_tokens",
    "unknown_field.json": "unknown field(s) 'extra'",
    "vocab_string.json": "vocab_size must be an integer, got a string ('5')",
    "vocab_true.json": "vocab_size must be an integer, got a boolean (true)",
    "vocab_null.json": "vocab_size must be an integer, got null",
    "vocab_list.json": "vocab_size must be an integer, got a list",
    "sentences_not_list.json": "field 'sentences' must be a list, got the integer 5",
    "sentences_string.json": "field 'sentences' must be a list, got a string",
    "sentences_flat.json": "field 'sentences' entry 0 must be a list of integers, got the integer 0",
    "sentence_is_object.json": "field 'sentences' entry 1 must be a list of integers, got an object",
    "bool_token.json": "field 'sentences' entry 1 item 1 must be an integer, got a boolean (true)",
    "null_token.json": "field 'sentences' entry 1 item 1 must be an integer, got null",
    "string_token.json": "field 'sentences' entry 1 item 1 must be an integer, got a string ('2')",
    "collocation_row_width3.json": "field 'collocation' entry 1 must be a list of 2 integers, got a list ([1, 2, 3])",
    "collocation_row_width1.json": "field 'collocation' entry 1 must be a list of 2 integers, got a list ([1])",
    "collocation_not_list.json": "field 'collocation' must be a list, got an object",
    "collocation_row_not_list.json": "field 'collocation' entry 1 must be a list of 2 integers, got the integer 5",
    "orders_not_object.json": "field 'orders' must be an object",
    "orders_value_not_list.json": "field 'orders[4]' must be a list, got the integer 7",
    "orders_row_width3.json": "field 'orders[4]' entry 0 must be a list of 2 integers",
    "orders_null_valid.json": VALID,  # "orders": null means no supplied orders
    "next_tokens_not_list.json": "field 'next_tokens' must be a list of integers, got the integer 2",
    "next_tokens_bool.json": "field 'next_tokens' entry 1 must be an integer, got a boolean (false)",
    "next_tokens_nested.json": "field 'next_tokens' entry 1 must be an integer, got a list ([3])",
    # --- realizability: validation's own messages
    "negative_token.json": VALIDATION,
    "token_too_large.json": VALIDATION,
    "vocab_size_1.json": VALIDATION,
    "vocab_size_0.json": VALIDATION,
    "vocab_size_negative.json": VALIDATION,
    "sentences_empty.json": VALIDATION,
    "sentence_length_0.json": VALIDATION,
    "count_mismatch.json": VALIDATION,
    # --- valid
    "valid.json": VALID,
    "valid_orders.json": VALID,
    "valid_pretty_crlf.json": VALID,
    "valid_escaped_tag.json": VALID,  # "\/" and "\u0072" escapes in the format tag
    "valid_field_order.json": VALID,
}


def check(code, out, err, expect):
    """The contract: exit 0 for a valid file, else exit 2 and exactly one line naming the problem."""
    assert "Traceback" not in err
    assert out == ""
    if expect is VALID:
        assert code == 0, err
        return
    assert code == 2, err
    assert err.count("\n") == 1 and err.endswith("\n"), err
    assert err.startswith("refimpl validate: "), err
    assert len(err) < 400, err
    if expect is not VALIDATION:
        assert expect in err, err


def validate(capsys, path):
    code = main(["validate", str(path)])
    out, err = capsys.readouterr()
    return code, out, err


def run(*argv, timeout=120, **kw):
    """``python -m refimpl`` in a subprocess: (exit code, stdout, stderr)."""
    proc = subprocess.run([sys.executable, "-m", "refimpl", *map(str, argv)], capture_output=True,
                          text=True, timeout=timeout, **kw)
    return proc.returncode, proc.stdout, proc.stderr


def test_every_corpus_file_is_listed():
    on_disk = {p.name for p in HOSTILE.iterdir()}
    assert on_disk == set(CORPUS)
    assert all(p.stat().st_size < 20_000 for p in HOSTILE.iterdir())


@pytest.mark.parametrize("name", sorted(CORPUS))
def test_corpus_file(capsys, name):
    check(*validate(capsys, HOSTILE / name), CORPUS[name])


@pytest.mark.parametrize("name", ["vocab_float_1e30.json", "int_2p64_sentences.json", "duplicate_vocab_size.json",
                                  "orders_key_fullwidth.json", "utf16le_bom.json", "bom_valid.json",
                                  "nan.json", "depth_1000.json"])
def test_corpus_file_in_a_subprocess(name):
    check(*run("validate", HOSTILE / name), CORPUS[name])


# --------------------------------------------------------------- generated
@pytest.fixture
def valid_text():
    return (HOSTILE / "valid.json").read_text()


def test_number_of_100000_digits(tmp_path, capsys, valid_text):
    path = tmp_path / "digits.json"
    path.write_text(valid_text.replace('"vocab_size": 5', '"vocab_size": 1' + "0" * 99_999))
    expect = f"(100000 digits) at line 1 column 58 in field 'vocab_size' is {INT64}"
    check(*validate(capsys, path), expect)
    check(*run("validate", path), expect)


def test_number_of_100000_digits_in_a_sentence(tmp_path, capsys, valid_text):
    path = tmp_path / "digits.json"
    path.write_text(valid_text.replace("[3, 3]", "[3, -" + "7" * 100_000 + "]"))
    check(*validate(capsys, path), "integer -77777777777777777777777... (100000 digits)")


def test_float_of_100000_digits(tmp_path, capsys, valid_text):
    path = tmp_path / "float.json"
    path.write_text(valid_text.replace("[3, 3]", "[3, 1." + "5" * 100_000 + "]"))
    check(*validate(capsys, path), "field 'sentences' must hold integers, got a float 1.555")


@pytest.mark.parametrize("opener,closer", [("[", "]"), ('{"a": ', "}")])
def test_nesting_of_100000(tmp_path, capsys, opener, closer):
    path = tmp_path / "deep.json"
    path.write_text(opener * 100_000 + "1" + closer * 100_000)
    check(*validate(capsys, path), "nesting depth 100000 exceeds the maximum 4")


def test_nesting_of_100000_in_a_subprocess(tmp_path):
    path = tmp_path / "deep.json"
    path.write_text("[" * 100_000 + "]" * 100_000)
    check(*run("validate", path), "nesting depth 100000 exceeds the maximum 4 of the dataset format")


def test_file_over_the_limit_set_by_the_environment(tmp_path, capsys, monkeypatch, valid_text):
    path = tmp_path / "big.json"
    path.write_text(valid_text + " " * 2000)
    monkeypatch.setenv("REFIMPL_MAX_FILE_BYTES", "1000")
    check(*validate(capsys, path), "big.json is larger than 1000 bytes")
    monkeypatch.setenv("REFIMPL_MAX_FILE_BYTES", "1K")
    check(*validate(capsys, path), "big.json is larger than 1024 bytes")
    monkeypatch.setenv("REFIMPL_MAX_FILE_BYTES", "1M")
    check(*validate(capsys, path), VALID)


@pytest.mark.parametrize("value", ["abc", "0", "-5", "1.5G", "1" * 40])
def test_bad_limit_in_the_environment(tmp_path, capsys, monkeypatch, value):
    monkeypatch.setenv("REFIMPL_MAX_FILE_BYTES", value)
    check(*validate(capsys, HOSTILE / "valid.json"), "REFIMPL_MAX_FILE_BYTES=")


def test_sparse_file_over_the_default_limit(tmp_path, capsys):
    """Refused from its size alone: nothing is read."""
    path = tmp_path / "sparse.json"
    with open(path, "wb") as f:
        f.truncate(DEFAULT_MAX_BYTES + 1)
    check(*validate(capsys, path), f"sparse.json is larger than {DEFAULT_MAX_BYTES} bytes")


def test_dev_zero_with_the_default_limit():
    """An endless device: the read stops after the limit (1 GiB) with the size error."""
    check(*run("validate", "/dev/zero", timeout=120), f"/dev/zero is larger than {DEFAULT_MAX_BYTES} bytes")


@pytest.mark.parametrize("device,expect", [("/dev/zero", "larger than 65536 bytes"),
                                           ("/dev/urandom", "larger than 65536 bytes"),
                                           ("/dev/null", "/dev/null is empty")])
def test_character_devices(capsys, monkeypatch, device, expect):
    if not os.path.exists(device):
        pytest.skip(f"no {device}")
    monkeypatch.setenv("REFIMPL_MAX_FILE_BYTES", "65536")
    check(*validate(capsys, device), expect)


def test_block_device(capsys):
    dev = next((p for p in sorted(Path("/dev").glob("*")) if not p.is_symlink() and p.exists()
                and stat.S_ISBLK(p.stat().st_mode)), None)
    if dev is None:
        pytest.skip("no block device")
    check(*validate(capsys, dev), "is a block device")


def test_fifo_without_writer_does_not_hang(tmp_path, capsys):
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    check(*validate(capsys, fifo), "fifo is empty (a pipe that no writer held open")
    check(*run("validate", fifo, timeout=60), "fifo is empty")


def _feed_fifo(fifo, payload):
    """Open ``fifo`` for writing (a reader end is held open meanwhile) and write ``payload``
    from a thread; returns (thread, the reader fd to close once the test has read)."""
    keep = os.open(fifo, os.O_RDONLY | os.O_NONBLOCK)
    w = os.open(fifo, os.O_WRONLY)

    def write():
        try:
            view = memoryview(payload)
            while view:
                view = view[os.write(w, view):]
        except BrokenPipeError:
            pass
        finally:
            os.close(w)

    thread = threading.Thread(target=write, daemon=True)
    thread.start()
    return thread, keep


def test_fifo_with_a_valid_dataset(tmp_path, capsys):
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    ds = ri.generate(12, 2000, seed=1)
    ds.save(tmp_path / "d.json")
    thread, keep = _feed_fifo(fifo, (tmp_path / "d.json").read_bytes())  # more than a pipe buffer
    try:
        check(*validate(capsys, fifo), VALID)
    finally:
        os.close(keep)
        thread.join(10)
    assert not thread.is_alive()


def test_fifo_over_the_limit(tmp_path, capsys, monkeypatch):
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    monkeypatch.setenv("REFIMPL_MAX_FILE_BYTES", "100000")
    thread, keep = _feed_fifo(fifo, b" " * 1_000_000)
    try:
        check(*validate(capsys, fifo), "fifo is larger than 100000 bytes")
    finally:
        os.close(keep)  # the writer now gets a broken pipe and stops
        thread.join(10)
    assert not thread.is_alive()


def test_stdin_pipe_is_read():
    data = (HOSTILE / "valid_orders.json").read_bytes()
    proc = subprocess.run([sys.executable, "-m", "refimpl", "validate", "/dev/stdin"], input=data,
                          capture_output=True, timeout=120)
    assert proc.returncode == 0 and b"Traceback" not in proc.stderr


def test_directory(tmp_path, capsys):
    check(*validate(capsys, tmp_path), "is a directory, not a dataset file")
    check(*run("validate", tmp_path), "is a directory, not a dataset file")


def test_missing_path(tmp_path, capsys):
    check(*validate(capsys, tmp_path / "missing.json"), "cannot open")
    check(*validate(capsys, tmp_path / "missing.json"), "No such file or directory")
    check(*run("validate", tmp_path / "missing.json"), "No such file or directory")


def test_empty_path(capsys):
    check(*validate(capsys, ""), "cannot open : No such file or directory")


def test_dangling_symlink(tmp_path, capsys):
    (tmp_path / "link.json").symlink_to(tmp_path / "nowhere.json")
    check(*validate(capsys, tmp_path / "link.json"), "No such file or directory")


def test_symlink_loop(tmp_path, capsys):
    (tmp_path / "loop.json").symlink_to(tmp_path / "loop.json")
    check(*validate(capsys, tmp_path / "loop.json"), "Too many levels of symbolic links")


def test_file_used_as_a_folder(tmp_path, capsys):
    (tmp_path / "file.json").write_text("{}")
    check(*validate(capsys, tmp_path / "file.json" / "x.json"), "Not a directory")


def test_name_too_long(tmp_path, capsys):
    check(*validate(capsys, tmp_path / ("x" * 5000)), "File name too long")


def test_socket(capsys):
    import tempfile
    with tempfile.TemporaryDirectory() as folder:  # short path: socket names are limited
        path = os.path.join(folder, "s")
        sock = socket.socket(socket.AF_UNIX)
        try:
            sock.bind(path)
            check(*validate(capsys, path), "cannot open")
        finally:
            sock.close()


@pytest.mark.skipif(os.geteuid() == 0, reason="root reads any file")
def test_permission_denied(tmp_path, capsys):
    path = tmp_path / "secret.json"
    path.write_text("{}")
    path.chmod(0)
    check(*validate(capsys, path), "Permission denied")


@pytest.mark.skipif(not os.path.exists("/proc/self/mem"), reason="needs /proc")
@pytest.mark.parametrize("path,expect", [("/proc/self/mem", "cannot read /proc/self/mem: Input/output error"),
                                         ("/proc/self/status", "is not valid JSON"),
                                         ("/proc/self/cmdline", "contains a NUL byte")])
def test_proc_files(capsys, path, expect):
    """Unreadable even for root (mem), or a size of 0 in stat but content when read."""
    check(*validate(capsys, path), expect)


# --------------------------------------------------------------- the API
def test_read_json_file_limit_keyword(tmp_path):
    path = tmp_path / "x.json"
    path.write_text("[1, 2, 3]")
    assert read_json_file(path, max_bytes=9) == [1, 2, 3]
    with pytest.raises(errors.FileFormatError, match="larger than 8 bytes"):
        read_json_file(path, max_bytes=8)
    for bad in (0, -1, True, 1.5):
        with pytest.raises(errors.ConfigError, match="max_bytes"):
            read_json_file(path, max_bytes=bad)


def test_messages_name_the_path(tmp_path):
    path = tmp_path / "x.json"
    path.write_text('{"a": 1, "a": 2}')
    with pytest.raises(errors.FileFormatError) as info:
        ri.load_dataset(path)
    assert str(path) in str(info.value) and "\n" not in str(info.value)


@pytest.mark.parametrize("field,value", [("vocab_size", 2**63), ("vocab_size", 10**5000),
                                         ("sentences", [[0, 1, -2**63 - 1]]), ("sentences", [[10**5000]]),
                                         ("next_tokens", [2, 2**64, 4]),
                                         ("collocation", [[0, 1], [1, 2**70]]),
                                         ("orders", {"4": [[0, 2**63]]}), ("orders", {2**63: [[0, 4]]})],
                         ids=["vocab-2^63", "vocab-10^5000", "sentences--2^63-1", "sentences-10^5000",
                              "next_tokens-2^64", "collocation-2^70", "orders-relation-2^63", "orders-int-key-2^63"])
def test_python_dicts_beyond_int64(field, value):
    """Objects built in Python (not from a file): FileFormatError, never OverflowError."""
    obj = (HOSTILE / "valid_orders.json").read_text()
    import json
    obj = json.loads(obj)
    obj[field] = value
    with pytest.raises(errors.FileFormatError, match="int64") as info:
        dataset_from_dict(obj)
    assert len(str(info.value)) < 300


def test_python_dict_keys():
    import json
    obj = json.loads((HOSTILE / "valid_orders.json").read_text())
    obj["orders"] = {4: obj["orders"]["4"]}  # an int key is taken as the query
    assert dataset_from_dict(obj).orders.keys() == {4}
    obj["orders"]["4"] = []
    with pytest.raises(errors.FileFormatError, match="both name query 4"):
        dataset_from_dict(obj)
    obj = json.loads((HOSTILE / "valid.json").read_text())
    obj[5] = 1
    obj[(1, 2)] = 2
    with pytest.raises(errors.FileFormatError, match="unknown field"):
        dataset_from_dict(obj)


@pytest.mark.parametrize("chunk", [1, 2, 7, 64])
def test_scans_across_chunk_boundaries(monkeypatch, chunk):
    """Reading and the depth scan work chunk by chunk; the results do not depend on the chunk size."""
    from refimpl import jsonfile
    names = ["depth5_sentences.json", "depth5_orders.json", "depth_1000_unclosed.json", "valid_orders.json",
             "int_2p63_sentences.json", "duplicate_orders_key.json", "float_in_sentence.json"]
    expected = {}
    for name in names:
        try:
            expected[name] = read_json_file(HOSTILE / name)
        except errors.FileFormatError as exc:
            expected[name] = str(exc)
    monkeypatch.setattr(jsonfile, "_CHUNK", chunk)
    for name in names:
        try:
            got = read_json_file(HOSTILE / name)
        except errors.FileFormatError as exc:
            got = str(exc)
        assert got == expected[name], name


def test_random_damage_never_escapes_as_another_exception(tmp_path):
    """Bytes inserted, deleted and repeated at random in a valid file: loading either works or
    raises a DatasetError (one line), never anything else."""
    import random
    rng = random.Random(20240607)
    base = (HOSTILE / "valid_orders.json").read_bytes()
    alphabet = [b"[", b"]", b"{", b"}", b'"', b"\\", b",", b":", b"-", b".", b"e", b"0", b"9" * 25, b"1e999",
                b"NaN", b"\xff", b"\x00", b"\xef\xbb\xbf", b" ", b"\n", b"true", b"null", b'"4"', b'"04"']
    for i in range(400):
        data = bytearray(base)
        for _ in range(rng.randint(1, 4)):
            at = rng.randrange(len(data) + 1)
            op = rng.random()
            if op < 0.5:
                data[at:at] = rng.choice(alphabet)
            elif op < 0.8:
                del data[at:at + rng.randint(1, 8)]
            else:
                data[at:at] = data[at:at + rng.randint(1, 30)]
        path = tmp_path / "damaged.json"
        path.write_bytes(bytes(data))
        try:
            ri.load_dataset(path)
        except errors.DatasetError as exc:
            assert "\n" not in str(exc)

