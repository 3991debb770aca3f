"""A jit-compiled training loop that records per-step train/test outputs and losses."""
from __future__ import annotations

from typing import NamedTuple, Optional

import jax
import jax.numpy as jnp

from . import checks, losses
from .curvature import get_method
from .dynamics import empirical_source, optimal_lr, preconditioned_kernel
from .layers import factors, from_params, to_params
from .ngd import check_damping, check_data, check_loss, check_overflow, direction_fn


class TrainResult(NamedTuple):
    """f_train (T+1, N, C), f_test (T+1, N', C) or None, loss_train / loss_test (T+1,), final params."""
    f_train: jnp.ndarray
    f_test: Optional[jnp.ndarray]
    loss_train: jnp.ndarray
    loss_test: Optional[jnp.ndarray]
    params: list
    lr: float
    method: str
    damping: float


def split_data(data):
    """(x_train, y_train, x_test, y_test) from a Dataset-like object or a tuple (x, y[, x', y'])."""
    if hasattr(data, "x_train"):
        return data.x_train, data.y_train, getattr(data, "x_test", None), getattr(data, "y_test", None)
    if not isinstance(data, (tuple, list)):
        raise ValueError(f"data must be a Dataset (x_train, y_train[, x_test, y_test]) or a tuple (x, y[, x', y']), "
                         f"got {type(data).__name__}")
    data = tuple(data)
    if len(data) == 2:
        return data[0], data[1], None, None
    if len(data) == 4:
        return data
    raise ValueError("data must have x_train, y_train[, x_test, y_test] or be a tuple (x, y[, x', y'])")


def resolve_lr(lr, model, method, x, params, rho, loss="mse", **options) -> float:
    """lr as a number, or "optimal" (1/alpha; 1/lambda_max(Theta_G) if not isotropic) or "paper"
    (the paper code's constants for K-FAC and unit-wise)."""
    if not isinstance(lr, str):
        return checks.learning_rate(lr)
    if lr not in ("optimal", "paper"):
        raise ValueError(f"lr must be a number, 'optimal' or 'paper', got {lr!r}")
    if loss == "cross_entropy":
        raise ValueError("give cross-entropy training a numeric lr")
    m = get_method(method, **options)
    convention = "paper" if lr == "paper" else "theory"
    theta_g = None
    if m.alpha(model, x.shape[0]) is None:
        if not m.linear:
            raise ValueError(f"lr={lr!r}: {m.name} has no isotropy constant and its step is nonlinear in the "
                             "residual (no Theta_G to take 1/lambda_max of); give a numeric lr")
        theta_g, _ = preconditioned_kernel(m, empirical_source(model, params, x), rho)
    return optimal_lr(m, model, x.shape[0], theta_g, convention)


def train(model, params, data, method, lr="optimal", steps=10, damping=0.0, loss="mse", lr_power: float = 0.0,
          **options) -> TrainResult:
    """Train with theta <- theta - eta_t d(method) for ``steps`` steps (one jit-compiled scan).

    ``method``: a registered name with its ``options``, or a method object. eta_t = lr
    (||r_t|| / ||r_0||)^lr_power, r_t = f_t(X) - y: 0 (the default) is a fixed step; a map Phi
    homogeneous of degree d converges geometrically with lr_power = 1 - d (THEORY section 9,
    ``diagnostics.schedule_power``)."""
    rho = check_damping(damping)
    check_loss(loss)
    checks.model(model).check_params(params)
    x, y, xt, yt = split_data(data)
    dtype = checks.float_dtype(params)
    x, y = check_data(model, x, y, dtype)
    if xt is not None:
        if yt is None:
            raise ValueError("data has x_test but no y_test: give both or neither")
        xt, yt = check_data(model, xt, yt, dtype, ("x_test", "y_test"))  # no rows: "pass None for no test set"
    steps = checks.count(steps, "steps", 0)
    if loss == "mse":
        method = get_method(method, **options)
        options = {}
    eta = resolve_lr(lr, model, method, x, params, rho, loss, **options)
    fn = direction_fn(model, method, rho, loss, n_train=x.shape[0], **options)
    loss_fn = losses.mse if loss == "mse" else losses.cross_entropy
    stateful = loss == "mse" and method.stateful
    q = checks.real(lr_power, "lr_power")

    def outputs(blocks):
        p = to_params(blocks)
        return model.apply(p, x), (None if xt is None else model.apply(p, xt))

    @jax.jit
    def run(blocks):
        # stateful methods (THEORY section 9: a held GFIM, accumulated Shampoo factors) carry their
        # state through the scan: state_t = update(state_{t-1}, factors_t, r_t), d_t uses state_t
        def inputs(b):
            p = to_params(b)
            return factors(model, p, x), model.apply(p, x) - y

        r0_norm = jnp.linalg.norm(model.apply(to_params(blocks), x) - y)

        def step(carry, t):
            b, state = carry
            if stateful:
                fac, g = inputs(b)
                state = method.update(state, fac, g, rho, t)
                d = method.direction(fac, g, rho, state)
            else:
                d = fn(to_params(b), x, y)
            eta_t = eta if q == 0 else eta * (jnp.linalg.norm(model.apply(to_params(b), x) - y) / r0_norm) ** q
            return ([bl - eta_t * dl for bl, dl in zip(b, d)], state), outputs(b)

        state0 = method.init(*inputs(blocks), rho) if stateful else ()
        (final, _), (ft, fx) = jax.lax.scan(step, (blocks, state0), jnp.arange(int(steps)))
        last = outputs(final)
        ft = jnp.concatenate([ft, last[0][None]])
        fx = None if xt is None else jnp.concatenate([fx, last[1][None]])
        return final, ft, fx

    final, ft, fx = run(from_params(params))
    label = method.name if loss == "mse" else str(method)
    if not bool(jnp.all(jnp.isfinite(ft))):
        check_overflow(model, params, x)  # kernels that overflow at init are not a divergence
        hint = ("; unit-wise NGD at rho = 0 inverts per-unit kernels that are singular or nearly so at finite "
                "width: use a small damping rho << 1/M (e.g. --damping 1e-6 --damping-scale per_width)"
                if label == "unit_wise" and rho == 0 else "; try damping > 0 or a smaller lr")
        raise FloatingPointError(f"{label}: training diverged or hit a singular system (lr={eta}, damping={rho})"
                                 + hint)
    lt = jax.vmap(lambda f: loss_fn(f, y))(ft)
    lx = None if xt is None else jax.vmap(lambda f: loss_fn(f, yt))(fx)
    return TrainResult(ft, fx, lt, lx, to_params(final), eta, label, rho)
