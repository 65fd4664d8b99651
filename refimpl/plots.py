"""Figures: the six-panel layout of the paper's Figure 2 (docs/reproduce.md, "The figure").

Drawn with matplotlib's object API on an Agg canvas (no pyplot, no global
backend switch). :func:`six_panels_png` and :func:`generalization_png` return
the PNG bytes (for an output set, :class:`refimpl.outputs.OutputSet`);
:func:`figure_six_panels` and :func:`figure_generalization` write them to a
file atomically (temporary file in the same folder, then rename).

Row 1, stage 1: log10 L0(O_t); 1 - cos(O_t, W_ov*) (log-log); ||O_t||_F.
Row 2, stage 2: log10 L(O, K_t) and log10 of the excess over the floor;
1 - cos(K_t, W_kq*) (log-log); ||K_t||_F.
Losses are plotted as log10 values computed in log space, so they stay finite
after the loss underflows float64.
"""
from __future__ import annotations

import io

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

from .io import atomic_write_bytes

__all__ = ["figure_six_panels", "figure_generalization", "six_panels_png", "generalization_png"]

_FLOOR = 1e-33  # rounding level of 1 - cos (about eps^2 / 2 for unit matrices): smaller values,
# exact zeros included, are drawn at this level on the log axis


def _loglog_direction(ax, steps, omc, label, color):
    """1 - cos on log-log axes; steps <= 0 and undefined (NaN) values are left out."""
    keep = (steps > 0) & np.isfinite(omc)
    s, v = steps[keep], omc[keep]
    if len(s) == 0:
        ax.text(0.5, 0.5, "undefined (zero matrix)", transform=ax.transAxes, ha="center")
        return
    ax.loglog(s, np.maximum(v, _FLOOR), color=color, label=label)
    if np.all(v <= 1e-20):
        ax.text(0.5, 0.5, f"1 - cos <= {max(v.max(), 0.0):.1e} at every step:\n"
                "the direction is exact to rounding", transform=ax.transAxes, ha="center",
                va="center", fontsize=9, bbox=dict(facecolor="white", alpha=0.8, lw=0))
        ax.set_ylim(_FLOOR / 10, 1e-20)


def _norm_panel(ax, traj, eta, label, color):
    ax.plot(traj.step, traj.norm, color=color, label=label)
    if len(traj):
        ax.plot(traj.step, eta * traj.step, "k--", lw=0.8, label=f"step size x t = {eta:.4g} t")
    ax.legend(fontsize=8, loc="upper left")


def _png(fig):
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    return buf.getvalue()


def figure_six_panels(result, path, *, title=None):
    """Write the 2 x 3 Figure-2 layout of a :class:`~refimpl.train.TrainResult` to ``path`` (PNG).

    Panels: stage-1 loss, direction to W_ov*, norm; stage-2 loss and excess loss,
    direction to W_kq*, norm. Returns ``path``.
    """
    atomic_write_bytes(path, six_panels_png(result, title=title))
    return path


def six_panels_png(result, *, title=None):
    """The figure of :func:`figure_six_panels` as PNG bytes.

    Parameters
    ----------
    result : TrainResult
    title : str or None
        The figure title; None for the step sizes, step counts and initialization.

    Returns
    -------
    bytes
    """
    s1, s2, cfg = result.stage1, result.stage2, result.config
    fig = Figure(figsize=(15, 8.4), dpi=110)
    fig.subplots_adjust(left=0.06, right=0.985, bottom=0.07, top=0.91, wspace=0.25, hspace=0.32)
    FigureCanvasAgg(fig)
    ax = fig.subplots(2, 3)
    c1, c2 = "tab:blue", "tab:red"

    a = ax[0, 0]
    if len(s1):
        a.plot(s1.step, s1.log10_loss, color=c1)
    a.set(title="Stage 1: collocation loss", xlabel="step t", ylabel=r"$\log_{10} L_0(W_{ov}^{(t)})$")

    a = ax[0, 1]
    _loglog_direction(a, s1.step, s1.one_minus_cos, None, c1)
    a.set(title=r"Stage 1: direction to $W_{ov}^*$", xlabel="step t",
          ylabel=r"$1 - \cos(W_{ov}^{(t)}, W_{ov}^*)$")

    a = ax[0, 2]
    _norm_panel(a, s1, cfg.eta0, r"$\|W_{ov}^{(t)}\|_F$", c1)
    a.set(title="Stage 1: norm", xlabel="step t", ylabel="Frobenius norm")

    a = ax[1, 0]
    a.plot(s2.step, s2.log10_loss, color=c2, label="loss")
    finite = np.isfinite(s2.log10_excess)
    a.plot(s2.step[finite], s2.log10_excess[finite], color="tab:purple", label="excess over floor")
    a.axhline(result.log10_floor, color="k", ls=":", lw=0.9, label=f"floor = $10^{{{result.log10_floor:.1f}}}$")
    a.legend(fontsize=8)
    a.set(title="Stage 2: loss", xlabel="step t", ylabel=r"$\log_{10}$ of the loss")

    a = ax[1, 1]
    _loglog_direction(a, s2.step, s2.one_minus_cos, None, c2)
    a.set(title=r"Stage 2: direction to $W_{kq}^*$", xlabel="step t",
          ylabel=r"$1 - \cos(W_{kq}^{(t)}, W_{kq}^*)$")

    a = ax[1, 2]
    _norm_panel(a, s2, cfg.eta, r"$\|W_{kq}^{(t)}\|_F$", c2)
    a.set(title="Stage 2: norm", xlabel="step t", ylabel="Frobenius norm")

    for a in ax.flat:
        a.grid(True, which="major", alpha=0.3)
        if a.get_xscale() == "linear":
            a.xaxis.set_major_locator(MaxNLocator(nbins=5, integer=True))
    fig.suptitle(title or (f"Two-stage NGD: eta0 = {cfg.eta0:.4g}, eta = {cfg.eta:.4g}, "
                           f"T0 = {cfg.T0}, T = {cfg.T}, init = {cfg.init}"))
    return _png(fig)


def figure_generalization(report, path, *, title=None):
    """Write accuracy on unseen sentences against stage-2 steps (PNG, atomically) to ``path``.

    Left: accuracy on closure-decided and score-decided sentences and agreement with the
    K*-limit model. Right: mean attention on the deciding token x_hat. Returns ``path``.
    """
    atomic_write_bytes(path, generalization_png(report, title=title))
    return path


def generalization_png(report, *, title=None):
    """The figure of :func:`figure_generalization` as PNG bytes.

    Parameters
    ----------
    report : dict
        A :func:`refimpl.generalize.generalization_report`.
    title : str or None

    Returns
    -------
    bytes
    """
    steps = np.array([np.nan if s is None else s for s in report["steps"]], dtype=np.float64)

    def col(name):
        return np.array([np.nan if v is None else v for v in report[name]], dtype=np.float64)

    fig = Figure(figsize=(11, 4.2), dpi=110, layout="constrained")
    FigureCanvasAgg(fig)
    ax1, ax2 = fig.subplots(1, 2)
    n = report["counts"]
    ax1.plot(steps, col("closure_accuracy"), color="tab:blue", label=f"closure-decided (n={n['closure']})")
    ax1.plot(steps, col("score_accuracy"), color="tab:orange", label=f"score-decided (n={n['score']})")
    ax1.plot(steps, col("agreement_with_kstar"), "k:", label="agreement with K*-limit model")
    for kind, color in (("closure", "tab:blue"), ("score", "tab:orange")):
        t = report[f"{kind}_100_from"]
        if t is not None and t > 0:
            ax1.axvline(t, color=color, lw=0.8, ls="--")
            ax1.annotate(f"{kind}: 100% from t={t}", (t, 0.04 if kind == "closure" else 0.12),
                         xycoords=("data", "axes fraction"), fontsize=8, color=color,
                         xytext=(-4, 0), textcoords="offset points", ha="right")
    ax1.set(xlabel="stage-2 step t", ylabel="accuracy on unseen sentences", ylim=(-0.02, 1.02),
            title="prediction on unseen sentences")
    ax1.legend(fontsize=8, loc="upper left")
    ax2.plot(steps, col("closure_attention"), color="tab:blue", label="closure-decided")
    ax2.plot(steps, col("score_attention"), color="tab:orange", label="score-decided")
    ax2.set(xlabel="stage-2 step t", ylabel="mean attention on x_hat", ylim=(-0.02, 1.02),
            title="attention on the deciding token")
    if np.nanmax(steps, initial=0) > 1000:                           # many decades: log-like axis
        for ax in (ax1, ax2):
            ax.set_xscale("symlog", linthresh=10)
            ax.set_xlim(left=0)
    ax2.legend(fontsize=8, loc="upper left")
    if title:
        fig.suptitle(title)
    return _png(fig)
