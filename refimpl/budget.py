"""Memory estimates checked before large allocations.

Loading and validating a dataset take memory proportional to the file (sentences are
stored ragged, docs/datasets.md). Training and the max-margin solvers need M x M
matrices, and a padded ``(N, Lmax)`` token array exists only on request. Before such an
allocation the code asks :func:`check_bytes`, which raises
:class:`~refimpl.errors.ResourceError` naming the sizes and the estimate when it would
not fit, instead of letting the machine swap or the process be killed.

The limit is, in order: the environment variable ``REFIMPL_MAX_MEMORY`` (bytes, or a
number with a suffix K, M, G, T: powers of 1024), else 80% of the smaller of the
physical memory and the address-space limit (``RLIMIT_AS``) of this process.
"""
from __future__ import annotations

import os
import re

from .errors import ConfigError, ResourceError

__all__ = ["memory_limit", "check_bytes", "format_bytes", "training_bytes", "check_training"]

_SUFFIX = {"": 1, "K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40}
ENV_VAR = "REFIMPL_MAX_MEMORY"


def format_bytes(n):
    """``n`` bytes as a short human string (binary units): ``1.5 GiB``."""
    n = float(n)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB", "PiB"):
        if n < 1024 or unit == "PiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} PiB"  # pragma: no cover (loop always returns)


def _physical_bytes():
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):  # pragma: no cover (non-POSIX)
        return 1 << 34


def memory_limit():
    """The number of bytes one allocation plan may use (module docstring); int > 0."""
    raw = os.environ.get(ENV_VAR, "").strip()
    if raw:
        m = re.fullmatch(r"([0-9]+(?:\.[0-9]+)?)\s*([KMGT]?)i?B?", raw, flags=re.IGNORECASE | re.ASCII)
        if m is None or float(m.group(1)) <= 0:
            raise ConfigError(f"{ENV_VAR}={raw!r} is not a size (bytes, or a number with K, M, G or T)")
        return int(float(m.group(1)) * _SUFFIX[m.group(2).upper()])
    limit = _physical_bytes()
    try:
        import resource
        soft = resource.getrlimit(resource.RLIMIT_AS)[0]
        if soft != resource.RLIM_INFINITY and soft > 0:
            limit = min(limit, soft)
    except (ImportError, ValueError, OSError):  # pragma: no cover (non-POSIX)
        pass
    return int(0.8 * limit)


def check_bytes(needed, what):
    """Raise :class:`ResourceError` if ``needed`` bytes exceed :func:`memory_limit`.

    Parameters
    ----------
    needed : int or float
        Estimated bytes of the allocation (or of the whole plan).
    what : str
        What needs them, with its sizes, e.g. ``"training at M=100000"``; goes into the message.
    """
    limit = memory_limit()
    if needed > limit:
        raise ResourceError(
            f"{what} needs about {format_bytes(needed)}, more than the {format_bytes(limit)} this machine "
            f"allows (set {ENV_VAR} to change the limit)", needed_bytes=int(needed), limit_bytes=limit)


def training_bytes(M, n_tokens, N, Lmax):
    """Estimated peak bytes of Algorithm 1 on a dataset: about 24 float64 M x M matrices
    (weights, directions, compensations, up to 4 chunk accumulators per gradient, the
    max-margin solutions and their certificates; the stage-2 floor holds one transposed copy
    of W_ov and works in blocks of at most 32 MiB per temporary), a padded (N, Lmax) int64 token
    array and a float64 attention array of the same shape (the audit and the metrics read
    them), plus the ragged tokens."""
    return 8 * (24 * M * M + 2 * N * Lmax + 2 * n_tokens + 16 * N) + 8 * (1 << 25)


def check_training(ds, what="training"):
    """:func:`check_bytes` for :func:`training_bytes` of the dataset ``ds``."""
    M, N, Lmax = ds.vocab_size, ds.n_sentences, ds.max_len
    check_bytes(training_bytes(M, len(ds.flat_tokens), N, Lmax),
                f"{what} (M={M}, N={N}, longest sentence {Lmax})")
