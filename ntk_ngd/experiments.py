"""Shared experiment logic: one function per study, each returning plain numbers (THEORY section 6).

The unit of work is :func:`compare`: build a dataset and a network from a typed
:class:`RunConfig`, train it with one method for ``steps`` steps, and compare the measured
trajectories with the linearized predictors of THEORY section 3 built (a) from the empirical
kernels at initialization (the difference is the linearization error alone) and (b) from the
analytic infinite-width kernels (adds the finite-width kernel error). It returns a JSON-able
dict; :func:`sweep_point` is the same for a plain config dict (what a sweep stores).

Studies (the ``experiments/`` scripts and ``ntk-ngd reproduce`` are thin wrappers):
  * :func:`training_dynamics`  (a) every method vs its predictions, per step
  * :func:`fit_power_law`, :func:`width_summary`  (b) errors vs width, fitted exponents with CIs
  * :func:`damping_summary`  (c, d) errors vs damping and width (heat map)
  * :func:`test_predictions`  (e) converged test outputs relative to exact NGD's
  * :func:`kfac_learning_rate`  (f) eta = 1/((L-1)N+1) vs the paper code's 1/(N L)
  * ``claim_*``: the paper's claims as PASS/FAIL checks with numbers and tolerances.
Nothing here branches on a method's name except where a study is *about* a method.
"""
from __future__ import annotations

import contextlib
import dataclasses
import functools
import math
import time
import warnings
from dataclasses import asdict, dataclass
from typing import Any, Optional, Sequence, Union

from . import runtime

guard_cpu_thread_pool = runtime.guard_cpu_thread_pool  # kept for user scripts (import ntk_ngd applies it)

import numpy as np

DATASETS = ("digits", "synthetic", "mnist", "cifar10", "npz", "csv")
FILE_DATASETS = ("mnist", "cifar10", "npz", "csv")  # read data_path
DTYPES = ("float64", "float32")
DAMPING_SCALES = ("absolute", "per_width")


# ----------------------------------------------------------------------------- configuration
@dataclass(frozen=True)
class RunConfig:
    """One network trained with one method and compared with its predictors.

    Data: ``dataset`` (digits | synthetic | mnist | cifar10 | npz | csv; all but the first two read
    the local file(s) ``data_path``; npz / csv: a user's own data, see ``ntk_ngd.data.load_arrays``),
    two ``classes`` give +-0.5 scalar targets, ``n_train``/``n_test`` samples drawn with
    ``data_seed``; ``dim`` is the synthetic input dimension; ``forster`` fits the Forster map on
    the training inputs (implies dropping constant features unless ``drop_constant`` is given);
    ``pca_dim`` optionally projects inputs first.
    Network: ``widths`` (M_0 .. M_L, overrides ``depth``/``width``; M_0 and C must fit the data) or
    L = ``depth`` layers with hidden width ``width``; ``activation``, ``sigma_w``, ``sigma_b``.
    Training: ``method`` (any registered method), ``options`` (that method's options, validated
    against its typed fields, e.g. ``{"damping_mode": "factored"}`` for K-FAC), ``lr`` (a number,
    "optimal" = 1/alpha or 1/lambda_max, "paper"), ``damping`` rho (``damping_scale="per_width"``
    means rho = damping / max hidden width), ``force`` (skip a method's stated conditions),
    ``steps``, ``seed`` (network initialization). ``analytic`` adds the infinite-width predictor.
    """
    dataset: str = "digits"
    data_path: Optional[str] = None
    classes: tuple = (0, 1)
    n_train: int = 32
    n_test: int = 64
    data_seed: int = 0
    dim: int = 64
    forster: bool = False
    drop_constant: Optional[bool] = None
    pca_dim: Optional[int] = None
    depth: int = 3
    width: int = 1024
    widths: Optional[tuple] = None
    activation: str = "relu"
    sigma_w: float = 2 ** 0.5
    sigma_b: float = 0.0
    method: str = "exact"
    options: dict = dataclasses.field(default_factory=dict)
    lr: Union[str, float] = "optimal"
    damping: float = 0.0
    damping_scale: str = "absolute"
    force: bool = False
    steps: int = 5
    seed: int = 0
    analytic: bool = True
    dtype: str = "float64"

    def __post_init__(self):
        fix = lambda name, v: object.__setattr__(self, name, v)
        fix("classes", tuple(int(c) for c in self.classes))
        if self.widths is not None:
            fix("widths", tuple(int(w) for w in self.widths))
        if not isinstance(self.options, dict):
            raise ValueError(f"options must be a dict of the method's options, got {self.options!r}")
        fix("options", dict(self.options))
        method_object(self)  # unknown methods and unknown or ill-typed options fail here
        if self.dataset not in DATASETS:
            raise ValueError(f"unknown dataset {self.dataset!r}; choose one of {list(DATASETS)}")
        if self.dataset in FILE_DATASETS and not self.data_path:
            raise ValueError(f"dataset {self.dataset!r} reads local files: give data_path (--data-path); "
                             "nothing is downloaded")
        if self.dtype not in DTYPES:
            raise ValueError(f"dtype must be one of {DTYPES}, got {self.dtype!r}")
        if self.damping_scale not in DAMPING_SCALES:
            raise ValueError(f"damping_scale must be one of {DAMPING_SCALES}, got {self.damping_scale!r}")
        if isinstance(self.lr, str):
            if self.lr not in ("optimal", "paper"):
                fix("lr", float(self.lr))  # "0.1" from a command line or a stored config
        if not isinstance(self.lr, str) and not (float(self.lr) > 0 and math.isfinite(float(self.lr))):
            raise ValueError(f"lr must be a finite positive number, 'optimal' or 'paper', got {self.lr!r}")
        from . import checks
        for name, low in (("steps", 0), ("n_train", 1), ("n_test", 1), ("depth", 1), ("width", 1), ("dim", 1),
                          ("seed", 0), ("data_seed", 0)):
            fix(name, checks.count(getattr(self, name), name, low))
        if self.pca_dim is not None:
            fix("pca_dim", checks.count(self.pca_dim, "pca_dim"))
        fix("sigma_w", checks.real(self.sigma_w, "sigma_w", 0.0, strict=True))
        fix("sigma_b", checks.real(self.sigma_b, "sigma_b", 0.0))
        if not (float(self.damping) >= 0 and math.isfinite(float(self.damping))):
            raise ValueError(f"damping must be a finite number >= 0, got {self.damping}")

    @classmethod
    def from_dict(cls, d: dict) -> "RunConfig":
        """From a stored config; a legacy top-level ``damping_mode`` moves into ``options``."""
        d = dict(d)
        if "damping_mode" in d:
            mode = d.pop("damping_mode")
            from .curvature import method_class
            if "damping_mode" in method_class(d.get("method", "exact")).options():
                d["options"] = {"damping_mode": mode, **d.get("options", {})}
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = set(d) - names
        if unknown:
            raise ValueError(f"unknown RunConfig fields {sorted(unknown)}")
        return cls(**d)

    def to_dict(self) -> dict:
        d = asdict(self)
        d["classes"] = list(self.classes)
        d["options"] = dict(self.options)
        d["widths"] = None if self.widths is None else list(self.widths)
        return d

    def replace(self, **kw) -> "RunConfig":
        return dataclasses.replace(self, **kw)

    @property
    def rho(self) -> float:
        """The damping actually used: damping, or damping / max hidden width."""
        if self.damping_scale == "absolute":
            return float(self.damping)
        hidden = (self.widths[1:-1] if self.widths is not None else (self.width,) * (self.depth - 1)) or (1,)
        return float(self.damping) / max(hidden)


@contextlib.contextmanager
def precision(dtype: str):
    """Run with jax_enable_x64 set for ``dtype`` ("float64" | "float32"), restoring it after."""
    import jax
    old = bool(jax.config.read("jax_enable_x64"))
    jax.config.update("jax_enable_x64", dtype == "float64")
    try:
        yield
    finally:
        jax.config.update("jax_enable_x64", old)


# ----------------------------------------------------------------------------- building blocks
@functools.lru_cache(maxsize=16)
def _dataset(dataset, data_path, classes, n_train, n_test, data_seed, dim, forster, drop_constant, pca_dim):
    from .data import make_dataset
    if dataset == "synthetic":
        return make_dataset("synthetic", n_train=n_train, n_test=n_test, dim=dim, seed=data_seed, forster=forster)
    kw = dict(classes=classes, n_train=n_train, n_test=n_test, seed=data_seed, forster=forster,
              drop_constant=drop_constant, pca_dim=pca_dim)
    if dataset in FILE_DATASETS:
        kw["path"] = data_path
    return make_dataset(dataset, **kw)


def load_data(cfg: RunConfig):
    """The Dataset of a config (cached: the same data serve every grid point)."""
    return _dataset(cfg.dataset, cfg.data_path, cfg.classes, cfg.n_train, cfg.n_test, cfg.data_seed, cfg.dim,
                    cfg.forster, cfg.drop_constant, cfg.pca_dim)


def build_model(cfg: RunConfig, data):
    """MLP of the config; M_0 and C taken from the data unless ``widths`` gives them."""
    from .model import MLP
    m0, c = data.x_train.shape[1], data.y_train.shape[1]
    widths = cfg.widths or (m0,) + (cfg.width,) * (cfg.depth - 1) + (c,)
    if widths[0] != m0 or widths[-1] != c:
        raise ValueError(f"widths {widths} do not fit the data (M_0 = {m0}, C = {c})")
    return MLP(widths, cfg.activation, cfg.sigma_w, cfg.sigma_b)


def method_options(cfg: RunConfig) -> dict:
    """The method options of cfg: ``options``, plus ``forster`` (a data flag that K-FAC's conditions
    read) where the method has that option, plus ``force`` when set."""
    from .curvature import method_class
    fields = method_class(cfg.method).options()
    out = dict(cfg.options)
    if "forster" in fields and cfg.forster:
        out.setdefault("forster", True)
    if cfg.force:
        out["force"] = True
    return out


def method_object(cfg: RunConfig):
    """The method object of cfg (strings are parsed here, once)."""
    from .curvature import get_method
    return get_method(cfg.method, **method_options(cfg))


def paper_methods() -> tuple:
    """The registered methods of the paper's comparison (declared ``paper``), in registry order."""
    from .curvature import METHODS
    return tuple(n for n, c in METHODS.items() if c.paper)


def isotropic_methods(kind: str = "finite") -> tuple:
    """Paper methods whose theory claims isotropy: "finite" (exact at any width under their
    conditions) or "wide" (only as M grows)."""
    from .curvature import METHODS
    return tuple(n for n in paper_methods() if METHODS[n].isotropy == kind)


def _f(x) -> Optional[float]:
    return None if x is None else float(x)


@dataclass
class Comparison:
    """Everything :func:`compare` measured, with arrays (numpy); ``summary()`` makes it JSON-able."""
    cfg: RunConfig
    model: Any
    data: Any
    lr: float
    rho: float
    alpha: Optional[float]
    alpha_paper: Optional[float]
    nn: Any                 # TrainResult
    pred: dict              # "empirical" | "analytic" -> Prediction (or None)
    limit: dict             # "empirical" | "analytic" -> (train, test) limits (or None)
    theta_g: np.ndarray     # empirical Theta_G (N C, N C)
    drift: float
    notes: dict
    seconds: float

    def summary(self) -> dict:
        return summarize(self)


def _predictor(method, src, rho, f0, f0t, y, lr, steps):
    """(Theta_G, Prediction, limit) for one kernel source."""
    from .dynamics import predict, predict_limit, preconditioned_kernel
    tg, cross = preconditioned_kernel(method, src, rho)
    p = predict(tg, cross, f0, None if cross is None else f0t, y, lr, steps)
    lim = predict_limit(tg, cross, f0, None if cross is None else f0t, y)
    return tg, p, lim


def run_comparison(cfg: RunConfig) -> Comparison:
    """Train the network of ``cfg`` and build its empirical and analytic predictors."""
    import jax
    import jax.numpy as jnp
    from .dynamics import analytic_source, empirical_source, isotropy_constant, kernel_drift
    from .layers import empirical_layerwise_ntk, layer_kernels
    from .memory import check_fits
    from .train import train

    t0 = time.perf_counter()
    data = load_data(cfg)
    model = build_model(cfg, data)
    method = method_object(cfg)
    check_fits(method, model.widths, data.x_train.shape[0], data.x_test.shape[0], cfg.dtype)
    rho = cfg.rho
    params = model.init(jax.random.PRNGKey(cfg.seed))
    nn = train(model, params, data, method, cfg.lr, cfg.steps, rho)
    x, xt = jnp.asarray(data.x_train), jnp.asarray(data.x_test)
    y = jnp.asarray(data.y_train, nn.f_train.dtype)
    f0, f0t = nn.f_train[0], nn.f_test[0]
    pred, limit, notes = {}, {}, {}
    src = empirical_source(model, params, x, xt)
    tg, pred["empirical"], limit["empirical"] = _predictor(method, src, rho, f0, f0t, y, nn.lr, cfg.steps)
    pred["analytic"] = limit["analytic"] = None
    if cfg.analytic:
        try:
            asrc = analytic_source(model, x, xt)
            _, pred["analytic"], limit["analytic"] = _predictor(method, asrc, rho, f0, f0t, y, nn.lr, cfg.steps)
        except (ValueError, NotImplementedError, ImportError) as e:  # e.g. diagonal: no analytic operator
            notes["analytic"] = f"{type(e).__name__}: {e}"
    alpha = isotropy_constant(method, model, x.shape[0])
    alpha_paper = isotropy_constant(method, model, x.shape[0], convention="paper")
    theta0 = jnp.sum(layer_kernels(src.train), 0)
    theta_t = jnp.sum(empirical_layerwise_ntk(model, nn.params, x), 0)
    drift = kernel_drift(theta_t, theta0)
    return Comparison(cfg, model, data, float(nn.lr), rho, alpha, alpha_paper, nn, pred, limit, np.asarray(tg),
                      drift, notes, time.perf_counter() - t0)


def _losses(f, y) -> list:
    """The MSE per step of a (T+1, N, C) trajectory (``dynamics.loss_curve``)."""
    from .dynamics import loss_curve
    return [float(v) for v in np.asarray(loss_curve(f, y))]


def _errors(f_nn, f_pred, f0, y) -> Optional[list]:
    """e_t = ||f_t^NN - f_t^pred|| / ||f_0(X) - y|| per step (``dynamics.trajectory_error``)."""
    from .dynamics import trajectory_error
    return None if f_pred is None else [float(v) for v in np.asarray(trajectory_error(f_nn, f_pred, f0, y))]


def _max(v):
    return None if v is None else float(np.max(v))


def summarize(c: Comparison) -> dict:
    """JSON-able numbers of a comparison (per-step lists and scalar diagnostics)."""
    from .dynamics import isotropy_error, one_step_ratio, spectrum
    y, yt = np.asarray(c.data.y_train), np.asarray(c.data.y_test)
    f_nn, ft_nn = np.asarray(c.nn.f_train), np.asarray(c.nn.f_test)
    r0 = f_nn[0] - y
    out = {"n_train": int(y.shape[0]), "n_test": int(yt.shape[0]), "widths": list(c.model.widths),
           "n_params": int(c.model.n_params), "lr": c.lr, "rho": c.rho, "alpha": _f(c.alpha),
           "alpha_paper": _f(c.alpha_paper), "steps": list(range(f_nn.shape[0]))}
    out["loss_train"] = {"nn": _losses(f_nn, y)}
    out["loss_test"] = {"nn": _losses(ft_nn, yt)}
    out["err_train"], out["err_test"] = {}, {}
    for kind in ("empirical", "analytic"):
        p = c.pred.get(kind)
        out["loss_train"][kind] = None if p is None else _losses(p.train, y)
        out["loss_test"][kind] = None if p is None or p.test is None else _losses(p.test, yt)
        out["err_train"][kind] = None if p is None else _errors(f_nn, p.train, f_nn[0], y)
        out["err_test"][kind] = None if p is None or p.test is None else _errors(ft_nn, p.test, f_nn[0], y)
    # the isotropic theory itself (rho -> 0, infinite width): f_t - y = (1 - eta alpha)^t (f_0 - y)
    ideal = None
    if c.alpha is not None:
        t = np.arange(f_nn.shape[0], dtype=float)[:, None, None]
        ideal = y[None] + (1.0 - c.lr * c.alpha) ** t * r0[None]
    out["err_train"]["ideal"] = _errors(f_nn, ideal, f_nn[0], y)
    e = out["err_train"]
    out["err_emp_max"], out["err_an_max"] = _max(e["empirical"]), _max(e["analytic"])
    out["err_ideal_max"] = _max(e["ideal"])
    out["err_emp_1"] = None if len(e["empirical"]) < 2 else e["empirical"][1]
    out["err_emp_test_max"], out["err_an_test_max"] = _max(out["err_test"]["empirical"]), _max(
        out["err_test"]["analytic"])
    w = np.asarray(spectrum(c.theta_g))
    out["spec_min"], out["spec_max"] = float(w[0]), float(w[-1])
    out["iso_err"] = None if c.alpha is None else isotropy_error(c.theta_g, c.alpha)
    pe = c.pred["empirical"]
    if f_nn.shape[0] > 1:
        out["ratio_nn"] = one_step_ratio(f_nn[1], f_nn[0], y)
        out["ratio_pred"] = one_step_ratio(pe.train[1], f_nn[0], y)
        out["loss_ratio_nn"] = out["loss_train"]["nn"][1] / out["loss_train"]["nn"][0]
    else:
        out["ratio_nn"] = out["ratio_pred"] = out["loss_ratio_nn"] = None
    out["ratio_theory"] = None if c.alpha is None else abs(1.0 - c.lr * c.alpha)
    out["drift"] = c.drift
    out["loss_train_final"] = out["loss_train"]["nn"][-1]
    out["loss_test_final"] = out["loss_test"]["nn"][-1]
    out["notes"] = dict(c.notes)
    out["seconds"] = c.seconds
    return out


def compare(cfg: RunConfig) -> dict:
    """Train ``cfg``'s network and compare with its predictors: the JSON-able summary."""
    return run_comparison(cfg).summary()


def sweep_point(config: dict) -> dict:
    """Point function of sweeps: ``compare`` of ``RunConfig.from_dict(config)`` in its dtype.

    Drops the per-step test-loss predictions to keep records small (errors per step stay)."""
    from .plugins import load_plugins
    load_plugins()  # a user's methods in a sweep worker process ($NTK_NGD_PLUGINS)
    cfg = RunConfig.from_dict(config)
    with precision(cfg.dtype), warnings.catch_warnings():
        warnings.simplefilter("ignore")  # e.g. unit_wise's "rho not << 1/M" on purpose in damping sweeps
        return compare(cfg)


def sweep_points(base: RunConfig, **axes) -> list[dict]:
    """Grid of config dicts: ``base`` with each axis (RunConfig field -> list of values) varied."""
    from .sweep import grid
    names = {f.name for f in dataclasses.fields(RunConfig)}
    bad = set(axes) - names
    if bad:
        raise ValueError(f"unknown sweep axes {sorted(bad)}")
    fixed = {k: v for k, v in base.to_dict().items() if k not in axes}
    return [{**fixed, **p} for p in grid(**{k: list(v) for k, v in axes.items()})]


# ----------------------------------------------------------------------------- (a) dynamics
def training_dynamics(runs: Sequence[tuple[str, RunConfig]], progress=None) -> dict:
    """{label: compare(cfg)} for labelled configs (e.g. every method on the same network)."""
    out = {}
    for label, cfg in runs:
        if progress:
            progress(f"training {label} (width {cfg.width}, {cfg.steps} steps)")
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            out[label] = {**compare(cfg), "config": cfg.to_dict()}
    return out


def method_runs(base: RunConfig, methods: Sequence[str], extra: Sequence[tuple[str, dict]] = ()) -> list:
    """[(label, cfg)]: base with each method, plus labelled variants (label, {field: value})."""
    return [(m, base.replace(method=m)) for m in methods] + [(lab, base.replace(**kw)) for lab, kw in extra]


# ----------------------------------------------------------------------------- (b) width fits
def t_interval(values, level=0.95):
    """(mean, half-width) of the Student-t confidence interval; half-width NaN for one value."""
    from scipy import stats
    v = np.asarray(values, float)
    if v.size < 2:
        return float(v.mean()) if v.size else float("nan"), float("nan")
    half = stats.t.ppf(0.5 + level / 2, v.size - 1) * v.std(ddof=1) / np.sqrt(v.size)
    return float(v.mean()), float(half)


def _slope(x, y):
    A = np.stack([np.log(x), np.ones(len(x))], 1)
    (b, a), *_ = np.linalg.lstsq(A, np.log(y), rcond=None)
    return float(b), float(a)


def fit_power_law(rows: Sequence[dict], metric: str, x: str = "width", seed: str = "seed",
                  level: float = 0.95) -> Optional[dict]:
    """Fit metric = a x^b on log-log axes.

    ``rows`` are flat dicts (one per run). Returns the pooled least-squares exponent and
    prefactor over all runs, the exponent fitted per seed, their mean with a Student-t
    ``level`` interval over seeds (``ci``), and a bootstrap interval over seeds (resampling
    whole seeds, 2000 draws, fixed RNG). Runs with a missing or non-positive metric are left
    out (and counted); None if fewer than two widths remain.
    """
    pts = [(r[x], r[metric], r.get(seed, 0)) for r in rows if r.get(metric) is not None]
    good = [(a, b, s) for a, b, s in pts if np.isfinite(b) and b > 0]
    if len({a for a, _, _ in good}) < 2:
        return None
    xs, ys, ss = (np.array(v) for v in zip(*good))
    slope, inter = _slope(xs, ys)
    per_seed = {}
    for s in np.unique(ss):
        m = ss == s
        if len(np.unique(xs[m])) >= 2:
            per_seed[int(s)] = _slope(xs[m], ys[m])[0]
    mean, half = t_interval(list(per_seed.values()), level)
    boot = [float("nan"), float("nan")]
    seeds = list(per_seed)
    if len(seeds) >= 2:
        rng = np.random.default_rng(0)
        draws = []
        for _ in range(2000):
            pick = rng.choice(seeds, size=len(seeds))
            m = np.concatenate([np.flatnonzero(ss == s) for s in pick])
            if len(np.unique(xs[m])) >= 2:
                draws.append(_slope(xs[m], ys[m])[0])
        boot = [float(np.quantile(draws, (1 - level) / 2)), float(np.quantile(draws, (1 + level) / 2))]
    return {"metric": metric, "exponent": slope, "prefactor": float(np.exp(inter)),
            "exponent_per_seed": per_seed, "exponent_mean": mean, "ci_halfwidth": half,
            "ci": [mean - half, mean + half], "bootstrap_ci": boot, "level": level,
            "n_runs": int(len(good)), "n_dropped": int(len(rows) - len(good)),
            "widths": sorted(int(v) for v in np.unique(xs))}


def _hashable(v):
    return tuple(_hashable(x) for x in v) if isinstance(v, (list, tuple)) else v


def group_rows(rows: Sequence[dict], keys: Sequence[str]) -> dict:
    """{tuple(values of keys): [rows]} in first-seen order (list values compare as tuples)."""
    out: dict = {}
    for r in rows:
        out.setdefault(tuple(_hashable(r.get(k)) for k in keys), []).append(r)
    return out


def config_fields(rows: Sequence[dict]) -> list:
    """The RunConfig columns of flat store rows: every field (``lr_config`` for the configured lr
    where ``store_rows`` moved the resolved eta into ``lr``) and the ``options.*`` columns."""
    moved = any("lr_config" in r for r in rows)
    names = [("lr_config" if f.name == "lr" and moved else f.name) for f in dataclasses.fields(RunConfig)
             if f.name != "options"]
    return names + sorted({k for r in rows for k in r if k.startswith("options.")})


def varying_fields(rows: Sequence[dict], exclude: Sequence[str] = ()) -> list:
    """Config fields whose value differs between ``rows``, except the seed and ``exclude``: the
    fields a summary must group by so that it never pools different settings as seeds."""
    skip = {"seed", *exclude}
    return [f for f in config_fields(rows) if f not in skip and len({_hashable(r.get(f)) for r in rows}) > 1]


def common_fields(rows: Sequence[dict]) -> dict:
    """{config field: value} of the fields every row shares (None-valued ones left out)."""
    keep = [f for f in config_fields(rows) if f != "seed" and len({_hashable(r.get(f)) for r in rows}) == 1]
    return {f: rows[0].get(f) for f in keep if rows and rows[0].get(f) is not None}


def _grouping(rows, by, axes):
    """``by`` as given, or method + every varying config field except the seed and the x ``axes``."""
    if by is not None:
        return tuple(by)
    return ("method",) + tuple(f for f in varying_fields(rows, axes) if f != "method")


def _no_fit_reason(rs, metric) -> str:
    vals = [(r["width"], r.get(metric)) for r in rs]
    good = {w for w, v in vals if v is not None and np.isfinite(v) and v > 0}
    if len({w for w, _ in vals}) < 2:
        return f"one width (M = {vals[0][0]}); a fit needs two or more"
    return f"positive finite values at {len(good)} width(s); a fit needs two or more"


def mean_by(rows, keys, metric):
    """[{**keys, mean, std, n, values}] of ``metric`` over the other axes (e.g. seeds)."""
    out = []
    for k, rs in group_rows(rows, keys).items():
        v = np.array([r[metric] for r in rs if r.get(metric) is not None], float)
        v = v[np.isfinite(v)]
        out.append({**dict(zip(keys, k)), "mean": float(v.mean()) if v.size else None,
                    "std": float(v.std(ddof=1)) if v.size > 1 else None, "n": int(v.size),
                    "values": v.tolist()})
    return out


WIDTH_METRICS = ("err_emp_max", "err_an_max", "err_ideal_max", "ratio_nn", "iso_err", "drift", "err_emp_test_max",
                 "err_an_test_max")
DAMPING_METRICS = ("err_ideal_max", "err_emp_max")


def width_summary(rows: Sequence[dict], metrics: Sequence[str] = WIDTH_METRICS, by: Optional[Sequence[str]] = None) -> dict:
    """Per group: mean +- std over seeds per width, and a power-law fit per metric.

    Groups: ``by``, by default the method and every other config field that varies between the
    rows except the seed and the width (activation, depth, N, dataset, damping, options, ...), so
    runs of different settings are never pooled as seeds; ``group`` holds those fields' values.
    Metrics whose values are all at round-off level (e.g. the isotropy error of exact NGD,
    which is 0 at every width) are reported as such instead of fitted; a metric without a fit
    says why (``no_fit``)."""
    by = _grouping(rows, by, ("width",))
    out = []
    for k, rs in group_rows(rows, by).items():
        group = dict(zip(by, k))
        entry = {"method": rs[0].get("method"), "damping": rs[0].get("damping"),
                 "damping_scale": rs[0].get("damping_scale"), **group, "group": group,
                 "widths": sorted({r["width"] for r in rs}), "metrics": {}}
        for m in metrics:
            vals = [r.get(m) for r in rs if r.get(m) is not None]
            if not vals:
                continue
            means = mean_by(rs, ["width"], m)
            roundoff = max(abs(v) for v in vals) < 1e-10
            fit = None if roundoff else fit_power_law(rs, m)
            entry["metrics"][m] = {"by_width": means, "roundoff": roundoff, "fit": fit,
                                   "no_fit": None if fit or roundoff else _no_fit_reason(rs, m)}
        out.append(entry)
    return {"groups": out, "by": list(by), "common": common_fields(rows)}


# ----------------------------------------------------------------------------- (c, d) damping
def damping_summary(rows: Sequence[dict], metric: str = "err_ideal_max", by: Optional[Sequence[str]] = None) -> dict:
    """Per group: widths x dampings matrix of the mean ``metric`` over seeds (for heat maps and
    error-vs-rho curves), the best damping per width, and whether the curve is U-shaped.

    Groups as in :func:`width_summary` (every varying config field except seed, width and damping).
    The default metric, the distance of the network from the isotropic rho -> 0 theory
    (1 - eta alpha)^t, shows both regimes: damping bias at large rho, growing finite-width
    error at small rho. ``err_emp_max`` (vs the *damped* linearized model) shows the
    linearization error alone, which large damping shrinks (the steps get small)."""
    by = _grouping(rows, by, ("width", "damping"))
    groups = []
    for k, rs in group_rows(rows, by).items():
        widths = sorted({r["width"] for r in rs})
        dampings = sorted({r["damping"] for r in rs})
        if len(dampings) < 3 or all(r.get(metric) is None for r in rs):
            continue  # no damping curve (e.g. a width sweep's extra damped series, or no alpha)
        mat = np.full((len(widths), len(dampings)), np.nan)
        for e in mean_by(rs, ["width", "damping"], metric):
            if e["mean"] is not None:
                mat[widths.index(e["width"]), dampings.index(e["damping"])] = e["mean"]
        best = {}
        for i, w in enumerate(widths):
            row = mat[i]
            if np.any(np.isfinite(row)):
                j = int(np.nanargmin(row))
                best[int(w)] = {"damping": dampings[j], metric: float(row[j]),
                                "u_shaped": bool(0 < j < len(dampings) - 1)}
        group = dict(zip(by, k))
        groups.append({"method": rs[0].get("method"), **group, "group": group, "metric": metric,
                       "widths": widths, "dampings": dampings,
                       "damping_scale": rs[0].get("damping_scale", "absolute"),
                       "matrix": [[None if not np.isfinite(v) else float(v) for v in r] for r in mat],
                       "best": best})
    return {"groups": groups, "by": list(by), "common": common_fields(rows)}


# ----------------------------------------------------------------------------- (e) test outputs
def test_predictions(base: RunConfig, methods: Sequence[str], reference: str = "exact", progress=None) -> dict:
    """How far each method's test outputs are from ``reference`` (exact NGD)'s, relative to how far
    exact NGD moved them: ||f_m(X') - f_ref(X')|| / ||f_ref(X') - f_0(X')||.

    measured: the trained networks after ``steps`` steps; predicted_T: the empirical-kernel
    predictor after ``steps`` steps; limit_empirical / limit_analytic: predict_limit (t -> inf).
    Also each method's own train-loss ratio at T (to tell converged runs from unconverged ones)."""
    comps = {}
    for m in dict.fromkeys([reference, *methods]):
        if progress:
            progress(f"test predictions: {m}")
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            comps[m] = run_comparison(base.replace(method=m))
    ref = comps[reference]
    f0t = np.asarray(ref.nn.f_test[0])

    def get(c, kind):
        if kind == "measured":
            return np.asarray(c.nn.f_test[-1])
        if kind == "predicted_T":
            p = c.pred["empirical"]
            return None if p.test is None else np.asarray(p.test[-1])
        lim = c.limit.get(kind.replace("limit_", ""))
        return None if lim is None or lim[1] is None else np.asarray(lim[1])

    kinds = ("measured", "predicted_T", "limit_empirical", "limit_analytic")
    out = {"reference": reference, "steps": base.steps, "config": base.to_dict(), "methods": {}}
    for m, c in comps.items():
        entry = {}
        for kind in kinds:
            a, b = get(c, kind), get(ref, kind)
            entry[kind] = (None if a is None or b is None or np.linalg.norm(b - f0t) == 0
                           else float(np.linalg.norm(a - b) / np.linalg.norm(b - f0t)))
        lt = np.asarray(c.nn.loss_train)
        entry["train_loss_ratio_T"] = float(lt[-1] / lt[0])
        entry["test_loss_T"] = float(np.asarray(c.nn.loss_test)[-1])
        lim = c.limit["empirical"]
        entry["test_loss_limit_empirical"] = (None if lim[1] is None else
                                              float(0.5 * np.mean(np.sum((np.asarray(lim[1]) - c.data.y_test) ** 2, -1))))
        out["methods"][m] = entry
    return out


# ----------------------------------------------------------------------------- (f) K-FAC eta
def kfac_learning_rate(base: RunConfig, progress=None) -> dict:
    """K-FAC at eta = 1/alpha (alpha = (L-1)N+1, or M_0+(L-2)N+1 with Forster) and at the paper
    code's eta = 1/(N L): measured train loss per step, the empirical-kernel prediction, and the
    scalar theory curves L_0 (1 - eta alpha)^(2t) for alpha = theory and alpha = N L.

    ``follows`` says which alpha the measured trajectory follows: the one whose per-step residual
    factor |1 - eta alpha| is closer to the measured mean factor rate_nn = (L_T / L_0)^(1/(2T))."""
    out = {"config": base.replace(method="kfac").to_dict(), "runs": {}}
    for label, lr in (("theory", "optimal"), ("paper", "paper")):
        if progress:
            progress(f"K-FAC with eta from the {label} constant")
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            s = compare(base.replace(method="kfac", lr=lr))
        L0, eta, T = s["loss_train"]["nn"][0], s["lr"], len(s["steps"]) - 1
        factors = {"theory": abs(1 - eta * s["alpha"]), "paper": abs(1 - eta * s["alpha_paper"])}
        curves = {k: [L0 * f ** (2 * t) for t in s["steps"]] for k, f in factors.items()}
        rate = (s["loss_train"]["nn"][-1] / L0) ** (1 / (2 * T)) if T else None
        dist = {k: None if rate is None else abs(rate - f) for k, f in factors.items()}
        out["runs"][label] = {"lr": eta, "alpha": s["alpha"], "alpha_paper": s["alpha_paper"],
                              "eta_alpha": eta * s["alpha"], "ratio_nn": s["ratio_nn"], "rate_nn": rate,
                              "ratio_theory_alpha": factors["theory"], "ratio_paper_alpha": factors["paper"],
                              "loss_nn": s["loss_train"]["nn"], "loss_empirical": s["loss_train"]["empirical"],
                              "curve_theory": curves["theory"], "curve_paper": curves["paper"],
                              "rate_distance": dist, "follows": None if rate is None else min(dist, key=dist.get)}
    return out


# ----------------------------------------------------------------------------- claims
@dataclass
class Claim:
    """A paper claim checked by measurement: PASS iff ``passed``."""
    id: str
    statement: str
    tolerance: str
    measured: dict
    passed: bool

    def line(self) -> str:
        nums = ", ".join(f"{k}={fmt_value(v)}" for k, v in self.measured.items())
        return f"[{'PASS' if self.passed else 'FAIL'}] {self.id}: {self.statement} ({self.tolerance}) -- {nums}"

    def to_dict(self) -> dict:
        return asdict(self)


def fmt_value(v, kv_sep: str = ": ") -> str:
    """Compact text of a measured value: floats to 3 significant digits, lists and dicts recursively."""
    if isinstance(v, (list, tuple)):
        return "[" + ", ".join(fmt_value(x, kv_sep) for x in v) + "]"
    if isinstance(v, float):
        return f"{v:.3g}"
    if isinstance(v, dict):
        return "{" + ", ".join(f"{k}{kv_sep}{fmt_value(x, kv_sep)}" for k, x in v.items()) + "}"
    return str(v)


def claim_one_step(dyn: dict, labels: Sequence[str], tol: float = 0.1) -> Claim:
    """Isotropic methods at eta = 1/alpha: L_1 / L_0 <= tol (theory: (1 - eta alpha)^2 = 0)."""
    ratios = {k: dyn[k]["loss_ratio_nn"] for k in labels}
    ok = all(r is not None and r <= tol for r in ratios.values())
    return Claim("one_step", "isotropic methods at eta = 1/alpha reduce the train loss in one step",
                 f"L_1/L_0 <= {tol} for each; theory (1 - eta alpha)^2 = 0", ratios, ok)


def claim_coincide(dyn: dict, labels: Sequence[str], reference: str = "exact", tol: float = 0.1) -> Claim:
    """Train curves coincide: max_t |L_m(t) - L_ref(t)| / L_0 <= tol."""
    ref = np.asarray(dyn[reference]["loss_train"]["nn"])
    dev = {k: float(np.max(np.abs(np.asarray(dyn[k]["loss_train"]["nn"]) - ref)) / ref[0]) for k in labels}
    return Claim("curves_coincide", f"train-loss curves of {', '.join(labels)} coincide with {reference}'s",
                 f"max_t |L_m(t) - L_{reference}(t)| / L_0 <= {tol}", dev, all(v <= tol for v in dev.values()))


def claim_not_one_step(dyn: dict, labels: Sequence[str], tol: float = 0.1) -> Claim:
    """Non-isotropic methods (diagonal, GD) at their optimal eta do not converge in one step."""
    ratios = {k: dyn[k]["loss_ratio_nn"] for k in labels}
    return Claim("not_one_step", f"{', '.join(labels)} do not converge in one step",
                 f"L_1/L_0 > {tol}", ratios, all(r is not None and r > tol for r in ratios.values()))


def claim_follows_linearization(dyn: dict, labels: Sequence[str], tol: float = 0.1) -> Claim:
    """The trained network follows the empirical-kernel linearized trajectory: max_t e_t <= tol."""
    errs = {k: dyn[k]["err_emp_max"] for k in labels}
    return Claim("follows_linearization", "trained networks follow their linearized (empirical-kernel) trajectories",
                 f"max_t ||f_t^NN - f_t^lin|| / ||f_0 - y|| <= {tol}", errs, all(v <= tol for v in errs.values()))


def claim_isotropy(dyn: dict, labels: Sequence[str], tol: float = 0.1) -> Claim:
    """The empirical Theta_G is close to alpha I: ||Theta_G / alpha - I||_2 <= tol."""
    iso = {k: dyn[k]["iso_err"] for k in labels}
    return Claim("isotropy", "empirical Theta_G ~ alpha I for the isotropic methods",
                 f"||Theta_G/alpha - I||_2 <= {tol}", iso, all(v is not None and v <= tol for v in iso.values()))


def claim_forster(with_f: dict, without_f: dict, tol: float = 0.1) -> Claim:
    """K-FAC with N > M_0: Forster inputs restore isotropy (and one-step convergence); raw inputs do not."""
    m = {"iso_err_forster": with_f["iso_err"], "iso_err_raw": without_f["iso_err"],
         "L1/L0_forster": with_f["loss_ratio_nn"], "L1/L0_raw": without_f["loss_ratio_nn"]}
    ok = with_f["iso_err"] <= tol < without_f["iso_err"]
    return Claim("kfac_forster", "K-FAC with N > M_0 is isotropic with Forster inputs, not without",
                 f"iso_err(Forster) <= {tol} < iso_err(raw)", m, bool(ok))


def claim_kfac_lr(kf: dict) -> Claim:
    """The measured K-FAC trajectory at the paper's eta = 1/(N L) follows alpha = (L-1)N+1."""
    p = kf["runs"]["paper"]
    m = {"eta_paper": p["lr"], "rate_nn": p["rate_nn"], "|1-eta*alpha_theory|": p["ratio_theory_alpha"],
         "|1-eta*N*L|": p["ratio_paper_alpha"], "follows": p["follows"]}
    return Claim("kfac_lr_constant", "K-FAC's measured trajectory at eta = 1/(NL) follows alpha = (L-1)N+1",
                 "mean per-step factor (L_T/L_0)^(1/2T) closer to |1 - eta alpha| of that alpha", m,
                 p["follows"] == "theory")


def claim_test_differ(tp: dict, labels: Sequence[str], tol: float = 0.5) -> Claim:
    """Test predictions differ from exact NGD's though training coincides, and the kernel limit
    predicts by how much: |measured - limit_empirical| <= tol * limit_empirical for each method."""
    m, ok = {}, True
    for k in labels:
        e = tp["methods"][k]
        m[k] = {"measured": e["measured"], "limit": e["limit_empirical"]}
        if e["measured"] is None or e["limit_empirical"] is None:
            ok = False
        else:
            ok &= abs(e["measured"] - e["limit_empirical"]) <= tol * e["limit_empirical"] and e["limit_empirical"] > 0
    return Claim("test_predictions", "methods' converged test outputs differ from exact NGD's as predicted",
                 f"|measured - predicted limit| <= {tol} x predicted (distance to exact NGD's test outputs)", m,
                 bool(ok))


def claim_exponent(ws: dict, method: str, metric: str = "err_emp_max", target: float = -0.5,
                   tol: float = 0.15, bound: bool = False) -> Claim:
    """The width exponent of ``metric`` for ``method`` is within ``tol`` of ``target`` or, with
    ``bound``, at most ``target + tol`` (an O(M^target) upper bound: the error falls at least that fast)."""
    fit = None
    for g in ws["groups"]:
        if g["method"] == method and metric in g["metrics"]:
            fit = g["metrics"][metric]["fit"]
    m = {"exponent": None if fit is None else fit["exponent"], "ci": None if fit is None else fit["ci"],
         "widths": None if fit is None else f"{fit['widths'][0]}..{fit['widths'][-1]}"}
    if bound:
        ok = fit is not None and fit["exponent"] <= target + tol
        return Claim(f"width_bound_{method}_{metric}", f"{method}: {metric} falls at least like M^({target})",
                     f"fitted exponent <= {target} + {tol}", m, bool(ok))
    ok = fit is not None and abs(fit["exponent"] - target) <= tol
    return Claim(f"width_exponent_{method}_{metric}", f"{method}: {metric} falls like M^({target})",
                 f"|fitted exponent - ({target})| <= {tol}", m, bool(ok))


def claim_damping_tradeoff(ds: dict, method: str) -> Claim:
    """At fixed width the distance from the isotropic theory is smallest at an intermediate
    damping: large rho biases the step (damping bias), rho -> 0 raises the finite-width error."""
    g = next((g for g in ds["groups"] if g.get("method") == method), None)
    best = {} if g is None else {w: b["damping"] for w, b in g["best"].items()}
    ok = bool(g) and all(b["u_shaped"] for b in g["best"].values())
    return Claim(f"damping_tradeoff_{method}", f"{method}: the error vs rho has an interior minimum at every width",
                 "best damping strictly inside the grid (neither rho = 0 nor the largest)", {"best_damping": best}, ok)


# ----------------------------------------------------------------------------- reproduction plan
PAPER = dict(n_train=100, n_test=50, width=4096, depth=3, activation="relu", sigma_w=2 ** 0.5, sigma_b=0.0,
             damping=0.0, lr="optimal", classes=(0, 1))


def _given(value, name: str, default: int) -> int:
    """``value`` (a count >= 1) where given, else ``default``: 0 is refused, never replaced."""
    from . import checks
    return default if value is None else checks.count(value, name)


@dataclass(frozen=True)
class ReproduceConfig:
    """What ``ntk-ngd reproduce`` runs. None fields take the defaults of ``quick`` / the dataset:
    digits: N = 32 train, 64 test (the standardized digits 0/1 have rank 50 at N = 64, so N <= 50
    keeps M_0 >= rank N); mnist/cifar10: the paper's N = 100, N' = 50. Width 1024 (quick) or 4096.
    ``unit_wise_damping`` is rho x M of the damped unit-wise variant run beside the paper's rho = 0.
    ``forster_n_train`` > 64 digits samples make N > M_0 for the Forster entry."""
    dataset: str = "digits"
    data_path: Optional[str] = None
    quick: bool = False
    n_train: Optional[int] = None
    n_test: Optional[int] = None
    width: Optional[int] = None
    depth: int = 3
    activation: str = PAPER["activation"]
    sigma_b: float = PAPER["sigma_b"]
    steps: Optional[int] = None
    seed: int = 0
    methods: Optional[tuple] = None
    unit_wise_damping: float = 1e-6
    forster_n_train: int = 96
    sweep_widths: Optional[tuple] = None
    sweep_seeds: Optional[tuple] = None
    sweep_methods: Optional[tuple] = None
    damping_widths: Optional[tuple] = None
    damping_values: Optional[tuple] = None
    damping_methods: Optional[tuple] = None
    dtype: str = "float64"

    def resolved(self) -> "ReproduceConfig":
        q, digits = self.quick, self.dataset == "digits"
        d = dict(
            methods=tuple(self.methods or paper_methods()),
            n_train=_given(self.n_train, "n_train", 32 if digits else PAPER["n_train"]),
            n_test=_given(self.n_test, "n_test", 64 if digits else PAPER["n_test"]),
            width=_given(self.width, "width", 1024 if q else PAPER["width"]),
            steps=_given(self.steps, "steps", 4 if q else 6),
            sweep_widths=tuple(self.sweep_widths or ((256, 512, 1024) if q else tuple(2 ** k for k in range(8, 13)))),
            sweep_seeds=tuple(self.sweep_seeds or ((0, 1) if q else (0, 1, 2))),
            sweep_methods=tuple(self.sweep_methods or (("exact", "kfac") if q else isotropic_methods("finite"))),
            damping_widths=tuple(self.damping_widths or ((256, 1024) if q else (256, 1024, 4096))),
            damping_values=tuple(self.damping_values or ((0.0, 1e-6, 1e-4, 1e-2) if q else
                                                         (0.0, 1e-8, 1e-7, 1e-6, 1e-5, 1e-4, 1e-3, 1e-2, 1e-1))),
            damping_methods=tuple(self.damping_methods or (("unit_wise",) if q else ("unit_wise", "kfac"))))
        return dataclasses.replace(self, **d)

    def base(self) -> RunConfig:
        """The paper's network on this dataset (K-FAC gets Forster inputs iff M_0 < N)."""
        r = self.resolved()
        return RunConfig(dataset=r.dataset, data_path=r.data_path, n_train=r.n_train, n_test=r.n_test,
                         width=r.width, depth=r.depth, steps=r.steps, seed=r.seed, dtype=r.dtype,
                         activation=r.activation, sigma_b=r.sigma_b,
                         **{k: PAPER[k] for k in ("sigma_w", "damping", "lr", "classes")})

    def to_dict(self) -> dict:
        return asdict(self.resolved())


def paper_dynamics(rc: ReproduceConfig, progress=None) -> tuple[dict, list]:
    """Entry 1 (the paper's training-dynamics figure): every method at its optimal eta, rho = 0,
    plus unit-wise at a small damping; claims: one-step convergence, coinciding curves, diagonal
    and GD not one-step, the networks follow their linearizations, Theta_G ~ alpha I."""
    r = rc.resolved()
    base = r.base()
    extra = []
    if "unit_wise" in r.methods:
        extra.append((f"unit_wise (rho={r.unit_wise_damping:g}/M)",
                      {"method": "unit_wise", "damping": r.unit_wise_damping, "damping_scale": "per_width"}))
    dyn = training_dynamics(method_runs(base, r.methods, extra), progress)
    uw = [k for k in dyn if k.startswith("unit_wise (")]
    iso = [m for m in isotropic_methods("finite") if m in dyn]
    claims = [claim_one_step(dyn, iso)]
    if "unit_wise" in dyn:
        c = claim_one_step(dyn, ["unit_wise"])
        c.id, c.statement = "one_step_unit_wise_rho0", "unit-wise NGD at rho = 0 (the paper's setting) converges in one step"
        claims.append(c)
    if uw:
        c = claim_one_step(dyn, uw)
        c.id, c.statement = "one_step_unit_wise_damped", "unit-wise NGD at a small damping rho << 1/M converges in one step"
        claims.append(c)
    if "exact" in dyn:
        claims.append(claim_coincide(dyn, [m for m in iso if m != "exact"] + uw))
    slow = [m for m in ("diagonal", "gd") if m in dyn]
    if slow:
        claims.append(claim_not_one_step(dyn, slow))
    claims.append(claim_follows_linearization(dyn, [k for k in dyn if k != "unit_wise"], tol=0.2))
    claims.append(claim_isotropy(dyn, iso + (["unit_wise"] if "unit_wise" in dyn else [])))  # rho = 0 only
    return dyn, claims


def paper_forster(rc: ReproduceConfig, progress=None) -> tuple[dict, list]:
    """Entry 2: N > M_0 on digits (N = forster_n_train, constant pixels dropped): K-FAC with and
    without the Forster transform, unit-wise without (it needs M_0 >= N)."""
    r = rc.resolved()
    base = RunConfig(dataset="digits", n_train=r.forster_n_train, n_test=r.n_test, width=r.width, depth=r.depth,
                     steps=r.steps, seed=r.seed, dtype=r.dtype, drop_constant=True, activation=r.activation,
                     sigma_b=r.sigma_b)
    runs = [("kfac + Forster", base.replace(method="kfac", forster=True)),
            ("kfac raw", base.replace(method="kfac", force=True)),
            ("unit_wise raw", base.replace(method="unit_wise", force=True, damping=r.unit_wise_damping,
                                           damping_scale="per_width")),
            ("exact raw", base.replace(method="exact"))]
    res = training_dynamics(runs, progress)
    claims = [claim_forster(res["kfac + Forster"], res["kfac raw"])]
    u = res["unit_wise raw"]
    claims.append(Claim("unit_wise_needs_M0_ge_N", "unit-wise NGD is not isotropic when N > M_0",
                        "||Theta_G/alpha - I||_2 > 0.1", {"iso_err": u["iso_err"], "L1/L0": u["loss_ratio_nn"],
                                                          "N": u["n_train"], "M_0": u["widths"][0]},
                        bool(u["iso_err"] > 0.1)))
    return res, claims


def paper_kfac_lr(rc: ReproduceConfig, progress=None) -> tuple[dict, list]:
    """Entry 3: K-FAC's learning-rate constant, 1/((L-1)N+1) vs the paper code's 1/(N L)."""
    base = rc.resolved().base()
    kf = kfac_learning_rate(base, progress)
    return kf, [claim_kfac_lr(kf)]


def paper_test_predictions(rc: ReproduceConfig, progress=None) -> tuple[dict, list]:
    """Entry 4: test outputs of the converged methods vs exact NGD's, measured and predicted."""
    r = rc.resolved()
    base = r.base()
    methods = [m for m in r.methods if m != "unit_wise"]
    tp = test_predictions(base, methods, progress=progress)
    conv = [m for m in ("block_diagonal", "block_tridiagonal", "kfac") if m in tp["methods"]]
    return tp, [claim_test_differ(tp, conv)]


def sweep_grid(rc: ReproduceConfig, kind: str) -> list[dict]:
    """Grid points of the reproduction's width sweep ("width") or damping sweep ("damping")."""
    r = rc.resolved()
    base = r.base().replace(steps=min(r.steps, 4))
    if kind == "width":
        return sweep_points(base, method=list(r.sweep_methods), width=list(r.sweep_widths),
                            seed=list(r.sweep_seeds))
    pts = []
    for m in r.damping_methods:  # unit-wise kernels are O(1/M): its damping is given as rho x M
        scale = "per_width" if m == "unit_wise" else "absolute"
        pts += sweep_points(base.replace(method=m, damping_scale=scale), width=list(r.damping_widths),
                            damping=list(r.damping_values), seed=[r.seed])
    return pts


def sweep_claims(rc: ReproduceConfig, kind: str, rows: Sequence[dict]) -> list:
    """Claims of the reproduction's sweeps from their stored rows: exact NGD's width exponent of the
    analytic predictor's test error (-1/2) and the bound on its train (linearization) error (only
    with >= 4 widths: fewer cannot resolve them), and unit-wise NGD's damping trade-off (its
    bounds carry inverse powers of rho; the other methods' curves are reported, not claimed)."""
    r = rc.resolved()
    ok = [x for x in rows if x.get("status", "ok") == "ok"]
    if kind == "width":
        if "exact" not in r.sweep_methods or len(r.sweep_widths) < 4:
            return []
        ws = width_summary(ok, ["err_emp_max", "err_an_test_max"])
        # against the analytic kernels the finite-width kernel error is Theta(M^-1/2) (central limit
        # theorem over units); the linearization error alone is only bounded by O(M^-1/2): it falls
        # like 1/M for smooth activations and between the two for relu (experiments/README.md)
        return [claim_exponent(ws, "exact", "err_an_test_max"),
                claim_exponent(ws, "exact", "err_emp_max", bound=True)]
    ds = damping_summary(ok, "err_ideal_max")
    return [claim_damping_tradeoff(ds, m) for m in r.damping_methods if m == "unit_wise"]
