"""Fitting the rates of measured claims (docs/theory.md, measurement protocols).

Each fit is a least-squares line (``np.polyfit``, degree 1) over a stated window
of a recorded trajectory, ignoring non-finite or non-positive values where a
logarithm is taken. Each returns ``None`` when the window holds fewer than
three usable points, so a caller never reports a slope fitted to nothing.
"""
from __future__ import annotations

import numpy as np

__all__ = ["fit_power_law", "fit_exponential_rate", "fit_linear_slope"]

MIN_POINTS = 3


def _line(x, y):
    if len(x) < MIN_POINTS or np.ptp(x) == 0:
        return None
    return float(np.polyfit(x, y, 1)[0])


def fit_power_law(t, y, decades=1.0):
    """Exponent p of ``y ~ t^p`` over the last ``decades`` of steps (``t >= T / 10^decades``).

    t : int or float array (R,), increasing; y : float array (R,), positive where usable.
    Slope of ``log y`` against ``log t``.
    """
    t, y = np.asarray(t, float), np.asarray(y, float)
    if len(t) == 0 or t[-1] <= 0:
        return None
    sel = (t >= t[-1] / 10 ** decades) & (t > 0) & np.isfinite(y) & (y > 0)
    return _line(np.log(t[sel]), np.log(y[sel]))


def fit_exponential_rate(t, log_y, fraction=0.5):
    """Rate r of ``y ~ exp(r t)`` from natural-log values, over the last ``fraction`` of the
    finite points (the part of the run where ``log y`` is still representable)."""
    t, log_y = np.asarray(t, float), np.asarray(log_y, float)
    ok = np.isfinite(log_y)
    t, log_y = t[ok], log_y[ok]
    if len(t) == 0:
        return None
    sel = t >= t[0] + (1 - fraction) * (t[-1] - t[0])
    return _line(t[sel], log_y[sel])


def fit_linear_slope(t, y, fraction=0.5):
    """Slope of ``y`` against ``t`` over the last ``fraction`` of the steps."""
    t, y = np.asarray(t, float), np.asarray(y, float)
    if len(t) == 0:
        return None
    sel = (t >= (1 - fraction) * t[-1]) & np.isfinite(y)
    return _line(t[sel], y[sel])
