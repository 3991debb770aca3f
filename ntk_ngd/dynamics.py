"""Linearized function-space dynamics for any preconditioner (THEORY sections 3 and 6).

    f_{t+1}(X) - y = (I - eta Theta_G) (f_t(X) - y),       Theta_G = J G^+ J^T / N   (N C, N C)
    f_{t+1}(x')    = f_t(x') - eta Theta_G(x', X) (f_t(X) - y)                         (N' C, N C)

so f_t - y = (I - eta Theta_G)^t (f_0 - y) exactly, and
    f_t(x') = f_0(x') - Theta_G(x', X) S_t (f_0 - y),  S_t = eta sum_{s<t} (I - eta Theta_G)^s.
Arrays: outputs (N, C); trajectories (T+1, N, C); kernels flattened sample-major.
"""
from __future__ import annotations

from typing import NamedTuple, Optional

import jax
import jax.numpy as jnp
import numpy as np

from .curvature import KernelSource, ResidualMap, get_method
from .layers import factors, grams, j_vec
from .losses import mse
from . import checks
from .ngd import check_damping


# --- kernel sources -------------------------------------------------------------------
def _source_inputs(model, x_train, x_test, dtype=None):
    x_train = checks.inputs(checks.model(model), x_train, "x_train", dtype)
    if x_test is not None:  # no rows: "x_test has no rows ... (pass None for no test set)"
        x_test = checks.inputs(model, x_test, "x_test", x_train.dtype)
    return x_train, x_test


def _source(src) -> KernelSource:
    if not isinstance(src, KernelSource):
        raise TypeError(f"src must be a KernelSource (empirical_source or analytic_source), got {type(src).__name__}")
    return src


def empirical_source(model, params, x_train, x_test=None) -> KernelSource:
    """Finite-network Grams and factors at params (the empirical kernels); x_train (N, M_0),
    x_test (N', M_0) or None."""
    checks.model(model).check_params(params)
    x_train, x_test = _source_inputs(model, x_train, x_test, checks.float_dtype(params))
    ft = factors(model, params, x_train)
    fx = None if x_test is None else factors(model, params, x_test)
    train, cross = grams(ft), None if fx is None else grams(fx, ft)
    checks.finite_grams(train, "x_train", x_train)
    if cross is not None:
        checks.finite_grams(cross, "x_test", x_test)
    return KernelSource(model, train, cross, ft, fx)


def analytic_source(model, x_train, x_test=None) -> KernelSource:
    """Infinite-width Grams (Sigma_l, B_l (x) I_C) from ``analytic.py``."""
    from .analytic import analytic_grams
    x_train, x_test = _source_inputs(model, x_train, x_test)
    train = analytic_grams(model, x_train)
    checks.finite_grams(train, "x_train", x_train)
    cross = None if x_test is None else analytic_grams(model, x_test, x_train)
    if cross is not None:
        checks.finite_grams(cross, "x_test", x_test)
    return KernelSource(model, train, cross)


def residual_map(method, src: KernelSource, damping=0.0, **options) -> ResidualMap:
    """Phi with f_{t+1}(X) - y = r - eta Phi(r) (THEORY section 9): ``Phi(r)`` for r (N, C) or
    (N C,), ``Phi.test(r)`` the test rows (N', C) (None without test inputs). Every method has one:
    J d(r) through the structured layers for empirical sources, Theta_G r from the method's kernel
    form for analytic ones."""
    return get_method(method, **options).residual_map(_source(src), check_damping(damping))


def preconditioned_kernel(method, src: KernelSource, damping=0.0, **options):
    """(Theta_G (N C, N C), Theta_G(x', X) (N' C, N C) or None) for a linear method and a kernel source."""
    rho = check_damping(damping)
    m = get_method(method, **options)
    if not m.linear:
        raise ValueError(f"{m.name}: its function-space step depends on the residual, so it has no "
                         "preconditioned kernel Theta_G; use residual_map")
    train, cross = m.kernel(_source(src), rho)
    if not bool(jnp.all(jnp.isfinite(train))) or (cross is not None and not bool(jnp.all(jnp.isfinite(cross)))):
        raise ValueError(f"{m.name}: Theta_G is not finite at damping={rho}: the kernel-space system is singular "
                         "here and the method has no pseudo-inverse form for it; use damping > 0")
    return 0.5 * (train + train.T), cross


# --- theory constants ------------------------------------------------------------------
def isotropy_constant(method, model, n_train: int, convention: str = "theory", **options) -> Optional[float]:
    """alpha of THEORY section 4 (None for gd and diagonal). convention="paper" gives the paper
    code's constants (K-FAC: N L, unit-wise: gamma (L-1) M) where they differ."""
    m = get_method(method, **options)
    if convention not in ("theory", "paper"):
        raise ValueError(f"convention must be 'theory' or 'paper', got {convention!r}")
    return m.alpha(checks.model(model), checks.count(n_train, "n_train"), "paper" if convention == "paper" else None)


def optimal_lr(method, model, n_train: int, theta_g=None, convention="theory", **options) -> float:
    """eta* = 1 / alpha for isotropic methods; 1 / lambda_max(Theta_G) otherwise (needs theta_g)."""
    m = get_method(method, **options)
    alpha = isotropy_constant(m, model, n_train, convention)
    if alpha is not None:
        if not alpha > 0:
            raise ValueError(f"{m.name}: its isotropy constant is alpha = {alpha} for this network ({convention} "
                             "convention), so eta = 1 / alpha is undefined; give a numeric lr")
        return 1.0 / alpha
    if theta_g is None:
        raise ValueError(f"{m.name} has no isotropy constant: pass theta_g to set eta = 1 / lambda_max")
    theta_g = checks.array(theta_g, "theta_g", ndim=2)
    if theta_g.shape[0] != theta_g.shape[1]:
        raise ValueError(f"theta_g must be a square (N C, N C) matrix, got shape {theta_g.shape}")
    lam = float(jnp.linalg.eigvalsh(0.5 * (theta_g + theta_g.T))[-1])
    if not lam > 0:
        raise ValueError(f"theta_g has no positive eigenvalue (lambda_max = {lam:.3g}): no step size 1 / lambda_max")
    return 1.0 / lam


def spectrum(theta_g):
    """Eigenvalues of the symmetric Theta_G, ascending."""
    return jnp.linalg.eigvalsh(0.5 * (theta_g + theta_g.T))


def isotropy_error(theta_g, alpha: float) -> float:
    """||Theta_G / alpha - I||_2."""
    alpha = checks.real(alpha, "alpha", 0.0, strict=True)
    theta_g = checks.array(theta_g, "theta_g", ndim=2)
    w = spectrum(theta_g) / alpha - 1.0
    return float(jnp.max(jnp.abs(w)))


# --- predictors --------------------------------------------------------------------------
class Prediction(NamedTuple):
    """Predicted trajectories: train (T+1, N, C), test (T+1, N', C) or None, steps (T+1,);
    for the t -> infinity limit train (N, C), test (N', C) or None, steps None."""
    train: jnp.ndarray
    test: Optional[jnp.ndarray]
    steps: Optional[np.ndarray]


def _geometric(x, t):
    """((1 - x)^t, sum_{s<t} (1 - x)^s) elementwise, accurate for small x."""
    small = jnp.abs(x) < 0.5
    xs = jnp.where(small, x, 0.0)
    pw_small = jnp.exp(t * jnp.log1p(-xs))
    pw = jnp.where(small, pw_small, jnp.power(1.0 - x, t))
    geo_small = jnp.where(xs == 0, t, -jnp.expm1(t * jnp.log1p(-xs)) / jnp.where(xs == 0, 1.0, xs))
    geo = jnp.where(small, geo_small, (1.0 - pw) / jnp.where(small, 1.0, x))
    return pw, geo


def _steps(t) -> np.ndarray:
    """An int T -> 0..T; a 1-d array of integer steps >= 0 as given."""
    if np.ndim(t) == 0:
        return np.arange(checks.count(t, "steps", 0) + 1)
    a = np.asarray(t)
    if a.ndim != 1 or a.size == 0 or a.dtype.kind not in "iuf" or np.any(a != np.round(a)) or np.any(a < 0):
        raise ValueError(f"steps must be an integer >= 0 or a non-empty 1-d array of such integers, got {t!r}")
    return a.astype(np.int64)


def _kernel(theta, name: str, shape: tuple, why: str = ""):
    a = checks.array(theta, name)
    if a.shape != shape:
        raise ValueError(f"{name} must have shape (N C, N C) = {shape}{why}, got {a.shape}")
    return a


def _initial(f0_train, f0_test, y):
    """f0_train (N, C) of y's shape and f0_test (N', C) or None, checked."""
    if f0_train is None:
        raise ValueError("f0_train (the outputs at t = 0, (N, C)) is required")
    f0_train = _outputs(f0_train, "f0_train", y.shape[1])
    if f0_train.shape != y.shape:
        raise ValueError(f"f0_train must have y's shape {y.shape}, got {f0_train.shape}")
    return f0_train, None if f0_test is None else _outputs(f0_test, "f0_test", y.shape[1])


def _finite(p: "Prediction", lr) -> "Prediction":
    """Refuse a prediction that overflowed: the step size is unstable for these kernels."""
    for a in (p.train, p.test):
        if a is not None and not bool(jnp.all(jnp.isfinite(a))):
            raise FloatingPointError(f"lr = {lr:g} is unstable here: the predicted outputs overflow to inf/NaN "
                                     "(eta lambda >= 2 for an eigenvalue lambda of the step's operator); use a smaller lr")
    return p


def _outputs(f, name: str, c: Optional[int] = None):
    a = checks.array(f, name)
    if a.ndim != 2 or (c is not None and a.shape[1] != c):
        raise ValueError(f"{name} must have shape (N, C{'' if c is None else '=' + str(c)}), got {a.shape}")
    return a


def linearized(theta_g, y, lr: float, cross=None, symmetric_tol: float = 1e-10):
    """Predictor factory of the linearized dynamics f_{t+1}(X) - y = (I - eta Theta_G)(f_t(X) - y).

    theta_g (N C, N C), y (N, C), cross = Theta_G(x', X) (N' C, N C) or None. The spectrum of a
    symmetric Theta_G is computed once, here; a non-symmetric one is iterated step by step.
    Returns ``predict_fn(t=None, f0_train, f0_test=None) -> Prediction``: ``t`` an int T (steps
    0..T) or an array of steps gives trajectories (len(t), N, C); ``t=None`` the t -> infinity
    limit f_inf(X) = y + P_0 (f_0 - y), f_inf(x') = f_0(x') - Theta_G(x', X) Theta_G^+ (f_0 - y),
    as (N, C) arrays (``steps`` None).
    """
    lr = checks.learning_rate(lr)
    y = _outputs(y, "y")
    nc = y.size
    theta_g = _kernel(theta_g, "theta_g", (nc, nc), f" for y of shape {y.shape}")
    if cross is not None:
        cross = checks.array(cross, "cross")
        if cross.ndim != 2 or cross.shape[1] != nc or cross.shape[0] % y.shape[1]:
            raise ValueError(f"cross must have shape (N' C, N C = {nc}), got {cross.shape}")
    asym = jnp.max(jnp.abs(theta_g - theta_g.T)) / jnp.maximum(jnp.max(jnp.abs(theta_g)), 1e-300)
    symmetric = float(asym) <= symmetric_tol
    w, U = jnp.linalg.eigh(0.5 * (theta_g + theta_g.T))

    def limit(f0_train, f0_test):
        n, c = f0_train.shape
        keep = w > jnp.finfo(w.dtype).eps * w.size * 10 * jnp.max(jnp.abs(w))
        z = U.T @ (f0_train - y).reshape(-1)
        train = y + (U @ jnp.where(keep, 0.0, z)).reshape(n, c)
        test = None
        if cross is not None and f0_test is not None:
            winv = jnp.where(keep, 1.0 / jnp.where(keep, w, 1.0), 0.0)
            test = f0_test - (cross @ (U @ (winv * z))).reshape(-1, c)
        return Prediction(train, test, None)

    def predict_fn(t=None, f0_train=None, f0_test=None) -> Prediction:
        return _finite(_predict(t, f0_train, f0_test), lr)

    def _predict(t, f0_train, f0_test) -> Prediction:
        f0_train, f0_test = _initial(f0_train, f0_test, y)
        if f0_test is not None:
            if cross is not None and f0_test.size != cross.shape[0]:
                raise ValueError(f"f0_test has {f0_test.size} entries, cross has {cross.shape[0]} rows")
        if t is None:
            return limit(f0_train, f0_test)
        steps = _steps(t)
        cr = None if f0_test is None else cross
        if not symmetric:
            return _iterate(theta_g, cr, f0_train, f0_test, y, lr, steps)
        n, c = f0_train.shape
        z = U.T @ (f0_train - y).reshape(-1)
        pw, geo = _geometric(lr * w[None, :], jnp.asarray(steps, w.dtype)[:, None])
        train = y[None] + ((pw * z) @ U.T).reshape(-1, n, c)
        test = None if cr is None else f0_test[None] - (((lr * geo * z) @ U.T) @ cr.T).reshape(len(steps), -1, c)
        return Prediction(train, test, steps)

    predict_fn.eigenvalues = w
    return predict_fn


def predict(theta_g, cross, f0_train, f0_test, y, lr: float, steps, symmetric_tol: float = 1e-10) -> Prediction:
    """Exact discrete-time trajectories for t in ``steps`` (an int T means 0..T): ``linearized``.

    Eigendecomposition of the symmetric Theta_G: (I - eta Theta_G)^t = U diag((1 - eta lambda)^t) U^T;
    a non-symmetric Theta_G is iterated step by step (exact, stable).
    """
    if steps is None:
        raise ValueError("steps must be an integer >= 0 or a non-empty 1-d array of such integers, got None "
                         "(the t -> infinity limit is predict_limit)")
    return linearized(theta_g, y, lr, cross, symmetric_tol)(steps, f0_train, None if cross is None else f0_test)


def _iterate(theta_g, cross, f0_train, f0_test, y, lr, steps):
    return iterated(lambda r: theta_g @ r, y, lr, None if cross is None else (lambda r: cross @ r))(
        steps, f0_train, f0_test)


def iterated(phi, y, lr: float, phi_test=None):
    """Predictor factory of the lazy-regime recursion r_{t+1} = r_t - eta Phi(r_t) (kernels fixed
    at init; THEORY section 9), for any residual map: ``phi`` maps the flat r (N C,) to Phi(r),
    ``phi_test`` (optional) to the test-row step (N' C,). A ``ResidualMap`` works as both.
    Returns ``predict_fn(t, f0_train, f0_test=None) -> Prediction`` (t an int T or an array of steps)."""
    lr = checks.learning_rate(lr)
    y = _outputs(y, "y")
    checks.function(phi, "phi")
    if phi_test is not None:
        checks.function(phi_test, "phi_test")

    def predict_fn(t, f0_train, f0_test=None) -> Prediction:
        steps = _steps(t)
        f0_train, f0_test = _initial(f0_train, f0_test, y)
        n, c = f0_train.shape
        with_test = phi_test is not None and f0_test is not None

        def step(carry, _):  # emits (r_t, f_t(x')), carries step t + 1
            r, ft = carry
            nxt = ft - lr * phi_test(r).reshape(-1) if with_test else ft
            return (r - lr * phi(r).reshape(-1), nxt), (r, ft)

        f0t = f0_test.reshape(-1) if with_test else jnp.zeros(1, f0_train.dtype)
        _, (rs, fts) = jax.lax.scan(step, ((f0_train - y).reshape(-1), f0t), None, length=int(steps.max()) + 1)
        train = y[None] + rs[steps].reshape(-1, n, c)
        return _finite(Prediction(train, fts[steps].reshape(len(steps), -1, c) if with_test else None, steps), lr)

    return predict_fn


def residual_predictor(rmap: ResidualMap, y, lr: float):
    """``iterated`` for a method's ``ResidualMap`` (train and, where it has one, test rows)."""
    return iterated(rmap.train, y, lr, rmap.test)


def method_predictor(method, src: KernelSource, y, lr: float, damping=0.0, lr_power: float = 0.0, **options):
    """Lazy-regime predictor of any method on an empirical source (kernels fixed at init, THEORY
    section 9): r_{t+1} = r_t - eta J_0 d(r_t; state_t), test rows f_{t+1}(x') = f_t(x') - eta J_0(x') d,
    with state_t = update(state_{t-1}, factors_0, r_t, t) for stateful methods (held GFIM,
    accumulated Shampoo factors), and eta_t = lr (||r_t|| / ||r_0||)^lr_power as in ``train``.
    Returns ``predict_fn(t, f0_train, f0_test=None) -> Prediction``."""
    m, rho = get_method(method, **options), check_damping(damping)
    lr, y, q = checks.learning_rate(lr), _outputs(y, "y"), checks.real(lr_power, "lr_power")
    if not _source(src).empirical:
        raise ValueError(f"{m.name}: method_predictor needs an empirical source (the structured factors)")
    if y.shape != (src.n, src.C):
        raise ValueError(f"y must have shape (N, C) = {(src.n, src.C)} of the source's training inputs, got {y.shape}")
    fac, fx = src.fac_train, src.fac_test
    c = src.C

    def predict_fn(t, f0_train, f0_test=None) -> Prediction:
        steps = _steps(t)
        f0_train, f0_test = _initial(f0_train, f0_test, y)
        if f0_test is not None and fx is not None and f0_test.shape[0] != fx.H[0].shape[0]:
            raise ValueError(f"f0_test must have one row per test input of the source ({fx.H[0].shape[0]}), "
                             f"got shape {f0_test.shape}")
        with_test = fx is not None and f0_test is not None
        r0 = f0_train - y

        def step(carry, k):  # emits (r_t, f_t(x')), carries step t + 1
            r, ft, state = carry
            state = m.update(state, fac, r, rho, k) if m.stateful else state
            d = m.direction(fac, r, rho, state)
            eta = lr if q == 0 else lr * (jnp.linalg.norm(r) / jnp.linalg.norm(r0)) ** q
            nxt = ft - eta * j_vec(fx, d) if with_test else ft
            return (r - eta * j_vec(fac, d), nxt, state), (r, ft)

        state0 = m.init(fac, r0, rho) if m.stateful else ()
        f0t = f0_test if with_test else jnp.zeros((1, c), f0_train.dtype)
        _, (rs, fts) = jax.lax.scan(step, (r0, f0t, state0), jnp.arange(int(steps.max()) + 1))
        return _finite(Prediction(y[None] + rs[steps], fts[steps] if with_test else None, steps), lr)

    return predict_fn


def predict_limit(theta_g, cross, f0_train, f0_test, y, lr: Optional[float] = None):
    """t -> infinity (``linearized(...)(None, ...)``): f_inf(X) = y + P_0 (f_0 - y) (P_0 the projector
    on null Theta_G) and f_inf(x') = f_0(x') - Theta_G(x', X) Theta_G^+ (f_0 - y). With ``lr``,
    checks 0 < eta lambda < 2."""
    fn = linearized(theta_g, y, 1.0 if lr is None else lr, cross)
    if lr is not None:
        w = fn.eigenvalues
        keep = w > jnp.finfo(w.dtype).eps * w.size * 10 * jnp.max(jnp.abs(w))
        if not bool(jnp.all(jnp.where(keep, (lr * w > 0) & (lr * w < 2), True))):
            raise ValueError(f"lr = {lr} is unstable: eta * lambda_max(Theta_G) = {float(lr * w[-1]):.4g} >= 2")
    p = fn(None, f0_train, f0_test)
    return p.train, p.test


def predict_gd_continuous(theta, cross, f0_train, f0_test, y, lr: float, times) -> Prediction:
    """Gradient flow on the MSE loss: f_t - y = exp(-eta t Theta / N)(f_0 - y); f_t(x') likewise
    with (Theta / N)(x', X). ``theta`` is the NTK Theta (N C, N C), ``cross`` Theta(x', X)."""
    lr = checks.learning_rate(lr)
    y = _outputs(y, "y")
    theta = _kernel(theta, "theta", (y.size, y.size), f" for y of shape {y.shape}")
    f0_train, f0_test = _initial(f0_train, f0_test, y)
    if cross is not None:
        cross = checks.array(cross, "cross", ndim=2)
        if f0_test is None or cross.shape != (f0_test.size, y.size):
            raise ValueError(f"cross must have shape (N' C, N C) = ({'N' if f0_test is None else f0_test.size}' C, "
                             f"{y.size}) with f0_test given, got {cross.shape}")
    times = np.atleast_1d(np.asarray(checks.array(times, "times"), float))
    if times.ndim != 1 or np.any(times < 0):
        raise ValueError(f"times must be a 1-d array of times >= 0, got {times}")
    n, c = f0_train.shape
    w, U = jnp.linalg.eigh(0.5 * (theta + theta.T) / n)
    z = U.T @ (f0_train - y).reshape(-1)
    decay = jnp.exp(-lr * times[:, None] * w[None, :])
    train = y[None] + ((decay * z) @ U.T).reshape(-1, n, c)
    test = None
    if cross is not None:
        winv = jnp.where(w > 0, 1.0 / jnp.where(w > 0, w, 1.0), 0.0)
        integral = jnp.where(w[None, :] > 0, (1 - decay) * winv, lr * times[:, None])
        test = f0_test[None] - ((integral * z) @ U.T @ (cross / n).T).reshape(len(times), -1, c)
    return Prediction(train, test, times)


# --- finite-width diagnostics --------------------------------------------------------------
def trajectory_error(f_nn, f_pred, f0, y):
    """e_t = ||f_t^NN - f_t^pred|| / ||f_0(X) - y||, (T+1,)."""
    scale = jnp.linalg.norm(f0 - y)
    return jnp.linalg.norm((f_nn - f_pred).reshape(f_nn.shape[0], -1), axis=1) / scale


def loss_curve(f, y):
    """MSE 1/(2N) sum_n ||f_t(x_n) - y_n||^2 per step of a trajectory f (T+1, N, C): (T+1,)."""
    return jax.vmap(lambda ft: mse(ft, y))(jnp.asarray(f))


def one_step_ratio(f1, f0, y) -> float:
    """||f_1 - y|| / ||f_0 - y|| (to compare with |1 - eta alpha|)."""
    return float(jnp.linalg.norm(f1 - y) / jnp.linalg.norm(f0 - y))


def kernel_drift(theta_t, theta_0) -> float:
    """||Theta_t - Theta_0||_F / ||Theta_0||_F."""
    return float(jnp.linalg.norm(theta_t - theta_0) / jnp.linalg.norm(theta_0))
