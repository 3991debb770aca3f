"""Figures (PNG, matplotlib's object-oriented API: no pyplot, the user's backend is left alone), the
numbers beside them (JSON/CSV) and markdown summaries.

Every ``plot_*`` takes the plain dicts that ``ntk_ngd.experiments`` returns and a PNG path;
:func:`report_store` turns a sweep's results store into figures, CSV/JSON and a REPORT.md.
"""
from __future__ import annotations

import csv
import math
from pathlib import Path
from typing import Optional, Sequence

import numpy as np

import matplotlib
import matplotlib.ticker
from matplotlib.figure import Figure

from .experiments import fmt_value
from .store import ResultsStore, dumps


class _Figures:
    """``subplots`` and ``get_cmap`` without pyplot: a Figure saved by its own Agg canvas."""

    @staticmethod
    def subplots(nrows=1, ncols=1, figsize=None, squeeze=True):
        fig = Figure(figsize=figsize)
        return fig, fig.subplots(nrows, ncols, squeeze=squeeze)

    @staticmethod
    def get_cmap(name):
        return matplotlib.colormaps[name]


plt = _Figures()

FLOOR = 1e-16  # losses/errors are clipped here on log axes


# ----------------------------------------------------------------------------- files
def save_json(obj, path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(dumps(obj, indent=1, sort_keys=False, allow_nan=True) + "\n")
    return path


def _cell(v):
    if v is None:
        return ""
    if isinstance(v, (list, dict, tuple)):
        return dumps(v)
    return v


def save_csv(rows: Sequence[dict], path, columns: Optional[Sequence[str]] = None) -> Path:
    """Rows (dicts) as CSV; columns default to the union of keys in first-seen order; lists/dicts
    are written as JSON text."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    if columns is None:
        columns = list(dict.fromkeys(k for r in rows for k in r))
    with path.open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(columns)
        for r in rows:
            w.writerow([_cell(r.get(c)) for c in columns])
    return path


def md_table(headers: Sequence[str], rows: Sequence[Sequence]) -> str:
    def fmt(v):
        if v is None:
            return "-"
        if isinstance(v, float):
            return "nan" if math.isnan(v) else f"{v:.3g}"
        return str(v)
    esc = lambda t: str(t).replace("|", "\\|")  # a literal | inside a cell (norms) must not split it
    lines = ["| " + " | ".join(esc(h) for h in headers) + " |", "|" + "---|" * len(headers)]
    lines += ["| " + " | ".join(esc(fmt(v)) for v in r) + " |" for r in rows]
    return "\n".join(lines)


def write_markdown(path, title: str, sections: Sequence[tuple[str, str]]) -> Path:
    """# title, then ## heading + body for each section."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    text = f"# {title}\n\n" + "\n\n".join(f"## {h}\n\n{b.strip()}" for h, b in sections) + "\n"
    path.write_text(text)
    return path


def _clip(v):
    return [np.nan if x is None else max(float(x), FLOOR) for x in v]


def _save(fig, path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    return path


def _colors(n):
    cmap = plt.get_cmap("tab10")
    return [cmap(i % 10) for i in range(n)]


# ----------------------------------------------------------------------------- (a) dynamics
def _integer_steps(ax):
    ax.xaxis.set_major_locator(matplotlib.ticker.MaxNLocator(integer=True))


def plot_dynamics(dyn: dict, path, title: str = "") -> Path:
    """Train and test loss per step, one panel per method: network (markers, solid), empirical-kernel
    prediction (dashed) and analytic-kernel prediction (dotted), each named in the panel's legend."""
    n = len(dyn)
    cols = min(n, 4)
    rows = -(-n // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(max(4.2 * cols, 7.0), 3.4 * rows + 0.4), squeeze=False)
    for ax, (label, s) in zip(axes.flat, dyn.items()):
        t = s["steps"]
        for key, col, name in (("loss_train", "C0", "train"), ("loss_test", "C1", "test")):
            ax.plot(t, _clip(s[key]["nn"]), "o-", color=col, ms=3, label=f"{name}: network")
            if s[key].get("empirical"):
                ax.plot(t, _clip(s[key]["empirical"]), "--", color=col, alpha=0.8,
                        label=f"{name}: empirical-kernel prediction")
            if s[key].get("analytic"):
                ax.plot(t, _clip(s[key]["analytic"]), ":", color=col, lw=2, alpha=0.8,
                        label=f"{name}: analytic-kernel prediction")
        ax.set_yscale("log")
        _integer_steps(ax)
        ax.set_xlabel("step t")
        ax.set_ylabel("loss")
        ax.set_title(f"{label} (eta = {s['lr']:.3g})", fontsize=9)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=6, loc="best")
    for ax in list(axes.flat)[n:]:
        ax.set_visible(False)
    if title:
        fig.suptitle(title, fontsize=10)
    return _save(fig, path)


def dynamics_table(dyn: dict) -> str:
    rows = [[k, s["lr"], s.get("alpha"), s["loss_train"]["nn"][0], s["loss_ratio_nn"], s["ratio_nn"],
             s.get("ratio_theory"), s.get("iso_err"), s["err_emp_max"], s.get("err_an_max"), s["drift"],
             s["loss_test_final"]] for k, s in dyn.items()]
    return md_table(["method", "eta", "alpha", "L_0", "L_1/L_0", "||r_1||/||r_0||", "|1-eta alpha|",
                     "iso err", "max e_t (emp)", "max e_t (analytic)", "kernel drift", "test loss T"], rows)


# ----------------------------------------------------------------------------- (b) width
METRIC_LABELS = {"err_emp_max": "max_t e_t, empirical-kernel predictor (linearization error)",
                 "err_an_max": "max_t e_t, analytic-kernel predictor",
                 "err_ideal_max": "max_t ||f_t - f_t^theory|| / ||f_0 - y||, theory (1 - eta alpha)^t (rho -> 0)",
                 "err_an_test_max": "max_t test e_t, analytic-kernel predictor (finite-width kernel error)",
                 "ratio_nn": "one-step ratio ||f_1 - y|| / ||f_0 - y||",
                 "iso_err": "isotropy error ||Theta_G/alpha - I||",
                 "drift": "kernel drift ||Theta_T - Theta_0|| / ||Theta_0||",
                 "err_emp_test_max": "max_t test e_t, empirical-kernel predictor"}


METRIC_AXIS = {"err_emp_max": "max_t e_t (empirical kernels)", "err_an_max": "max_t e_t (analytic kernels)",
               "err_ideal_max": "max_t e_t (theory (1 - eta alpha)^t)",
               "err_an_test_max": "max_t test e_t (analytic kernels)",
               "err_emp_test_max": "max_t test e_t (empirical kernels)", "ratio_nn": "||f_1 - y|| / ||f_0 - y||",
               "iso_err": "||Theta_G / alpha - I||", "drift": "kernel drift ||Theta_T - Theta_0|| / ||Theta_0||"}


def _fmt_field(k, v) -> str:
    k = k.removeprefix("options.").removesuffix("_config")
    return f"{k}={v:.3g}" if isinstance(v, float) else f"{k}={v}"


def _group_label(g):
    """The method and every other grouping field (the settings that vary in the store), e.g.
    ``kfac (activation=erf, rho=0.001)``; a per-width damping reads rho=d/M."""
    parts = []
    for k, v in g.get("group", {}).items():
        if k in ("method", "damping_scale"):
            continue
        if k == "damping":
            parts.append(f"rho={v:.2g}" + ("/M" if g.get("damping_scale") == "per_width" else ""))
        else:
            parts.append(_fmt_field(k, v))
    if "group" not in g and g.get("damping"):  # a summary built with an explicit ``by`` of old
        parts.append(f"rho={g['damping']:.2g}" + ("/M" if g.get("damping_scale") == "per_width" else ""))
    return g["method"] + (f" ({', '.join(parts)})" if parts else "")


def common_line(summary: dict) -> str:
    """The settings shared by every run of a summary, as one line."""
    c = {k: v for k, v in summary.get("common", {}).items() if k not in ("method",)}
    return ", ".join(_fmt_field(k, v) for k, v in c.items())


def _width_points(entry):
    """(widths, geometric mean, min, max) over seeds per width of one metric of one group."""
    pts = [(e["width"], np.array(e["values"], float)) for e in entry["by_width"] if e["values"]]
    pts = [(w, v[v > 0]) for w, v in pts if np.any(v > 0)]
    w = np.array([p[0] for p in pts], float)
    gm = np.array([np.exp(np.mean(np.log(v))) for _, v in pts])
    return w, gm, np.array([v.min() for _, v in pts]), np.array([v.max() for _, v in pts])


def plot_width(summary: dict, metric: str, path) -> Optional[Path]:
    """log-log metric vs width per (method, damping): geometric mean over seeds with min-max bars
    and the fitted power law. Groups whose error exceeds 1 (networks that left the linear
    regime, e.g. unit-wise at rho = 0) go to a second panel so they do not hide the others."""
    groups = [g for g in summary["groups"] if metric in g["metrics"] and not g["metrics"][metric]["roundoff"]]
    groups = [g for g in groups if len(_width_points(g["metrics"][metric])[0])]
    if not groups:
        return None
    big = [g for g in groups if np.max(_width_points(g["metrics"][metric])[3]) > 1.0]
    small = [g for g in groups if g not in big]
    panels = [p for p in (small, big) if p]
    fig, axes = plt.subplots(1, len(panels), figsize=(8 * len(panels), 5.2), squeeze=False)
    colors = dict(zip([_group_label(g) for g in groups], _colors(len(groups))))
    for ax, gs in zip(axes[0], panels):
        allw, allv = [], []
        for g in gs:
            m, lab = g["metrics"][metric], _group_label(g)
            w, gm, lo, hi = _width_points(m)
            allw += list(w)
            allv += list(gm)
            fit = m["fit"]
            col = colors[lab]
            if fit:
                lab += f": b = {fit['exponent']:.2f} {fmt_interval(fit['ci'], len(fit['exponent_per_seed']), 2)}"
                ws = np.geomspace(w.min(), w.max(), 50)
                ax.plot(ws, fit["prefactor"] * ws ** fit["exponent"], "-", color=col, alpha=0.5)
            bars = [np.maximum(gm - lo, 0.0), np.maximum(hi - gm, 0.0)]  # one value: gm = v up to an ulp
            ax.errorbar(w, gm, yerr=bars, fmt="o", color=col, capsize=3, label=lab)
        ws = np.geomspace(min(allw), max(allw), 50)
        ax.plot(ws, np.exp(np.mean(np.log(allv))) * (ws / np.sqrt(min(allw) * max(allw))) ** -0.5, "k--",
                alpha=0.4, label="slope -1/2 (reference)")
        ax.set_xscale("log", base=2)
        ax.set_yscale("log")
        ax.set_xlabel("hidden width M")
        ax.set_ylabel(METRIC_AXIS.get(metric, metric))
        ax.grid(alpha=0.3, which="both")
        ax.legend(fontsize=7)
        ax.set_title(METRIC_LABELS.get(metric, metric) if gs is small else "groups with runs that left the linear regime (error > 1)",
                     fontsize=9)
    fig.suptitle("geometric mean over seeds, bars: min..max; b: fitted exponent [95% t-interval]", fontsize=9)
    return _save(fig, path)


def fmt_interval(ci, n_seeds: int, digits: int = 3) -> str:
    """``[lo, hi]``, or "n/a (1 seed)" where an interval over seeds cannot exist (one seed)."""
    lo, hi = ci
    if n_seeds < 2 or not (math.isfinite(lo) and math.isfinite(hi)):
        return f"n/a ({n_seeds} seed{'s' if n_seeds != 1 else ''})"
    return f"[{lo:.{digits}f}, {hi:.{digits}f}]"


def width_table(summary: dict, metric: str) -> str:
    rows = []
    for g in summary["groups"]:
        m = g["metrics"].get(metric)
        if m is None:
            continue
        f = m["fit"]
        if m["roundoff"]:
            rows.append([_group_label(g), "round-off (0 at every width)", None, None, None])
        elif f is None:
            rows.append([_group_label(g), "not fitted: " + (m.get("no_fit") or "too few widths"), None, None, None])
        else:
            k = len(f["exponent_per_seed"])
            rows.append([_group_label(g), f["exponent"], fmt_interval(f["ci"], k), fmt_interval(f["bootstrap_ci"], k),
                         f"{k} seeds, M = {f['widths'][0]}..{f['widths'][-1]}"])
    return md_table(["method", "exponent b (pooled fit)", "95% t-interval over seeds", "95% bootstrap over seeds",
                     "runs"], rows)


# ----------------------------------------------------------------------------- (c, d) damping
def _rho_axis(dampings):
    """x positions for dampings on a log axis; 0 is drawn one decade left of the smallest > 0."""
    pos = [d for d in dampings if d > 0]
    zero = (min(pos) / 10) if pos else 1.0
    return [d if d > 0 else zero for d in dampings], zero


def plot_damping(dsum: dict, path) -> Optional[Path]:
    """Error vs damping, one line per width, one panel per method (rho = 0 drawn at the left)."""
    groups = dsum["groups"]
    if not groups:
        return None
    fig, axes = plt.subplots(1, len(groups), figsize=(4.8 * len(groups), 4.2), squeeze=False)
    for ax, g in zip(axes[0], groups):
        xs, zero = _rho_axis(g["dampings"])
        for w, row, col in zip(g["widths"], g["matrix"], _colors(len(g["widths"]))):
            if any(v is not None for v in row):
                ax.plot(xs, _clip(row), "o-", color=col, label=f"M = {w}")
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xticks(xs, [f"{d:.0e}" if d else "0" for d in g["dampings"]], rotation=45, fontsize=7)
        ax.xaxis.set_minor_locator(matplotlib.ticker.NullLocator())
        if 0 in g["dampings"]:
            ax.axvline(zero * 3, color="gray", lw=0.5)  # rho = 0 sits left of this line
        unit = "rho x M" if g.get("damping_scale") == "per_width" else "rho"
        ax.set_xlabel(f"damping ({unit})")
        ax.set_ylabel(METRIC_AXIS.get(g["metric"], g["metric"]))
        ax.set_title(_group_label(g), fontsize=9)
        ax.grid(alpha=0.3, which="both")
        ax.legend(fontsize=7)
    return _save(fig, path)


def plot_heatmap(dsum: dict, path) -> Optional[Path]:
    """log10 of the mean error on the width x damping grid, one panel per method."""
    groups = dsum["groups"]
    if not groups:
        return None
    fig, axes = plt.subplots(1, len(groups), figsize=(4.8 * len(groups), 4.2), squeeze=False)
    for ax, g in zip(axes[0], groups):
        mat = np.array([[np.nan if v is None else math.log10(max(v, FLOOR)) for v in r] for r in g["matrix"]])
        im = ax.imshow(mat, origin="lower", aspect="auto", cmap="viridis")
        ax.set_xticks(range(len(g["dampings"])))
        ax.set_xticklabels([f"{d:.0e}" if d else "0" for d in g["dampings"]], rotation=45, fontsize=7)
        ax.set_yticks(range(len(g["widths"])))
        ax.set_yticklabels([str(w) for w in g["widths"]])
        for i in range(mat.shape[0]):
            for j in range(mat.shape[1]):
                if np.isfinite(mat[i, j]):
                    ax.text(j, i, f"{mat[i, j]:.1f}", ha="center", va="center", fontsize=7, color="w")
        unit = "rho x M" if g.get("damping_scale") == "per_width" else "rho"
        ax.set_xlabel(f"damping ({unit})")
        ax.set_ylabel("width M")
        ax.set_title(f"{_group_label(g)}: log10 {METRIC_AXIS.get(g['metric'], g['metric'])}", fontsize=8)
        fig.colorbar(im, ax=ax)
    return _save(fig, path)


def damping_table(dsum: dict) -> str:
    rows = []
    for g in dsum["groups"]:
        for w, b in g["best"].items():
            rows.append([_group_label(g), w, b["damping"], b[g["metric"]], "yes" if b["u_shaped"] else "no"])
    return md_table(["method", "width", "best damping", "error at best", "interior optimum"], rows)


# ----------------------------------------------------------------------------- (e) test outputs
def plot_test_predictions(tp: dict, path) -> Path:
    kinds = ("measured", "predicted_T", "limit_empirical", "limit_analytic")
    methods = [m for m in tp["methods"] if m != tp["reference"]]
    fig, ax = plt.subplots(figsize=(max(6, 1.3 * len(methods)), 4.2))
    width = 0.8 / len(kinds)
    for i, (k, col) in enumerate(zip(kinds, _colors(len(kinds)))):
        vals = [tp["methods"][m][k] for m in methods]
        ax.bar(np.arange(len(methods)) + i * width, [np.nan if v is None else v for v in vals], width,
               color=col, label=k)
    ax.set_xticks(np.arange(len(methods)) + 0.4 - width / 2)
    ax.set_xticklabels(methods, rotation=20)
    ax.set_ylabel(f"||f(X') - f_{tp['reference']}(X')|| / ||f_{tp['reference']}(X') - f_0(X')||")
    ax.set_title(f"test outputs relative to {tp['reference']} NGD (after {tp['steps']} steps and t -> inf)",
                 fontsize=9)
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3, axis="y")
    return _save(fig, path)


def test_predictions_table(tp: dict) -> str:
    rows = [[m, e["measured"], e["predicted_T"], e["limit_empirical"], e["limit_analytic"],
             e["train_loss_ratio_T"], e["test_loss_T"], e["test_loss_limit_empirical"]]
            for m, e in tp["methods"].items()]
    return md_table(["method", "measured (NN, T)", "predicted (T)", "limit (empirical)", "limit (analytic)",
                     "L_T/L_0 (train)", "test loss T", "test loss limit"], rows)


# ----------------------------------------------------------------------------- (f) K-FAC eta
def plot_kfac_lr(kf: dict, path) -> Path:
    fig, axes = plt.subplots(1, len(kf["runs"]), figsize=(6 * len(kf["runs"]), 4.2), squeeze=False)
    for ax, (label, r) in zip(axes[0], kf["runs"].items()):
        t = np.arange(len(r["loss_nn"]))
        ax.plot(t, _clip(r["loss_nn"]), "ko-", label="K-FAC network")
        ax.plot(t, _clip(r["loss_empirical"]), "k--", alpha=0.6, label="linearized (empirical kernels)")
        ax.plot(t, _clip(r["curve_theory"]), "s:", color="C0",
                label=f"L0 (1 - eta alpha)^2t, alpha = {r['alpha']:.0f} ((L-1)N+1)")
        ax.plot(t, _clip(r["curve_paper"]), "^:", color="C3",
                label=f"L0 (1 - eta alpha)^2t, alpha = {r['alpha_paper']:.0f} (N L)")
        ax.set_yscale("log")
        _integer_steps(ax)
        ax.set_xlabel("step t")
        ax.set_ylabel("train loss")
        ax.set_title(f"eta = {r['lr']:.4g} ({label} constant); follows: {r['follows']}", fontsize=9)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    return _save(fig, path)


def kfac_lr_table(kf: dict) -> str:
    rows = [[lab, r["lr"], r["eta_alpha"], r["ratio_nn"], r["rate_nn"], r["ratio_theory_alpha"],
             r["ratio_paper_alpha"], r["follows"]] for lab, r in kf["runs"].items()]
    return md_table(["eta from", "eta", "eta x alpha_theory", "measured ||r_1||/||r_0||",
                     "measured (L_T/L_0)^(1/2T)", "abs(1 - eta ((L-1)N+1))", "abs(1 - eta N L)", "follows"], rows)


def claims_table(claims) -> str:
    rows = [["PASS" if c.passed else "FAIL", c.id, c.statement, c.tolerance,
             "; ".join(f"{k}: {fmt_value(v, ' ')}" for k, v in c.measured.items())] for c in claims]
    return md_table(["result", "claim", "statement", "tolerance", "measured"], rows)


# ----------------------------------------------------------------------------- stores
SCALAR_COLUMNS = ("key", "status", "method", "width", "depth", "activation", "damping", "damping_scale", "seed", "dataset",
                  "n_train", "n_test", "steps", "lr", "rho", "alpha", "alpha_paper", "err_emp_max", "err_an_max",
                  "err_emp_1", "err_emp_test_max", "err_an_test_max", "iso_err", "spec_min", "spec_max",
                  "ratio_nn", "ratio_pred", "ratio_theory", "loss_ratio_nn", "drift", "loss_train_final",
                  "loss_test_final", "seconds", "error")


def store_rows(store) -> list[dict]:
    """Flat rows of a store (``ResultsStore.to_rows``) with ``lr`` from the result, not the config."""
    store = store if isinstance(store, ResultsStore) else ResultsStore(store, create=False)
    rows = store.to_rows()
    for r in rows:
        if "result.lr" in r:
            r["lr_config"], r["lr"] = r["lr"], r.pop("result.lr")
    return rows


def report_store(store, out_dir, name: str = "sweep", metrics: Sequence[str] = None,
                 kinds: Sequence[str] = ("width", "damping")) -> dict:
    """Figures, CSV/JSON and ``{name}_REPORT.md`` for a sweep store under ``out_dir``.

    Width varies -> power-law fits per (method, rho) and log-log plots per metric; damping
    varies -> error-vs-rho curves and width x rho heat maps (``kinds`` selects which of the two
    analyses to do). Returns the summary dict (also written as ``{name}_summary.json``)."""
    from .experiments import DAMPING_METRICS, WIDTH_METRICS, damping_summary, varying_fields, width_summary
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    store = store if isinstance(store, ResultsStore) else ResultsStore(store, create=False)
    rows = store_rows(store)
    ok = [r for r in rows if r["status"] == "ok"]
    errors = [r for r in rows if r["status"] == "error"]
    varying = varying_fields(rows)  # every config field that differs between runs is a CSV column
    columns = list(dict.fromkeys([c for c in SCALAR_COLUMNS[:3] if any(c in r for r in rows)] + varying
                                 + [c for c in SCALAR_COLUMNS[3:] if any(c in r for r in rows)]))
    save_csv(rows, out / f"{name}_runs.csv", columns)
    summary = {"n_ok": len(ok), "n_error": len(errors), "n_invalid_lines": store.invalid_lines,
               "varying": varying, "errors": [{k: r.get(k) for k in (
        "method", "width", "damping", "seed", "error")} for r in errors]}
    sections, figures = [], []
    metrics = list(metrics or WIDTH_METRICS)
    from .experiments import group_rows
    if "width" in kinds:
        by = ("method",) + tuple(f for f in varying_fields(ok, ("width",)) if f != "method")
        n_widths = {k: len({r["width"] for r in rs}) for k, rs in group_rows(ok, by).items()}
    if "width" in kinds and any(n >= 3 for n in n_widths.values()):  # else no exponent worth fitting
        ws = width_summary(ok, metrics)
        summary["width"] = ws
        body = [f"Grouped by {', '.join(ws['by'])}; common setting: {common_line(ws) or '-'}."]
        for m in metrics:
            p = plot_width(ws, m, out / f"{name}_width_{m}.png")
            if p is None:
                continue
            figures.append(p.name)
            body.append(f"### {METRIC_LABELS.get(m, m)}\n\n![{m}]({p.name})\n\n{width_table(ws, m)}")
        sections.append(("Error vs width (log-log fits, 95% intervals over seeds)", "\n\n".join(body)))
    elif "width" in kinds and ok:
        counts = ", ".join(f"{'/'.join(map(str, k))}: {n}" for k, n in n_widths.items())
        summary["width_missing"] = f"no group has 3 or more widths (widths per group: {counts})"
        sections.append(("Error vs width", f"No width fits: {summary['width_missing']}; a width exponent needs "
                         "three or more widths per setting."))
    if "damping" in kinds and len({r["damping"] for r in ok}) > 1:
        summary["damping"] = {}
        for m in DAMPING_METRICS:
            ds = damping_summary(ok, m)
            if not ds["groups"]:
                continue
            summary["damping"][m] = ds
            p1 = plot_damping(ds, out / f"{name}_damping_{m}.png")
            p2 = plot_heatmap(ds, out / f"{name}_heatmap_{m}.png")
            figures += [p.name for p in (p1, p2) if p]
            sections.append((f"Error vs damping and width: {METRIC_LABELS.get(m, m)}",
                             f"![damping]({p1.name})\n\n![heatmap]({p2.name})\n\n" + damping_table(ds)))
    if errors:
        sections.append(("Failed grid points", md_table(["method", "width", "damping", "seed", "error"],
                                                         [[e.get("method"), e.get("width"), e.get("damping"),
                                                           e.get("seed"), e.get("error")] for e in errors])))
    summary["figures"] = figures
    save_json(summary, out / f"{name}_summary.json")
    skipped = f" ({store.invalid_lines} invalid lines skipped)" if store.invalid_lines else ""
    write_markdown(out / f"{name}_REPORT.md", f"Sweep report: {name}",
                   [("Store", f"`{store.path}`: {len(ok)} finished grid points, {len(errors)} failed{skipped}; "
                              f"settings that vary: {', '.join(varying) or '-'}; "
                              f"per-run numbers in `{name}_runs.csv`, fits in `{name}_summary.json`.")] + sections)
    return summary


# ----------------------------------------------------------------------------- reproduction
def write_reproduction(out_dir, rc, res: dict) -> Path:
    """Figures, ``reproduce.json`` (config, meta, numbers, claims, timings) and ``REPORT.md``."""
    from .store import run_meta
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    r = rc.resolved()
    setting = (f"{r.dataset}, classes 0 vs 1, N = {r.n_train} train / {r.n_test} test, L = {r.depth}, M = {r.width}, "
               f"{r.activation}, sigma_w^2 = 2, sigma_b = {r.sigma_b:g}, rho = 0, eta = eta* per method, {r.steps} steps, seed {r.seed}, "
               f"{r.dtype}")
    cmd = "ntk-ngd reproduce" + (" --quick" if r.quick else "") + (
        "" if r.activation == "relu" else f" --activation {r.activation}") + (
        "" if r.sigma_b == 0 else f" --sigma-b {r.sigma_b:g}") + ("" if r.dataset == "digits" else
                                                                    f" --dataset {r.dataset} --data-path PATH")
    sections = [("Setting", setting + f"\n\nRegenerate with `{cmd}` (sweeps resume from their stores). "
                 "Per-step numbers and configs: `reproduce.json`. Claims:\n\n"
                 + claims_table(res["claims"]))]
    numbers = {"config": rc.to_dict(), "meta": run_meta(), "timings_s": res["timings"],
               "claims": [c.to_dict() for c in res["claims"]]}
    if "dynamics" in res:
        dyn = res["dynamics"]
        plot_dynamics(dyn, out / "dynamics.png", f"training dynamics ({r.dataset}, M = {r.width})")
        save_csv([{"method": k, "step": t, "train_nn": s["loss_train"]["nn"][t],
                   "train_empirical": (s["loss_train"]["empirical"] or [None] * (t + 1))[t],
                   "train_analytic": (s["loss_train"]["analytic"] or [None] * (t + 1))[t],
                   "test_nn": s["loss_test"]["nn"][t],
                   "test_empirical": (s["loss_test"]["empirical"] or [None] * (t + 1))[t],
                   "test_analytic": (s["loss_test"]["analytic"] or [None] * (t + 1))[t]}
                  for k, s in dyn.items() for t in s["steps"]], out / "dynamics.csv")
        numbers["dynamics"] = dyn
        sections.append(("(a) Training dynamics of every method vs its predictions",
                         "![dynamics](dynamics.png)\n\nSolid: trained network; dashed: linearized prediction from "
                         "the empirical kernels at init; dotted: from the analytic kernels. e_t = "
                         "||f_t^NN - f_t^pred|| / ||f_0 - y||.\n\n" + dynamics_table(dyn)))
    if "forster" in res:
        plot_dynamics(res["forster"], out / "forster.png", "N > M_0 (digits): with and without Forster")
        numbers["forster"] = res["forster"]
        f0 = next(iter(res["forster"].values()))
        sections.append(("N > M_0: K-FAC with and without the Forster transform, unit-wise",
                         f"N = {f0['n_train']}, M_0 = {f0['widths'][0]}.\n\n![forster](forster.png)\n\n"
                         + dynamics_table(res["forster"])))
    if "kfac_lr" in res:
        plot_kfac_lr(res["kfac_lr"], out / "kfac_lr.png")
        numbers["kfac_lr"] = res["kfac_lr"]
        sections.append(("(f) K-FAC's learning-rate constant", "![kfac_lr](kfac_lr.png)\n\n"
                         + kfac_lr_table(res["kfac_lr"])))
    if "test" in res:
        plot_test_predictions(res["test"], out / "test_predictions.png")
        numbers["test_predictions"] = res["test"]
        sections.append(("(e) Test predictions relative to exact NGD", "![test](test_predictions.png)\n\n"
                         + test_predictions_table(res["test"])))
    for name, title in (("width", "(b) Width sweep"), ("damping", "(c, d) Damping sweep and width x damping map")):
        if name not in res["stores"]:
            continue
        s = report_store(res["stores"][name], out, name=name, kinds=(name,))
        numbers[f"{name}_sweep"] = s
        body = [f"Store `{res['stores'][name]}`; {s['n_ok']} runs ({s['n_error']} failed); details in "
                f"[{name}_REPORT.md]({name}_REPORT.md)."]
        if "width" in s:
            body += ["Train trajectory error against the empirical-kernel linearization (linearization error):",
                     f"![{name}]({name}_width_err_emp_max.png)", width_table(s["width"], "err_emp_max"),
                     "Test trajectory error against the analytic (infinite-width) predictor:",
                     f"![{name}]({name}_width_err_an_test_max.png)", width_table(s["width"], "err_an_test_max"),
                     "One-step ratio ||f_1 - y|| / ||f_0 - y|| (theory: 0 at eta = 1/alpha):",
                     width_table(s["width"], "ratio_nn")]
        for m, ds in s.get("damping", {}).items():
            body += [f"{METRIC_LABELS.get(m, m)}:", f"![damping]({name}_damping_{m}.png)",
                     f"![heatmap]({name}_heatmap_{m}.png)", damping_table(ds)]
        sections.append((title, "\n\n".join(body)))
    if "atlas" in res["timings"]:
        sections.append(("The isotropy atlas", "Every method next to its own function-space prediction: "
                         "[atlas/REPORT.md](atlas/REPORT.md) (its claims are listed with the others above)."))
    sections.append(("Timings", md_table(["entry", "seconds"], [[k, v] for k, v in res["timings"].items()])
                     + f"\n\nMachine: {numbers['meta'].get('platform')} ({numbers['meta'].get('device')}), "
                       f"jax {numbers['meta'].get('jax_version')}, git {numbers['meta'].get('git_rev', '?')[:10]}."))
    save_json(numbers, out / "reproduce.json")
    n_pass = sum(c.passed for c in res["claims"])
    return write_markdown(out / "REPORT.md", f"ntk-ngd reproduction ({'quick, ' if r.quick else ''}{r.dataset}): "
                                            f"{n_pass}/{len(res['claims'])} claims pass", sections)
