"""Inputs that used to pass the public boundary unchecked: the arrays of
``kernels.compensated_step``, an empty collocation in stage 1, weights that are not real
numbers, and dataset fields that are not integers. Each is refused with a specific,
named error; valid inputs give the same results as before."""
from __future__ import annotations

import subprocess
import sys
import textwrap
import warnings
from fractions import Fraction

import numpy as np
import pytest

import refimpl as ri
from refimpl import kernels as kn
from refimpl.data import RealizableDataset
from refimpl.errors import FileFormatError, InputError, SentenceInputError, ShapeError
from refimpl.kernels_np import stage1_grad_np

COLLOC3 = {0: 1, 1: 2, 2: 0}


# ===================================================================== compensated_step
def _step_arrays(M=3):
    rng = np.random.default_rng(5)
    return rng.standard_normal((M, M)), np.zeros((M, M)), rng.standard_normal((M, M)), np.empty((M, M))


def _read_only(a):
    a = a.copy()
    a.flags.writeable = False
    return a


W3, C3, D3, OUT3 = _step_arrays()
F2 = np.zeros((3, 6))[:, ::2]                     # (3, 3) float64, not C-contiguous

# (W, c, D, eta, out), error, the argument the message must name. Every array here is at
# least as large as W, so that without the checks these calls would not write out of bounds.
STEP_CASES = {
    "c larger than W": ((W3, np.zeros((4, 4)), D3, 0.1, OUT3), ShapeError, r"\bc has shape \(4, 4\)"),
    "D of another shape": ((W3, C3, np.ones((3, 4)), 0.1, OUT3), ShapeError, r"\bD has shape \(3, 4\)"),
    "out flat, as many entries": ((W3, C3, D3, 0.1, np.empty(9)), ShapeError, r"\bout has shape \(9,\)"),
    "out float32": ((W3, C3, D3, 0.1, np.empty((3, 3), np.float32)), ShapeError, r"\bout must have dtype float64"),
    "c int64": ((W3, np.zeros((3, 3), np.int64), D3, 0.1, OUT3), ShapeError, r"\bc must have dtype float64"),
    "c not contiguous": ((W3, F2, D3, 0.1, OUT3), ShapeError, r"\bc must be C-contiguous"),
    "W a list": ((W3.tolist(), C3, D3, 0.1, OUT3), ShapeError, r"\bW must be a float64 ndarray"),
    "c read-only": ((W3, _read_only(C3), D3, 0.1, OUT3), InputError, r"\bc is read-only"),
    "out read-only": ((W3, C3, D3, 0.1, _read_only(OUT3)), InputError, r"\bout is read-only"),
    "eta complex": ((W3, C3, D3, 0.1j, OUT3), InputError, r"\beta must be a real number"),
}

# W of 400 entries, c, D and out of 4: the loop runs over W's size and wrote past c and out
# (a crash). Run in a child process so that a regression fails this test, not the test run.
CRASH_SCRIPT = textwrap.dedent("""
    import numpy as np
    from refimpl import kernels as k
    try:
        k.compensated_step(np.ones((20, 20)), np.zeros((2, 2)), np.ones((2, 2)), 0.1, np.empty((2, 2)))
        print("NO ERROR")
    except Exception as err:
        print(type(err).__name__, "|", err)
""")


@pytest.mark.parametrize("case", [*STEP_CASES, "W larger than c, D and out"])
def test_compensated_step_refuses_arrays_it_cannot_update_in_place(case):
    """compensated_step's compiled loop runs over W.size and writes c and out without bounds
    checks, so every array must be float64, C-contiguous and of W's shape, and c and out
    writable: anything else raises a named error before the loop runs (no conversion, since a
    converted copy of c or out would silently drop the update)."""
    if case not in STEP_CASES:
        r = subprocess.run([sys.executable, "-c", CRASH_SCRIPT], capture_output=True, text=True, timeout=600)
        assert r.returncode == 0, f"child died with return code {r.returncode}: {r.stderr[-2000:]}"
        assert r.stdout.startswith("ShapeError | compensated_step: c has shape (2, 2) but W has shape (20, 20)"), \
            r.stdout
        return
    args, error, pattern = STEP_CASES[case]
    before = [np.array(a, copy=True) for a in args if isinstance(a, np.ndarray)]
    with pytest.raises(error, match=pattern) as info:
        kn.compensated_step(*args)
    assert "\n" not in str(info.value)
    after = [a for a in args if isinstance(a, np.ndarray)]
    assert all(np.array_equal(b, a) for b, a in zip(before, after))      # nothing was written


def test_compensated_step_still_computes_the_kahan_update():
    """Valid arrays give the update the trainer relies on, unchanged: the checked public name
    and the unchecked loop the trainer calls agree bit for bit, one step equals W - eta*D
    computed by hand, and 1000 steps stay as accurate as compensated summation promises."""
    W, c, D, out = _step_arrays(4)
    eta = 0.37
    c2, out2 = c.copy(), np.empty_like(out)
    kn.compensated_step(W, c, D, eta, out)
    kn._compensated_step(W, c2, D, eta, out2)
    assert np.array_equal(out, out2) and np.array_equal(c, c2)
    # From c = 0 the step is one rounded product and one rounded sum, as in NumPy: equal
    # bits; c then holds the rounding error of that sum, (out - W) - y with y = -eta D.
    assert np.array_equal(out, W - eta * D)
    assert np.array_equal(c, (out - W) - D * -eta)
    # Many tiny steps on large entries. The reference is the exact sum W + sum_k fl(-eta D_k)
    # (the rounding of each product is not compensated), in fractions. Kahan summation stays
    # within 1 ulp of it (here it lands on the correctly rounded value); plain summation of the
    # same terms drifts by up to ~30 ulps, which the second assertion shows the bound detects.
    rng = np.random.default_rng(11)
    W = rng.standard_normal((3, 3)) * 1e3
    plain = W.copy()
    c, out, eta = np.zeros_like(W), np.empty_like(W), 1e-9
    exact = [[Fraction(float(v)) for v in row] for row in W]
    for _ in range(1000):
        D = rng.standard_normal((3, 3))
        y = D * -eta
        plain = plain + y
        for i in range(3):
            for j in range(3):
                exact[i][j] += Fraction(float(y[i, j]))
        kn.compensated_step(W, c, D, eta, out)
        W, out = out, W
    ref = np.array([[float(v) for v in row] for row in exact])
    ulp = np.spacing(np.abs(ref))
    assert np.all(np.abs(W - ref) <= ulp)
    assert np.any(np.abs(plain - ref) > 2 * ulp)


def test_compensated_step_accepts_an_integer_eta_and_out_is_W():
    """eta may be any real number (a NumPy float or an int), and out may be W itself: both
    were accepted before and still give the same bits as the float eta / separate out."""
    W, c, D, out = _step_arrays()
    kn.compensated_step(W, c, D, 2.0, out)
    W2, c2 = W.copy(), np.zeros_like(W)
    kn.compensated_step(W2, c2, D, np.int64(2), W2)
    assert np.array_equal(W2, out) and np.array_equal(c2, c)


# ===================================================================== stage 1, empty collocation
NO_SENTENCES = (SentenceInputError, r"^xs: no sentences \(the collocation is empty")
EMPTY_COLLOCATIONS = {   # (xs, ys), error, message
    "int64 arrays": ((np.array([], dtype=np.int64), np.array([], dtype=np.int64)), *NO_SENTENCES),
    "Python lists": (([], []), *NO_SENTENCES),
    "empty tuples": (((), ()), *NO_SENTENCES),
    # an empty list is empty, not float64: next to one token it is a length mismatch
    "xs of one token, ys []": (([1], []), ShapeError, r"^ys must have length 1"),
}


@pytest.mark.parametrize("entry", ["stage1_grad", "Stage1Direction"])
@pytest.mark.parametrize("collocation", list(EMPTY_COLLOCATIONS))
def test_empty_collocation_is_refused_like_no_sentences(entry, collocation):
    """An empty collocation made stage1_grad return a zero gradient with a NaN loss (and a
    list [] was refused for its float64 dtype instead). L0 has no terms, so it is refused as
    the stage-2 kernels refuse no sentences: SentenceInputError naming xs."""
    (xs, ys), error, pattern = EMPTY_COLLOCATIONS[collocation]
    with pytest.raises(error, match=pattern):
        if entry == "stage1_grad":
            kn.stage1_grad(np.eye(5), xs, ys)
        else:
            kn.Stage1Direction(xs, ys, 5)


def test_stage1_on_a_valid_collocation_is_unchanged():
    """A non-empty collocation still gives the gradient and loss of the NumPy twin, with the
    same bits whether xs and ys come as int64 arrays or as lists."""
    O = np.random.default_rng(2).standard_normal((5, 5))
    xs, ys = np.array([0, 2, 3]), np.array([1, 4, 0])
    G, ls, loss, l10 = kn.stage1_grad(O, xs, ys)
    Gn, lsn, lossn, l10n = stage1_grad_np(O, xs, ys)
    assert np.allclose(np.exp(ls) * G, np.exp(lsn) * Gn, rtol=1e-12, atol=1e-15)
    assert loss == pytest.approx(lossn, rel=1e-12) and l10 == pytest.approx(l10n, rel=1e-12)
    G2, ls2, loss2, l102 = kn.stage1_grad(O, xs.tolist(), ys.tolist())
    assert np.array_equal(G, G2) and (ls, loss, l10) == (ls2, loss2, l102)
    D, norm, _, loss3, _ = kn.Stage1Direction(xs, ys, 5).direction(O)
    assert loss3 == loss and np.allclose(D, kn.normalize(G)[0], atol=4 * 2.0 ** -53)


# ===================================================================== weights that are not real
O5 = np.eye(5) * 2.0
K5 = np.eye(5)
SENTS = [[0, 1, 2], [3, 3]]
NOT_REAL = {
    "complex": lambda W: W * 1j,
    "complex with zero imaginary part": lambda W: W + 0j,
    "boolean": lambda W: W != 0,
    "object holding None": lambda W: np.where(W != 0, W, None).astype(object),
    "object holding complex": lambda W: (W + 0j).astype(object),
    "strings": lambda W: W.astype(str),
}


@pytest.mark.parametrize("kind", list(NOT_REAL))
@pytest.mark.parametrize("call, argument", [
    (lambda bad: ri.predict(bad(O5), K5, SENTS), "W_ov"),
    (lambda bad: ri.predict(O5, bad(K5), SENTS), "W_kq"),
    (lambda bad: kn.stage2_grad(bad(O5), K5, *ri.data.pad_sentences(SENTS), np.array([1, 2])), "O"),
    (lambda bad: kn.stage2_grad(O5, bad(K5), *ri.data.pad_sentences(SENTS), np.array([1, 2])), "K"),
], ids=["predict W_ov", "predict W_kq", "stage2_grad O", "stage2_grad K"])
def test_weights_that_are_not_real_numbers_are_refused(call, argument, kind):
    """Weights went through np.asarray(W, float64), which keeps the real part of complex
    values (with only a ComplexWarning), reads booleans as 0/1, parses strings and turns None
    into NaN. Now any of them is a ShapeError naming the argument and the dtype, the error
    the boundary already raised for arrays that cannot be read as floats at all."""
    with warnings.catch_warnings():
        warnings.simplefilter("error")                  # no ComplexWarning on the way
        with pytest.raises(ShapeError, match=rf"^{argument} must be a float array .* holding real numbers, got "):
            call(NOT_REAL[kind])


def test_real_weights_of_any_numeric_dtype_still_work():
    """Integer, float32 and object arrays of real numbers are still converted to float64 and
    give the same results as the float64 weights."""
    tokens, lengths = ri.data.pad_sentences(SENTS)
    ys = np.array([1, 2])
    ref_pred = ri.predict(O5, K5, SENTS)
    ref_grad = kn.stage2_grad(O5, K5, tokens, lengths, ys)
    for conv in (lambda W: W.astype(np.int64), lambda W: W.astype(np.float32), lambda W: W.astype(object),
                 lambda W: W.tolist()):
        pred = ri.predict(conv(O5), conv(K5), SENTS)
        assert np.array_equal(pred[0], ref_pred[0]) and np.array_equal(pred[1], ref_pred[1])
        grad = kn.stage2_grad(conv(O5), conv(K5), tokens, lengths, ys)
        assert np.array_equal(grad[0], ref_grad[0]) and grad[1:] == ref_grad[1:]


# ===================================================================== dataset constructor
PADDED = np.array([[0, 1], [2, 0]])
BAD_DATASETS = {   # (collocation, sentences, next_tokens), the field the message names
    "float tokens": ((COLLOC3, [[0.9, 1.2], [2.0]], [2, 0]), r"^sentence 0 position 0: token 0\.9 \(float\)"),
    "an integral float token": ((COLLOC3, [[0, 1], [2.0]], [2, 0]), r"^sentence 1 position 0: token 2\.0"),
    "a NumPy float sentence": ((COLLOC3, [np.array([0.0, 1.0]), [2]], [2, 0]), r"^sentence 0 position 0"),
    "a bool token": ((COLLOC3, [[0, True], [2]], [2, 0]), r"^sentence 0 position 1: token True"),
    "string sentences": ((COLLOC3, ["01", "2"], [2, 0]), r"^sentence 0 is '01' \(str\)"),
    "a flat list of ints": ((COLLOC3, [0, 1, 2], [2]), r"^sentence 0 is 0 \(int\)"),
    "float collocation keys": (({0.5: 1, 1.9: 2, 2: 0}, [[0, 1], [2]], [2, 0]), r"^collocation key 0\.5"),
    "an integral float key": (({0: 1, 1: 2, 2.0: 0}, [[0, 1], [2]], [2, 0]), r"^collocation key 2\.0"),
    "a string key": (({"0": 1, 1: 2, 2: 0}, [[0, 1], [2]], [2, 0]), r"^collocation key '0'"),
    "a float collocation value": (({0: 1.0, 1: 2, 2: 0}, [[0, 1], [2]], [2, 0]), r"^collocation value 1\.0"),
    "padded float lengths": ((COLLOC3, (PADDED, np.array([2.0, 1.0])), [2, 0]), r"^padded lengths must hold integers"),
    "an odd-length collocation": (([0, 1, 2], [[0, 1], [2]], [2, 0]), r"^collocation must be pairs .* shape \(3,\)"),
    "collocation rows of 3": (([[0, 1, 2], [1, 2, 0]], [[0, 1], [2]], [2, 0]),
                              r"^collocation must be pairs .* shape \(2, 3\)"),
    # the rule tokens and keys now follow, as next tokens did already (unchanged)
    "an integral float next token": ((COLLOC3, [[0, 1], [2]], [2.0, 0]), r"^next_tokens must hold integers"),
}


@pytest.mark.parametrize("case", list(BAD_DATASETS))
def test_dataset_constructor_refuses_values_that_are_not_integers(case):
    """The constructor truncated float tokens and collocation keys (0.9 -> 0), parsed strings
    of digits as tokens, and let float padded lengths and an odd collocation escape as a raw
    TypeError / ValueError. Like next tokens, they are now a FileFormatError naming the field
    (and for a token the sentence and position), as the class docstring states."""
    (colloc, sentences, next_tokens), pattern = BAD_DATASETS[case]
    with pytest.raises(FileFormatError, match=pattern) as info:
        RealizableDataset(3, colloc, sentences, next_tokens)
    assert "\n" not in str(info.value)


def test_integer_datasets_still_construct_and_validate():
    """Python ints, NumPy integers of any width, int arrays, tuples, a padded pair with int
    lengths and collocation pairs (nested or flat) all build the same dataset as before,
    which validates with the same optimal tokens."""
    ref = RealizableDataset(3, COLLOC3, [[0, 1], [2]], [2, 0])
    same = [
        RealizableDataset(3, {np.int64(2): np.int32(0), 0: 1, np.uint8(1): 2}, [np.array([0, 1]), (2,)],
                          np.array([2, 0], dtype=np.int16)),
        RealizableDataset(3, [[0, 1], [1, 2], [2, 0]], [[np.int8(0), 1], [2]], [2, 0]),
        RealizableDataset(3, np.array([0, 1, 1, 2, 2, 0]), (PADDED, np.array([2, 1], dtype=np.uint8)), [2, 0]),
        RealizableDataset(3, COLLOC3, ((0, 1), (2,)), (2, 0)),
    ]
    ri.validate(ref)
    assert ref.sentences() == [[0, 1], [2]] and ref.optimal.tolist() == [1, 2]
    for ds in same:
        assert ds == ref
        ri.validate(ds)
        assert ds.optimal.tolist() == [1, 2] and ds.flat_tokens.dtype == np.int64
