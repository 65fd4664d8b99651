"""Deterministic exp, dot, sum and max building blocks for the Numba kernels (refimpl.kernels).

No fastmath anywhere: LLVM may not reassociate, so every reduction here fixes its
order explicitly (interleaved partial sums combined in a fixed tree) and results are
bit-identical run to run. The exp is a polynomial with no libm call, written so the
vector loop compiles to SIMD code (a NaN-aware ``max`` or a branch would not).
Products are fused with an explicit, correctly rounded :func:`fma` (LLVM never fuses
without fastmath), which halves the floating-point operations of the exp polynomial,
the logits axpys and the dot products.

Numba's on-disk cache keys each function on its own file only: after editing this
module, touch ``kernels_chunk.py`` and ``kernels.py`` (or clear ``refimpl/__pycache__``)
so the kernels that inline these helpers are recompiled.
"""
from __future__ import annotations

import math

import numpy as np
from llvmlite import ir
from numba import njit
from numba.core import types
from numba.extending import intrinsic

_OPTS = dict(cache=True, fastmath=False, nogil=True, boundscheck=False, error_model="numpy")
# The small helpers are inlined into the kernels at Numba-IR level: as separate functions
# each call passed its arrays with reference-count updates (measured: 10-12% of a size-S
# step in NRT_incref/decref) and _poly was called out of line, once per element.
_INLINE = dict(_OPTS, inline="always")


@intrinsic
def fma(typingctx, a, b, c):
    """a * b + c with one rounding (IEEE fusedMultiplyAdd, LLVM ``llvm.fma.f64``).

    Exactly specified, so as deterministic as a separate multiply and add, and it
    vectorizes to FMA instructions (without fastmath LLVM never fuses on its own).
    On a CPU without FMA hardware LLVM calls libm's fma: same bits, slower.
    """
    if not all(isinstance(x, types.Float) for x in (a, b, c)):
        return None

    def codegen(context, builder, sig, args):
        ty = context.get_value_type(types.float64)
        fn = builder.module.declare_intrinsic("llvm.fma", [ty], ir.FunctionType(ty, [ty, ty, ty]))
        return builder.call(fn, [context.cast(builder, v, t, types.float64) for v, t in zip(args, sig.args)])
    return types.float64(a, b, c), codegen


def _bitcast(src, dst):
    """An intrinsic reinterpreting the 64 bits of a ``src`` value as ``dst`` (no conversion)."""
    def impl(typingctx, x):
        if x != src:
            return None

        def codegen(context, builder, sig, args):
            return builder.bitcast(args[0], context.get_value_type(dst))
        return dst(src), codegen
    return impl


as_bits = intrinsic(_bitcast(types.float64, types.int64))
as_bits.__doc__ = "The IEEE-754 bits of a float64 as an int64 (a register bitcast, no memory round trip)."
from_bits = intrinsic(_bitcast(types.int64, types.float64))
from_bits.__doc__ = "The float64 whose IEEE-754 bits are the given int64 (inverse of :func:`as_bits`)."

_LOG2E = 1.4426950408889634
_LN2_HI = 6.93147180369123816490e-01      # fdlibm split of log(2): k * _LN2_HI is exact
_LN2_LO = 1.90821492927058770002e-10
_SHIFTER = 6755399441055744.0             # 1.5 * 2^52: x + _SHIFTER rounds x to an integer
_EXP_MIN = -708.0                         # below: e^x < 3.3e-308, returned as 0


# 1/n!, n = 2..13, as plain float globals (Numba freezes globals into the code as constants)
_C2, _C3, _C4, _C5, _C6, _C7, _C8, _C9, _C10, _C11, _C12, _C13 = (
    1.0 / math.factorial(n) for n in range(2, 14))


@njit(**_INLINE)
def _poly(r):
    """exp(r) for |r| <= log(2)/2: Taylor polynomial of degree 13 (truncation < 4e-18 relative).

    Estrin's scheme (pairs, then powers r^2, r^4, r^8): 13 FMAs at dependency depth 4
    instead of Horner's 13, so the vector loop is not latency-bound.
    """
    r2 = r * r
    r4 = r2 * r2
    t0 = fma(fma(_C3, r, _C2), r2, fma(1.0, r, 1.0))
    t1 = fma(fma(_C7, r, _C6), r2, fma(_C5, r, _C4))
    t2 = fma(fma(_C11, r, _C10), r2, fma(_C9, r, _C8))
    t3 = fma(_C13, r, _C12)
    return fma(fma(t3, r4, t2), r4 * r4, fma(t1, r4, t0))


@njit(**_INLINE)
def _exp_reduced(x):
    """exp(x) for _EXP_MIN <= x <= 709 (no libm call): Cody-Waite reduction x = k log 2 + r,
    |r| <= log(2)/2, exp(r) by :func:`_poly`, 2^k written into the exponent bits."""
    tk = fma(x, _LOG2E, _SHIFTER)        # bits of tk = bits(1.5 * 2^52) + k
    k = tk - _SHIFTER
    p = _poly(fma(-k, _LN2_LO, fma(-k, _LN2_HI, x)))   # the inner fma is exact (Cody-Waite)
    return p * from_bits((as_bits(tk) + 1023) << 52)   # the shift drops the 1.5 * 2^52 offset


@njit(**_INLINE)
def exp_shifted(z, zmax, w):
    """w[v] = exp(z[v] - zmax) for z[v] <= zmax, one SIMD-vectorizable loop (no libm call).

    Error <= 2 ulp; arguments below -708 give 0 (never used against a sum of order 1,
    so the omission is below 1e-300 relative); exp(-inf) = 0. z, w : (M,), NaN-free.
    The clamp and the zero are selects, not branches, so the loop vectorizes.
    """
    for v in range(z.shape[0]):
        w[v] = exp_clamped(z[v] - zmax)


@njit(**_INLINE)
def exp_clamped(x):
    """exp(x) for x <= 0 with arguments below -708 returned as 0 (the element of
    :func:`exp_shifted`: no libm call, error <= 2 ulp, selects instead of branches)."""
    e = _exp_reduced(x if x > _EXP_MIN else _EXP_MIN)
    return e if x > _EXP_MIN else 0.0


@njit(**_INLINE)
def exp_scalar(x):
    """exp(x) for one float64 without a libm call when -708 < x <= 709 (error <= 2 ulp);
    outside that range (subnormal results, overflow, NaN) it defers to ``math.exp``."""
    if _EXP_MIN < x <= 709.0:
        return _exp_reduced(x)
    return math.exp(x)


@njit(**_INLINE)
def dots4(A, i0, i1, i2, i3, b, out, j, n):
    """out[j + k] = sum_{v < n} A[ik, v] b[v] for k = 0..3 in one pass over b, two partial sums
    each (``n`` <= the length of b and of the rows: a padded b's tail is left out).

    Same value as ``dot2(A, ik, b, n)`` for every k (even/odd partial sums, fixed order);
    sharing the loads of b makes it ~2x faster than four separate dots. Rows are
    indexed, not sliced: a row view costs reference-count updates per call.
    """
    s0 = 0.0
    s1 = 0.0
    s2 = 0.0
    s3 = 0.0
    e0 = 0.0
    e1 = 0.0
    e2 = 0.0
    e3 = 0.0
    v = 0
    while v + 2 <= n:
        bv = b[v]
        bw = b[v + 1]
        s0 = fma(A[i0, v], bv, s0)
        s1 = fma(A[i1, v], bv, s1)
        s2 = fma(A[i2, v], bv, s2)
        s3 = fma(A[i3, v], bv, s3)
        e0 = fma(A[i0, v + 1], bw, e0)
        e1 = fma(A[i1, v + 1], bw, e1)
        e2 = fma(A[i2, v + 1], bw, e2)
        e3 = fma(A[i3, v + 1], bw, e3)
        v += 2
    if v < n:
        bv = b[v]
        s0 = fma(A[i0, v], bv, s0)
        s1 = fma(A[i1, v], bv, s1)
        s2 = fma(A[i2, v], bv, s2)
        s3 = fma(A[i3, v], bv, s3)
    out[j] = s0 + e0
    out[j + 1] = s1 + e1
    out[j + 2] = s2 + e2
    out[j + 3] = s3 + e3


@njit(**_INLINE)
def dot2(A, i, b, n):
    """sum_{v < n} A[i, v] b[v] with even/odd partial sums: the same value as one lane of
    :func:`dots4`."""
    s0 = 0.0
    e0 = 0.0
    v = 0
    while v + 2 <= n:
        s0 = fma(A[i, v], b[v], s0)
        e0 = fma(A[i, v + 1], b[v + 1], e0)
        v += 2
    if v < n:
        s0 = fma(A[i, v], b[v], s0)
    return s0 + e0


@njit(**_INLINE)
def sum4(a, n):
    """sum_{v < n} a[v] with four interleaved partial sums (fixed order; ``n`` <= len(a), so a
    padded array's tail is left out)."""
    s0 = 0.0
    s1 = 0.0
    s2 = 0.0
    s3 = 0.0
    v = 0
    while v + 4 <= n:
        s0 += a[v]
        s1 += a[v + 1]
        s2 += a[v + 2]
        s3 += a[v + 3]
        v += 4
    while v < n:
        s0 += a[v]
        v += 1
    return (s0 + s1) + (s2 + s3)


@njit(**_INLINE)
def max4(a):
    """max_v a[v] with four interleaved partial maxima (exact in any order; inputs NaN-free)."""
    n = a.shape[0]
    m0 = -np.inf
    m1 = -np.inf
    m2 = -np.inf
    m3 = -np.inf
    v = 0
    while v + 4 <= n:
        m0 = a[v] if a[v] > m0 else m0
        m1 = a[v + 1] if a[v + 1] > m1 else m1
        m2 = a[v + 2] if a[v + 2] > m2 else m2
        m3 = a[v + 3] if a[v + 3] > m3 else m3
        v += 4
    while v < n:
        m0 = a[v] if a[v] > m0 else m0
        v += 1
    m0 = m1 if m1 > m0 else m0
    m2 = m3 if m3 > m2 else m2
    return m2 if m2 > m0 else m0


@njit(**_OPTS)
def sumsq4(a):
    """sum_v a[v]^2 over a C-contiguous array of any shape, four interleaved partial sums."""
    f = a.ravel()
    n = f.shape[0]
    s0 = 0.0
    s1 = 0.0
    s2 = 0.0
    s3 = 0.0
    v = 0
    while v + 4 <= n:
        s0 = fma(f[v], f[v], s0)
        s1 = fma(f[v + 1], f[v + 1], s1)
        s2 = fma(f[v + 2], f[v + 2], s2)
        s3 = fma(f[v + 3], f[v + 3], s3)
        v += 4
    while v < n:
        s0 = fma(f[v], f[v], s0)
        v += 1
    return (s0 + s1) + (s2 + s3)


@njit(**_INLINE)
def scale_inplace(a, c):
    """a *= c in place (a : C-contiguous, any shape); the same products as :func:`scaled`."""
    fa = a.ravel()
    for v in range(fa.shape[0]):
        fa[v] = fa[v] * c


@njit(**_INLINE)
def add_scaled(y, c, x):
    """y += c * x in place, elementwise, no temporary (y, x : C-contiguous, same shape)."""
    fy = y.ravel()
    fx = x.ravel()
    for v in range(fy.shape[0]):
        fy[v] += c * fx[v]


@njit(**_OPTS)
def scaled(a, c):
    """a * c as a new C-contiguous array (a : C-contiguous, any shape)."""
    out = np.empty_like(a)
    fo = out.ravel()
    fa = a.ravel()
    for v in range(fa.shape[0]):
        fo[v] = fa[v] * c
    return out
