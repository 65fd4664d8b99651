"""``refimpl sweep-report DIR``: summarize a sweep's results table (docs/sweeps.md).

The summary counts tasks and error rows per report and, per report present in the table:

``audit``
    the verdicts PASS / FAIL / NOT APPLICABLE of every claim, the regimes, the fitted rates
    against the certified ones (:data:`RATES`), the slack of every certified bound
    (:data:`SLACKS`), and, when the grid has a ``T0`` axis, the C10 threshold: per dataset
    and training setting, the smallest grid ``T0`` from which every larger grid ``T0`` is in
    the ``converging`` regime (C10 PASS; :func:`c10_thresholds`);
``generalization``
    the stage-2 step from which every closure-decided unseen sentence is predicted right;
``joint``
    two stages against the joint baseline on the same datasets, metric by metric.

Failures (error rows, certified failures, a threshold that is not monotone in ``T0``) are
listed with their dataset parameters under ``findings``. :func:`write_figures` draws one PNG
per part into the folder (``report.png`` and ``sweep_*.png``).
"""
from __future__ import annotations

import math
import re

from .errors import InputError
from .io import json_text

SCHEMA = "refimpl/sweep-report@2"
VERDICTS = ("PASS", "FAIL", "NOT APPLICABLE")
DATASET_PARAMS = ("M", "N", "min_len", "max_len", "order_dim", "n_colloc", "data_seed")
RUN_PARAMS = ("T0", "T", "eta0", "eta", "init", "seed", "init_scale")

#: (name, fitted column, certified column or None, ratio column or None, what is compared)
RATES = (
    ("C4 stage-1 loss rate", "C4.fitted_rate_per_step", "C4.bound.asymptotic_upper_rate", None,
     "fitted rate of ln L0 per step vs the certified asymptotic upper rate"),
    ("C7 norm slope", "C7.fitted_norm_slope", "C7.bound.slope_upper", None,
     "fitted slope of ||K_t|| vs the certified upper slope eta"),
    ("C8 excess rate", "C8.fitted_rate_per_step", "C8.bound.lower_rate_per_step", "C8.rate_over_gamma_kq_eta",
     "fitted rate of ln excess per step vs the certified -gamma_kq eta (ratio = fitted/certified)"),
)

#: (name, minuend column, subtrahend column or None): slack = minuend - subtrahend at the end
#: of the stage, >= 0 when the certified bound holds; counted as violated below -SLACK_TOL
#: (the claims' own comparisons allow a relative 1e-9, docs/audit.md).
SLACKS = (
    ("C3 ||O_T0 - O_0|| upper", "C3.bound.final_dist_upper", "C3.final_dist_from_init"),
    ("C3 <O_T0 - O_0, O*> lower", "C3.final_proj_on_star", "C3.bound.final_proj_lower"),
    ("C4 log10 L0 upper at T0 (decades)", "C4.bound.final_log10_upper", "C4.final_log10_loss"),
    ("C4 log10 L0 lower at T0 (decades)", "C4.final_log10_loss", "C4.bound.final_log10_lower"),
    ("C6 K* gap - chain length (training)", "C6.min_gap_minus_chain_length", None),
    ("C7 ||K_T - K_0|| upper", "C7.bound.final_dist_upper", "C7.final_dist_from_init"),
    ("C8 log10 excess lower (min over t, decades)", "C8.min_log10_slack_to_lower", None),
    ("C11 K* gap - chain length (unseen)", "C11.min_gap_minus_chain", None),
)
SLACK_TOL = 1e-9
#: Exact identities checked to a tolerance: (name, error column, tolerance column).
ERRORS = (
    ("C1 |closed-form W_ov* - solver|", "C1.max_abs_closed_form_minus_solver", "C1.bound.max_abs_diff"),
    ("C2 rel. error of log10 L0 on the ray", "C2.max_rel_err_log10_loss", "C2.bound.max_rel_err_log10_loss"),
)

#: Metrics of the ``joint`` comparison: (column suffix, True when lower is better).
JOINT_METRICS = (
    ("log10_loss", True), ("log10_excess", True), ("one_minus_cos_ov", True), ("one_minus_cos_kq", True),
    ("attention_margin", False), ("train_accuracy", False), ("test_closure_accuracy", False),
    ("test_labelled_accuracy", False),
)
MAX_FINDINGS = 50


class SweepReportError(InputError):
    """A sweep folder without a readable results table (one line, exit 2)."""


def _claim_ids(df):
    ids = {m.group(1) for c in df.columns for m in [re.fullmatch(r"(C\d+)\.verdict", c)] if m}
    return sorted(ids, key=lambda s: int(s[1:]))


def _num(df, col):
    """Column ``col`` of ``df`` as float64 (NaN where missing or not a number)."""
    import pandas as pd
    if col not in df:
        return pd.Series(math.nan, index=df.index, dtype="float64")
    return pd.to_numeric(df[col], errors="coerce").astype("float64")


def _quantiles(series):
    import pandas as pd
    s = pd.to_numeric(pd.Series(series, dtype="object"), errors="coerce").astype("float64")
    s = s[s.map(math.isfinite)]
    if not len(s):
        return {"n": 0}
    q = s.quantile([0.0, 0.1, 0.5, 0.9, 1.0])
    return {"n": int(len(s)), "min": float(q[0.0]), "p10": float(q[0.1]), "median": float(q[0.5]),
            "p90": float(q[0.9]), "max": float(q[1.0]), "mean": float(s.mean())}


def _plain(v):
    """A parameter value as JSON-friendly Python (NaN -> None, integral floats -> int)."""
    if v is None:
        return None
    if isinstance(v, str):
        return v
    try:
        f = float(v)
    except (TypeError, ValueError):
        return str(v)
    if math.isnan(f):
        return None
    if isinstance(v, bool) or type(v).__name__ == "bool_":
        return bool(v)
    return int(f) if f.is_integer() else f


def _params(row, names=DATASET_PARAMS + RUN_PARAMS):
    return {k: _plain(row.get(k)) for k in names if k in row}


def _rows_of(df, report):
    if "report" not in df:
        return df if report == "audit" else df.iloc[0:0]
    return df[df["report"] == report]


def c10_thresholds(audit_ok):
    """The C10 threshold of every dataset and training setting swept over more than one ``T0``.

    Parameters
    ----------
    audit_ok : pandas.DataFrame
        ``audit`` rows without an error (columns ``regime`` and the parameters).

    Returns
    -------
    list of dict
        Per group (same dataset parameters and training settings except ``T0``): the
        parameters, ``T0_grid`` (sorted), ``regimes`` (one per grid value), ``threshold``
        (the smallest grid ``T0`` from which every larger grid ``T0`` is ``converging``;
        None when the largest is not), ``first_converging`` (the smallest converging grid
        ``T0``, None if none) and ``monotone`` (no weak or undetermined ``T0`` above a
        converging one).
    """
    keys = [k for k in DATASET_PARAMS + RUN_PARAMS if k != "T0" and k in audit_ok]
    if "T0" not in audit_ok or "regime" not in audit_ok or not len(audit_ok):
        return []
    out = []
    frame = audit_ok.assign(**{k: audit_ok[k].astype("string").fillna("") for k in keys}) if keys else audit_ok
    for _, g in frame.groupby(keys, sort=True, dropna=False) if keys else [((), frame)]:
        g = g.sort_values("T0")
        grid = [int(v) for v in g["T0"]]
        if len(set(grid)) < 2:
            continue
        regimes = [str(r) for r in g["regime"]]
        conv = [r == "converging" for r in regimes]
        threshold = None
        for t0, c in zip(reversed(grid), reversed(conv)):
            if not c:
                break
            threshold = t0
        first = next((t0 for t0, c in zip(grid, conv) if c), None)
        row = _params(audit_ok.loc[g.index[0]])
        row.pop("T0", None)
        row.update(T0_grid=grid, regimes=regimes, threshold=threshold, first_converging=first,
                   monotone=first == threshold)
        out.append(row)
    return out


def _by(rows, key, value):
    """Median and count of ``value`` per value of ``key`` (rows with a value only)."""
    import statistics
    groups = {}
    for r in rows:
        if r.get(value) is not None:
            groups.setdefault(r.get(key), []).append(r[value])
    return {str(k): {"n": len(v), "median": float(statistics.median(v)), "max": float(max(v))}
            for k, v in sorted(groups.items(), key=lambda kv: (kv[0] is None, kv[0]))}


def _audit_summary(a, out, findings):
    verdicts, certified = {}, {}
    for cid in _claim_ids(a):
        col = a[f"{cid}.verdict"]
        verdicts[cid] = {v: int((col == v).sum()) for v in VERDICTS}
        fcol = f"{cid}.failure"
        certified[cid] = int((a[fcol] == "certified").sum()) if fcol in a else 0
    out["verdicts"] = verdicts
    out["certified_failures"] = certified
    out["regimes"] = {str(k): int(v) for k, v in a["regime"].value_counts().items()} if "regime" in a else {}
    if "measured_failures" in a:
        mf = {}
        for v in a["measured_failures"].fillna(""):
            for cid in filter(None, str(v).split(",")):
                mf[cid] = mf.get(cid, 0) + 1
        out["measured_failures"] = dict(sorted(mf.items(), key=lambda kv: int(kv[0][1:])))
    rates = {}
    for name, fitted, cert, ratio, what in RATES:
        if fitted not in a:
            continue
        f, c = _num(a, fitted), _num(a, cert)
        r = _num(a, ratio) if ratio and ratio in a else f / c
        rates[name] = {"what": what, "fitted": _quantiles(f), "certified": _quantiles(c), "ratio": _quantiles(r)}
    out["rates"] = rates
    slack = {}
    for name, plus, minus in SLACKS:
        if plus not in a or (minus is not None and minus not in a):
            continue
        v = _num(a, plus) - (_num(a, minus) if minus else 0.0)
        fin = v[v.map(math.isfinite)]
        if not len(fin):
            continue
        slack[name] = {**_quantiles(fin), "tight": int((fin.abs() <= SLACK_TOL).sum()),
                       "negative": int((fin < -SLACK_TOL).sum())}
    out["slack"] = slack
    errors = {}
    for name, col, tol in ERRORS:
        if col in a:
            e, t = _num(a, col), _num(a, tol)
            if e.notna().any():
                errors[name] = {**_quantiles(e), "tolerance": _plain(t.max()), "above": int((e > t).sum())}
    out["identity_errors"] = errors
    if "certified_failures" in a:
        bad = a[a["certified_failures"].fillna("").astype(str) != ""]
        for _, r in bad.head(MAX_FINDINGS).iterrows():
            findings.append({"kind": "certified failure", "claims": str(r["certified_failures"]),
                             **_params(r)})
    groups = c10_thresholds(a)
    if groups:
        thr = [g["threshold"] for g in groups if g["threshold"] is not None]
        out["c10_threshold"] = {
            "groups": len(groups), "with_threshold": len(thr),
            "not_converging_at_largest_T0": sum(g["threshold"] is None for g in groups),
            "non_monotone": sum(not g["monotone"] for g in groups),
            "threshold": _quantiles([float(t) for t in thr]),
            "by_M": _by(groups, "M", "threshold"), "by_N": _by(groups, "N", "threshold"),
            "by_max_len": _by(groups, "max_len", "threshold"),
            "by_init_scale": _by(groups, "init_scale", "threshold"),
        }
        for g in groups:
            if not g["monotone"] and len(findings) < 2 * MAX_FINDINGS:
                findings.append({"kind": "C10 regime not monotone in T0", **g})


def _generalization_summary(g):
    T = _num(g, "T")
    frm = _num(g, "closure_100_from")
    rows = [{"M": _plain(m), "N": _plain(n), "max_len": _plain(ml), "value": None if math.isnan(v) else v}
            for m, n, ml, v in zip(g["M"], g["N"], g["max_len"], frm)]
    return {"tasks": int(len(g)),
            "kstar_gap_violations": int((_num(g, "kstar_gap_violations") > 0).sum()),
            "reached": int(frm.notna().sum()),
            "not_reached_at_T": int((frm.isna() & (_num(g, "counts.closure") > 0)).sum()),
            "no_closure_sentence": int((_num(g, "counts.closure") == 0).sum()),
            "closure_100_from": _quantiles(frm), "closure_100_from_over_T": _quantiles(frm / T),
            "score_100_from": _quantiles(_num(g, "score_100_from")),
            "final_closure_accuracy": _quantiles(_num(g, "final_closure_accuracy")),
            "final_labelled_accuracy": _quantiles(_num(g, "final_labelled_accuracy")),
            "by_M": _by(rows, "M", "value"), "by_N": _by(rows, "N", "value"),
            "by_max_len": _by(rows, "max_len", "value")}


def _joint_summary(j):
    out = {"tasks": int(len(j)), "metrics": {}}
    for m, lower in JOINT_METRICS:
        a, b = _num(j, f"two_stage.{m}"), _num(j, f"joint.{m}")
        both = a.notna() & b.notna()
        better = (a < b) if lower else (a > b)
        out["metrics"][m] = {"two_stage": _quantiles(a), "joint": _quantiles(b),
                             "two_stage_better": int((better & both).sum()),
                             "equal": int(((a == b) & both).sum()), "paired": int(both.sum())}
    return out


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
        the 10 most frequent), ``duplicates`` (rows whose task id repeats), ``reports``
        (report -> tasks, ok, errors); from ``audit`` rows without an error: ``verdicts``
        (claim -> verdict -> count), ``certified_failures`` (claim -> count),
        ``measured_failures`` (claim -> count), ``regimes`` (regime -> count), ``rates`` (per
        comparison of :data:`RATES`: quantiles of ``fitted``, ``certified`` and ``ratio``),
        ``slack`` (per bound of :data:`SLACKS`: quantiles and the counts ``tight`` and
        ``negative``), ``identity_errors`` (per identity of :data:`ERRORS`: quantiles, the
        tolerance and the count ``above`` it), ``c10_threshold`` (when the grid has a ``T0`` axis:
        :func:`c10_thresholds` summarized, with the median threshold by ``M``, ``N``,
        ``max_len`` and ``init_scale``); ``generalization`` and ``joint`` (when those rows
        exist); ``findings`` (error rows, certified failures and non-monotone C10 regimes, each
        with its parameters; at most 50 of each kind; a generalization row with a K* gap
        violation is a certified failure of C11); ``seconds`` (quantiles of the task wall
        times, overall and per report).
    """
    import pandas as pd
    n = int(len(df))
    status = df["status"] if "status" in df else pd.Series(["ok"] * n, index=df.index)
    ok = df[status == "ok"]
    errs = df[status != "ok"]
    out = {"schema": SCHEMA, "tasks": n, "ok": int(len(ok)), "errors": int(len(errs)),
           "duplicates": int(df["task_id"].duplicated().sum()) if n else 0}
    msgs = errs["error"].fillna("(no message)").value_counts().head(10) if len(errs) else {}
    out["error_messages"] = {str(k): int(v) for k, v in dict(msgs).items()}
    reports = sorted(set(df["report"].dropna())) if "report" in df else (["audit"] if n else [])
    out["reports"] = {r: {"tasks": int(len(_rows_of(df, r))), "ok": int(len(_rows_of(ok, r))),
                          "errors": int(len(_rows_of(errs, r)))} for r in reports}
    findings = []
    for _, r in errs.head(MAX_FINDINGS).iterrows():
        findings.append({"kind": "error row", "report": r.get("report"), "error": r.get("error"), **_params(r)})
    out.update(verdicts={}, certified_failures={}, regimes={}, rates={}, slack={}, identity_errors={})
    a = _rows_of(ok, "audit")
    if len(a):
        _audit_summary(a, out, findings)
    g = _rows_of(ok, "generalization")
    if len(g):
        out["generalization"] = _generalization_summary(g)
        for _, r in g[_num(g, "kstar_gap_violations") > 0].head(MAX_FINDINGS).iterrows():
            findings.append({"kind": "certified failure", "claims": "C11 (K* gap below the chain length on "
                             f"{int(r['kstar_gap_violations'])} unseen sentences)", **_params(r)})
    j = _rows_of(ok, "joint")
    if len(j):
        out["joint"] = _joint_summary(j)
    out["findings"] = findings
    out["seconds"] = _quantiles(df["seconds"]) if "seconds" in df else {"n": 0}
    out["seconds_by_report"] = {r: _quantiles(_rows_of(df, r)["seconds"]) for r in reports} \
        if "seconds" in df else {}
    return out


def _g(v):
    return f"{v:.4g}" if isinstance(v, float) else str(v)


def _qline(label, q, width=9):
    if not q.get("n"):
        return f"  {label:<{width}} n=0"
    return (f"  {label:<{width}} n={q['n']} min {_g(q['min'])} p10 {_g(q['p10'])} median "
            f"{_g(q['median'])} p90 {_g(q['p90'])} max {_g(q['max'])}")


def format_summary(s):
    """The summary as plain text (one block per section)."""
    lines = [f"tasks {s['tasks']}: {s['ok']} ok, {s['errors']} errors, {s['duplicates']} duplicate task ids"]
    if len(s.get("reports", {})) > 1:
        lines.append("  " + ", ".join(f"{r}: {c['tasks']} ({c['errors']} errors)" for r, c in s["reports"].items()))
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
            lines.append(_qline(part, q) if q["n"] else
                         f"  {part:<9} n=0 (no run long enough to fit: T0, T >= 100)")
    if s["slack"]:
        lines.append("")
        lines.append(f"slack of each certified bound at the end of its stage (>= 0: holds; tight: |slack| <= "
                     f"{SLACK_TOL:g}; negative: below -{SLACK_TOL:g}):")
        for name, q in s["slack"].items():
            lines.append(_qline(name, q, 44) + f" tight {q['tight']} negative {q['negative']}")
    for name, q in s.get("identity_errors", {}).items():
        lines.append(_qline(name, q, 44) + f" tolerance {_g(q['tolerance'])}: above {q['above']}")
    c10 = s.get("c10_threshold")
    if c10:
        lines.append("")
        lines.append(f"C10 threshold (smallest grid T0 from which every larger T0 converges): {c10['groups']} "
                     f"groups, {c10['with_threshold']} with a threshold, {c10['not_converging_at_largest_T0']} "
                     f"not converging at the largest T0, {c10['non_monotone']} not monotone")
        lines.append(_qline("threshold", c10["threshold"]))
        for key in ("by_M", "by_N", "by_max_len", "by_init_scale"):
            if len(c10[key]) > 1:
                lines.append(f"  median {key[3:]}: " + ", ".join(f"{k}: {_g(v['median'])} (n={v['n']})"
                                                                for k, v in c10[key].items()))
    gen = s.get("generalization")
    if gen:
        lines.append("")
        lines.append(f"generalization ({gen['tasks']} tasks): closure-decided unseen sentences all right from a "
                     f"stage-2 step on in {gen['reached']}, not at T in {gen['not_reached_at_T']}, "
                     f"no such sentence in {gen['no_closure_sentence']}; K* gap below the chain length "
                     f"(C11, certified) in {gen['kstar_gap_violations']}")
        lines.append(_qline("from step", gen["closure_100_from"], 12))
        lines.append(_qline("from / T", gen["closure_100_from_over_T"], 12))
        lines.append(_qline("final acc.", gen["final_closure_accuracy"], 12))
        if len(gen["by_M"]) > 1:
            lines.append("  median step by M: " + ", ".join(f"{k}: {_g(v['median'])}" for k, v in gen["by_M"].items()))
    jt = s.get("joint")
    if jt:
        lines.append("")
        lines.append(f"two stages vs joint ({jt['tasks']} datasets): median two-stage | median joint | two-stage "
                     f"better in")
        for m, v in jt["metrics"].items():
            a, b = v["two_stage"], v["joint"]
            lines.append(f"  {m:<24} {_g(a.get('median', math.nan)):>10} | {_g(b.get('median', math.nan)):>10} | "
                         f"{v['two_stage_better']}/{v['paired']} (equal {v['equal']})")
    if s.get("findings"):
        lines.append("")
        lines.append(f"findings ({len(s['findings'])}):")
        for f in s["findings"][:20]:
            what = f.get("error") or f.get("claims") or f.get("regimes")
            params = ", ".join(f"{k}={f[k]}" for k in DATASET_PARAMS + RUN_PARAMS if f.get(k) is not None)
            lines.append(f"  {f['kind']}: {what} [{params}]")
    if s["seconds"]["n"]:
        q = s["seconds"]
        lines.append("")
        lines.append(f"task seconds: median {_g(q['median'])}, mean {_g(q['mean'])}, max {_g(q['max'])}")
        if len(s.get("seconds_by_report", {})) > 1:
            for r, q in s["seconds_by_report"].items():
                if q["n"]:
                    lines.append(f"  {r}: median {_g(q['median'])}, mean {_g(q['mean'])}, max {_g(q['max'])}")
    return "\n".join(lines) + "\n"


# ------------------------------------------------------------------ figures
def _save(fig, path):
    import os

    import matplotlib.pyplot as plt
    tmp = f"{path}.tmp-{os.getpid()}.png"
    try:
        fig.tight_layout()
        fig.savefig(tmp, dpi=80)
        os.replace(tmp, path)
    finally:
        plt.close(fig)
        if os.path.exists(tmp):
            os.unlink(tmp)


def _plt():
    import matplotlib
    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt
    return plt


def write_figure(df, summary, path):
    """Two panels: verdict counts per claim (stacked bars) and a histogram of one fitted rate.

    The histogram shows the C8 ratio fitted/certified when any run had one, else the first
    comparison of :data:`RATES` with values; an empty panel says so.

    Parameters
    ----------
    df : pandas.DataFrame
        The ``audit`` rows.
    summary : dict
        :func:`summarize` of the table.
    path : str or Path
        The PNG written (through a temporary name and a rename).
    """
    plt = _plt()
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(11, 4))
    claims = list(summary["verdicts"])
    bottom = [0] * len(claims)
    colors = {"PASS": "tab:green", "FAIL": "tab:red", "NOT APPLICABLE": "tab:gray"}
    for v in VERDICTS:
        counts = [summary["verdicts"][c][v] for c in claims]
        ax1.bar(claims, counts, bottom=bottom, label=v, color=colors[v])
        bottom = [b + c for b, c in zip(bottom, counts)]
    n_audit = summary.get("reports", {}).get("audit", {"ok": summary["ok"], "errors": summary["errors"]})
    ax1.set_title(f"verdicts per claim ({n_audit['ok']} audits, {n_audit['errors']} errors)")
    ax1.set_ylabel("tasks")
    ax1.legend(fontsize=8)
    ok = df[df["status"] == "ok"] if "status" in df else df
    values, label = None, None
    for name, fitted, cert, ratio, _ in RATES[::-1]:
        col = ratio or fitted
        if col in ok:
            s = _num(ok, col)
            s = s[s.map(math.isfinite)]
            if len(s):
                values, label = s, f"{name}: {'fitted / certified' if ratio else 'fitted'}"
                break
    if values is not None:
        ax2.hist(values, bins=min(30, max(5, len(values) // 3)), color="tab:blue")
        if "fitted / certified" in label:
            ax2.axvline(1.0, color="k", lw=1, ls="--")
        ax2.set_title(label, fontsize=10)
        ax2.set_ylabel("tasks")
    else:
        ax2.text(0.5, 0.5, "no fitted rate (runs shorter than 100 steps)", ha="center", va="center",
                 transform=ax2.transAxes)
        ax2.set_axis_off()
    _save(fig, path)


def _figure_rates(a, summary, path):
    """Fitted against certified rates (one panel per :data:`RATES` entry) and the slack of each
    certified bound (:data:`SLACKS`, log10 of the positive slacks)."""
    plt = _plt()
    slacks = list(summary["slack"].items())
    ncol = 4
    nrow = 1 + math.ceil(len(slacks) / ncol)
    fig, axes = plt.subplots(nrow, ncol, figsize=(4 * ncol, 3.0 * nrow), squeeze=False)
    for ax, (name, fitted, cert, ratio, _) in zip(axes[0], RATES):
        f, c = _num(a, fitted), _num(a, cert)
        m = f.map(math.isfinite) & c.map(math.isfinite)
        if m.any():
            ax.scatter(c[m], f[m], s=6, alpha=0.5)
            lo, hi = float(min(c[m].min(), f[m].min())), float(max(c[m].max(), f[m].max()))
            ax.plot([lo, hi], [lo, hi], "k--", lw=1, label="fitted = certified")
            ax.legend(fontsize=7)
        else:
            ax.text(0.5, 0.5, "no fit (runs < 100 steps)", ha="center", va="center", transform=ax.transAxes)
        ax.set_xlabel("certified", fontsize=8)
        ax.set_ylabel("fitted", fontsize=8)
        ax.set_title(name, fontsize=9)
    r = _num(a, "C8.rate_over_gamma_kq_eta")
    r = r[r.map(math.isfinite)]
    ax = axes[0][3]
    if len(r):
        ax.hist(r, bins=30, color="tab:blue")
        ax.axvline(1.0, color="k", lw=1, ls="--")
    ax.set_title("C8 fitted rate / (gamma_kq eta)", fontsize=9)
    for k, (name, q) in enumerate(slacks):
        ax = axes[1 + k // ncol][k % ncol]
        plus, minus = next((p, m) for n, p, m in SLACKS if n == name)
        v = _num(a, plus) - (_num(a, minus) if minus else 0.0)
        pos = v[v > 0]
        if len(pos):
            ax.hist(pos.map(math.log10), bins=30, color="tab:green")
        ax.set_title(name, fontsize=8)
        ax.set_xlabel("log10 slack", fontsize=8)
        ax.text(0.02, 0.95, f"tight {q['tight']}, negative {q['negative']}", transform=ax.transAxes, fontsize=7,
                va="top", color="tab:red" if q["negative"] else "k")
    for k in range(len(slacks), (nrow - 1) * ncol):
        axes[1 + k // ncol][k % ncol].set_axis_off()
    _save(fig, path)


def _figure_c10(groups, path):
    """The C10 threshold of each group against M, N and max_len (a cross above the plot: no
    threshold on the grid)."""
    import numpy as np
    plt = _plt()
    fig, axes = plt.subplots(1, 3, figsize=(12, 3.5))
    rng = np.random.default_rng(0)
    top = max(max(g["T0_grid"]) for g in groups) * 2
    for ax, key in zip(axes, ("M", "N", "max_len")):
        xs = np.array([float(g[key]) for g in groups])
        ys = np.array([float(g["threshold"]) if g["threshold"] is not None else top for g in groups])
        has = np.array([g["threshold"] is not None for g in groups])
        jit = 1 + 0.03 * rng.standard_normal(len(xs))
        scales = sorted({g.get("init_scale") for g in groups}, key=lambda v: (v is None, v))
        for sc in scales:
            pick = has & np.array([g.get("init_scale") == sc for g in groups])
            if pick.any():
                ax.scatter(xs[pick] * jit[pick], ys[pick], s=10, alpha=0.5,
                           label="threshold" if len(scales) == 1 else f"init_scale {sc}")
        if (~has).any():
            ax.scatter(xs[~has] * jit[~has], ys[~has], marker="x", color="tab:red", s=14,
                       label="not converging at the largest T0")
        med = {}
        for x, y, h in zip(xs, ys, has):
            if h:
                med.setdefault(x, []).append(y)
        if med:
            kx = sorted(med)
            ax.plot(kx, [float(np.median(med[k])) for k in kx], "k-o", ms=3, lw=1, label="median")
        if (ys > 0).all():
            ax.set_yscale("log", base=2)
        ax.set_xlabel(key)
        ax.set_ylabel("smallest converging T0")
        ax.legend(fontsize=7)
    fig.suptitle("C10 threshold: smallest grid T0 from which stage 2 converges (regime converging)", fontsize=10)
    _save(fig, path)


def _figure_joint(j, path):
    """Two stages (y) against joint NGD (x) on the same datasets, one panel per metric."""
    import numpy as np
    plt = _plt()
    panels = (("log10_excess", "log10 excess over the floor", False),
              ("one_minus_cos_kq", "log10 (1 - cos(W_kq, W_kq*))", True),
              ("attention_margin", "attention margin", False),
              ("test_labelled_accuracy", "test accuracy (unseen sentences)", False))
    fig, axes = plt.subplots(1, 4, figsize=(15, 3.6))
    for ax, (m, label, log) in zip(axes, panels):
        a, b = _num(j, f"two_stage.{m}"), _num(j, f"joint.{m}")
        if log:
            with np.errstate(divide="ignore", invalid="ignore"):
                a, b = np.log10(a), np.log10(b)
        ok = a.map(math.isfinite) & b.map(math.isfinite)
        if ok.any():
            ax.scatter(b[ok], a[ok], s=8, alpha=0.5)
            lo, hi = float(min(a[ok].min(), b[ok].min())), float(max(a[ok].max(), b[ok].max()))
            ax.plot([lo, hi], [lo, hi], "k--", lw=1)
        ax.set_xlabel("joint NGD", fontsize=8)
        ax.set_ylabel("two stages", fontsize=8)
        ax.set_title(label, fontsize=9)
    fig.suptitle("two stages vs joint on the same datasets (same number of steps)", fontsize=10)
    _save(fig, path)


def _figure_generalization(g, path):
    """The stage-2 step from which every closure-decided unseen sentence is predicted right:
    its distribution and its dependence on M."""
    plt = _plt()
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(10, 3.6))
    frm = _num(g, "closure_100_from")
    fin = frm[frm.map(math.isfinite)]
    if len(fin):
        ax1.hist(fin, bins=30, color="tab:purple")
    never = int((frm.isna() & (_num(g, "counts.closure") > 0)).sum())
    ax1.set_title(f"stage-2 step from which unseen sentences are right\n({never} of {len(g)} not by T)", fontsize=9)
    ax1.set_xlabel("stage-2 step")
    ax1.set_ylabel("tasks")
    m = _num(g, "M")
    ok = frm.map(math.isfinite)
    ax2.scatter(m[ok], frm[ok], s=8, alpha=0.5)
    ax2.set_xlabel("M")
    ax2.set_ylabel("stage-2 step")
    _save(fig, path)


#: The figures :func:`write_figures` may write (file name -> what it shows).
FIGURES = {
    "report.png": "audit: verdict counts per claim and the C8 rate ratio",
    "sweep_rates.png": "audit: fitted vs certified rates, slack of each certified bound",
    "sweep_c10_threshold.png": "audit with a T0 axis: the C10 threshold against M, N and max_len",
    "sweep_joint.png": "joint: two stages vs joint NGD on the same datasets",
    "sweep_generalization.png": "generalization: the stage-2 step from which unseen sentences are right",
}


def write_figures(df, summary, out):
    """Write every figure the table has data for into the folder ``out`` (:data:`FIGURES`).

    Parameters
    ----------
    df : pandas.DataFrame
    summary : dict
        :func:`summarize` of ``df``.
    out : Path
        The sweep folder.

    Returns
    -------
    list of str
        The file names written.
    """
    status = df["status"] if "status" in df else None
    ok = df if status is None else df[status == "ok"]
    written = []
    a = _rows_of(ok, "audit")
    if summary["verdicts"]:
        write_figure(a, summary, out / "report.png")
        written.append("report.png")
    if len(a) and (summary["slack"] or any(f in a for _, f, *_ in RATES)):
        _figure_rates(a, summary, out / "sweep_rates.png")
        written.append("sweep_rates.png")
    groups = c10_thresholds(a) if len(a) else []
    if groups:
        _figure_c10(groups, out / "sweep_c10_threshold.png")
        written.append("sweep_c10_threshold.png")
    j = _rows_of(ok, "joint")
    if len(j):
        _figure_joint(j, out / "sweep_joint.png")
        written.append("sweep_joint.png")
    g = _rows_of(ok, "generalization")
    if len(g):
        _figure_generalization(g, out / "sweep_generalization.png")
        written.append("sweep_generalization.png")
    return written


def sweep_report(out, *, figure=True):
    """Read a sweep folder's table, summarize it and (optionally) write its figures into ``out``.

    Parameters
    ----------
    out : str or Path
        The sweep folder.
    figure : bool
        Write the figures (:func:`write_figures`).

    Returns
    -------
    dict
        :func:`summarize` of the table, plus ``figures``: the file names written.

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
    summary["figures"] = write_figures(df, summary, Path(out)) if figure else []
    return summary


def summary_json(summary):
    """The summary as JSON text (``refimpl.io.json_text``)."""
    return json_text(summary)
