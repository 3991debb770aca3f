#!/usr/bin/env python
"""Stress battery of the public API: bad inputs and numerical edge cases, each against a declared outcome.

Every case calls one public entry point (ngd_direction, train, empirical_source, analytic_source,
preconditioned_kernel, residual_map, isotropy_constant, optimal_lr, predict, linearized, iterated,
method_predictor, MLP construction, MLP.init / MLP.apply, get_method, Dataset.from_arrays,
load_arrays) and its outcome is classified into exactly one of

  clear error      an exception whose message contains every keyword the case declares (the offending
                   argument and the problem; "a|b" means either) and that ntk_ngd raised itself (not a
                   raw ZeroDivisionError / KeyError / IndexError / AttributeError, nor an error coming
                   out of jax, numpy or Python internals);
  verified result  a returned result that agrees with an independent dense float64 oracle (the dense
                   Jacobian by jax.jacfwd of MLP.apply on the flat parameters, the method's dense
                   (G + rho I)^+ -- our own SVD forms for gd, exact, block_diagonal and diagonal, the
                   method's ``to_dense`` otherwise --, numpy iterations of the linearized dynamics,
                   closed-form infinite-width kernels, THEORY's isotropy constants);
  silent wrong     a result returned for a bad input, or one that is NaN / inf or disagrees with the oracle;
  unclear error    any other exception.

Cases are generated combinatorially: entry point x bad-input class x method (``ntk_ngd.method_names()``),
plus numerical edge cases (duplicate inputs, zero input rows, rank-deficient inputs and kernels,
tiny and huge dampings, float32 and float64, C = 1 and C = 3, depth 1..4). Cases that belong to
block tri-diagonal numerics and unit-wise NGD at rho = 0 are marked (owner) and listed apart.

    python scripts/stress.py [--quick] [--out results/stress/stress.json] [--filter SUBSTRING] [--list]

Prints counts per class per entry point, every silent-wrong and unclear case with its message,
writes a JSON of all cases; exits 1 if any silent-wrong or unclear case remains.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import math
import os
import pathlib
import re
import sys
import tempfile
import time
import traceback
from typing import Any, Callable, Optional

os.environ.setdefault("JAX_TRACEBACK_FILTERING", "off")  # so that the raising frame is the real one
os.environ.setdefault("NPROC", "8")
ROOT = pathlib.Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))

import warnings  # noqa: E402

import jax  # noqa: E402

jax.config.update("jax_enable_x64", True)
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

import ntk_ngd as nn  # noqa: E402
from ntk_ngd.curvature import METHODS, DenseProblem, get_method  # noqa: E402
import oracle  # noqa: E402  tests/oracle.py: the dense references of the test suite

CLASSES = ("clear error", "verified result", "silent wrong", "unclear error")
RAW_TYPES = (ZeroDivisionError, KeyError, IndexError, AttributeError, NameError, UnboundLocalError,
             AssertionError, RecursionError, NotImplementedError)
PKG = str(ROOT / "ntk_ngd") + os.sep
OWNED = {"btd": "block tri-diagonal numerics (other agent)",
         "uw0": "unit-wise at rho = 0 (other agent)",
         "data": "ntk_ngd/data.py (not in this change)"}


@dataclasses.dataclass
class Case:
    entry: str                   # the public entry point
    kind: str                    # the bad-input / edge-case class
    name: str                    # what exactly
    run: Callable[[], Any]
    keywords: tuple = ()         # an error must contain all of them ("a|b": either)
    verify: Optional[Callable[[Any], float]] = None   # returned result -> relative error vs the oracle
    tol: float = 1e-8
    quick: bool = False
    owner: str = ""


CASES: list = []


class Lazy:
    """A value computed on first use (building the battery computes nothing)."""

    def __init__(self, fn):
        self.fn, self.done, self.value = fn, False, None

    def __call__(self):
        if not self.done:
            self.value, self.done = self.fn(), True
        return self.value


def add(entry, kind, name, run, keywords=(), verify=None, tol=1e-8, quick=False, owner=""):
    CASES.append(Case(entry, kind, name, run, tuple(keywords), verify, tol, quick, owner))


# ============================================================================ classification
def _has(msg: str, kw: str) -> bool:
    for alt in kw.split("|"):
        pat = r"(?<![A-Za-z0-9_])" + re.escape(alt.lower()) + r"(?![A-Za-z_])"  # "complex" in "complex128"
        if re.search(pat, msg.lower()) or (not alt[-1:].isalnum() and alt.lower() in msg.lower()):
            return True
    return False


def raised_by_ntk_ngd(e: BaseException) -> bool:
    tb = traceback.extract_tb(e.__traceback__)
    return bool(tb) and tb[-1].filename.startswith(PKG)


def all_finite(out) -> bool:
    leaves = jax.tree_util.tree_leaves(out)
    for a in leaves:
        if isinstance(a, (np.ndarray, jax.Array, float, np.floating)) and np.asarray(a).dtype.kind in "fc":
            if not np.all(np.isfinite(np.asarray(a))):
                return False
    return True


def run_case(c: Case) -> dict:
    t0 = time.perf_counter()
    msg, outcome, err = "", None, None
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            out = c.run()
        except Exception as e:  # noqa: BLE001
            msg = f"{type(e).__name__}: {e}".splitlines()[0][:400]
            if isinstance(e, RAW_TYPES):
                outcome, why = "unclear error", "raw internal exception type"
            elif not raised_by_ntk_ngd(e):
                f = traceback.extract_tb(e.__traceback__)[-1]
                outcome, why = "unclear error", f"raised outside ntk_ngd ({pathlib.Path(f.filename).name}:{f.lineno})"
            elif not c.keywords:
                outcome, why = "unclear error", "no error expected"
            else:
                missing = [k for k in c.keywords if not _has(msg, k)]
                outcome = "unclear error" if missing else "clear error"
                why = f"message lacks {missing}" if missing else ""
            if why:
                msg = f"{msg}  [{why}]"
        else:
            if c.verify is None:
                outcome, msg = "silent wrong", "a result was returned for a bad input"
            elif not all_finite(out):
                outcome, msg = "silent wrong", "the result contains NaN or inf"
            else:
                try:
                    err = float(c.verify(out))
                except Exception as e:  # noqa: BLE001  (a result the oracle cannot read is not verified)
                    outcome, msg = "silent wrong", f"result not verifiable: {type(e).__name__}: {e}"[:400]
                else:
                    ok = np.isfinite(err) and err <= c.tol
                    outcome = "verified result" if ok else "silent wrong"
                    msg = f"relative error {err:.2e} (tol {c.tol:.0e})"
    return {"entry": c.entry, "kind": c.kind, "name": c.name, "outcome": outcome, "message": msg,
            "error": err, "keywords": list(c.keywords), "owner": c.owner, "quick": c.quick,
            "seconds": round(time.perf_counter() - t0, 3)}


# ============================================================================ problems and oracles
def rel(a, b) -> float:
    a, b = np.asarray(a, np.float64).ravel(), np.asarray(b, np.float64).ravel()
    if a.shape != b.shape:
        raise ValueError(f"shape {a.shape} vs oracle {b.shape}")
    den = np.linalg.norm(b)
    return float(np.linalg.norm(a - b) / (den if den > 1e-300 else 1.0))


def to64(tree):
    return jax.tree_util.tree_map(lambda a: np.asarray(a, np.float64), tree)


def cast(tree, dtype):
    return jax.tree_util.tree_map(lambda a: jnp.asarray(a, dtype), tree)


@dataclasses.dataclass
class Problem:
    label: str
    model: Any
    params_: Any      # the params, or a function that makes them (on first use)
    x: Any
    y: Any
    xt: Any
    dtype: str = "float64"
    _dense: dict = dataclasses.field(default_factory=dict)

    @property
    def params(self):
        if callable(self.params_):
            self.params_ = self.params_()
        return self.params_

    @property
    def n(self):
        return self.x.shape[0]

    @property
    def C(self):
        return self.model.n_outputs

    def dense(self, y=None):
        """(DenseProblem at residual f - y (default: the problem's y), J, J(x')), float64, all by forward-mode AD."""
        key = None if y is None else np.asarray(y, np.float64).tobytes()
        if key not in self._dense:
            p, x, xt = to64(self.params), np.asarray(self.x, np.float64), np.asarray(self.xt, np.float64)
            yy = np.asarray(self.y if y is None else y, np.float64)
            J, g, H, Dm = (to64(a) for a in dense_fn(self.model)(p, x, yy))
            D = DenseProblem(J, g, list(H), list(Dm), tuple(self.model.widths))
            Jx = self._dense[None][2] if None in self._dense else to64(dense_fn(self.model)(p, xt, np.zeros((len(xt), self.C)))[0])
            self._dense[key] = (D, J, Jx)
        return self._dense[key]


_DENSE_FNS: dict = {}


def dense_fn(model):
    """jit of (params, x, y) -> (J (N C, P), g = f - y (N C,), H_l (N, M_{l-1}+1), Dm_l (N C, M_l)): the dense
    Jacobian of MLP.apply on the flat W~ vector by jax.jacfwd, and the per-layer factors of
    ``DenseProblem`` (h~ from a forward pass, delta by jacfwd through perturbations of u_l)."""
    if model not in _DENSE_FNS:
        L, w = model.depth, model.widths

        def fn(params, x, y):
            n = x.shape[0]
            t0 = jnp.concatenate([jnp.concatenate([p["W"], p["b"][:, None]], 1).reshape(-1) for p in params])
            f = lambda t: model.apply(nn.layers.to_params(oracle.unflatten(model, t)), x).reshape(-1)  # noqa: E731
            J = jax.jacfwd(f)(t0)

            def forward(eps):
                h, hs = x, []
                for l, p in enumerate(params):
                    k = p["W"].shape[1]
                    ht = jnp.concatenate([model.sigma_w * h / np.sqrt(k), jnp.full((n, 1), model.sigma_b, x.dtype)], 1)
                    hs.append(ht)
                    u = ht @ jnp.concatenate([p["W"], p["b"][:, None]], 1).T + eps[l]
                    h = model.phi(u) if l < L - 1 else u
                return h, hs

            eps0 = [jnp.zeros((n, m), x.dtype) for m in w[1:]]
            hs = forward(eps0)[1]
            jac = jax.jacfwd(lambda e: forward(e)[0])(eps0)  # [(N, C, N, M_l)]
            idx = jnp.arange(n)
            Dm = [j[idx, :, idx, :].reshape(n * w[-1], -1) for j in jac]
            return J, (model.apply(params, x) - y).reshape(-1), hs, Dm
        _DENSE_FNS[model] = jax.jit(fn)
    return _DENSE_FNS[model]


def make_problem(widths, act="relu", sb=0.0, n=4, seed=0, xkind="random", dtype="float64", n_test=3):
    model = nn.MLP(widths, act, sigma_b=sb)
    params = lambda: model.init(jax.random.PRNGKey(seed))  # noqa: E731
    rng = np.random.default_rng(100 + seed)
    m0, c = widths[0], widths[-1]
    x = rng.standard_normal((n, m0))
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    if xkind == "duplicate":
        x[1] = x[0]
    elif xkind == "zero_row":
        x[1] = 0.0
    elif xkind == "lowrank":  # every input on one line: a rank-1 first-layer kernel
        x = np.outer(np.linspace(0.5, 1.5, n), x[0])
    elif xkind == "scaled":  # input norms spread over 6 orders of magnitude
        x *= np.logspace(-3, 3, n)[:, None]
    y = 0.5 * rng.standard_normal((n, c))
    xt = rng.standard_normal((n_test, m0))
    label = f"L{len(widths) - 1} C{c} N={n} {act} sb={sb:g} {xkind} {dtype}"
    if dtype == "float32":
        params, x, y, xt = (lambda p=params: cast(p(), jnp.float32)), np.float32(x), np.float32(y), np.float32(xt)
    return Problem(label, model, params, jnp.asarray(x), jnp.asarray(y), jnp.asarray(xt), dtype)


_PROBLEMS: dict = {}


def problem(*args, **kw) -> Problem:
    key = repr((args, sorted(kw.items())))
    if key not in _PROBLEMS:
        _PROBLEMS[key] = make_problem(*args, **kw)
    return _PROBLEMS[key]


def _svd_dual(J, n, rho, cut=1e-8):
    """M = (J^T J / N + rho I)^+ J^T / N = V diag(s / (s^2 + N rho)) U^T, singular values below
    ``cut`` * s_max taken as exact zeros (structural rank deficiency)."""
    U, s, Vt = np.linalg.svd(J, full_matrices=False)
    keep = s > cut * (s[0] if s.size else 0.0)
    w = np.where(keep, s / np.where(keep, s ** 2 + n * rho, 1.0), 0.0)
    return (Vt.T * w) @ U.T


def dual_operator(m, D, rho) -> np.ndarray:
    """M (P, N C) with d = M g: the method's (G + rho I)^+ J^T / N, float64."""
    n, J = D.n, D.J
    stats = getattr(m, "statistics", "expected")
    if m.name == "gd":
        return J.T / n
    if m.name == "exact" and stats == "expected":
        return _svd_dual(J, n, rho)
    if m.name == "block_diagonal" and stats == "expected":
        return np.concatenate([_svd_dual(D.layer(l), n, rho) for l in range(D.depth)])
    if m.name == "diagonal":
        diag = np.sum(J ** 2, axis=0) / n
        if rho > 0:
            w = 1.0 / (diag + rho)
        else:
            keep = diag > np.finfo(float).eps * diag.max()
            w = np.where(keep, 1.0 / np.where(keep, diag, 1.0), 0.0)
        return w[:, None] * J.T / n
    if 0 < rho < 1e-100:  # far below every scale: the rho -> 0 limit, the pseudo-inverse
        rho = 0.0
    if m.name == "kfac" and stats == "expected" and m.damping_mode == "tikhonov":
        return np.concatenate([_kfac_layer(D.H[l], D.Dm[l], n, rho) @ D.layer(l).T / n for l in range(D.depth)])
    return m.to_dense(D, rho) @ J.T / n


def _kfac_layer(H, Dm, n, rho, cut=1e-12):
    """(B (x) A + rho I)^{-1} (rho > 0) or B^+ (x) A^+ (rho = 0), A = H^T H / N, B = Dm^T Dm / N, from the
    factors' own eigendecompositions (no Kronecker product is inverted as a whole)."""
    ea, Ua = np.linalg.eigh(H.T @ H / n)
    eb, Ub = np.linalg.eigh(Dm.T @ Dm / n)
    if rho > 0:
        w = 1.0 / (np.outer(eb, ea) + rho)
    else:
        ka, kb = ea > cut * ea.max(), eb > cut * eb.max()
        w = np.where(np.outer(kb, ka), 1.0 / np.where(np.outer(kb, ka), np.outer(eb, ea), 1.0), 0.0)
    U = np.kron(Ub, Ua)
    return (U * w.ravel()) @ U.T


def direction_oracle(prob: Problem, m, rho, y=None):
    D, J, Jx = prob.dense(y)
    return dual_operator(m, D, rho) @ D.g


def tol_for(prob: Problem, base=1e-7):
    return 3e-3 if prob.dtype == "float32" else base


# ---------------------------------------------------------------------------- analytic closed forms
def analytic_oracle(model, x1, x2):
    """Infinite-width layer kernels Theta_l (L, N1, N2) by the closed-form recursions (relu arc-cosine,
    erf arcsine, linear), written with numpy arccos / arcsin independently of ntk_ngd.analytic."""
    sw, sb, act = model.sigma_w, model.sigma_b, model.activation
    x1, x2 = np.asarray(x1, float), np.asarray(x2, float)
    m0 = x1.shape[1]
    S = sw ** 2 * x1 @ x2.T / m0 + sb ** 2
    q1 = sw ** 2 * np.sum(x1 ** 2, 1) / m0 + sb ** 2
    q2 = sw ** 2 * np.sum(x2 ** 2, 1) / m0 + sb ** 2

    def dual(c, a, b):
        if act == "linear":
            return c, np.ones_like(c)
        if act == "relu":
            g = np.sqrt(np.outer(a, b))
            cos = np.clip(np.where(g > 0, c / np.where(g > 0, g, 1), 0.0), -1, 1)
            t = np.arccos(cos)
            return g * (np.sin(t) + (np.pi - t) * cos) / (2 * np.pi), np.where(g > 0, (np.pi - t) / (2 * np.pi), 0.0)
        if act == "erf":
            d = np.outer(1 + 2 * a, 1 + 2 * b)
            return 2 / np.pi * np.arcsin(2 * c / np.sqrt(d)), 4 / np.pi / np.sqrt(d - 4 * c ** 2)
        raise ValueError(act)

    def self_dual(q):
        return {"linear": q, "relu": q / 2, "erf": 2 / np.pi * np.arcsin(2 * q / (1 + 2 * q))}[act]

    sig, adot = [S], []
    for _ in range(model.depth - 1):
        A, Ad = dual(sig[-1], q1, q2)
        adot.append(Ad)
        sig.append(sw ** 2 * A + sb ** 2)
        q1, q2 = sw ** 2 * self_dual(q1) + sb ** 2, sw ** 2 * self_dual(q2) + sb ** 2
    B = [np.ones_like(S)]
    for Ad in reversed(adot):
        B.insert(0, sw ** 2 * Ad * B[0])
    return np.stack([b * s for b, s in zip(B, sig)])


def expand_c(theta, C):
    """(L, N1, N2) -> (L, N1 C, N2 C) with (x) I_C."""
    return np.stack([np.kron(t, np.eye(C)) for t in theta])


# ---------------------------------------------------------------------------- dynamics oracles
def trajectory_oracle(step_train, step_test, f0, f0t, y, lr, steps):
    """Numpy iteration r_{t+1} = r_t - lr Phi(r_t), f_{t+1}(x') = f_t(x') - lr Phi'(r_t) at ``steps``."""
    steps = np.atleast_1d(np.asarray(steps, int))
    r, ft = np.asarray(f0 - y, float).ravel(), None if f0t is None else np.asarray(f0t, float).ravel()
    rows, trows = {}, {}
    for t in range(int(steps.max()) + 1):
        rows[t], trows[t] = r.copy(), None if ft is None else ft.copy()
        if ft is not None:
            ft = ft - lr * step_test(r)
        r = r - lr * step_train(r)
    train = np.stack([rows[t] for t in steps]).reshape(len(steps), *np.shape(f0)) + np.asarray(y, float)
    test = None if f0t is None else np.stack([trows[t] for t in steps]).reshape(len(steps), -1, np.shape(f0)[1])
    return train, test


def pred_err(p, train, test):
    e = rel(p.train, train)
    if test is not None:
        e = max(e, rel(p.test, test))
    return e


# ============================================================================ the battery
ALL = nn.method_names(builtin_only=True)
LINEAR = tuple(n for n in ALL if get_method(n).linear)
STATELESS = tuple(n for n in ALL if not get_method(n).stateful)


def owner_of(method, rho, kind):
    if method == "block_tridiagonal" and kind.startswith("numerics"):
        return OWNED["btd"]
    if method == "unit_wise" and rho == 0 and kind.startswith("numerics"):
        return OWNED["uw0"]
    return ""


BASE = dict(widths=(3, 5, 4, 1))         # the regular tiny network of the bad-input cases
BASE3 = dict(widths=(3, 5, 4, 3), act="erf", sb=0.5)


def base(c3=False):
    return problem(**(BASE3 if c3 else BASE))


def x_bad(x):
    """(kind, bad x, keywords besides the argument name)."""
    x = np.asarray(x)
    nan, inf = x.copy(), x.copy()
    nan[0, 0], inf[-1, -1] = np.nan, np.inf
    return [("complex", x + 1j, ("complex",)),
            ("string", x.astype(str), ("numeric|dtype",)),
            ("object", x.astype(object), ("numeric|dtype",)),
            ("None", None, ("numeric|None|array",)),
            ("NaN", nan, ("NaN",)),
            ("inf", inf, ("inf",)),
            ("1-d", x[0], ("shape|d",)),
            ("3-d", x[None], ("shape|d",)),
            ("wrong M_0", x[:, :-1], ("shape",)),
            ("no rows", x[:0], ("rows|N",)),
            ("ragged", [list(r) for r in x[:-1]] + [list(x[-1][:-1])], ("numeric|array|shape",))]


def x_ok(x):
    """(kind, x of another dtype whose values are exactly those of float x_float, x_float)."""
    x = np.asarray(x)
    pix = np.round(np.abs(x) * 200).astype(np.uint8)
    ints = np.round(x * 3).astype(np.int64)
    bools = x > 0
    return [("uint8 pixels", pix, pix.astype(np.float64)),
            ("int64", ints, ints.astype(np.float64)),
            ("bool", bools, bools.astype(np.float64)),
            ("nested list", x.tolist(), x),
            ("float32", x.astype(np.float32), x.astype(np.float32).astype(np.float64))]


def y_bad(y):
    y = np.asarray(y)
    nan = y.copy()
    nan[0, 0] = np.nan
    return [("wrong N", y[:-1], ("shape",)), ("wrong C", np.concatenate([y, y], 1), ("shape",)),
            ("NaN", nan, ("NaN",)), ("complex", y + 1j, ("complex",)), ("string", y.astype(str), ("numeric|dtype",)),
            ("None", None, ("numeric|None|array",)), ("3-d", y[None], ("shape",))]


def params_bad(prob: Problem):
    p = prob.params
    m = prob.model

    def mod(l, key, fn):
        q = [dict(layer) for layer in p]
        q[l][key] = fn(q[l][key])
        return q

    def setnan(a):
        a = np.array(a)
        a.flat[0] = np.nan
        return jnp.asarray(a)

    other = nn.MLP((m.widths[0], 6) + m.widths[2:], m.activation).init(jax.random.PRNGKey(1))
    return [("NaN", mod(0, "W", setnan), ("params", "NaN")),
            ("inf", mod(m.depth - 1, "b", lambda a: a + jnp.inf), ("params", "inf")),
            ("too few layers", p[:-1], ("params", "layer|layers")),
            ("too many layers", p + p[-1:], ("params", "layer|layers")),
            ("W transposed", mod(1, "W", lambda a: a.T), ("params", "W")),
            ("missing b", [{"W": layer["W"]} for layer in p], ("params", "b")),
            ("extra key", [dict(layer, c=layer["b"]) for layer in p], ("params", "keys|key")),
            ("int dtype", mod(0, "W", lambda a: jnp.asarray(a, jnp.int32)), ("params", "float|floating")),
            ("complex", mod(0, "W", lambda a: a + 0j), ("params", "float|floating|complex")),
            ("float16", cast(p, jnp.float16), ("params", "float16")),
            ("mixed dtypes", mod(0, "W", lambda a: jnp.asarray(a, jnp.float32)), ("params", "dtype|dtypes")),
            ("dict of layers", {str(i): layer for i, layer in enumerate(p)}, ("params", "list")),
            ("None", None, ("params",)),
            ("python lists", [{"W": np.asarray(layer["W"]).tolist(), "b": np.asarray(layer["b"]).tolist()}
                              for layer in p], ("params", "array")),
            ("another model's params", other, ("params", "W|shape"))]


DAMPING_BAD = [("negative", -1e-3, ("damping", ">=")), ("NaN", float("nan"), ("damping", "finite")),
               ("inf", float("inf"), ("damping", "finite")), ("string", "0.1", ("damping", "number")),
               ("None", None, ("damping", "number")), ("complex", 1e-3j, ("damping", "number")),
               ("list", [1e-3], ("damping", "number")), ("bool", True, ("damping", "number")),
               ("array", np.array([1e-3, 1e-2]), ("damping", "number"))]
LR_BAD = [("zero", 0.0, ("lr", ">")), ("negative", -0.1, ("lr", ">")), ("NaN", float("nan"), ("lr", "finite")),
          ("inf", float("inf"), ("lr", "finite")), ("string", "fast", ("lr",)), ("None", None, ("lr", "number")),
          ("complex", 0.1j, ("lr", "number")), ("list", [0.1], ("lr", "number")), ("bool", True, ("lr", "number"))]
STEPS_BAD = [("negative", -1, ("steps", ">=")), ("fractional", 2.5, ("steps", "integer")),
             ("NaN", float("nan"), ("steps", "integer")), ("string", "3", ("steps", "integer")),
             ("None", None, ("steps", "integer")), ("bool", True, ("steps", "integer")),
             ("empty array", [], ("steps",)), ("negative entry", [-1, 2], ("steps",)),
             ("fractional entry", [0.5, 1], ("steps",)), ("2-d", [[1, 2]], ("steps",))]
N_BAD = [("zero", 0, ("n_train", ">=")), ("negative", -1, ("n_train", ">=")), ("fractional", 2.5, ("n_train", "integer")),
         ("string", "4", ("n_train", "integer")), ("None", None, ("n_train", "integer")),
         ("bool", True, ("n_train", "integer")), ("NaN", float("nan"), ("n_train", "integer")),
         ("inf", float("inf"), ("n_train", "integer"))]
METHOD_BAD = [("unknown name", "newton", ("method", "newton")), ("None", None, ("method",)), ("int", 3, ("method",)),
              ("a class", METHODS["kfac"], ("method",)), ("empty string", "", ("method",)),
              ("tuple", ("exact",), ("method",))]
MODEL_BAD = [("None", None, ("model", "MLP")), ("string", "mlp", ("model", "MLP")), ("widths tuple", (3, 5, 1), ("model", "MLP"))]


def bad_options():
    """(method, options, keywords) of invalid options."""
    out = []
    for name in ALL:
        opts = METHODS[name].options()
        out.append((name, {"force": "yes"}, ("force",)))
        out.append((name, {"nonsense": 1}, ("option|options", "nonsense")))
        if "statistics" in opts:
            out += [(name, {"statistics": "guess"}, ("statistics",)), (name, {"samples": 0}, ("samples",)),
                    (name, {"samples": -2}, ("samples",)), (name, {"samples": 2.5}, ("samples",)),
                    (name, {"seed": 1.5}, ("seed",))]
        if "damping_mode" in opts:
            out.append((name, {"damping_mode": "sqrt"}, ("damping_mode",)))
        if "chunk" in opts:
            out += [(name, {"chunk": 0}, ("chunk",)), (name, {"chunk": -1}, ("chunk",)), (name, {"chunk": 2.5}, ("chunk",))]
        if "convention" in opts:
            out.append((name, {"convention": "folklore"}, ("convention",)))
        if "forster" in opts:
            out.append((name, {"forster": "yes"}, ("forster",)))
        if "side" in opts:
            out.append((name, {"side": "middle"}, ("side",)))
        if "hold" in opts:
            out += [(name, {"hold": 0}, ("hold",)), (name, {"hold": -1}, ("hold",))]
        if "exponent" in opts:
            out += [(name, {"exponent": 0.0}, ("exponent",)), (name, {"exponent": float("nan")}, ("exponent",)),
                    (name, {"exponent": 1.0}, ("exponent",)), (name, {"exponent": "half"}, ("exponent",))]
        if "accumulate" in opts:
            out.append((name, {"accumulate": "yes"}, ("accumulate",)))
    return out


# ---------------------------------------------------------------------------- bad inputs
def battery_bad_inputs():
    P, P3 = base(), base(True)
    x, y, xt = np.asarray(P.x), np.asarray(P.y), np.asarray(P.xt)
    model, params = P.model, P.params
    methods_dir = ("gd", "exact", "kfac", "shampoo")
    SRC = Lazy(lambda: nn.empirical_source(model, params, P.x, P.xt))

    # x: every array-level bad class at every entry point that takes inputs
    for kind, bx, kw in x_bad(x):
        q = kind in ("complex", "NaN", "no rows")
        test_ok = kind != "None"  # x_test=None: no test set, a valid call
        for meth in methods_dir:
            add("ngd_direction", f"x: {kind}", meth, lambda bx=bx, meth=meth: nn.ngd_direction(model, params, bx, y, meth, 1e-3),
                ("x",) + kw, quick=q and meth == "exact")
        for meth in ("gd", "exact"):
            add("train", f"x: {kind}", meth, lambda bx=bx, meth=meth: nn.train(model, params, (bx, y), meth, 0.5, 2, 1e-3),
                ("x",) + kw, quick=q and meth == "exact")
        if test_ok:
            add("train", f"x_test: {kind}", "exact", lambda bx=bx: nn.train(model, params, (x, y, bx, y[:3]), "exact", 0.5, 2, 1e-3),
                ("x_test",) + kw)
            add("empirical_source", f"x_test: {kind}", "", lambda bx=bx: nn.empirical_source(model, params, x, bx), ("x_test",) + kw)
            add("analytic_source", f"x_test: {kind}", "", lambda bx=bx: nn.analytic_source(model, x, bx), ("x_test",) + kw)
        add("empirical_source", f"x_train: {kind}", "", lambda bx=bx: nn.empirical_source(model, params, bx), ("x_train",) + kw, quick=q)
        add("analytic_source", f"x_train: {kind}", "", lambda bx=bx: nn.analytic_source(model, bx), ("x_train",) + kw, quick=q)
        add("MLP.apply", f"x: {kind}", "", lambda bx=bx: model.apply(params, bx), ("x",) + kw, quick=q)
        if kind != "wrong M_0":  # any number of features makes a Dataset
            add("Dataset.from_arrays", f"x_train: {kind}", "", lambda bx=bx: nn.Dataset.from_arrays(bx, y),
                {"1-d": ("x_train|y_train", "shape"), "3-d": ("x_train|y_train", "shape")}.get(kind, ("x_train",) + kw),
                owner=OWNED["data"] if kind == "ragged" else "")

    # x of other dtypes with exact float values: the float64 result of the float x, targets exact
    for kind, ox, xf in x_ok(x):
        Pf = Problem(f"base {kind}", model, params, jnp.asarray(xf), P.y, P.xt)
        for meth in ("gd", "exact", "kfac"):
            m = get_method(meth, force=True)
            add("ngd_direction", f"x dtype: {kind}", meth,
                lambda ox=ox, m=m: nn.ngd_direction(model, params, ox, y, m, 1e-3),
                verify=lambda d, Pf=Pf, m=m: rel(oracle.flat_direction(d), direction_oracle(Pf, m, 1e-3)),
                quick=kind == "uint8 pixels")
        add("train", f"x dtype: {kind}", "exact", lambda ox=ox: nn.train(model, params, (ox, y), "exact", 0.5, 2, 1e-3),
            verify=lambda r, Pf=Pf: train_err(r, Pf, "exact", 0.5, 2, 1e-3), quick=kind == "uint8 pixels")
        add("empirical_source", f"x dtype: {kind}", "", lambda ox=ox: nn.empirical_source(model, params, ox),
            verify=lambda s, Pf=Pf: source_err(s, Pf))
        add("analytic_source", f"x dtype: {kind}", "", lambda ox=ox: nn.analytic_source(model, ox),
            verify=lambda s, xf=xf: rel(nn.layer_kernels(s.train), expand_c(analytic_oracle(model, xf, xf), 1)))
        add("MLP.apply", f"x dtype: {kind}", "", lambda ox=ox: model.apply(params, ox),
            verify=lambda f, xf=xf: rel(f, numpy_forward(model, params, xf)), quick=kind == "uint8 pixels")
        add("Dataset.from_arrays", f"x dtype: {kind}", "", lambda ox=ox: nn.Dataset.from_arrays(ox, y),
            verify=lambda d, xf=xf: rel(d.x_train, xf) + rel(d.y_train, y) + (d.x_train.dtype != np.float64))

    # y: bad classes; integer, bool and 1-d targets are exact values
    for kind, by, kw in y_bad(y):
        for meth in ("gd", "exact"):
            add("ngd_direction", f"y: {kind}", meth, lambda by=by, meth=meth: nn.ngd_direction(model, params, x, by, meth, 1e-3),
                ("y",) + kw, quick=meth == "exact" and kind == "wrong N")
        add("train", f"y: {kind}", "exact", lambda by=by: nn.train(model, params, (x, by), "exact", 0.5, 2, 1e-3), ("y",) + kw)
        add("train", f"y_test: {kind}", "exact", lambda by=by: nn.train(model, params, (x, y, x, by), "exact", 0.5, 2, 1e-3),
            ("y_test",) + (kw if kind != "None" else ()))
        add("method_predictor", f"y: {kind}", "exact", lambda by=by: nn.method_predictor("exact", SRC(), by, 0.5)(2, P.y),
            ("y",) + kw)
        add("linearized", f"y: {kind}", "", lambda by=by: nn.linearized(np.eye(4), by, 0.5)(2, y), ("y",) + kw)
        if kind != "wrong C":  # a wider y is a valid Dataset (C = 2): not a bad input there
            add("Dataset.from_arrays", f"y_train: {kind}", "", lambda by=by: nn.Dataset.from_arrays(x, by), ("y_train",) + kw)
    y_ok = [("int targets", np.round(2 * y).astype(np.int64)), ("bool targets", y > 0), ("1-d for C = 1", y[:, 0])]
    for kind, oy in y_ok:
        yf = np.asarray(oy, np.float64).reshape(-1, 1)
        Pf = Problem(f"base {kind}", model, params, P.x, jnp.asarray(yf), P.xt)
        for meth in ("gd", "exact"):
            add("ngd_direction", f"y dtype: {kind}", meth, lambda oy=oy, meth=meth: nn.ngd_direction(model, params, x, oy, meth, 1e-3),
                verify=lambda d, Pf=Pf, meth=meth: rel(oracle.flat_direction(d), direction_oracle(Pf, get_method(meth), 1e-3)))
        add("train", f"y dtype: {kind}", "exact", lambda oy=oy: nn.train(model, params, (x, oy), "exact", 0.5, 2, 1e-3),
            verify=lambda r, Pf=Pf: train_err(r, Pf, "exact", 0.5, 2, 1e-3))
    add("ngd_direction", "y: 1-d for C = 3", "exact", lambda: nn.ngd_direction(P3.model, P3.params, P3.x, P3.y[:, 0], "exact", 1e-3),
        ("y", "shape"))
    # uint8 x and uint8 y together (raw pixels and 0/1 labels): targets stay exact, not x's dtype
    pix = np.round(np.abs(x) * 200).astype(np.uint8)
    lab = (y > 0).astype(np.uint8)
    Pl = Problem("uint8 x, uint8 y", model, params, jnp.asarray(pix, jnp.float64), jnp.asarray(lab, jnp.float64), P.xt)
    add("ngd_direction", "x, y dtype: uint8", "exact", lambda: nn.ngd_direction(model, params, pix, lab, "exact", 1e-3),
        verify=lambda d: rel(oracle.flat_direction(d), direction_oracle(Pl, get_method("exact"), 1e-3)), quick=True)
    add("train", "x, y dtype: uint8", "exact", lambda: nn.train(model, params, (pix, lab - 0.5), "exact", 0.5, 2, 1e-3),
        verify=lambda r: train_err(r, Problem("", model, params, Pl.x, Pl.y - 0.5, P.xt), "exact", 0.5, 2, 1e-3), quick=True)
    # float32 params with float64 data, float64 params with float32 data: the params' dtype is used
    P32 = problem(**BASE, dtype="float32")
    add("ngd_direction", "dtype: float32 params, float64 x", "exact",
        lambda: nn.ngd_direction(P32.model, P32.params, np.asarray(P32.x, np.float64), np.asarray(P32.y, np.float64), "exact", 1e-3),
        verify=lambda d: rel(oracle.flat_direction(d), direction_oracle(P32, get_method("exact"), 1e-3))
        + 1e3 * (d[0]["W"].dtype != jnp.float32), tol=3e-3)

    # params
    for kind, bp, kw in params_bad(P):
        q = kind in ("NaN", "another model's params", "int dtype")
        for meth in ("gd", "exact"):
            add("ngd_direction", f"params: {kind}", meth, lambda bp=bp, meth=meth: nn.ngd_direction(model, bp, x, y, meth, 1e-3),
                kw, quick=q and meth == "exact")
        add("train", f"params: {kind}", "exact", lambda bp=bp: nn.train(model, bp, (x, y), "exact", 0.5, 2, 1e-3), kw)
        add("empirical_source", f"params: {kind}", "", lambda bp=bp: nn.empirical_source(model, bp, x), kw)
        add("MLP.apply", f"params: {kind}", "", lambda bp=bp: model.apply(bp, x), kw, quick=q)
    for kind, gp in [("numpy arrays", to64(params)), ("tuple of layers", tuple(params))]:
        add("ngd_direction", f"params: {kind}", "exact", lambda gp=gp: nn.ngd_direction(model, gp, x, y, "exact", 1e-3),
            verify=lambda d: rel(oracle.flat_direction(d), direction_oracle(P, get_method("exact"), 1e-3)))
        add("MLP.apply", f"params: {kind}", "", lambda gp=gp: model.apply(gp, x),
            verify=lambda f: rel(f, numpy_forward(model, params, x)))

    # damping
    for kind, rho, kw in DAMPING_BAD:
        q = kind in ("negative", "NaN", "string")
        for meth in ("gd", "exact", "kfac"):
            add("ngd_direction", f"damping: {kind}", meth,
                lambda rho=rho, meth=meth: nn.ngd_direction(model, params, x, y, get_method(meth, force=True), rho), kw,
                quick=q and meth == "exact")
        add("train", f"damping: {kind}", "exact", lambda rho=rho: nn.train(model, params, (x, y), "exact", 0.5, 2, rho), kw)
        for meth in ("exact", "kfac"):
            add("preconditioned_kernel", f"damping: {kind}", meth, lambda rho=rho, meth=meth: nn.preconditioned_kernel(meth, SRC(), rho), kw,
                quick=q and meth == "exact")
        add("residual_map", f"damping: {kind}", "exact", lambda rho=rho: nn.residual_map("exact", SRC(), rho)(P.y), kw)
        add("method_predictor", f"damping: {kind}", "exact", lambda rho=rho: nn.method_predictor("exact", SRC(), y, 0.5, rho)(2, P.y), kw)
    for kind, rho in [("numpy float32", np.float32(1e-3)), ("int 0", 0), ("0-d array", np.array(1e-3))]:
        add("ngd_direction", f"damping: {kind}", "exact", lambda rho=rho: nn.ngd_direction(model, params, x, y, "exact", rho),
            verify=lambda d, rho=rho: rel(oracle.flat_direction(d), direction_oracle(P, get_method("exact"), float(rho))), tol=1e-6)

    # learning rates
    TH = Lazy(lambda: np.asarray(nn.preconditioned_kernel("exact", SRC(), 1e-3)[0]))
    F0 = Lazy(lambda: np.asarray(model.apply(params, P.x)))
    for kind, lr, kw in LR_BAD:
        q = kind in ("zero", "NaN")
        add("train", f"lr: {kind}", "exact", lambda lr=lr: nn.train(model, params, (x, y), "exact", lr, 2, 1e-3), kw, quick=q)
        add("predict", f"lr: {kind}", "", lambda lr=lr: nn.predict(TH(), None, F0(), None, y, lr, 3), kw, quick=q)
        add("linearized", f"lr: {kind}", "", lambda lr=lr: nn.linearized(TH(), y, lr)(3, F0()), kw)
        add("iterated", f"lr: {kind}", "", lambda lr=lr: nn.iterated(lambda r: TH() @ r, y, lr)(3, F0()), kw)
        add("method_predictor", f"lr: {kind}", "exact", lambda lr=lr: nn.method_predictor("exact", SRC(), y, lr, 1e-3)(3, F0()), kw)

    # steps
    for kind, st, kw in STEPS_BAD:
        q = kind in ("negative", "fractional")
        scalar = np.ndim(st) == 0 and not isinstance(st, list)
        if scalar:
            add("train", f"steps: {kind}", "exact", lambda st=st: nn.train(model, params, (x, y), "exact", 0.5, st, 1e-3), kw, quick=q)
        add("predict", f"steps: {kind}", "", lambda st=st: nn.predict(TH(), None, F0(), None, y, 0.5, st), kw, quick=q)
        if st is not None:  # t=None is the t -> infinity limit of linearized's predictor
            add("linearized", f"steps: {kind}", "", lambda st=st: nn.linearized(TH(), y, 0.5)(st, F0()), kw)
        add("iterated", f"steps: {kind}", "", lambda st=st: nn.iterated(lambda r: TH() @ r, y, 0.5)(st, F0()), kw)
        add("method_predictor", f"steps: {kind}", "exact", lambda st=st: nn.method_predictor("exact", SRC(), y, 0.5, 1e-3)(st, F0()), kw)

    # n_train
    for kind, n, kw in N_BAD:
        for meth in ("exact", "kfac", "unit_wise"):
            add("isotropy_constant", f"n_train: {kind}", meth, lambda n=n, meth=meth: nn.isotropy_constant(meth, model, n), kw,
                quick=meth == "kfac" and kind in ("zero", "fractional"))
        add("optimal_lr", f"n_train: {kind}", "kfac", lambda n=n: nn.optimal_lr("kfac", model, n), kw)
    for kind, n in [("numpy int64", np.int64(4)), ("float 4.0", 4.0)]:
        add("isotropy_constant", f"n_train: {kind}", "kfac", lambda n=n: nn.isotropy_constant("kfac", model, n),
            verify=lambda a: abs(a - theory_alpha("kfac", model, 4)) / theory_alpha("kfac", model, 4))
    add("isotropy_constant", "convention: unknown", "kfac", lambda: nn.isotropy_constant("kfac", model, 4, "folklore"),
        ("convention",))
    add("optimal_lr", "theta_g: missing", "gd", lambda: nn.optimal_lr("gd", model, 4), ("theta_g",))
    for kind, bt, kw in [("NaN", lambda: TH() * np.nan, ("theta_g", "NaN")), ("wrong shape", lambda: TH()[:2], ("theta_g", "shape")),
                         ("complex", lambda: TH() + 1j, ("theta_g", "complex")), ("string", lambda: "theta", ("theta_g", "numeric|dtype"))]:
        add("optimal_lr", f"theta_g: {kind}", "gd", lambda bt=bt: nn.optimal_lr("gd", model, 4, bt()), kw)

    # methods and their options
    for kind, bm, kw in METHOD_BAD:
        q = kind == "unknown name"
        add("get_method", f"method: {kind}", "", lambda bm=bm: get_method(bm), kw, quick=q)
        add("ngd_direction", f"method: {kind}", "", lambda bm=bm: nn.ngd_direction(model, params, x, y, bm, 1e-3), kw)
        add("train", f"method: {kind}", "", lambda bm=bm: nn.train(model, params, (x, y), bm, 0.5, 2, 1e-3), kw)
        add("preconditioned_kernel", f"method: {kind}", "", lambda bm=bm: nn.preconditioned_kernel(bm, SRC(), 1e-3), kw)
        add("residual_map", f"method: {kind}", "", lambda bm=bm: nn.residual_map(bm, SRC(), 1e-3), kw)
        add("isotropy_constant", f"method: {kind}", "", lambda bm=bm: nn.isotropy_constant(bm, model, 4), kw)
        add("optimal_lr", f"method: {kind}", "", lambda bm=bm: nn.optimal_lr(bm, model, 4), kw)
        add("method_predictor", f"method: {kind}", "", lambda bm=bm: nn.method_predictor(bm, SRC(), y, 0.5), kw)
    add("ngd_direction", "options: with a method object", "kfac",
        lambda: nn.ngd_direction(model, params, x, y, get_method("kfac", force=True), 1e-3, damping_mode="factored"), ("options",))
    for meth, opts, kw in bad_options():
        add("get_method", f"option: {sorted(opts)[0]}", f"{meth} {opts}", lambda meth=meth, opts=opts: get_method(meth, **opts), kw,
            quick=meth in ("kfac", "shampoo", "diagonal"))
        add("ngd_direction", f"option: {sorted(opts)[0]}", f"{meth} {opts}",
            lambda meth=meth, opts=opts: nn.ngd_direction(model, params, x, y, meth, 1e-3, **opts), kw)
        if sorted(opts)[0] in ("samples", "chunk", "hold", "exponent"):  # values that are well typed but out of range
            add("residual_map", f"option: {sorted(opts)[0]}", f"{meth} {opts}",
                lambda meth=meth, opts=opts: nn.residual_map(meth, SRC(), 1e-3, **opts)(P.y), kw)
    # conditions of the methods (THEORY section 4), loss
    for meth, kw in [("kfac", ("kfac", "M_0", "force")), ("unit_wise", ("unit_wise", "M_0", "force")),
                     ("foof", ("foof", "M_0", "force")), ("tnt", ("tnt", "M_0", "force"))]:
        add("ngd_direction", "method conditions", meth, lambda meth=meth: nn.ngd_direction(model, params, x, y, meth, 1e-3), kw)
    add("ngd_direction", "loss: unknown", "exact", lambda: nn.ngd_direction(model, params, x, y, "exact", 1e-3, loss="l2"), ("loss",))
    add("ngd_direction", "loss: cross-entropy with C = 1", "gd",
        lambda: nn.ngd_direction(model, params, x, y, "gd", 1e-3, loss="cross_entropy"), ("cross-entropy", "C"))
    add("ngd_direction", "loss: cross-entropy method", "kfac",
        lambda: nn.ngd_direction(P3.model, P3.params, P3.x, P3.y, "kfac", 1e-3, loss="cross_entropy"), ("cross-entropy", "kfac"))
    add("ngd_direction", "loss: cross-entropy exact at rho = 0", "exact",
        lambda: nn.ngd_direction(P3.model, P3.params, P3.x, P3.y, "exact", 0.0, loss="cross_entropy"), ("damping",))
    add("train", "lr: 'optimal' with cross-entropy", "gd",
        lambda: nn.train(P3.model, P3.params, (P3.x, P3.y), "gd", "optimal", 2, 0.0, loss="cross_entropy"), ("lr", "cross-entropy"))
    onehot = np.eye(3)[[0, 1, 2, 0]]
    for meth, rho in [("gd", 0.0), ("exact", 1e-3), ("exact_mse", 1e-3)]:
        add("ngd_direction", "loss: cross-entropy", meth,
            lambda meth=meth, rho=rho: nn.ngd_direction(P3.model, P3.params, P3.x, onehot, meth, rho, loss="cross_entropy"),
            verify=lambda d, meth=meth, rho=rho: rel(oracle.flat_direction(d), ce_oracle(P3, onehot, meth, rho)))

    # model and source arguments
    for kind, bm, kw in MODEL_BAD:
        add("ngd_direction", f"model: {kind}", "exact", lambda bm=bm: nn.ngd_direction(bm, params, x, y, "exact", 1e-3), kw, quick=True)
        add("train", f"model: {kind}", "exact", lambda bm=bm: nn.train(bm, params, (x, y), "exact", 0.5, 2, 1e-3), kw)
        add("empirical_source", f"model: {kind}", "", lambda bm=bm: nn.empirical_source(bm, params, x), kw)
        add("analytic_source", f"model: {kind}", "", lambda bm=bm: nn.analytic_source(bm, x), kw)
        add("isotropy_constant", f"model: {kind}", "exact", lambda bm=bm: nn.isotropy_constant("exact", bm, 4), kw)
        add("optimal_lr", f"model: {kind}", "kfac", lambda bm=bm: nn.optimal_lr("kfac", bm, 4), kw)
    for kind, bs in [("None", lambda: None), ("tuple", lambda: (SRC().train,)), ("dict", lambda: {"train": SRC().train}), ("Grams", lambda: SRC().train)]:
        for entry, fn in [("preconditioned_kernel", lambda bs: nn.preconditioned_kernel("exact", bs, 1e-3)),
                          ("residual_map", lambda bs: nn.residual_map("exact", bs, 1e-3)),
                          ("method_predictor", lambda bs: nn.method_predictor("exact", bs, y, 0.5))]:
            add(entry, f"src: {kind}", "exact", lambda bs=bs, fn=fn: fn(bs()), ("src", "KernelSource"), quick=kind == "None")
    ASRC = Lazy(lambda: nn.analytic_source(model, x, xt))
    add("method_predictor", "src: analytic", "exact", lambda: nn.method_predictor("exact", ASRC(), y, 0.5), ("empirical",))
    add("preconditioned_kernel", "src: analytic for diagonal", "diagonal", lambda: nn.preconditioned_kernel("diagonal", ASRC(), 1e-3),
        ("diagonal", "empirical|analytic"))
    add("residual_map", "src: analytic for diagonal", "diagonal", lambda: nn.residual_map("diagonal", ASRC(), 1e-3)(P.y),
        ("diagonal", "empirical|analytic"))
    add("preconditioned_kernel", "method: nonlinear", "ngplus", lambda: nn.preconditioned_kernel("ngplus", SRC(), 1e-3),
        ("ngplus", "residual_map"))
    add("residual_map", "r: wrong shape", "exact", lambda: nn.residual_map("exact", SRC(), 1e-3)(np.ones(7)), ("r|residual", "shape"))
    add("residual_map", "r: NaN", "exact", lambda: nn.residual_map("exact", SRC(), 1e-3)(np.full((4, 1), np.nan)), ("r|residual", "NaN"))

    # train: data containers and test sets
    add("train", "data: wrong tuple length", "exact", lambda: nn.train(model, params, (x, y, x), "exact", 0.5, 2, 1e-3), ("data",))
    add("train", "data: None", "exact", lambda: nn.train(model, params, None, "exact", 0.5, 2, 1e-3), ("data",))
    add("train", "x_test: no rows", "exact", lambda: nn.train(model, params, (x, y, x[:0], y[:0]), "exact", 0.5, 2, 1e-3),
        ("x_test", "rows"), quick=True)
    add("train", "y_test: missing", "exact", lambda: nn.train(model, params, (x, y, x, None), "exact", 0.5, 2, 1e-3), ("y_test",))
    add("train", "lr: 'optimal' of a nonlinear method", "ngplus",
        lambda: nn.train(model, params, (x, y), "ngplus", "optimal", 2, 1e-3), ("lr", "ngplus"))
    lin = problem(widths=(3, 1), act="linear")  # a linear model: a too large lr overflows (no relu dies)
    add("train", "lr: too large (diverges)", "gd", lambda: nn.train(lin.model, lin.params, (lin.x, lin.y), "gd", 1e6, 80, 0.0),
        ("lr", "diverged|unstable|overflow"))
    add("train", "loss: unknown", "exact", lambda: nn.train(model, params, (x, y), "exact", 0.5, 2, 1e-3, loss="l2"), ("loss",))
    add("optimal_lr", "alpha = 0", "unit_wise", lambda: nn.optimal_lr("unit_wise", nn.MLP((3, 1)), 4, convention="paper"),
        ("unit_wise", "alpha"))
    add("train", "lr_power: NaN", "exact", lambda: nn.train(model, params, (x, y), "exact", 0.5, 2, 1e-3, lr_power=float("nan")),
        ("lr_power",))

    # inputs so large that the kernels (x . x' ~ 1e320) overflow although x is finite
    big = x * 1e160
    for meth in ("gd", "exact", "kfac"):
        add("ngd_direction", "x: kernels overflow (|x| ~ 1e160)", meth,
            lambda meth=meth: nn.ngd_direction(model, params, big, y, get_method(meth, force=True), 1e-3), ("overflow", "x|inputs"))
    add("train", "x: kernels overflow (|x| ~ 1e160)", "exact", lambda: nn.train(model, params, (big, y), "exact", 0.5, 2, 1e-3),
        ("overflow", "x|inputs"))
    add("empirical_source", "x_train: kernels overflow (|x| ~ 1e160)", "", lambda: nn.empirical_source(model, params, big),
        ("overflow", "x_train"))
    add("analytic_source", "x_train: kernels overflow (|x| ~ 1e160)", "", lambda: nn.analytic_source(model, big),
        ("overflow", "x_train"))
    add("preconditioned_kernel", "x: kernels overflow (|x| ~ 1e160)", "exact",
        lambda: nn.preconditioned_kernel("exact", nn.empirical_source(model, params, big), 1e-3), ("overflow",))

    # predictors: kernels and initial outputs
    CR = Lazy(lambda: np.asarray(nn.preconditioned_kernel("exact", SRC(), 1e-3)[1]))
    F0T = Lazy(lambda: np.asarray(model.apply(params, P.xt)))
    for kind, bt, kw in [("NaN", lambda: TH() * np.nan, ("theta_g", "NaN")), ("wrong shape", lambda: TH()[:3, :3], ("theta_g", "shape")),
                         ("complex", lambda: TH() + 0j, ("theta_g", "complex")), ("1-d", lambda: np.ones(4), ("theta_g", "shape"))]:
        add("predict", f"theta_g: {kind}", "", lambda bt=bt: nn.predict(bt(), None, F0(), None, y, 0.5, 3), kw)
        add("linearized", f"theta_g: {kind}", "", lambda bt=bt: nn.linearized(bt(), y, 0.5)(3, F0()), kw)
    for kind, bc, kw in [("NaN", lambda: CR() * np.nan, ("cross", "NaN")), ("wrong shape", lambda: CR()[:, :2], ("cross", "shape"))]:
        add("predict", f"cross: {kind}", "", lambda bc=bc: nn.predict(TH(), bc(), F0(), F0T(), y, 0.5, 3), kw)
    for kind, bf, kw in [("NaN", lambda: F0() * np.nan, ("f0_train", "NaN")), ("wrong shape", lambda: F0()[:2], ("f0_train", "shape")),
                         ("None", lambda: None, ("f0_train",))]:
        add("predict", f"f0_train: {kind}", "", lambda bf=bf: nn.predict(TH(), None, bf(), None, y, 0.5, 3), kw)
        add("iterated", f"f0_train: {kind}", "", lambda bf=bf: nn.iterated(lambda r: TH() @ r, y, 0.5)(3, bf()), kw)
        add("method_predictor", f"f0_train: {kind}", "exact", lambda bf=bf: nn.method_predictor("exact", SRC(), y, 0.5, 1e-3)(3, bf()), kw)
    for kind, args, kw in [("lr NaN", dict(lr=float("nan")), ("lr",)), ("negative time", dict(times=[-1.0, 2.0]), ("times",)),
                           ("NaN theta", dict(theta=lambda: TH() * np.nan), ("theta", "NaN")),
                           ("wrong theta shape", dict(theta=lambda: TH()[:2]), ("theta", "shape")),
                           ("f0_train None", dict(f0=lambda: None), ("f0_train",)),
                           ("string times", dict(times="soon"), ("times",))]:
        def flow(args=args):
            a = dict(theta=TH, f0=F0, lr=0.5, times=[0.0, 1.0])
            a.update(args)
            return nn.predict_gd_continuous(a["theta"](), None, a["f0"](), None, y, a["lr"], a["times"])
        add("predict_gd_continuous", kind, "", flow, kw)
    add("predict_limit", "lr: unstable", "", lambda: nn.predict_limit(TH(), None, F0(), None, y, 50.0), ("lr", "unstable"))
    add("predict_limit", "theta_g: NaN", "", lambda: nn.predict_limit(TH() * np.nan, None, F0(), None, y), ("theta_g", "NaN"))
    for kind, al, kw in [("zero", 0.0, ("alpha",)), ("NaN", float("nan"), ("alpha",)), ("None", None, ("alpha",))]:
        add("isotropy_error", f"alpha: {kind}", "", lambda al=al: nn.isotropy_error(TH(), al), kw)
    add("isotropy_error", "theta_g: NaN", "", lambda: nn.isotropy_error(TH() * np.nan, 1.0), ("theta_g", "NaN"))
    add("isotropy_error", "closed form", "", lambda: nn.isotropy_error(np.diag([1.0, 2.0, 3.0, 4.0]), 2.0),
        verify=lambda e: abs(e - 1.0))
    add("predict", "f0_test: wrong size", "", lambda: nn.predict(TH(), CR(), F0(), F0T()[:2], y, 0.5, 3), ("f0_test",))
    add("iterated", "phi: not callable", "", lambda: nn.iterated(TH(), y, 0.5)(3, F0()), ("phi", "callable"))
    add("predict", "lr: unstable (overflows)", "", lambda: nn.predict(TH(), None, F0(), None, y, 50.0, 400),
        ("lr", "unstable|diverg|overflow"), quick=True)
    add("iterated", "lr: unstable (overflows)", "", lambda: nn.iterated(lambda r: TH() @ r, y, 50.0)(400, F0()),
        ("lr", "unstable|diverg|overflow"))
    add("method_predictor", "lr: unstable (overflows)", "exact", lambda: nn.method_predictor("exact", SRC(), y, 50.0, 1e-3)(400, F0()),
        ("lr", "unstable|diverg|overflow"))

    # MLP construction, init
    for kind, w, kw in [("string", "345", ("widths",)), ("None", None, ("widths",)), ("int", 5, ("widths",)),
                        ("one entry", (3,), ("widths",)), ("zero width", (3, 0, 1), ("width",)),
                        ("negative width", (3, -2, 1), ("width",)), ("fractional width", (3, 2.5, 1), ("width",)),
                        ("string width", (3, "5", 1), ("width",)), ("None width", (3, None, 1), ("width",)),
                        ("bool width", (3, True, 1), ("width",)), ("NaN width", (3, float("nan"), 1), ("width",)),
                        ("nested", ((3,), 1), ("width",)), ("empty", (), ("widths",)), ("2-d array", np.ones((2, 2), int), ("width",))]:
        add("MLP", f"widths: {kind}", "", lambda w=w: nn.MLP(w), kw, quick=kind in ("zero width", "string width"))
    for kind, w in [("numpy array", np.array([3, 5, 1])), ("floats", (3.0, 5.0, 1.0)), ("list", [3, 5, 1]),
                    ("numpy ints", (np.int64(3), np.int32(5), 1))]:
        add("MLP", f"widths: {kind}", "", lambda w=w: nn.MLP(w),
            verify=lambda m: float(m.widths != (3, 5, 1) or not all(type(v) is int for v in m.widths)))
    for arg, kind, v, kw in [("sigma_w", "string", "x", ("sigma_w",)), ("sigma_w", "NaN", float("nan"), ("sigma_w",)),
                             ("sigma_w", "inf", float("inf"), ("sigma_w",)), ("sigma_w", "zero", 0.0, ("sigma_w",)),
                             ("sigma_w", "negative", -1.0, ("sigma_w",)), ("sigma_w", "complex", 1j, ("sigma_w",)),
                             ("sigma_w", "None", None, ("sigma_w",)), ("sigma_w", "list", [1.0], ("sigma_w",)),
                             ("sigma_b", "negative", -0.1, ("sigma_b",)), ("sigma_b", "NaN", float("nan"), ("sigma_b",)),
                             ("sigma_b", "string", "0", ("sigma_b",)), ("activation", "unknown", "sigmoid", ("activation",)),
                             ("activation", "int", 3, ("activation",)), ("activation", "None", None, ("activation",))]:
        add("MLP", f"{arg}: {kind}", "", lambda arg=arg, v=v: nn.MLP((3, 5, 1), **{arg: v}), kw, quick=kind == "string")
    for kind, k in [("None", None), ("int seed", 0), ("string", "seed"), ("float array", jnp.array([1.0, 2.0])),
                    ("wrong length", jnp.zeros(3, jnp.uint32))]:
        add("MLP.init", f"key: {kind}", "", lambda k=k: model.init(k), ("key",), quick=kind == "int seed")
    add("MLP.init", "key: typed key", "", lambda: model.init(jax.random.key(0)),
        verify=lambda p: max(rel(a, b) for a, b in zip(jax.tree_util.tree_leaves(p), jax.tree_util.tree_leaves(params))))

    # Dataset.from_arrays, load_arrays
    add("Dataset.from_arrays", "x_test without y_test", "", lambda: nn.Dataset.from_arrays(x, y, x), ("x_test", "y_test"))
    add("Dataset.from_arrays", "test features", "", lambda: nn.Dataset.from_arrays(x, y, x[:, :2], y), ("x_test|features",))
    add("Dataset.from_arrays", "images (N, 2, 2)", "", lambda: nn.Dataset.from_arrays(np.arange(16.0).reshape(4, 2, 2), y),
        verify=lambda d: rel(d.x_train, np.arange(16.0).reshape(4, 4)))
    tmp = pathlib.Path(tempfile.mkdtemp(prefix="ntk_ngd_stress_"))
    np.savez(tmp / "nan.npz", x=np.where(np.eye(8, 3) > 0, np.nan, 1.0), y=np.arange(8) % 2)
    np.savez(tmp / "keys.npz", a=np.ones(3))
    np.savez(tmp / "complex.npz", x=np.ones((8, 3)) + 1j, y=np.arange(8) % 2)
    (tmp / "bad.csv").write_text("a,b,label\n1,x,0\n2,3,1\n")
    rng = np.random.default_rng(0)
    xr, yr = rng.standard_normal((10, 3)), rng.standard_normal((10, 2))
    np.savez(tmp / "reg.npz", x_train=xr[:6], y_train=yr[:6], x_test=xr[6:], y_test=yr[6:])
    for kind, path, kw in [("missing file", tmp / "none.npz", ("none.npz|not found|no such",)),
                           ("unknown format", tmp / "data.txt", ("format",)), ("NaN inputs", tmp / "nan.npz", ("x", "NaN")),
                           ("wrong keys", tmp / "keys.npz", ("x|x_train", "expected")),
                           ("complex inputs", tmp / "complex.npz", ("x", "complex|real|numeric")),
                           ("non-numeric csv", tmp / "bad.csv", ("csv|numeric|number", ))]:
        add("load_arrays", kind, "", lambda path=path: nn.load_arrays(path, n_train=4, n_test=2), kw)
    add("load_arrays", "regression targets as given", "",
        lambda: nn.load_arrays(tmp / "reg.npz", n_train=6, n_test=4, preprocessing=False),
        verify=lambda d: rel(np.sort(d.y_train.ravel()), np.sort(yr[:6].ravel())))


# ---------------------------------------------------------------------------- verified-result helpers
def numpy_forward(model, params, x):
    h = np.asarray(x, np.float64)
    phi = {"relu": lambda u: np.maximum(u, 0), "linear": lambda u: u, "tanh": np.tanh,
           "erf": lambda u: np.vectorize(math.erf)(u)}[model.activation]
    for l, p in enumerate(to64(params)):
        u = model.sigma_w / np.sqrt(p["W"].shape[1]) * h @ p["W"].T + model.sigma_b * p["b"]
        h = phi(u) if l < model.depth - 1 else u
    return h


def source_err(src, prob: Problem, with_test=False):
    D, J, Jx = prob.dense()
    o = D.offsets
    lk = np.asarray(nn.layer_kernels(src.train))
    ref = np.stack([J[:, o[l]:o[l + 1]] @ J[:, o[l]:o[l + 1]].T for l in range(D.depth)])
    e = rel(lk, ref)
    if with_test:
        refx = np.stack([Jx[:, o[l]:o[l + 1]] @ J[:, o[l]:o[l + 1]].T for l in range(D.depth)])
        e = max(e, rel(nn.layer_kernels(src.cross), refx))
    return e


def train_err(res, prob: Problem, meth, lr, steps, rho, with_test=False):
    """TrainResult vs the dense nonlinear iteration theta_{t+1} = theta_t - lr M(theta_t) g_t (float64)."""
    m = get_method(meth, force=True)
    model = prob.model
    theta = oracle.flat(nn.layers.from_params(to64(prob.params)))
    x, y = np.asarray(prob.x, np.float64), np.asarray(prob.y, np.float64)
    fs, fts = [], []
    for t in range(steps + 1):
        p = nn.layers.to_params(oracle.unflatten(model, jnp.asarray(theta)))
        fs.append(np.asarray(model.apply(p, jnp.asarray(x))))
        if with_test:
            fts.append(np.asarray(model.apply(p, jnp.asarray(prob.xt, jnp.float64))))
        if t < steps:
            J, g, H, Dm = (to64(a) for a in dense_fn(model)(to64(p), x, y))
            D = DenseProblem(J, g, list(H), list(Dm), tuple(model.widths))
            theta = theta - lr * dual_operator(m, D, rho) @ D.g
    e = rel(res.f_train, np.stack(fs))
    loss = 0.5 * np.mean(np.sum((np.stack(fs) - y) ** 2, -1), -1)
    e = max(e, rel(res.loss_train, loss))
    if with_test:
        e = max(e, rel(res.f_test, np.stack(fts)))
    return e


def ce_oracle(prob: Problem, y, meth, rho):
    D, J, _ = prob.dense()
    f = np.asarray(prob.model.apply(to64(prob.params), np.asarray(prob.x, np.float64)))
    n, c = f.shape
    p = np.exp(f - f.max(1, keepdims=True))
    p /= p.sum(1, keepdims=True)
    r = (p - y).ravel()
    if meth == "gd":
        return J.T @ r / n
    H = np.zeros((n * c, n * c))
    for i in range(n):
        H[i * c:(i + 1) * c, i * c:(i + 1) * c] = np.diag(p[i]) - np.outer(p[i], p[i])
    theta = J @ J.T
    if meth == "exact":  # (J^T H J / N + rho I)^{-1} J^T r / N = J^T (H Theta + N rho I)^{-1} r
        return J.T @ np.linalg.solve(H @ theta + n * rho * np.eye(n * c), r)
    v = np.linalg.solve(H + rho * np.eye(n * c), r)
    return J.T @ np.linalg.solve(theta + n * rho * np.eye(n * c), v)


def theory_alpha(meth, model, n, convention="theory", forster=False):
    """THEORY section 4's table, written out here."""
    L, w = model.depth, model.widths
    if meth in ("gd", "diagonal"):
        return None
    if meth == "exact":
        return 1.0
    if meth == "block_diagonal":
        return float(L)
    if meth == "block_tridiagonal":
        T = np.eye(L) + np.eye(L, k=1) + np.eye(L, k=-1)
        return float(np.ones(L) @ np.linalg.pinv(T) @ np.ones(L))
    if meth == "kfac":
        if convention == "paper":
            return float(n * L)
        if L == 1:
            return min(w[0], n) / n
        return float(min(w[0], n) + (L - 2) * n + 1)
    if meth == "unit_wise":
        gamma = {"relu": 0.5}.get(model.activation, 1.0)
        if convention == "paper":
            return gamma * (L - 1) * max(w[1:-1], default=0)
        return gamma * sum(w[1:-1]) + 1
    raise KeyError(meth)


# ---------------------------------------------------------------------------- numerical edge cases
NUMERIC_PROBLEMS = [  # (problem kwargs, dampings)
    (dict(widths=(3, 1)), (0.0, 1e-3)),                                   # L = 1: Theta rank 3 < N = 4
    (dict(widths=(3, 5, 3), act="erf", sb=0.5), (0.0, 1e-3)),             # L = 2, C = 3
    (dict(widths=(3, 5, 4, 1)), (0.0, 1e-3, 1e8)),                        # L = 3, M_0 < N: rank-deficient Theta_1
    (dict(widths=(3, 5, 4, 6, 3), act="tanh", sb=0.5), (0.0, 1e-3)),      # L = 4, C = 3
    (dict(widths=(3, 5, 4, 1), xkind="duplicate"), (0.0, 1e-3, 1e-300)),  # duplicate inputs: singular Theta
    (dict(widths=(4, 5, 4, 3), act="erf", xkind="zero_row"), (0.0, 1e-3)),  # zero input row: a zero row of J
    (dict(widths=(4, 6, 1), act="tanh", xkind="lowrank"), (0.0, 1e-3)),   # inputs on a line: rank-1 first layer
    (dict(widths=(5, 8, 7, 1), sb=0.3), (0.0, 1e-3, 1e-300)),             # well posed (M_0 >= N)
    (dict(widths=(5, 8, 7, 1), sb=0.3, xkind="scaled"), (1e-3,)),         # input norms 1e-3 .. 1e3
    (dict(widths=(5, 8, 7, 1), sb=0.3, dtype="float32"), (0.0, 1e-3)),
    (dict(widths=(3, 5, 4, 3), act="erf", sb=0.5, dtype="float32"), (1e-3,)),
    (dict(widths=(3, 5, 4, 1), n=1), (0.0,)),                             # a single sample
    (dict(widths=(3, 5, 4, 3), act="tanh", sb=0.5, n=1), (1e-3,)),        # a single sample, C = 3
]
MAP_PROBLEMS = (2, 4, 5, 7)
OWN_ORACLE = ("gd", "exact", "block_diagonal", "diagonal", "kfac")  # indices into NUMERIC_PROBLEMS that also run preconditioned_kernel / residual_map


def battery_numerics():
    for i, (kw, rhos) in enumerate(NUMERIC_PROBLEMS):
        prob = problem(**kw)
        for rho in rhos:
            for meth in ALL:
                if kw.get("xkind") == "scaled" and meth not in OWN_ORACLE:
                    continue  # input norms 1e-3..1e3: the float64 to_dense references lose 1e-5..1e-2 (checked at
                    # 50 digits); only the SVD / eigh-based oracles written here are accurate enough
                m = get_method(meth, force=True)
                owner = owner_of(meth, rho, "numerics")
                kind = f"numerics: {prob.label}"
                q = i == 7 and rho == 1e-3 and not owner and meth in ("exact", "kfac", "ngplus")
                tol = tol_for(prob)
                add("ngd_direction", kind, f"{meth} rho={rho:g}",
                    lambda prob=prob, m=m, rho=rho: nn.ngd_direction(prob.model, prob.params, prob.x, prob.y, m, rho),
                    ("damping", "singular"),
                    verify=lambda d, prob=prob, m=m, rho=rho: rel(oracle.flat_direction(d), direction_oracle(prob, m, rho)),
                    tol=tol, quick=q, owner=owner)
                if i not in MAP_PROBLEMS or rho not in (0.0, 1e-3):
                    continue
                src_fn = Lazy(lambda prob=prob: nn.empirical_source(prob.model, prob.params, prob.x, prob.xt))
                if m.linear:
                    add("preconditioned_kernel", kind, f"{meth} rho={rho:g}",
                        lambda src_fn=src_fn, m=m, rho=rho: nn.preconditioned_kernel(m, src_fn(), rho), ("damping", "singular"),
                        verify=lambda k, prob=prob, m=m, rho=rho: kernel_err(k, prob, m, rho), tol=tol,
                        quick=q and meth == "exact", owner=owner)
                r = Lazy(lambda prob=prob: np.asarray(prob.model.apply(prob.params, prob.x) - prob.y))
                add("residual_map", kind, f"{meth} rho={rho:g}",
                    lambda src_fn=src_fn, m=m, rho=rho, r=r: (lambda phi: (phi(r()), phi.test(r())))(nn.residual_map(m, src_fn(), rho)),
                    ("damping", "singular"),
                    verify=lambda out, prob=prob, m=m, rho=rho, r=r: map_err(out, prob, m, rho, r()), tol=tol, owner=owner)
        prob_src = problem(**kw)
        add("empirical_source", f"numerics: {prob_src.label}", "layer kernels",
            lambda prob=prob_src: nn.empirical_source(prob.model, prob.params, prob.x, prob.xt),
            verify=lambda s, prob=prob_src: source_err(s, prob, True), tol=tol_for(prob_src, 1e-10), quick=i == 2)


def kernel_err(k, prob, m, rho):
    D, J, Jx = prob.dense()
    M = dual_operator(m, D, rho)
    return max(rel(k[0], J @ M), rel(k[1], Jx @ M))


def map_err(out, prob, m, rho, r):
    """Phi(r) = J d(r), Phi.test(r) = J(x') d(r), d(r) the direction at residual r (y = f - r)."""
    f = np.asarray(prob.model.apply(to64(prob.params), np.asarray(prob.x, np.float64)))
    yr = f - np.asarray(r, np.float64) if not m.linear else None
    D, J, Jx = prob.dense(yr)
    d = dual_operator(m, D, rho) @ D.g
    return max(rel(out[0], (J @ d).reshape(r.shape)), rel(out[1], Jx @ d))


def battery_analytic():
    """Infinite-width Grams against closed forms, and the kernel faces of exact, block-diagonal and gd
    on them, with duplicate inputs and zero input rows (singular kernels)."""
    for kw in [dict(widths=(3, 1)), dict(widths=(3, 5, 4, 1)), dict(widths=(3, 5, 4, 6, 3), act="erf", sb=0.5),
               dict(widths=(4, 5, 4, 1), xkind="duplicate"), dict(widths=(4, 5, 4, 3), act="relu", xkind="zero_row"),
               dict(widths=(4, 5, 1), act="linear", sb=0.2), dict(widths=(4, 5, 5, 1), act="erf", xkind="scaled")]:
        prob = problem(**kw)
        model, x, xt, C = prob.model, np.asarray(prob.x), np.asarray(prob.xt), prob.C
        th, thx = analytic_oracle(model, x, x), analytic_oracle(model, xt, x)
        kind = f"numerics: {prob.label}"
        add("analytic_source", kind, "layer kernels", lambda model=model, x=x, xt=xt: nn.analytic_source(model, x, xt),
            verify=lambda s, th=th, thx=thx, C=C: max(rel(nn.layer_kernels(s.train), expand_c(th, C)),
                                                     rel(nn.layer_kernels(s.cross), expand_c(thx, C))), tol=1e-9,
            quick=kw.get("xkind") == "duplicate")
        n = x.shape[0]
        for meth in ("gd", "exact", "block_diagonal"):
            for rho in (0.0, 1e-3):
                def ref(meth=meth, rho=rho, th=th, thx=thx, C=C):
                    T, Tx = expand_c(th, C), expand_c(thx, C)
                    if meth == "gd":
                        return T.sum(0) / n, Tx.sum(0) / n
                    parts = [(T.sum(0), Tx.sum(0))] if meth == "exact" else list(zip(T, Tx))
                    out = [(t @ spd_pinv(t, n * rho), tx @ spd_pinv(t, n * rho)) for t, tx in parts]
                    return sum(o[0] for o in out), sum(o[1] for o in out)
                add("preconditioned_kernel", f"analytic {kind}", f"{meth} rho={rho:g}",
                    lambda model=model, x=x, xt=xt, meth=meth, rho=rho: nn.preconditioned_kernel(meth, nn.analytic_source(model, x, xt), rho),
                    ("damping", "singular"),
                    verify=lambda k, ref=ref: max(rel(k[0], ref()[0]), rel(k[1], ref()[1])), tol=1e-7)


def spd_pinv(t, shift, cut=1e-10):
    w, V = np.linalg.eigh(t)
    keep = w + shift > cut * max(w.max(), 0)
    return (V * np.where(keep, 1.0 / np.where(keep, w + shift, 1.0), 0.0)) @ V.T


def battery_theory_constants():
    for kw in [dict(widths=(5, 8, 7, 1), sb=0.3), dict(widths=(5, 8, 1)), dict(widths=(5, 1)),
               dict(widths=(5, 8, 7, 6, 1), act="erf"), dict(widths=(3, 5, 4, 1))]:
        prob = problem(**kw)
        model, n = prob.model, prob.n
        for meth in ("gd", "diagonal", "exact", "block_diagonal", "block_tridiagonal", "kfac", "unit_wise"):
            for conv in ("theory", "paper") if meth in ("kfac", "unit_wise") else ("theory",):
                ref = theory_alpha(meth, model, n, conv)
                add("isotropy_constant", "theory constant", f"{meth} {conv} L={model.depth} M_0={model.widths[0]}",
                    lambda model=model, meth=meth, n=n, conv=conv: nn.isotropy_constant(meth, model, n, conv),
                    verify=lambda a, ref=ref: float(a is not None) if ref is None else abs(a - ref) / max(ref, 1.0),
                    tol=1e-12, quick=meth == "kfac" and model.depth == 3)
        # measured: Theta_G -> alpha I on a well-posed problem (finite-width isotropic methods)
        if model.widths[0] >= n and all(w >= n for w in model.widths[1:-1]):
            src = Lazy(lambda prob=prob: nn.empirical_source(prob.model, prob.params, prob.x))
            for meth in ("exact", "block_diagonal", "block_tridiagonal", "kfac"):
                add("isotropy_constant", "measured Theta_G", f"{meth} L={model.depth}",
                    lambda model=model, meth=meth, n=n: nn.isotropy_constant(meth, model, n),
                    verify=lambda a, src=src, meth=meth: nn.isotropy_error(nn.preconditioned_kernel(meth, src(), 0.0)[0], a),
                    tol=1e-5, owner=OWNED["btd"] if meth == "block_tridiagonal" else "")
                ref = theory_alpha(meth, model, n)
                add("optimal_lr", "theory constant", f"{meth} L={model.depth}",
                    lambda model=model, meth=meth, n=n: nn.optimal_lr(meth, model, n),
                    verify=lambda e, ref=ref: abs(e * ref - 1), tol=1e-12)
            for meth in ("gd", "diagonal"):
                tg = Lazy(lambda src=src, meth=meth: np.asarray(nn.preconditioned_kernel(meth, src(), 0.0)[0]))
                add("optimal_lr", "1 / lambda_max", f"{meth} L={model.depth}",
                    lambda model=model, meth=meth, n=n, tg=tg: nn.optimal_lr(meth, model, n, tg()),
                    verify=lambda e, tg=tg: abs(e * np.linalg.eigvalsh(tg())[-1] - 1), tol=1e-12)


def battery_dynamics():
    P = base()
    model, y = P.model, np.asarray(P.y)
    SRC = Lazy(lambda: nn.empirical_source(model, P.params, P.x, P.xt))
    F0 = Lazy(lambda: np.asarray(model.apply(P.params, P.x)))
    F0T = Lazy(lambda: np.asarray(model.apply(P.params, P.xt)))
    EX = Lazy(lambda: tuple(np.asarray(a) for a in nn.preconditioned_kernel("exact", SRC(), 1e-3)))
    BD = Lazy(lambda: tuple(np.asarray(a) for a in nn.preconditioned_kernel("block_diagonal", SRC(), 0.0)))
    NS = Lazy(lambda: (EX()[0] + 0.05 * np.random.default_rng(3).standard_normal(EX()[0].shape), EX()[1]))
    lam = Lazy(lambda: np.linalg.eigvalsh(EX()[0])[-1])
    cases = [("steps 0..3", EX, lambda: 0.5, 3), ("steps 0", EX, lambda: 0.5, 0),
             ("unsorted steps", EX, lambda: 0.5, [3, 0, 2]), ("numpy int steps", EX, lambda: 0.5, np.int64(2)),
             ("oscillating lr 1.9 / lambda_max", EX, lambda: 1.9 / lam(), 40), ("1000 small steps", EX, lambda: 1e-4, 1000),
             ("non-symmetric theta_g", NS, lambda: 0.5, 5), ("singular theta_g", BD, lambda: 0.3, 6),
             ("lr below 1e-12", EX, lambda: 1e-13, 5)]
    for kind, K, lr, st in cases:
        def ref(K=K, lr=lr, st=st):
            th, cr = K()
            return trajectory_oracle(lambda r: th @ r, lambda r: cr @ r, F0(), F0T(), y, lr(),
                                     np.arange(st + 1) if np.ndim(st) == 0 else st)
        add("predict", f"dynamics: {kind}", "", lambda K=K, lr=lr, st=st: nn.predict(K()[0], K()[1], F0(), F0T(), y, lr(), st),
            verify=lambda p, ref=ref: pred_err(p, *ref()), tol=1e-9, quick=kind == "unsorted steps")
        add("linearized", f"dynamics: {kind}", "", lambda K=K, lr=lr, st=st: nn.linearized(K()[0], y, lr(), K()[1])(st, F0(), F0T()),
            verify=lambda p, ref=ref: pred_err(p, *ref()), tol=1e-9)
        add("iterated", f"dynamics: {kind}", "",
            lambda K=K, lr=lr, st=st: nn.iterated(lambda r: K()[0] @ r, y, lr(), lambda r: K()[1] @ r)(st, F0(), F0T()),
            verify=lambda p, ref=ref: pred_err(p, *ref()), tol=1e-9)
    for kind, K in [("t -> inf", EX), ("t -> inf, singular theta_g", BD)]:
        def lim(K=K):
            th, cr = K()
            pinv = np.linalg.pinv(th, rcond=1e-10, hermitian=True)
            train = y + ((np.eye(len(th)) - th @ pinv) @ (F0() - y).ravel()).reshape(y.shape)
            return train, F0T() - (cr @ pinv @ (F0() - y).ravel()).reshape(F0T().shape)
        add("linearized", f"dynamics: {kind}", "", lambda K=K: nn.linearized(K()[0], y, 0.5, K()[1])(None, F0(), F0T()),
            verify=lambda p, lim=lim: max(rel(p.train, lim()[0]), rel(p.test, lim()[1])), tol=1e-8)
    # method_predictor: the lazy recursion with the dense operator, for stateless methods
    for meth in STATELESS:
        m = get_method(meth, force=True)
        for rho in (0.0, 1e-3):
            owner = owner_of(meth, rho, "numerics")
            lr = 0.3 / max(nn.isotropy_constant(m, model, 4) or 1.0, 1.0)

            def ref(m=m, rho=rho, lr=lr):
                f0 = F0()

                def step(r, rows):
                    yr = f0 - r.reshape(f0.shape) if not m.linear else None
                    D, J, Jx = P.dense(yr)
                    d = dual_operator(m, D, rho) @ (D.g if yr is not None else r)
                    return (J if rows == "train" else Jx) @ d
                return trajectory_oracle(lambda r: step(r, "train"), lambda r: step(r, "test"), f0, F0T(), y, lr, np.arange(4))
            add("method_predictor", "numerics: L3 C1 relu", f"{meth} rho={rho:g}",
                lambda m=m, rho=rho, lr=lr: nn.method_predictor(m, SRC(), y, lr, rho)(3, F0(), F0T()), ("damping", "singular"),
                verify=lambda p, ref=ref: pred_err(p, *ref()), tol=1e-7, quick=meth == "exact" and rho > 0, owner=owner)
    # train: the nonlinear dense iteration, explicit and "optimal" learning rates, test sets
    P8 = problem(widths=(5, 8, 7, 1), sb=0.3)
    for meth in STATELESS:
        for rho, lr in [(1e-3, "optimal"), (0.0, 0.2)]:
            owner = owner_of(meth, rho, "numerics")
            prob = P8 if rho == 0.0 else P
            if lr == "optimal" and theory_alpha_known(meth) is None:
                continue
            eta = (1.0 / theory_alpha(meth, prob.model, prob.n)) if lr == "optimal" else lr
            add("train", f"numerics: {prob.label}", f"{meth} rho={rho:g} lr={lr}",
                lambda prob=prob, meth=meth, rho=rho, lr=lr: nn.train(prob.model, prob.params, (prob.x, prob.y, prob.xt, prob.y[:3]),
                                                                      get_method(meth, force=True), lr, 2, rho),
                ("damping", "singular|diverged"),
                verify=lambda r, prob=prob, meth=meth, rho=rho, eta=eta: train_err(r, prob, meth, eta, 2, rho, True),
                tol=1e-7, quick=meth == "kfac", owner=owner)
    P32 = problem(widths=(5, 8, 7, 1), sb=0.3, dtype="float32")
    add("train", f"numerics: {P32.label}", "exact rho=1e-3 lr=optimal",
        lambda: nn.train(P32.model, P32.params, (P32.x, P32.y), "exact", "optimal", 2, 1e-3),
        verify=lambda r: train_err(r, P32, "exact", 1.0, 2, 1e-3) + 1e3 * (r.f_train.dtype != jnp.float32), tol=3e-3)


def theory_alpha_known(meth):
    return meth if meth in ("exact", "block_diagonal", "kfac", "unit_wise") else None


def build(quick: bool):
    CASES.clear()
    battery_bad_inputs()
    battery_numerics()
    battery_analytic()
    battery_theory_constants()
    battery_dynamics()
    return [c for c in CASES if c.quick] if quick else list(CASES)


# ============================================================================ report
def table(rows) -> str:
    entries = sorted({r["entry"] for r in rows})
    short = ("clear", "verified", "silent", "unclear")
    w = max(len(e) for e in entries + ["entry point"])
    lines = [f"{'entry point':<{w}}  " + "  ".join(f"{s:>8}" for s in short) + f"  {'total':>6}"]
    for e in entries + ["TOTAL"]:
        sel = rows if e == "TOTAL" else [r for r in rows if r["entry"] == e]
        counts = [sum(r["outcome"] == k for r in sel) for k in CLASSES]
        lines.append(f"{e:<{w}}  " + "  ".join(f"{c:>8}" for c in counts) + f"  {len(sel):>6}")
    return "\n".join(lines)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="a representative subset (< 60 s)")
    ap.add_argument("--out", default=str(ROOT / "results" / "stress" / "stress.json"), help="JSON of all cases")
    ap.add_argument("--filter", default="", help="only cases whose 'entry kind name' contains one of these (comma-separated)")
    ap.add_argument("--list", action="store_true", help="list the cases and exit")
    ap.add_argument("--no-progress", action="store_true")
    a = ap.parse_args(argv)
    t0 = time.perf_counter()
    keys = [k for k in a.filter.split(",") if k] or [""]
    cases = [c for c in build(a.quick) if any(k in f"{c.entry} {c.kind} {c.name}" for k in keys)]
    if a.list:
        for c in cases:
            print(f"{c.entry:22s} {c.kind:40s} {c.name}")
        print(f"{len(cases)} cases")
        return 0
    rows, tty = [], sys.stderr.isatty() and not a.no_progress
    for i, c in enumerate(cases, 1):
        rows.append(run_case(c))
        bad = sum(r["outcome"] in ("silent wrong", "unclear error") for r in rows)
        line = f"[{i}/{len(cases)}] {time.perf_counter() - t0:6.1f}s  failures {bad}  {c.entry}: {c.kind} {c.name}"[:150]
        if tty:
            print("\r" + line.ljust(150), end="", file=sys.stderr, flush=True)
        elif not a.no_progress and (i % 50 == 0 or i == len(cases)):
            print(line, file=sys.stderr, flush=True)
    if tty:
        print(file=sys.stderr)
    elapsed = time.perf_counter() - t0
    print(table(rows))
    failed = [r for r in rows if r["outcome"] in ("silent wrong", "unclear error")]
    mine = [r for r in failed if not r["owner"]]
    owned = [r for r in failed if r["owner"]]
    for title, sel in (("silent wrong / unclear", mine), ("silent wrong / unclear owned elsewhere", owned)):
        if sel:
            print(f"\n{title} ({len(sel)}):")
            for r in sel:
                tag = f" [{r['owner']}]" if r["owner"] else ""
                print(f"  {r['outcome'].upper():14s} {r['entry']}: {r['kind']} {r['name']}{tag}\n      {r['message']}")
    out = pathlib.Path(a.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"quick": a.quick, "seconds": round(elapsed, 1), "n_cases": len(rows),
                               "counts": {k: sum(r["outcome"] == k for r in rows) for k in CLASSES},
                               "cases": rows}, indent=1, default=str))
    print(f"\n{len(rows)} cases in {elapsed:.0f} s: " + ", ".join(f"{sum(r['outcome'] == k for r in rows)} {k}" for k in CLASSES)
          + f" ({len(owned)} of the failures owned elsewhere); JSON: {out}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
