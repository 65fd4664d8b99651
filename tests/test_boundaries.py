"""Public boundaries reject malformed weights and sentences with named, one-line errors
(refimpl.checks), before any compiled loop without bounds checks reads them."""
from __future__ import annotations

import subprocess
import sys
import textwrap

import numpy as np
import pytest

import refimpl as ri
from refimpl import checks, kernels as kn
from refimpl.data import RealizableDataset
from refimpl.errors import InputError, NonFiniteError, SentenceInputError, ShapeError
from refimpl.model import loss_and_grads, stage1_loss_and_grad
from refimpl.prediction import predict, predict_limit

W3 = np.eye(3)
COLLOC4 = {0: 1, 1: 2, 2: 3, 3: 0}


# ===================================================================== no crash first
# Each of these read past a row before the checks (SIGSEGV for length 1000, NaN or garbage
# for lengths 3 and 5 with width 2). Run in a child process so that a crash fails this
# test instead of killing the test run.
CRASH_CASES = {
    "predict length 1000 > width 2": "ri.predict(W, W, (np.array([[1, 2]]), np.array([1000])))",
    "predict length 3 > width 2": "ri.predict(W, W, (np.array([[1, 2]]), np.array([3])))",
    "predict length 5 > width 2": "ri.predict(W, W, (np.array([[1, 2]]), np.array([5])))",
    "predict_limit length 1000": "predict_limit(W, W, (np.array([[1, 2]]), np.array([1000])))",
    "attention length 1000": "kn.attention(W, np.array([[1, 2]]), np.array([1000]))",
    "logits length 1000": "kn.logits(W, W, np.array([[1, 2]]), np.array([1000]))",
    "logits token 10**6": "kn.logits(W, W, np.array([[1, 10**6]]), np.array([2]))",
    "attention token -10**6": "kn.attention(W, np.array([[-10**6, 1]]), np.array([2]))",
    "stage2_grad length 1000": "kn.stage2_grad(W, W, np.array([[1, 2]]), np.array([1000]), np.array([0]))",
    "stage2_grad next token 10**6": "kn.stage2_grad(W, W, np.array([[1, 2]]), np.array([2]), np.array([10**6]))",
    "Stage2Direction token 10**6": "kn.Stage2Direction(W, np.array([[10**6, 2]]), np.array([2]), np.array([0]))",
    "Stage1Direction token 10**6": "kn.Stage1Direction(np.array([10**6]), np.array([0]), 3)",
}


def test_out_of_bounds_inputs_raise_instead_of_crashing():
    """Every case exits through a named exception (return code 1), none by a signal (-11)."""
    body = "\n".join(f"run({name!r}, lambda: {expr})" for name, expr in CRASH_CASES.items())
    script = textwrap.dedent('''
        import sys
        import numpy as np
        import refimpl as ri
        from refimpl import kernels as kn
        from refimpl.prediction import predict_limit
        W = np.eye(3)
        def run(name, f):
            try:
                f()
                print(name, "|", "NO ERROR")
            except Exception as err:
                print(name, "|", type(err).__name__, "|", err)
            sys.stdout.flush()
    ''') + body + "\nsys.exit(0)\n"
    r = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, f"child died with return code {r.returncode}: {r.stdout[-2000:]} {r.stderr[-2000:]}"
    lines = dict(line.split(" | ", 1) for line in r.stdout.strip().splitlines())
    assert set(lines) == set(CRASH_CASES), r.stdout
    for name, outcome in lines.items():
        assert outcome.startswith("SentenceInputError"), f"{name}: {outcome}"


# ===================================================================== predict
@pytest.mark.parametrize("sentences, needle", [
    ((np.array([[1, 2]]), np.array([1000])), "sentence 0 has length 1000, outside 1..2"),
    ((np.array([[1, 2]]), np.array([3])), "sentence 0 has length 3, outside 1..2"),
    ((np.array([[1, 2]]), np.array([5])), "sentence 0 has length 5"),
    ((np.array([[1, 2], [0, 1]]), np.array([2, 0])), "sentence 1 has length 0"),
    ([[0, 1], [2, -1, 1]], "sentence 1, position 1: token -1 is outside 0..2"),
    ([[0, 1], [2, 3]], "sentence 1, position 1: token 3 is outside 0..2"),         # token == M
    ((np.array([[0, 1], [-3, 2]]), np.array([2, 2])), "sentence 1, position 0: token -3"),
    ([1, 2], "a flat list of ints is not a list of sentences; wrap one sentence as [[...]]"),
    (np.array([1, 2]), "a flat list of ints is not a list of sentences"),
    ([], "no sentences"),
    ((np.zeros((0, 2), dtype=np.int64), np.zeros(0, dtype=np.int64)), "no sentences"),
    ([[0, 1], []], "sentence 1 is empty"),
    ([[0.0, 1.0]], "must hold integers, got dtype float64"),
    ((np.array([[0.0, 1.0]]), np.array([2])), "must hold integers"),
    ([[0, [1, 2]]], "sentence 0"),
])
def test_predict_rejects_bad_sentences(sentences, needle):
    for f in (predict, predict_limit):
        with pytest.raises(SentenceInputError) as info:
            f(W3, W3, sentences)
        msg = str(info.value)
        assert needle in msg and "\n" not in msg and msg.startswith("sentences")


def test_padding_beyond_lengths_is_not_read():
    """Padding may hold anything (here 99 and -7): only tokens[i, :lengths[i]] are checked."""
    nxt, _ = predict(W3, W3, (np.array([[1, 99], [2, -7]]), np.array([1, 1])))
    ref, _ = predict(W3, W3, [[1], [2]])
    assert nxt.tolist() == ref.tolist()


@pytest.mark.parametrize("W_ov, W_kq, error, needle", [
    (np.full((3, 3), np.nan), W3, NonFiniteError, "W_ov (shape (3, 3)) holds nan at index (0, 0)"),
    (W3, np.diag([1.0, np.inf, 1.0]), NonFiniteError, "W_kq (shape (3, 3)) holds inf at index (1, 1)"),
    (np.ones((3, 4)), W3, ShapeError, "W_ov must have shape (3, 3), got shape (3, 4)"),
    (W3, np.ones((4, 4)), ShapeError, "W_kq must have shape (3, 3), got shape (4, 4)"),
    (np.ones(3), W3, ShapeError, "W_ov must have shape (any, any), got shape (3,)"),
    ([["a"]], W3, ShapeError, "W_ov must be a float array"),
])
def test_predict_rejects_bad_weights(W_ov, W_kq, error, needle):
    with pytest.raises(error) as info:
        predict(W_ov, W_kq, [[0, 1]])
    assert needle in str(info.value)


def test_predict_limit_rejects_bad_tol():
    with pytest.raises(InputError, match="tol must be a finite number >= 0"):
        predict_limit(W3, W3, [[0, 1]], tol=-1.0)


# ===================================================================== dense reference
def _ds(sentences, next_tokens):
    """An unvalidated dataset (the constructor does not check token ranges)."""
    return RealizableDataset(4, COLLOC4, sentences, next_tokens)


@pytest.mark.parametrize("sentences, ys, needle", [
    ([[0, 1], [2, -3, 1]], [2, 2], "ds: sentence 1, position 1: token -3 is outside 0..3"),   # no wrap to 1
    ([[0, 4]], [1], "ds: sentence 0, position 1: token 4 is outside 0..3"),                   # token == M
    ([[0, 1], [2, 3]], [2, 9], "ds.next_tokens[1] = 9 is outside 0..3"),
    ([[0, 1]], [-1], "ds.next_tokens[0] = -1"),
])
def test_loss_and_grads_checks_dataset_ranges(sentences, ys, needle):
    with pytest.raises(SentenceInputError) as info:
        loss_and_grads(_ds(sentences, ys), np.eye(4), np.eye(4))
    assert needle in str(info.value)


@pytest.mark.parametrize("W_ov, W_kq, E, error, needle", [
    (np.eye(4), np.full((4, 4), np.nan), None, NonFiniteError, "W_kq (shape (4, 4)) holds nan"),
    (np.eye(4), np.eye(5), None, ShapeError, "W_kq must have shape (4, 4), got shape (5, 5)"),
    (np.eye(6), np.eye(6), np.eye(6)[:, :3], ShapeError, "embeddings must have shape (d, 4)"),
    (np.eye(6), np.eye(6), np.full((6, 4), np.inf), NonFiniteError, "embeddings"),
    (np.eye(5), np.eye(5), np.eye(6)[:, :4], ShapeError, "W_ov must have shape (6, 6)"),
])
def test_loss_and_grads_checks_weights(W_ov, W_kq, E, error, needle):
    with pytest.raises(error) as info:
        loss_and_grads(_ds([[0, 1]], [1]), W_ov, W_kq, E)
    assert needle in str(info.value)


def test_stage1_checks_weights():
    ds = ri.generate(4, 5, seed=0)
    with pytest.raises(NonFiniteError, match="W_ov"):
        stage1_loss_and_grad(ds, np.full((4, 4), np.nan))
    with pytest.raises(ShapeError, match=r"W_ov must have shape \(4, 4\)"):
        stage1_loss_and_grad(ds, np.eye(3))


# ===================================================================== kernels
def _pair():
    return np.array([[0, 1, 2], [2, 1, -1]]), np.array([3, 2]), np.array([1, 0])


@pytest.mark.parametrize("f", [kn.stage2_grad, kn.joint_grad, kn.stage2_loss])
def test_kernel_wrappers_check_their_inputs(f):
    tokens, lengths, ys = _pair()
    with pytest.raises(SentenceInputError, match="sentence 1 has length 4, outside 1..3") as info:
        f(W3, W3, tokens, np.array([3, 4]), ys)
    assert "tokens/lengths" in str(info.value)
    with pytest.raises(SentenceInputError, match="sentence 0, position 2: token 3 is outside 0..2"):
        f(W3, W3, np.array([[0, 1, 3], [2, 1, -1]]), lengths, ys)
    with pytest.raises(SentenceInputError, match=r"ys\[1\] = 3"):
        f(W3, W3, tokens, lengths, np.array([1, 3]))
    with pytest.raises(ShapeError, match="ys must have length 2"):
        f(W3, W3, tokens, lengths, np.array([1]))
    with pytest.raises(NonFiniteError, match="O"):
        f(np.full((3, 3), np.nan), W3, tokens, lengths, ys)
    with pytest.raises(NonFiniteError, match="K"):
        f(W3, np.full((3, 3), -np.inf), tokens, lengths, ys)
    with pytest.raises(ShapeError, match=r"K must have shape \(3, 3\)"):
        f(W3, np.eye(4), tokens, lengths, ys)
    with pytest.raises(SentenceInputError, match="sentence 1, position 0: token 7"):   # flat form
        f(W3, W3, np.array([0, 1, 2, 7, 1]), lengths, ys)
    with pytest.raises(SentenceInputError, match="lengths add up to 5 but the flat tokens hold 4"):
        f(W3, W3, np.array([0, 1, 2, 2]), lengths, ys)


def test_attention_and_logits_check_their_inputs():
    tokens, lengths, _ = _pair()
    with pytest.raises(SentenceInputError, match="sentence 1, position 1: token 5"):
        kn.attention(W3, np.array([[0, 1, 2], [2, 5, -1]]), lengths)
    with pytest.raises(NonFiniteError, match="K"):
        kn.attention(np.full((3, 3), np.nan), tokens, lengths)
    with pytest.raises(SentenceInputError, match="length 9"):
        kn.logits(W3, W3, tokens, np.array([3, 9]))
    with pytest.raises(ShapeError, match=r"phi must have shape \(2, 3\)"):
        kn.logits(W3, None, tokens, lengths, phi=np.ones((2, 2)))
    with pytest.raises(NonFiniteError, match="phi"):
        kn.logits(W3, None, tokens, lengths, phi=np.full((2, 3), np.nan))
    with pytest.raises(ShapeError, match="tokens must be 2-D"):
        kn.attention(W3, np.array([0, 1, 2]), np.array([3]))


def test_stage_directions_check_once_at_construction(monkeypatch):
    """Stage2Direction / Stage1Direction check at construction, then never per step: the
    check of the sentences runs once for any number of direction() calls."""
    tokens, lengths, ys = _pair()
    with pytest.raises(SentenceInputError, match="sentence 0, position 0: token -2"):
        kn.Stage2Direction(W3, np.array([[-2, 1, 2], [2, 1, -1]]), lengths, ys)
    with pytest.raises(NonFiniteError, match="O"):
        kn.Stage2Direction(np.full((3, 3), np.nan), tokens, lengths, ys)
    with pytest.raises(SentenceInputError, match=r"xs\[0\] = 3"):
        kn.Stage1Direction(np.array([3]), np.array([0]), 3)
    with pytest.raises(SentenceInputError, match=r"ys\[0\] = -1"):
        kn.Stage1Direction(np.array([0]), np.array([-1]), 3)
    calls = []
    real = checks._check_pair
    monkeypatch.setattr(checks, "_check_pair", lambda *a: calls.append(1) or real(*a))
    sd = kn.Stage2Direction(W3, tokens, lengths, ys)
    for _ in range(5):
        sd.direction(W3)
    assert len(calls) == 1


def test_all_input_errors_are_value_errors_in_one_family():
    for cls in (ShapeError, NonFiniteError, SentenceInputError):
        assert issubclass(cls, InputError) and issubclass(cls, ValueError)
    with pytest.raises(ValueError):
        predict(W3, W3, [[5]])


def test_checks_return_contiguous_int64():
    tokens, lengths = checks.check_sentences((np.array([[1, 2], [0, 9]], dtype=np.int32)[:, ::1],
                                              np.array([2, 1], dtype=np.uint8)), 3)
    assert tokens.dtype == lengths.dtype == np.int64 and tokens.flags.c_contiguous
    assert tokens.tolist() == [[1, 2], [0, 9]]                  # padding kept as given, never read
    tokens, lengths = checks.check_sentences([[2], [0, 1, 2]], 3)
    assert tokens.tolist() == [[2, -1, -1], [0, 1, 2]] and lengths.tolist() == [1, 3]
