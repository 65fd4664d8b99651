"""Deterministic exp, dot, sum and max building blocks for the Numba kernels (refimpl.kernels).

No fastmath anywhere: LLVM may not reassociate, so every reduction here fixes its
order explicitly (interleaved partial sums combined in a fixed tree) and results are
bit-identical run to run. The exp is a polynomial with no libm call, written so the
vector loop compiles to SIMD code (a NaN-aware ``max`` or a branch would not).
Products are fused with an explicit, correctly rounded :func:`fma` (LLVM never fuses
without fastmath), which halves the floating-point operations of the exp polynomial,
the logits axpys and the dot products.

Numba's on-disk cache keys each function on its own file only: after editing this
module, touch ``kernels.py`` (or clear ``refimpl/__pycache__``) so the kernels that
inline these helpers are recompiled.
"""
from __future__ import annotations

import math

import numpy as np
from llvmlite import ir
from numba import njit
from numba.core import types
from numba.extending import intrinsic

_OPTS = dict(cache=True, fastmath=False, nogil=True, boundscheck=False, error_model="numpy")


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

_LOG2E = 1.4426950408889634
_LN2_HI = 6.93147180369123816490e-01      # fdlibm split of log(2): k * _LN2_HI is exact
_LN2_LO = 1.90821492927058770002e-10
_SHIFTER = 6755399441055744.0             # 1.5 * 2^52: x + _SHIFTER rounds x to an integer
_EXP_MIN = -708.0                         # below: e^x < 3.3e-308, returned as 0
_INV_FACT = tuple(1.0 / math.factorial(n) for n in range(14))


@njit(**_OPTS)
def _poly(r):
    """exp(r) for |r| <= log(2)/2: Taylor polynomial of degree 13 (truncation < 4e-18 relative).

    Estrin's scheme (pairs, then powers r^2, r^4, r^8): 13 FMAs at dependency depth 4
    instead of Horner's 13, so the vector loop is not latency-bound.
    """
    c = _INV_FACT
    r2 = r * r
    r4 = r2 * r2
    t0 = fma(fma(c[3], r, c[2]), r2, fma(c[1], r, 1.0))
    t1 = fma(fma(c[7], r, c[6]), r2, fma(c[5], r, c[4]))
    t2 = fma(fma(c[11], r, c[10]), r2, fma(c[9], r, c[8]))
    t3 = fma(c[13], r, c[12])
    return fma(fma(t3, r4, t2), r4 * r4, fma(t1, r4, t0))


@njit(**_OPTS)
def exp_shifted(z, zmax, w, t, tb):
    """w[v] = exp(z[v] - zmax) for z[v] <= zmax, as three SIMD-vectorizable loops (no libm call).

    Cody-Waite reduction x = k log 2 + r, |r| <= log(2)/2, exp(r) by :func:`_poly`,
    2^k built in the exponent bits. Error <= 2 ulp; arguments below -708 give 0 (never
    used against a sum of order 1, so the omission is below 1e-300 relative);
    exp(-inf) = 0. z, w, t : (M,); t is float scratch and tb = t.view(np.int64)
    (passed in: a view made per call costs reference-count updates).
    """
    M = z.shape[0]
    for v in range(M):
        x = z[v] - zmax
        x = x if x > _EXP_MIN else _EXP_MIN   # a select (vectorizes); -inf and NaN-free inputs
        tk = x * _LOG2E + _SHIFTER
        k = tk - _SHIFTER
        w[v] = _poly((x - k * _LN2_HI) - k * _LN2_LO)
        t[v] = tk
    for v in range(M):                    # bits of tk = bits(1.5 * 2^52) + k; shifting drops the offset
        tb[v] = (tb[v] + 1023) << 52
    for v in range(M):
        w[v] = w[v] * t[v] if z[v] - zmax > _EXP_MIN else 0.0


@njit(**_OPTS)
def dots4(A, i0, i1, i2, i3, b, out, j):
    """out[j + k] = sum_v A[ik, v] b[v] for k = 0..3 in one pass over b, two partial sums each.

    Same value as ``dot2(A, ik, b)`` for every k (even/odd partial sums, fixed order);
    sharing the loads of b makes it ~2x faster than four separate dots. Rows are
    indexed, not sliced: a row view costs reference-count updates per call.
    """
    n = b.shape[0]
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


@njit(**_OPTS)
def dot2(A, i, b):
    """sum_v A[i, v] b[v] with even/odd partial sums: the same value as one lane of :func:`dots4`."""
    n = b.shape[0]
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


@njit(**_OPTS)
def sum4(a):
    """sum_v a[v] with four interleaved partial sums (fixed order)."""
    n = a.shape[0]
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


@njit(**_OPTS)
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


@njit(**_OPTS)
def scaled(a, c):
    """a * c as a new C-contiguous array (a : C-contiguous, any shape)."""
    out = np.empty_like(a)
    fo = out.ravel()
    fa = a.ravel()
    for v in range(fa.shape[0]):
        fo[v] = fa[v] * c
    return out


@njit(**_OPTS)
def logits_into(z, OT, tokens, i, ph, L):
    """z (M,) = sum_{l < L} ph[l] OT[tokens[i, l]], two rows per pass (fixed order l = 0, 1, ...)."""
    M = z.shape[0]
    x0 = tokens[i, 0]
    a0 = ph[0]
    for v in range(M):
        z[v] = a0 * OT[x0, v]
    l = 1
    while l + 2 <= L:
        x0 = tokens[i, l]
        x1 = tokens[i, l + 1]
        a0 = ph[l]
        a1 = ph[l + 1]
        for v in range(M):
            z[v] = fma(a1, OT[x1, v], fma(a0, OT[x0, v], z[v]))
        l += 2
    if l < L:
        x0 = tokens[i, l]
        a0 = ph[l]
        for v in range(M):
            z[v] = fma(a0, OT[x0, v], z[v])
