"""Boundary checks of small public functions: token coordinates, sentence access, orders,
dataset arguments, KKT certificates and the audit's C5 fields."""
import numpy as np
import pytest

import refimpl as ri
from refimpl import errors
from refimpl.maxmargin import certify, certify_ov
from refimpl.model import check_orthonormal


@pytest.fixture(scope="module")
def ds():
    return ri.generate(vocab_size=5, n_sentences=20, seed=0)


def _orthonormal(d, M, seed=0):
    return np.linalg.qr(np.random.default_rng(seed).standard_normal((d, d)))[0][:, :M]


# ------------------------------------------------------------ token coordinates
@pytest.mark.parametrize("W, E, exc, name", [
    (np.eye(6), np.ones(6), errors.ShapeError, "E"),
    (np.eye(6), np.ones((2, 6, 6)), errors.ShapeError, "E"),
    (np.ones((2, 5, 5)), np.eye(6), errors.ShapeError, "W"),         # a stack of the wrong d
    (np.ones(6), np.eye(6), errors.ShapeError, "W"),
    (np.eye(5), np.eye(6), errors.ShapeError, "W"),
    (np.eye(6), np.full((6, 6), np.nan), errors.NonFiniteError, "E"),
    (np.full((6, 6), np.nan), np.eye(6), errors.NonFiniteError, "W"),
])
def test_to_token_coords_rejects_bad_arrays(W, E, exc, name):
    """to_token_coords raises ShapeError / NonFiniteError naming W or E."""
    with pytest.raises(exc, match=rf"^{name}\b"):
        ri.to_token_coords(W, E)


def test_to_token_coords_maps_a_stack_matrix_by_matrix():
    """A stack (T, d, d) of checkpoints maps to (T, M, M), each E^T W_t E (the trajectory audit
    converts a run's checkpoints in one call)."""
    E = _orthonormal(7, 4)
    Ws = np.random.default_rng(3).standard_normal((3, 7, 7))
    got = ri.to_token_coords(Ws, E)
    assert got.shape == (3, 4, 4)
    for W, K in zip(Ws, got):
        np.testing.assert_allclose(K, E.T @ W @ E, rtol=0, atol=1e-14)


def test_to_token_coords_valid_input_is_e_transpose_w_e():
    """to_token_coords of valid input equals E^T W E computed by hand."""
    rng = np.random.default_rng(1)
    E, W = _orthonormal(7, 4), rng.standard_normal((7, 7))
    expected = np.array([[E[:, a] @ W @ E[:, b] for b in range(4)] for a in range(4)])
    np.testing.assert_allclose(ri.to_token_coords(W, E), expected, rtol=0, atol=1e-13)


@pytest.mark.parametrize("K, E, exc, name", [
    (np.eye(3), np.ones(3), errors.ShapeError, "E"),
    (np.eye(2), np.eye(3), errors.ShapeError, "K"),
    (np.full((3, 3), np.inf), np.eye(3), errors.NonFiniteError, "K"),
    (np.eye(3), np.full((3, 3), np.nan), errors.NonFiniteError, "E"),
])
def test_from_token_coords_rejects_bad_arrays(K, E, exc, name):
    """from_token_coords raises ShapeError / NonFiniteError naming K or E."""
    with pytest.raises(exc, match=rf"^{name}\b"):
        ri.from_token_coords(K, E)


@pytest.mark.parametrize("tol", [float("nan"), -1, float("inf"), "x", None, True])
def test_from_token_coords_rejects_bad_tol(tol):
    """from_token_coords and check_orthonormal raise ConfigError naming tol."""
    with pytest.raises(errors.ConfigError, match="tol"):
        ri.from_token_coords(np.eye(3), np.eye(3), tol=tol)
    with pytest.raises(errors.ConfigError, match="tol"):
        check_orthonormal(np.eye(3), tol)


def test_from_token_coords_valid_input_is_e_k_e_transpose():
    """from_token_coords of valid input equals E K E^T, also with tol=0 for the identity."""
    E, K = _orthonormal(6, 4), np.random.default_rng(2).standard_normal((4, 4))
    np.testing.assert_allclose(ri.from_token_coords(K, E), E @ K @ E.T, rtol=0, atol=1e-13)
    assert ri.from_token_coords(K, np.eye(4), tol=0).tolist() == K.tolist()


def test_check_orthonormal_one_dimensional_is_shape_error():
    """check_orthonormal of a 1-D E raises ShapeError naming E."""
    with pytest.raises(errors.ShapeError, match=r"^E\b"):
        check_orthonormal(np.ones(4))


# ------------------------------------------------------------ sentence access
@pytest.mark.parametrize("i", [-1, -20, 20, 10**6])
def test_sentence_index_out_of_range(ds, i):
    """RealizableDataset.sentence raises IndexError naming the index and N for i outside 0..N-1."""
    with pytest.raises(IndexError, match=rf"i = {i}\b.*N = 20"):
        ds.sentence(i)


@pytest.mark.parametrize("i", [2.5, "2", True, None])
def test_sentence_index_not_an_integer(ds, i):
    """RealizableDataset.sentence raises TypeError for a non-integer index."""
    with pytest.raises(TypeError, match="sentence index i"):
        ds.sentence(i)


def test_sentence_valid_indices_match_sentences(ds):
    """sentence(i) for i in 0..N-1 (Python or NumPy ints) equals sentences()[i]."""
    lists = ds.sentences()
    assert [ds.sentence(i).tolist() for i in range(len(ds))] == lists
    assert ds.sentence(np.int64(len(ds) - 1)).tolist() == lists[-1]


# ------------------------------------------------------------ extended order
@pytest.mark.parametrize("q", [5, 10, -1, 2.7, "2", True, None])
def test_extended_order_rejects_bad_query(ds, q):
    """extended_order and induced_relations raise SentenceInputError naming q and its range."""
    with pytest.raises(errors.SentenceInputError, match=r"q .*0\.\.4"):
        ri.extended_order(ds, q)
    if q is not None:
        with pytest.raises(errors.SentenceInputError, match=r"q .*0\.\.4"):
            ri.induced_relations(ds, q)


def test_extended_order_valid_query_is_closure_of_induced_relations(ds):
    """extended_order(ds, q) is the Warshall closure of the induced relations of q."""
    M = ds.vocab_size
    for q in range(M):
        ref = np.zeros((M, M), dtype=bool)
        for a, b in ri.induced_relations(ds, q).tolist():
            ref[a, b] = True
        for k in range(M):
            ref |= ref[:, [k]] & ref[[k], :]
        assert np.array_equal(ri.extended_order(ds, np.int64(q)), ref)


# ------------------------------------------------------------ transitive closure
@pytest.mark.parametrize("relations, M, exc, name", [
    ([[0, 1]], 3.5, errors.ConfigError, "M"),
    ([[0, 1]], "3", errors.ConfigError, "M"),
    ([[0, 1]], -1, errors.ConfigError, "M"),
    ([[0.0, 1.0]], 3, errors.SentenceInputError, "relations"),
    ([[0.5, 1.0]], 3, errors.SentenceInputError, "relations"),
    ([[0, 3]], 3, errors.SentenceInputError, "relations"),
    ([0, 1, 2], 3, errors.ShapeError, "relations"),
])
def test_transitive_closure_rejects_bad_arguments(relations, M, exc, name):
    """transitive_closure raises ConfigError for a bad M and InputError naming relations."""
    with pytest.raises(exc, match=rf"^{name}\b"):
        ri.transitive_closure(relations, M)


def test_transitive_closure_cycle_is_reachability():
    """transitive_closure of a cycle is its reachability relation: True on the cycle's diagonal."""
    less = ri.transitive_closure([[0, 1], [1, 2], [2, 0]], 4)
    expected = np.zeros((4, 4), dtype=bool)
    expected[:3, :3] = True
    assert np.array_equal(less, expected)


def test_transitive_closure_valid_chain():
    """transitive_closure of a chain is its strict order; no relations give all False."""
    less = ri.transitive_closure(np.array([[0, 1], [1, 2]]), 4)
    expected = np.zeros((4, 4), dtype=bool)
    expected[0, 1] = expected[1, 2] = expected[0, 2] = True
    assert np.array_equal(less, expected)
    assert not ri.transitive_closure([], 3).any()
    assert ri.transitive_closure(np.zeros((0, 2), dtype=np.int64), np.int64(3)).shape == (3, 3)


# ------------------------------------------------------------ dataset-first functions
@pytest.mark.parametrize("call", [
    lambda I, ds: ri.loss_and_grads([[0, 1]], I, I),
    lambda I, ds: ri.stage1_loss_and_grad([[0, 1]], I),
    lambda I, ds: ri.grade_w_kq(I, ds),
    lambda I, ds: ri.grade_w_kq([[0, 1]], I),
    lambda I, ds: ri.grade_w_ov(I, ds),
    lambda I, ds: ri.extended_order([[0, 1]], 0),
    lambda I, ds: ri.induced_relations([[0, 1]], 0),
    lambda I, ds: ri.save_dataset([[0, 1]], "unused.json"),
], ids=["loss_and_grads", "stage1_loss_and_grad", "grade_w_kq_swapped", "grade_w_kq_list",
        "grade_w_ov_swapped", "extended_order", "induced_relations", "save_dataset"])
def test_dataset_argument_must_be_a_dataset(ds, call):
    """Functions taking a dataset first raise TypeError naming RealizableDataset for anything else."""
    with pytest.raises(TypeError, match="expects a RealizableDataset"):
        call(np.eye(5), ds)


def test_dataset_first_functions_still_work(ds):
    """loss_and_grads at zero weights gives log M and grade_w_ov of W_ov* is exact."""
    loss, g_ov, g_kq = ri.loss_and_grads(ds, np.zeros((5, 5)), np.zeros((5, 5)))
    assert loss == pytest.approx(np.log(5), rel=1e-14)
    assert ri.grade_w_ov(ds, ri.w_ov_star(ds)[0]).rel_distance == 0.0


# ------------------------------------------------------------ certificates
@pytest.mark.parametrize("rows, alpha, exc, name", [
    ({0: [[0, 5]]}, None, errors.SentenceInputError, "rows_by_column"),
    ({7: [[0, 1]]}, None, errors.ConfigError, "rows_by_column"),
    ({-1: [[0, 1]]}, None, errors.ConfigError, "rows_by_column"),
    ({0: [0, 1, 2]}, None, errors.ShapeError, "rows_by_column"),
    ({0: [[1, 0]]}, {}, errors.ConfigError, "alpha_by_column"),
    ({0: [[1, 0]]}, {0: [1.0, 2.0]}, errors.ShapeError, "alpha_by_column"),
])
def test_certify_rejects_bad_rows_and_multipliers(rows, alpha, exc, name):
    """certify raises an InputError / ConfigError naming rows_by_column or alpha_by_column."""
    with pytest.raises(exc, match=name):
        certify(np.eye(3), rows, alpha)


@pytest.mark.parametrize("O, xs, ys, alpha, exc, name", [
    (np.eye(3), [5], [0], None, errors.SentenceInputError, "xs"),
    (np.eye(3), [0], [-1], None, errors.SentenceInputError, "ys"),
    (np.eye(3), [0, 1], [1], None, errors.ShapeError, "ys"),
    (np.eye(3), [0], [1], [1.0, 2.0], errors.ShapeError, "alpha"),
    (np.eye(3), [0], [1], [np.nan], errors.NonFiniteError, "alpha"),
    (np.ones((2, 3)), [0], [1], None, errors.ShapeError, "O"),
])
def test_certify_ov_rejects_bad_arguments(O, xs, ys, alpha, exc, name):
    """certify_ov raises ShapeError / NonFiniteError / SentenceInputError naming the argument."""
    with pytest.raises(exc, match=rf"^{name}\b"):
        certify_ov(O, xs, ys, alpha)


def test_certify_ov_and_certify_accept_the_closed_form(ds):
    """The closed-form W_ov* still passes certify_ov and the dense certify with the same rows."""
    O, _ = ri.w_ov_star(ds)
    M = ds.vocab_size
    xs, ys = ds.colloc_tokens, ds.colloc_next
    certify_ov(O, xs, ys).check()
    rows = {int(x): np.array([[y, v] for v in range(M) if v != y]) for x, y in zip(xs, ys)}
    alpha = {c: np.full(M - 1, 1.0 / M) for c in rows}
    certify(O, rows, alpha, problem="W_ov*").check()


# ------------------------------------------------------------ audit configuration
@pytest.mark.parametrize("field, value", [("c5_T0", -1), ("c5_T0", 2.5), ("c5_init_scale", -1.0),
                                          ("c5_init_scale", float("nan"))])
def test_audit_names_the_c5_field(ds, field, value):
    """audit with a bad c5_T0 / c5_init_scale raises ConfigError naming that field."""
    with pytest.raises(errors.ConfigError, match=rf"^{field} must"):
        ri.audit(ds, T0=5, T=5, generalization=False, progress=False, **{field: value})
