"""refimpl: reference implementation of training a one-layer transformer for next-token
prediction (Huang, Liang & Yang, NeurIPS 2024), with certified bounds.

Letters used in every docstring: N sentences, L positions (Lmax padded width),
M tokens (vocabulary size), d embedding width, n_c = |C| collocation size.
Token coordinates: O = E^T W_ov E, K = E^T W_kq E (M x M), row = key token,
column = query token.

Public names (the public API, README.md) are loaded on first use, so ``import refimpl``
stays cheap and the Numba kernels compile only when needed.
"""
import os
from importlib import import_module

# OpenMP threads (Numba's "omp" threading layer) sleep when idle instead of spinning, unless
# the environment says otherwise. Read once, when libgomp loads at the first threaded kernel
# call. Spinning threads on a CPU shared with other busy processes made a threaded step of
# 0.02 ms take 8-20 ms (the waiting thread spins through the time slice the working thread
# needs); sleeping threads cost ~10 us per threaded step (bench/bench_contended.py).
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

__version__ = "0.1.0"

_PUBLIC = {
    # datasets
    "RealizableDataset": "data", "validate": "data", "extended_order": "data",
    "DatasetArrays": "data",
    "transitive_closure": "data", "induced_relations": "data",
    "generate": "generator",
    "load_dataset": "io", "save_dataset": "io",
    # errors
    "DatasetError": "errors", "TokenOutOfRangeError": "errors", "EmptySentenceError": "errors",
    "EmptyDatasetError": "errors", "VocabularySizeError": "errors", "ResourceError": "errors",
    "InputError": "errors", "ShapeError": "errors", "NonFiniteError": "errors", "SentenceInputError": "errors",
    "CountMismatchError": "errors", "CollocationConflictError": "errors",
    "NoOptimalTokenError": "errors", "AmbiguousOptimalTokenError": "errors",
    "OrderCycleError": "errors", "OptimalTokenMismatchError": "errors", "OrderContradictionError": "errors",
    "NonOrthonormalEmbeddingError": "errors", "FileFormatError": "errors", "ConfigError": "errors",
    # model
    "loss_and_grads": "model", "stage1_loss_and_grad": "model",
    "to_token_coords": "model", "from_token_coords": "model",
    # max-margin
    "w_ov_star": "maxmargin", "w_kq_star": "maxmargin", "stage2_floor": "maxmargin",
    "grade_w_kq": "maxmargin",
    "grade_w_ov": "maxmargin",
    "Grade": "grading",
    # training
    "train_two_stage": "train", "train_joint": "train", "TrainConfig": "train",
    # generalization
    "predict": "prediction",
    "audit_trajectory": "audit_trajectory", "save_checkpoints": "audit_trajectory",
    # the audit (refimpl.audit is the module, callable as refimpl.audit.audit)
    "audit": "audit",
}

__all__ = sorted(_PUBLIC) + ["__version__"]


def __getattr__(name):
    try:
        module = _PUBLIC[name]
    except KeyError:
        raise AttributeError(f"module 'refimpl' has no attribute {name!r}") from None
    value = import_module(f".{module}", __name__)
    value = value if name == module and callable(value) else getattr(value, name)   # a callable module: itself
    globals()[name] = value
    return value


def __dir__():
    return __all__
