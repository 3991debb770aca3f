"""The isotropy atlas: every registered method on a wide network next to its own function-space
prediction, with its constant, its conditions and its finite-width error (THEORY sections 4, 9).

For every method variant (each registered method with its default options, plus the statistics,
side, hold and accumulate variants of ``VARIANT_OPTIONS``), every setting (dataset, activation,
depth), width and seed, :func:`atlas_point` measures at initialization
  * linear maps: the spectrum of Theta_G (N C,), alpha_hat = tr Theta_G / (N C), spread and isotropy
    error against the method's own alpha (``operator_summary``);
  * nonlinear maps (statistics that depend on r, Shampoo): radiality sin angle(r_0, Phi(r_0)) and the
    degree of homogeneity of the first step's map;
the same at infinite width (analytic kernels, same inputs and r_0); then trains the network T steps
(eta = 1/alpha where the method has one, 1/lambda_max(Theta_G) for other linear maps, the
line-search step on the linearized map and the schedule eta_t ~ ||r_t||^(1-d) for nonlinear ones)
next to the lazy-regime prediction (``method_predictor``: kernels and factors fixed at init, the
method's state carried), and records the one-step ratio predicted vs measured and the trajectory
error. :func:`atlas_summary` fits the width exponents; :func:`atlas_claims` states the rules.
"""
from __future__ import annotations

import dataclasses
import functools
from dataclasses import dataclass
from typing import Optional, Sequence

import numpy as np

from .experiments import Claim, RunConfig, build_model, fit_power_law, group_rows, load_data, method_object

# options beside each method's defaults that change what the atlas is about: statistics, side, state
VARIANT_OPTIONS = {
    "exact": [{"statistics": "empirical"}],
    "kfac": [{"statistics": "empirical"}],
    "ngplus": [{"side": "input"}, {"side": "auto"}, {"statistics": "expected"}, {"hold": 2},
               {"hold": 2, "statistics": "expected"}],
    "shampoo": [{"accumulate": True}],
}
# accumulated Shampoo keeps dense M x M and (M_{l-1}+1)^2 factors whose pseudo-powers cost O(M^3) per step
# (minutes per point at M = 4096 on 2 cores): the atlas runs it up to this width
MAX_WIDTH = {"shampoo[accumulate=True]": 1024}
SETTING_FIELDS = ("dataset", "activation", "depth")
ROUNDOFF = 1e-8    # an error below this at every width is exact isotropy / radiality at finite width
INF_TOL = 1e-6     # ... and at infinite width (analytic kernels)


def variant_label(method: str, options: dict) -> str:
    """``kfac`` or ``ngplus[side=input]``."""
    return method + ("[" + ",".join(f"{k}={v}" for k, v in sorted(options.items())) + "]" if options else "")


def variants(methods: Optional[Sequence[str]] = None) -> list:
    """[(label, method, options)]: every registered method (or ``methods``: names or labels) with its
    defaults, then its ``VARIANT_OPTIONS`` where it has those options."""
    from .curvature import METHODS, method_names
    out = []
    for name in method_names():
        fields = METHODS[name].options()
        for opts in [{}] + [o for o in VARIANT_OPTIONS.get(name, []) if set(o) <= set(fields)]:
            out.append((variant_label(name, opts), name, opts))
    if methods is not None:
        known = {lab for lab, _, _ in out}
        bad = [m for m in methods if m not in known and m not in METHODS]
        if bad:
            raise ValueError(f"unknown atlas methods {bad}; choose from {sorted(known)}")
        out = [v for v in out if v[0] in methods or (v[1] in methods and not v[2])]
    return out


@dataclass(frozen=True)
class AtlasConfig:
    """What ``ntk-ngd atlas`` runs: ``settings`` (dicts of dataset, activation, depth), ``widths``,
    ``seeds``, N = ``n_train`` / ``n_test`` inputs, ``steps`` of training, ``methods`` (labels or
    names; None = every variant). None fields take the quick or full defaults."""
    quick: bool = False
    settings: Optional[tuple] = None
    widths: Optional[tuple] = None
    seeds: Optional[tuple] = None
    n_train: int = 32
    n_test: int = 32
    steps: int = 3
    methods: Optional[tuple] = None

    def resolved(self) -> "AtlasConfig":
        full_settings = tuple({"dataset": d, "activation": a, "depth": L} for d, a, L in (
            ("digits", "relu", 3), ("synthetic", "relu", 3), ("synthetic", "erf", 4)))
        quick_settings = ({"dataset": "digits", "activation": "relu", "depth": 3},
                          {"dataset": "synthetic", "activation": "relu", "depth": 3})
        return dataclasses.replace(
            self, settings=tuple(self.settings or (quick_settings if self.quick else full_settings)),
            widths=tuple(self.widths or ((64, 128, 256) if self.quick else tuple(2 ** k for k in range(8, 13)))),
            seeds=tuple(self.seeds or ((0,) if self.quick else (0, 1))),
            methods=None if self.methods is None else tuple(self.methods))

    def points(self) -> list[dict]:
        """The grid as RunConfig dicts (the results store's keys)."""
        r = self.resolved()
        pts = []
        for s in r.settings:
            for label, name, opts in variants(r.methods):
                for w in [w for w in r.widths if w <= MAX_WIDTH.get(label, w)]:
                    for seed in r.seeds:
                        pts.append(RunConfig(method=name, options=opts, width=w, seed=seed, n_train=r.n_train,
                                             n_test=r.n_test, steps=r.steps, **s).to_dict())
        return pts

    def to_dict(self) -> dict:
        return dataclasses.asdict(self.resolved())


# ----------------------------------------------------------------------------- one point
def _first_step_map(m, fac, rho):
    """r -> J d(r; state_0(r)): the first training step's residual map (stateful methods build
    their state from the same r, as ``train`` does)."""
    from .layers import j_vec

    def phi(r):
        state = m.update(m.init(fac, r, rho), fac, r, rho, 0) if m.stateful else ()
        return j_vec(fac, m.direction(fac, r, rho, state))
    return phi


@functools.lru_cache(maxsize=32)
def _analytic(cfg_setting: tuple):
    """Analytic (infinite-width) source of a setting and width (the seed does not enter; the width
    only where a method's analytic face scales with it, as unit-wise NGD's alpha does)."""
    from .dynamics import analytic_source
    cfg = RunConfig(**dict(cfg_setting))
    data = load_data(cfg)
    return analytic_source(build_model(cfg, data), data.x_train, data.x_test)


def _norm_ratio(a, b) -> float:
    return float(np.linalg.norm(np.asarray(a)) / np.linalg.norm(np.asarray(b)))


def atlas_point(config: dict) -> dict:
    """Measure one (setting, method variant, width, seed): see the module docstring. JSON-able."""
    import jax
    import jax.numpy as jnp
    from .diagnostics import homogeneity, line_search_lr, operator_summary, radiality, schedule_power
    from .dynamics import (empirical_source, loss_curve, method_predictor, preconditioned_kernel, residual_map,
                           trajectory_error)
    from .train import train

    cfg = RunConfig.from_dict(config)
    data = load_data(cfg)
    model = build_model(cfg, data)
    m = method_object(cfg)
    n, rho = data.x_train.shape[0], cfg.rho
    out = {"label": variant_label(cfg.method, cfg.options), "linear": bool(m.linear), "stateful": bool(m.stateful),
           "declared": m.isotropy_for(model), "conditions": "met"}
    try:
        m.check(model, n, rho)
    except ValueError as e:  # measured anyway: the atlas shows what happens where a condition fails
        out["conditions"] = str(e)
        m = dataclasses.replace(m, force=True)
    params = model.init(jax.random.PRNGKey(cfg.seed))
    x, xt = jnp.asarray(data.x_train), jnp.asarray(data.x_test)
    y = jnp.asarray(data.y_train)
    src = empirical_source(model, params, x, xt)
    f0, f0t = model.apply(params, x), model.apply(params, xt)
    r0 = f0 - y
    alpha = m.alpha(model, n)
    out["alpha"] = None if alpha is None else float(alpha)
    # general position: the hat-matrix arguments of THEORY 4 (K-FAC, FOOF, TNT, NG+) need inputs of
    # rank N (with the bias column where sigma_b > 0); centred (standardized) inputs have rank N - 1
    xb = np.asarray(x) if model.sigma_b == 0 else np.hstack([np.asarray(x), np.ones((n, 1))])
    out["input_rank"] = int(np.linalg.matrix_rank(xb))
    out["general_position"] = out["input_rank"] == n
    setting = tuple(sorted({k: v for k, v in cfg.to_dict().items()
                            if k not in ("method", "options", "seed", "steps", "lr", "force")}.items(),
                           key=lambda kv: kv[0]))
    setting = tuple((k, tuple(v) if isinstance(v, list) else v) for k, v in setting)
    if m.linear:
        tg, _ = preconditioned_kernel(m, src, rho)
        s = operator_summary(tg, alpha)
        lam = s.eigenvalues
        lr = 1.0 / alpha if alpha is not None else 1.0 / float(lam[-1])
        q = 0.0
        out.update(alpha_hat=s.alpha_hat, spread=s.spread, err=s.iso_err, eigenvalues=(lam / s.alpha).tolist(),
                   radiality=radiality(r0, tg @ r0.reshape(-1)), degree=1.0, ratio_pred=_norm_ratio(
                       r0.reshape(-1) - lr * (tg @ r0.reshape(-1)), r0))
    else:
        phi = _first_step_map(m, src.fac_train, rho)
        p0 = phi(r0)
        h = homogeneity(phi, r0)
        lr, q = line_search_lr(r0, p0), schedule_power(h.degree)
        out.update(err=radiality(r0, p0), radiality=radiality(r0, p0), degree=h.degree,
                   homogeneity_deviation=h.deviation, ratio_pred=_norm_ratio(r0 - lr * p0, r0))
    out.update(lr=lr, lr_power=q)
    if type(m).analytic:
        try:
            asrc = _analytic(setting)
            if m.linear:
                s_inf = operator_summary(preconditioned_kernel(m, asrc, rho)[0], alpha)
                out.update(alpha_hat_inf=s_inf.alpha_hat, spread_inf=s_inf.spread, err_inf=s_inf.iso_err)
            else:
                out["err_inf"] = radiality(r0, residual_map(dataclasses.replace(m, **_stateless(m)), asrc, rho)(r0))
        except (ValueError, NotImplementedError) as e:
            out["analytic_note"] = f"{type(e).__name__}: {e}"
    try:
        nn = train(model, params, data, m, lr, cfg.steps, rho, lr_power=q)
        pred = method_predictor(m, src, y, lr, rho, lr_power=q)(cfg.steps, f0, f0t)
        out.update(ratio_nn=_norm_ratio(nn.f_train[1] - y, r0),
                   traj_err=float(jnp.max(trajectory_error(nn.f_train, pred.train, f0, y))),
                   loss_nn=[float(v) for v in nn.loss_train],
                   loss_pred=[float(v) for v in loss_curve(pred.train, y)])
    except (FloatingPointError, ValueError) as e:
        out["train_error"] = f"{type(e).__name__}: {e}"
    return out


def _stateless(m) -> dict:
    """Options that turn a stateful variant into its one-step rule (the first step of either)."""
    fields = type(m).options()
    return {k: v for k, v in (("hold", 1), ("accumulate", False)) if k in fields}


def norm_dependence(ac: AtlasConfig) -> list[dict]:
    """Infinite-width isotropy with inputs of unequal norms: the analytic Theta_G of every linear variant
    with an analytic face on the setting's training inputs rescaled row-wise by s_n = 0.5 .. 1.5
    (evenly spaced), against its mean eigenvalue (``operator_summary``). Cheap: kernels only, at the
    largest width (unit-wise NGD's analytic face depends on it)."""
    from .diagnostics import operator_summary
    from .dynamics import analytic_source, preconditioned_kernel
    r = ac.resolved()
    out = []
    for s in r.settings:
        cfg = RunConfig(width=max(r.widths), n_train=r.n_train, n_test=r.n_test, **s)
        data = load_data(cfg)
        model = build_model(cfg, data)
        n = data.x_train.shape[0]
        scale = np.linspace(0.5, 1.5, n)[:, None]
        for src_kind, x in (("unit", data.x_train), ("unequal", data.x_train * scale)):
            src = analytic_source(model, x)
            for label, name, opts in variants(r.methods):
                m = method_object(cfg.replace(method=name, options=opts))
                if not (m.linear and type(m).analytic):
                    continue
                try:
                    err = operator_summary(preconditioned_kernel(m, src, 0.0)[0]).iso_err
                except ValueError as e:
                    err = f"{type(e).__name__}: {e}"
                out.append({**s, "label": label, "norms": src_kind, "err_inf_mean": err})
    return out


# ----------------------------------------------------------------------------- summary and claims
def _mean(rs, key) -> Optional[float]:
    v = [r[key] for r in rs if r.get(key) is not None and np.isfinite(r[key])]
    return float(np.mean(v)) if v else None


FALLS = -0.2   # a fitted width exponent below this, for the pooled fit and every seed's, is "falls with M"


def falls_with_width(fit) -> bool:
    """The pooled exponent < FALLS and every seed's exponent < 0 (a t-interval over two seeds is too
    wide to decide anything; the per-seed signs and the pooled slope are what two seeds can tell)."""
    return fit is not None and fit["exponent"] < FALLS and all(b < 0 for b in fit["exponent_per_seed"].values())


def classify(entry: dict) -> str:
    """"finite" (error at round-off at every width), "wide" (error falls with M, ``falls_with_width``,
    and at round-off at infinite width where that is computed) or "none"."""
    errs = [e["mean"] for e in entry["by_width"] if e["mean"] is not None]
    if errs and max(errs) <= ROUNDOFF and (entry["err_inf"] is None or entry["err_inf"] <= INF_TOL):
        return "finite"
    if falls_with_width(entry["fit"]) and (entry["err_inf"] is None or entry["err_inf"] <= INF_TOL):
        return "wide"
    return "none"


def _declared(row: dict) -> Optional[str]:
    """``isotropy_for`` of a stored row's method and network."""
    fields = {f.name for f in dataclasses.fields(RunConfig)} - {"options", "lr"}
    cfg = RunConfig(**{k: (tuple(v) if isinstance(v, list) else v) for k, v in row.items() if k in fields},
                    options={k[len("options."):]: v for k, v in row.items() if k.startswith("options.")})
    return method_object(cfg).isotropy_for(build_model(cfg, load_data(cfg)))


def atlas_summary(rows: Sequence[dict]) -> dict:
    """Per (setting, variant): the table row (alpha, alpha_hat at the largest width and at infinite
    width, spread, error at the largest width and at infinite width, the fitted width exponent of the
    error and of the trajectory error with intervals, one-step ratios predicted vs measured, degree,
    conditions, class). ``rows``: flat store rows (``report.store_rows``) of ``atlas_point`` results."""
    from .experiments import mean_by
    ok = [r for r in rows if r.get("status", "ok") == "ok"]
    entries = []
    for key, rs in group_rows(ok, SETTING_FIELDS + ("label",)).items():
        wmax = max(r["width"] for r in rs)
        top = [r for r in rs if r["width"] == wmax]
        err_rows = [r for r in rs if r.get("err") is not None]
        roundoff = bool(err_rows) and max(r["err"] for r in err_rows) <= ROUNDOFF
        e = {**dict(zip(SETTING_FIELDS + ("label",), key)), "method": rs[0]["method"], "linear": rs[0]["linear"],
             "stateful": rs[0]["stateful"], "declared": rs[0]["declared"], "alpha": _mean(top, "alpha"),
             "width_max": wmax, "widths": sorted({r["width"] for r in rs}), "n_seeds": len({r["seed"] for r in rs}),
             "alpha_hat": _mean(top, "alpha_hat"), "alpha_hat_inf": _mean(top, "alpha_hat_inf"),
             "spread": _mean(top, "spread"), "err": _mean(top, "err"), "err_inf": _mean(top, "err_inf"),
             "degree": _mean(top, "degree"), "ratio_pred": _mean(top, "ratio_pred"), "ratio_nn": _mean(top, "ratio_nn"),
             "traj_err": _mean(top, "traj_err"), "conditions": rs[0]["conditions"],
             "general_position": all(r.get("general_position", True) for r in rs),
             "input_rank": rs[0].get("input_rank"), "n_train": rs[0].get("n_train"),
             "train_errors": sum(1 for r in rs if r.get("train_error")),
             "by_width": mean_by(rs, ["width"], "err"),
             "fit": None if roundoff else fit_power_law(err_rows, "err"),
             "fit_traj": fit_power_law([r for r in rs if r.get("traj_err") is not None], "traj_err")}
        e["declared"] = _declared(rs[0])
        if e["alpha"] is None:  # the class's declaration holds for its Fisher form only (alpha defined)
            e["declared"] = None
        e["class"] = classify(e)
        entries.append(e)
    return {"entries": entries}


def _fmt_fit(fit) -> Optional[str]:
    if fit is None:
        return None
    k = len(fit["exponent_per_seed"])
    ci = f" [{fit['ci'][0]:.2f}, {fit['ci'][1]:.2f}]" if k > 1 else " (1 seed)"
    return f"{fit['exponent']:.2f}{ci}"


def atlas_claims(summary: dict) -> list:
    """The atlas's claims, each with its rule and numbers (PASS/FAIL)."""
    es = summary["entries"]
    claims = []
    name = lambda e: f"{e['label']}@{e['dataset']}/{e['activation']}/L{e['depth']}"
    # 1. the constants: alpha computed from the kernels equals the theory's where inputs are in general position
    with_alpha = [e for e in es if e["alpha"] is not None and e["general_position"] and e["alpha_hat_inf"] is not None
                  and e["declared"] == "finite"]
    dev = {name(e): abs(e["alpha_hat_inf"] / e["alpha"] - 1) for e in with_alpha}
    claims.append(Claim("atlas_alpha", "alpha computed from the analytic kernels equals the method's derived "
                             "alpha (finite-width-isotropic methods, inputs of rank N)",
                             f"|alpha_hat_inf / alpha - 1| <= {INF_TOL:g}", {"worst": max(dev.values(), default=None),
                                                                              "n": len(dev)},
                             bool(dev) and max(dev.values()) <= INF_TOL))
    # 2. which methods are exactly isotropic at finite width (where their conditions hold)
    gp = [e for e in es if e["general_position"] and e["conditions"] == "met"]
    declared = {name(e) for e in gp if e["declared"] == "finite" and e["alpha"] is not None}
    found = {name(e) for e in gp if e["class"] == "finite"}
    claims.append(Claim("atlas_finite", "the methods exactly isotropic (or radial) at every finite width are "
                             "those the theory says are", f"error <= {ROUNDOFF:g} at every width iff declared "
                             "'finite' (conditions met, inputs of rank N)",
                             {"found": sorted(found), "declared": sorted(declared)}, found == declared))
    # 3. isotropic only as M grows: the error falls with M and vanishes at infinite width
    wide = [e for e in gp if e["declared"] == "wide" and e["alpha"] is not None]
    claims.append(Claim("atlas_wide", "methods isotropic only as M grows have an error that falls with M and "
                             "vanishes with the analytic kernels", f"class 'wide' (pooled width exponent < {FALLS}, "
                             f"every seed's < 0; infinite-width error <= {INF_TOL:g})",
                             {name(e): f"{e['class']}, b = {_fmt_fit(e['fit'])}, inf = {e['err_inf']}" for e in wide},
                             bool(wide) and all(e["class"] == "wide" for e in wide)))
    # 4. not isotropic at all
    none = [e for e in es if e["alpha"] is None]
    claims.append(Claim("atlas_not_isotropic", "methods without an isotropy constant (gd, diagonal, EKFAC, "
                             "empirical statistics, NG+ with an output-side last layer, Shampoo) are not isotropic or "
                             "radial at any width", "class 'none'",
                             {name(e): e["class"] for e in none if e["class"] != "none"} or {"all": "none"},
                             bool(none) and all(e["class"] == "none" for e in none)))
    # 5. the one-step ratio: the linearized prediction vs the network at the largest width
    trained = [e for e in es if e["ratio_nn"] is not None and e["ratio_pred"] is not None and not e["train_errors"]]
    gap = {name(e): abs(e["ratio_nn"] - e["ratio_pred"]) for e in trained}
    worst = max(gap, key=gap.get) if gap else None
    claims.append(Claim("atlas_one_step", "the network's one-step ratio ||r_1|| / ||r_0|| matches the "
                             "lazy-regime prediction at the largest width", "median |measured - predicted| <= 0.1",
                             {"median": float(np.median(list(gap.values()))) if gap else None, "worst": worst,
                              "worst_gap": gap.get(worst)}, bool(gap) and float(np.median(list(gap.values()))) <= 0.1))
    # 6. stateful methods follow their lazy-regime predictions, with an error that falls with M; maps of
    # negative degree (the empirical-Fisher step ~ 1 / r_n) amplify the linearization error: reported
    st = [e for e in es if e["stateful"] and e["fit_traj"] is not None]
    regular = [e for e in st if e["degree"] is not None and e["degree"] >= -1e-6]
    claims.append(Claim("atlas_stateful", "networks trained with stateful methods (held GFIM, accumulated "
                        "Shampoo) follow their lazy-regime predictions, with an error that falls with M",
                        f"max_t e_t falls with M (pooled exponent < {FALLS}, every seed's < 0) for every stateful "
                        "variant whose map has degree d >= 0; those with d < 0 are listed",
                        {**{name(e): _fmt_fit(e["fit_traj"]) for e in regular},
                         "d < 0 (not claimed)": {name(e): _fmt_fit(e["fit_traj"]) for e in st if e not in regular}},
                        bool(regular) and all(falls_with_width(e["fit_traj"]) for e in regular)))
    # 7. input norms: which infinite-width isotropies survive inputs of unequal norms
    nm = [x for x in summary.get("norms", []) if isinstance(x["err_inf_mean"], float)]
    if nm:
        key = lambda x: (x["dataset"], x["activation"], x["depth"], x["label"])
        unit = {key(x): x["err_inf_mean"] for x in nm if x["norms"] == "unit"}
        uneq = {key(x): x["err_inf_mean"] for x in nm if x["norms"] == "unequal"}
        cls = {(e["dataset"], e["activation"], e["depth"], e["label"]): e["class"] for e in es}
        iso_unit = [k for k, v in unit.items() if v <= INF_TOL]
        lost = sorted(f"{k[3]}@{k[0]}/{k[1]}/L{k[2]}" for k in iso_unit if uneq.get(k, 0) > INF_TOL)
        kept_finite = [k for k in iso_unit if cls.get(k) == "finite"]
        claims.append(Claim("atlas_input_norms", "the methods exactly isotropic at finite width stay isotropic "
                            "(infinite width) for inputs of unequal norms; the measurement names those that do not",
                            f"||Theta_G / alpha_hat - I|| <= {INF_TOL:g} with rows scaled by 0.5..1.5 for every "
                            "'finite' method", {"lose isotropy": lost or "none",
                                                "worst finite": max((uneq.get(k, 0.0) for k in kept_finite), default=None)},
                            bool(kept_finite) and all(uneq.get(k, 1.0) <= INF_TOL for k in kept_finite)))
    return claims


# ----------------------------------------------------------------------------- table, figures, report
TABLE_COLUMNS = ("dataset", "activation", "depth", "label", "linear", "stateful", "declared", "class", "alpha",
                 "alpha_hat", "alpha_hat_inf", "spread", "err", "err_inf", "exponent", "exponent_ci",
                 "degree", "ratio_pred", "ratio_nn", "traj_err", "traj_exponent", "traj_exponent_ci",
                 "width_max", "n_seeds", "input_rank", "n_train", "conditions", "train_errors")


def table_rows(summary: dict) -> list[dict]:
    """One flat row per (setting, variant) for CSV and markdown."""
    out = []
    for e in summary["entries"]:
        f, ft = e["fit"], e["fit_traj"]
        out.append({**{k: e.get(k) for k in TABLE_COLUMNS},
                    "exponent": None if f is None else f["exponent"], "exponent_ci": None if f is None else f["ci"],
                    "traj_exponent": None if ft is None else ft["exponent"],
                    "traj_exponent_ci": None if ft is None else ft["ci"]})
    return out


def _md(summary: dict) -> str:
    from .report import md_table
    rows = [[e["dataset"], e["activation"], e["depth"], e["label"], "lin" if e["linear"] else "nonlin",
             e["declared"] or "-", e["class"], e["alpha"], e["alpha_hat"], e["alpha_hat_inf"], e["spread"],
             e["err"], e["err_inf"], _fmt_fit(e["fit"]) or ("round-off" if e["class"] == "finite" else "-"),
             e["ratio_pred"], e["ratio_nn"], e["traj_err"], _fmt_fit(e["fit_traj"]),
             "yes" if e["conditions"] == "met" and e["general_position"] else
             ("rank X = %s < N" % e["input_rank"] if e["conditions"] == "met" else "no: " + e["conditions"][:60])]
            for e in summary["entries"]]
    return md_table(["data", "phi", "L", "method", "map", "theory", "measured", "alpha", "alpha_hat (M max)",
                     "alpha_hat (inf)", "spread", "iso / radiality err (M max)", "err (inf)", "exponent b [95%]",
                     "1-step predicted", "1-step measured", "max_t e_t", "e_t exponent", "conditions"], rows)


def overview(summary: dict) -> str:
    """The compact table (README): one row per variant, per setting its measured class with the error at
    the largest width, its width exponent and the infinite-width error."""
    from .report import md_table
    settings = list(dict.fromkeys((e["dataset"], e["activation"], e["depth"]) for e in summary["entries"]))
    by = {(e["dataset"], e["activation"], e["depth"], e["label"]): e for e in summary["entries"]}
    labels = list(dict.fromkeys(e["label"] for e in summary["entries"]))
    g = lambda v: "-" if v is None else f"{v:.2g}"
    rows = []
    for lab in labels:
        es = [by.get(s + (lab,)) for s in settings]
        first = next(e for e in es if e)
        cells = ["-" if e is None else f"{e['class']}: {g(e['err'])}, b = {_fmt_fit(e['fit']) or 'round-off'}, "
                 f"inf {g(e['err_inf'])}" for e in es]
        rows.append([lab, "linear" if first["linear"] else f"nonlinear (d = {g(first['degree'])})",
                     first["declared"] or "-"] + cells)
    heads = [f"{d} {a} L={L}" for d, a, L in settings]
    return md_table(["method", "map", "theory"] + heads, rows)


def plot_errors(summary: dict, path) -> Optional[object]:
    """Isotropy (linear) or radiality (nonlinear) error vs M, one line per variant, one panel per setting."""
    from .report import _colors, _save, plt
    settings = list(dict.fromkeys((e["dataset"], e["activation"], e["depth"]) for e in summary["entries"]))
    fig, axes = plt.subplots(1, len(settings), figsize=(7 * len(settings), 5.5), squeeze=False)
    for ax, s in zip(axes[0], settings):
        es = [e for e in summary["entries"] if (e["dataset"], e["activation"], e["depth"]) == s]
        for e, col in zip(es, _colors(len(es))):
            pts = [(b["width"], b["mean"]) for b in e["by_width"] if b["mean"] is not None and b["mean"] > ROUNDOFF]
            if not pts:
                continue
            w, v = zip(*pts)
            style = "o-" if e["linear"] else "s--"
            lab = e["label"] + (f" (b = {e['fit']['exponent']:.2f})" if e["fit"] else "")
            ax.plot(w, v, style, color=col, label=lab, ms=4)
        ax.set_xscale("log", base=2)
        ax.set_yscale("log")
        ax.set_xlabel("hidden width M")
        ax.set_ylabel("||Theta_G / alpha - I||  (dashed: radiality sin angle(r, Phi(r)))")
        ax.set_title(f"{s[0]}, {s[1]}, L = {s[2]} (exact at every width: not drawn)", fontsize=9)
        ax.grid(alpha=0.3, which="both")
        ax.legend(fontsize=6, ncol=2)
    return _save(fig, path)


def plot_spectra(rows: Sequence[dict], path) -> Optional[object]:
    """Eigenvalues of Theta_G / alpha at the largest width (first seed), one line per linear variant."""
    from .report import _colors, _save, plt
    lin = [r for r in rows if r.get("eigenvalues")]
    settings = list(dict.fromkeys((r["dataset"], r["activation"], r["depth"]) for r in lin))
    if not settings:
        return None
    fig, axes = plt.subplots(1, len(settings), figsize=(7 * len(settings), 5), squeeze=False)
    for ax, s in zip(axes[0], settings):
        rs = [r for r in lin if (r["dataset"], r["activation"], r["depth"]) == s]
        wmax, seed = max(r["width"] for r in rs), min(r["seed"] for r in rs)
        top = {r["label"]: r for r in rs if r["width"] == wmax and r["seed"] == seed}
        for (lab, r), col in zip(top.items(), _colors(len(top))):
            ev = np.asarray(r["eigenvalues"])
            ax.plot(np.arange(1, ev.size + 1), np.maximum(ev, 1e-6), ".-", color=col, label=lab, ms=3)
        ax.set_yscale("log")
        ax.set_xlabel("eigenvalue index (ascending)")
        ax.set_ylabel("lambda(Theta_G) / alpha  (alpha_hat where the method has none)")
        ax.set_title(f"{s[0]}, {s[1]}, L = {s[2]}, M = {wmax}: isotropic = flat at 1", fontsize=9)
        ax.grid(alpha=0.3, which="both")
        ax.legend(fontsize=6, ncol=2)
    return _save(fig, path)


def plot_training(rows: Sequence[dict], path, setting) -> Optional[object]:
    """Train loss per step at the largest width (first seed): network vs lazy-regime prediction,
    one panel per variant."""
    from .report import _clip, _integer_steps, _save, plt
    rs = [r for r in rows if (r["dataset"], r["activation"], r["depth"]) == setting and r.get("loss_nn")]
    if not rs:
        return None
    wmax, seed = max(r["width"] for r in rs), min(r["seed"] for r in rs)
    top = [r for r in rs if r["width"] == wmax and r["seed"] == seed]
    cols = min(len(top), 5)
    nrows = -(-len(top) // cols)
    fig, axes = plt.subplots(nrows, cols, figsize=(3.6 * cols, 3.0 * nrows), squeeze=False)
    for ax, r in zip(axes.flat, top):
        t = np.arange(len(r["loss_nn"]))
        ax.plot(t, _clip(r["loss_nn"]), "o-", ms=3, label="network")
        ax.plot(t, _clip(r["loss_pred"]), "--", label="lazy-regime prediction")
        ax.set_yscale("log")
        _integer_steps(ax)
        ax.set_title(f"{r['label']} (eta_0 = {r['lr']:.3g}" + (f", q = {r['lr_power']:.2g})" if r["lr_power"] else ")"),
                     fontsize=7)
        ax.set_xlabel("step t", fontsize=7)
        ax.legend(fontsize=6)
    for ax in list(axes.flat)[len(top):]:
        ax.set_visible(False)
    fig.suptitle(f"{setting[0]}, {setting[1]}, L = {setting[2]}, M = {wmax}: train loss", fontsize=9)
    return _save(fig, path)


def write_atlas(out_dir, ac: AtlasConfig, rows: Sequence[dict], timings: Optional[dict] = None,
                norms: Sequence[dict] = ()) -> tuple:
    """atlas.csv, atlas.json (config, meta, table, claims), the figures and REPORT.md; returns
    (claims, REPORT.md path)."""
    from pathlib import Path
    from .report import md_table, save_csv, save_json, write_markdown
    from .store import run_meta
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    ok = [r for r in rows if r.get("status", "ok") == "ok"]
    summary = atlas_summary(ok)
    summary["norms"] = list(norms)
    claims = atlas_claims(summary)
    table = table_rows(summary)
    save_csv(table, out / "atlas.csv", list(TABLE_COLUMNS))
    save_json({"config": ac.to_dict(), "meta": run_meta(), "table": table, "claims": [c.to_dict() for c in claims],
               "summary": summary, "timings_s": timings or {}}, out / "atlas.json")
    figs = [p for p in (plot_errors(summary, out / "atlas_errors.png"), plot_spectra(ok, out / "atlas_spectra.png"))
            if p is not None]
    for s in dict.fromkeys((r["dataset"], r["activation"], r["depth"]) for r in ok):
        p = plot_training(ok, out / f"atlas_training_{s[0]}_{s[1]}_L{s[2]}.png", s)
        if p is not None:
            figs.append(p)
    failed = [r for r in rows if r.get("status") == "err"]
    r = ac.resolved()
    cmd = "ntk-ngd atlas" + (" --quick" if r.quick else "")
    sections = [("Setting", f"Widths {list(r.widths)}, seeds {list(r.seeds)}, N = {r.n_train} train / {r.n_test} test, "
                 f"{r.steps} training steps, rho = 0, float64; settings: "
                 + "; ".join(f"{s['dataset']} {s['activation']} L = {s['depth']}" for s in r.settings)
                 + f". Regenerate with `{cmd}` (resumes from its store). {len(ok)} points, {len(failed)} failed."),
                ("Claims", md_table(["result", "claim", "rule", "measured"],
                                    [["PASS" if c.passed else "FAIL", c.id, c.tolerance,
                                      "; ".join(f"{k}: {v}" for k, v in c.measured.items())] for c in claims])),
                ("Overview", "Per setting: the measured class, the isotropy (linear) or radiality (nonlinear) "
                             "error at the largest width, its fitted width exponent b [95% interval over seeds] and "
                             "the error with the analytic kernels (inf).\n\n" + overview(summary)),
                ("Table", "error: ||Theta_G / alpha - I||_2 for linear maps (alpha the method's own constant, "
                          "alpha_hat = tr Theta_G / N C where it has none), sin angle(r_0, Phi(r_0)) for nonlinear "
                          "ones; (inf): analytic kernels; exponent: fitted width exponent of the error (95% t-interval "
                          "over seeds); 1-step: ||r_1|| / ||r_0|| of the lazy-regime prediction and of the network at "
                          "the largest width; max_t e_t: network vs prediction over the run.\n\n" + _md(summary)),
                ("Figures", "\n\n".join(f"![{p.stem}]({p.name})" for p in figs))]
    if failed:
        sections.append(("Failed points", md_table(["method", "options", "width", "seed", "err"],
                                                   [[f.get("method"), f.get("options"), f.get("width"), f.get("seed"),
                                                     f.get("error")] for f in failed])))
    n_pass = sum(c.passed for c in claims)
    path = write_markdown(out / "REPORT.md", f"ntk-ngd isotropy atlas{' (quick)' if r.quick else ''}: "
                                              f"{n_pass}/{len(claims)} claims pass", sections)
    return claims, path


def run_atlas(ac: AtlasConfig, store, out_dir, progress: bool = True) -> tuple:
    """Every point into the resumable ``store`` (``run_sweep``), then ``write_atlas``."""
    import time
    from .report import store_rows
    from .store import config_key
    from .sweep import run_sweep
    t0 = time.perf_counter()
    run_sweep(atlas_point, ac.points(), store, progress=progress)
    keys = {config_key(p) for p in ac.points()}
    rows = [r for r in store_rows(store) if r["key"] in keys]
    norms = norm_dependence(ac)
    return write_atlas(out_dir, ac, rows, {"atlas": time.perf_counter() - t0}, norms)
