"""``refimpl sweep-report DIR``: summarize a sweep's results table (docs/sweeps.md).

The summary counts tasks and error rows, the verdicts PASS / FAIL / NOT APPLICABLE of
every claim, the regimes, and, where the audit report has both a fitted rate and the
certified one, the distribution of the fitted rates, the certified rates and their
ratio. :func:`write_figure` draws the verdict counts per claim and a histogram of one
fitted rate into ``DIR/report.png``.
"""
from __future__ import annotations

import math
import re

from .errors import InputError
from .io import json_text

SCHEMA = "refimpl/sweep-report@1"
VERDICTS = ("PASS", "FAIL", "NOT APPLICABLE")

#: (name, fitted column, certified column or None, ratio column or None, what is compared)
RATES = (
    ("C4 stage-1 loss rate", "C4.fitted_rate_per_step", "C4.bound.asymptotic_upper_rate", None,
     "fitted rate of ln L0 per step vs the certified asymptotic upper rate"),
    ("C7 norm slope", "C7.fitted_norm_slope", "C7.bound.slope_upper", None,
     "fitted slope of ||K_t|| vs the certified upper slope eta"),
    ("C8 excess rate", "C8.fitted_rate_per_step", "C8.bound.lower_rate_per_step", "C8.rate_over_gamma_kq_eta",
     "fitted rate of ln excess per step vs the certified -gamma_kq eta (ratio = fitted/certified)"),
)


class SweepReportError(InputError):
    """A sweep folder without a readable results table (one line, exit 2)."""


def _claim_ids(df):
    ids = {m.group(1) for c in df.columns for m in [re.fullmatch(r"(C\d+)\.verdict", c)] if m}
    return sorted(ids, key=lambda s: int(s[1:]))


def _quantiles(series):
    import pandas as pd
    s = pd.to_numeric(series, errors="coerce")
    s = s[s.map(lambda v: isinstance(v, float) and math.isfinite(v))]
    if not len(s):
        return {"n": 0}
    q = s.quantile([0.0, 0.1, 0.5, 0.9, 1.0])
    return {"n": int(len(s)), "min": float(q[0.0]), "p10": float(q[0.1]), "median": float(q[0.5]),
            "p90": float(q[0.9]), "max": float(q[1.0]), "mean": float(s.mean())}


def summarize(df):
    """The summary of a results table.

    Parameters
    ----------
    df : pandas.DataFrame
        :func:`refimpl.sweep.read_results`.

    Returns
    -------
    dict
        ``schema``, ``tasks``, ``ok``, ``errors`` (count), ``error_messages`` (message -> count,
        the 10 most frequent), ``duplicates`` (rows whose task id repeats), ``verdicts``
        (claim -> verdict -> count, over the rows without an error), ``certified_failures``
        (claim -> count), ``regimes`` (regime -> count), ``rates`` (per comparison of
        :data:`RATES`: quantiles of ``fitted``, ``certified`` and ``ratio``), ``seconds``
        (quantiles of the task wall times).
    """
    import pandas as pd
    n = int(len(df))
    status = df["status"] if "status" in df else pd.Series(["ok"] * n)
    ok = df[status == "ok"]
    errs = df[status != "ok"]
    out = {"schema": SCHEMA, "tasks": n, "ok": int(len(ok)), "errors": int(len(errs)),
           "duplicates": int(df["task_id"].duplicated().sum()) if n else 0}
    msgs = errs["error"].fillna("(no message)").value_counts().head(10) if len(errs) else {}
    out["error_messages"] = {str(k): int(v) for k, v in dict(msgs).items()}
    verdicts, certified = {}, {}
    for cid in _claim_ids(df):
        col = ok[f"{cid}.verdict"]
        verdicts[cid] = {v: int((col == v).sum()) for v in VERDICTS}
        fcol = f"{cid}.failure"
        certified[cid] = int((ok[fcol] == "certified").sum()) if fcol in ok else 0
    out["verdicts"] = verdicts
    out["certified_failures"] = certified
    out["regimes"] = {str(k): int(v) for k, v in ok["regime"].value_counts().items()} if "regime" in ok else {}
    rates = {}
    for name, fitted, cert, ratio, what in RATES:
        if fitted not in ok:
            continue
        f = pd.to_numeric(ok[fitted], errors="coerce")
        c = pd.to_numeric(ok[cert], errors="coerce") if cert in ok else pd.Series(math.nan, index=ok.index)
        r = pd.to_numeric(ok[ratio], errors="coerce") if ratio and ratio in ok else f / c
        rates[name] = {"what": what, "fitted": _quantiles(f), "certified": _quantiles(c), "ratio": _quantiles(r)}
    out["rates"] = rates
    out["seconds"] = _quantiles(df["seconds"]) if "seconds" in df else {"n": 0}
    return out


def _g(v):
    return f"{v:.4g}" if isinstance(v, float) else str(v)


def format_summary(s):
    """The summary as plain text (one block per section)."""
    lines = [f"tasks {s['tasks']}: {s['ok']} ok, {s['errors']} errors, {s['duplicates']} duplicate task ids"]
    for msg, k in s["error_messages"].items():
        lines.append(f"  error x{k}: {msg}")
    if s["verdicts"]:
        lines.append("")
        lines.append(f"{'claim':<6} {'PASS':>6} {'FAIL':>6} {'N/A':>6} {'certified FAIL':>15}")
        for cid, c in s["verdicts"].items():
            lines.append(f"{cid:<6} {c['PASS']:>6} {c['FAIL']:>6} {c['NOT APPLICABLE']:>6} "
                         f"{s['certified_failures'][cid]:>15}")
    if s["regimes"]:
        lines.append("")
        lines.append("regimes: " + ", ".join(f"{k} {v}" for k, v in s["regimes"].items()))
    for name, r in s["rates"].items():
        lines.append("")
        lines.append(f"{name}: {r['what']}")
        for part in ("fitted", "certified", "ratio"):
            q = r[part]
            if q["n"]:
                lines.append(f"  {part:<9} n={q['n']} min {_g(q['min'])} p10 {_g(q['p10'])} median "
                             f"{_g(q['median'])} p90 {_g(q['p90'])} max {_g(q['max'])}")
            else:
                lines.append(f"  {part:<9} n=0 (no run long enough to fit: T0, T >= 100)")
    if s["seconds"]["n"]:
        q = s["seconds"]
        lines.append("")
        lines.append(f"task seconds: median {_g(q['median'])}, max {_g(q['max'])}")
    return "\n".join(lines) + "\n"


def write_figure(df, summary, path):
    """Two panels: verdict counts per claim (stacked bars) and a histogram of one fitted rate.

    The histogram shows the C8 ratio fitted/certified when any run had one, else the first
    comparison of :data:`RATES` with values; an empty panel says so.

    Parameters
    ----------
    df : pandas.DataFrame
    summary : dict
        :func:`summarize` of ``df``.
    path : str or Path
        The PNG written (through a temporary name and a rename).
    """
    import os

    import matplotlib
    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt
    import pandas as pd

    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(11, 4))
    claims = list(summary["verdicts"])
    bottom = [0] * len(claims)
    colors = {"PASS": "tab:green", "FAIL": "tab:red", "NOT APPLICABLE": "tab:gray"}
    for v in VERDICTS:
        counts = [summary["verdicts"][c][v] for c in claims]
        ax1.bar(claims, counts, bottom=bottom, label=v, color=colors[v])
        bottom = [b + c for b, c in zip(bottom, counts)]
    ax1.set_title(f"verdicts per claim ({summary['ok']} tasks, {summary['errors']} errors)")
    ax1.set_ylabel("tasks")
    ax1.legend(fontsize=8)
    ok = df[df["status"] == "ok"] if "status" in df else df
    values, label = None, None
    for name, fitted, cert, ratio, _ in RATES[::-1]:
        col = ratio or fitted
        if col in ok:
            s = pd.to_numeric(ok[col], errors="coerce")
            s = s[s.map(lambda v: isinstance(v, float) and math.isfinite(v))]
            if len(s):
                values, label = s, f"{name}: {'fitted / certified' if ratio else 'fitted'}"
                break
    if values is not None:
        ax2.hist(values, bins=min(30, max(5, len(values) // 3)), color="tab:blue")
        if "ratio" in label or "fitted / certified" in label:
            ax2.axvline(1.0, color="k", lw=1, ls="--")
        ax2.set_title(label, fontsize=10)
        ax2.set_ylabel("tasks")
    else:
        ax2.text(0.5, 0.5, "no fitted rate (runs shorter than 100 steps)", ha="center", va="center",
                 transform=ax2.transAxes)
        ax2.set_axis_off()
    fig.tight_layout()
    tmp = f"{path}.tmp-{os.getpid()}.png"
    try:
        fig.savefig(tmp, dpi=100)
        os.replace(tmp, path)
    finally:
        plt.close(fig)
        if os.path.exists(tmp):
            os.unlink(tmp)


def sweep_report(out, *, figure=True):
    """Read a sweep folder's table, summarize it and (optionally) write ``out/report.png``.

    Parameters
    ----------
    out : str or Path
        The sweep folder.
    figure : bool
        Write the figure.

    Returns
    -------
    dict
        :func:`summarize` of the table.

    Raises
    ------
    SweepReportError
        No results table in ``out``.
    """
    from pathlib import Path

    from .sweep import _require, read_results, results_files
    _require()
    if not Path(out).is_dir():
        raise SweepReportError(f"{out}: no such sweep folder")
    if not results_files(out):
        raise SweepReportError(f"{out}: no results yet (no Parquet files in {Path(out) / 'results'})")
    df = read_results(out)
    summary = summarize(df)
    if figure:
        write_figure(df, summary, Path(out) / "report.png")
    return summary


def summary_json(summary):
    """The summary as JSON text (``refimpl.io.json_text``)."""
    return json_text(summary)
