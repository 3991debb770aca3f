"""Parameter-space NGD steps: ``ngd_direction`` for every method and loss (THEORY sections 2, 4, 7)."""
from __future__ import annotations

import functools

import jax
import jax.numpy as jnp

from . import checks
from .curvature import get_method
from .layers import factors, grams, to_params
from . import losses


def check_damping(damping) -> float:
    """rho: a finite number >= 0 (``checks.damping``)."""
    return checks.damping(damping)


def check_data(model, x, y, dtype=None, names=("x", "y")):
    """x (N, M_0) and y (N, C): shapes, real dtypes (integers cast to the float in use, ``dtype`` if
    given), finiteness (``checks.data``); returns jnp arrays."""
    return checks.data(model, x, y, dtype, names)


def check_overflow(model, params, x, name: str = "x") -> None:
    """Raise a FloatingPointError naming the inputs where the outputs or kernels on finite x overflow
    (a non-finite step is then not a singular system)."""
    f = model.apply(params, x)
    if not bool(jnp.all(jnp.isfinite(f))):
        raise FloatingPointError(f"the network outputs on {name} overflow to inf/NaN although {name} and the params "
                                 f"are finite (largest |entry| {float(jnp.max(jnp.abs(x))):.3g}): rescale the inputs")
    checks.finite_grams(grams(factors(model, params, x)), name, x)


def check_loss(loss) -> str:
    """loss: "mse" or "cross_entropy"."""
    if not isinstance(loss, str) or loss not in ("mse", "cross_entropy"):
        raise ValueError(f"unknown loss {loss!r}; choose 'mse' or 'cross_entropy'")
    return loss


def direction_fn(model, method, rho: float, loss: str = "mse", n_train=None, **options):
    """A pure function (params, x, y) -> W~ blocks of the direction, for jit (rho is static).

    ``method`` is a registered name (with ``options``) or a method object. Checks the method's
    conditions for ``n_train`` samples once, here.
    """
    if loss == "cross_entropy":
        if options:
            raise ValueError(f"cross-entropy methods take no options {sorted(options)}")
        losses.check_ce(model, method, rho)
        return lambda params, x, y: losses.ce_direction_blocks(model, params, x, y, method, rho)
    if loss != "mse":
        raise ValueError(f"unknown loss {loss!r}; choose 'mse' or 'cross_entropy'")
    m = get_method(method, **options)
    if n_train is not None:
        m.check(model, n_train, rho)

    def fn(params, x, y):
        return m.direction(factors(model, params, x), model.apply(params, x) - y, rho)
    return fn


@functools.lru_cache(maxsize=64)
def compiled_direction(model, method, rho: float, loss: str = "mse"):
    """The jit-compiled direction function of (model, method object or CE name, rho, loss), cached:
    repeated ``ngd_direction`` calls reuse it (jit caches the compilation per input shape)."""
    return jax.jit(direction_fn(model, method, rho, loss))


def ngd_direction(model, params, x, y, method, damping=0.0, loss="mse", **options):
    """Direction d (params layout) such that theta <- theta - eta d.

    method: a registered name (gd, exact, block_diagonal, block_tridiagonal, kfac (damping_mode
    "tikhonov" | "factored", forster), unit_wise, diagonal, or a user's) with its options, or a
    method object; with loss="cross_entropy": gd, exact, exact_mse.
    d = (G + rho I)^+ grad computed through N C x N C kernel-space systems (J is never formed).
    """
    rho = check_damping(damping)
    check_loss(loss)
    checks.model(model).check_params(params)
    x, y = check_data(model, x, y, checks.float_dtype(params))
    if loss == "mse":
        method = get_method(method, **options)
        method.check(model, x.shape[0], rho)
    elif options:
        raise ValueError(f"cross-entropy methods take no options {sorted(options)}")
    else:
        losses.check_ce(model, method, rho)
    d = compiled_direction(model, method, rho, loss)(params, x, y)
    if not all(bool(jnp.all(jnp.isfinite(b))) for b in d):
        check_overflow(model, params, x)
        label = method.name if loss == "mse" else method
        raise ValueError(f"{label}: the kernel-space system is singular at damping={rho} (inputs and params are "
                         "finite) and has no pseudo-inverse solution here; use damping > 0")
    return to_params(d)
