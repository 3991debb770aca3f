"""The optax face: any registered method as an ``optax.GradientTransformationExtraArgs``.

    opt = optax.chain(precondition(model, "kfac", damping=rho), optax.scale(-eta))
    state = opt.init(params)
    updates, state = opt.update(grads, state, params, x=x, y=y)   # the batch as extra args
    params = optax.apply_updates(params, updates)

``precondition`` maps the gradient to the method's direction d = (G + rho I)^+ grad,
grad = J^T (f(X) - y) / N (THEORY sections 2-3), in the params layout, so that this loop takes the
steps theta <- theta - eta d of ``train(model, params, (x, y), "kfac", lr=eta, damping=rho)``.

The direction is computed from ``params`` and the batch (the method needs the layer factors H, D of
``layers.factors``, not only the gradient): the incoming ``updates`` are checked to have the params'
structure and shapes (the gradient of a loss of ``params``) and are otherwise not used, so
``precondition`` goes first in a chain; whatever a chain applies before it is discarded.

optax is a dependency of this module only (``pip install -e ".[optax]"``): ``import ntk_ngd``
does not import it, ``import ntk_ngd.optax_face`` does.
"""
from __future__ import annotations

import functools
from typing import Any, NamedTuple, Optional

import jax
import jax.numpy as jnp
import numpy as np
import optax

from .curvature import get_method
from .layers import factors, to_params
from .ngd import check_damping, check_data, direction_fn


class PreconditionState(NamedTuple):
    """``count``: int32 (), the updates taken (the step t of the next one); ``method``: the method's
    state (``method.init`` / ``method.update``) after step count - 1: () for stateless methods,
    None for a stateful one built without ``batch_size`` until its first update."""
    count: jnp.ndarray
    method: Any


def method_inputs(model, params, x, y):
    """(factors (H, D) at params and x, residuals g = f(x) - y (N, C)): what a method's
    ``init`` / ``update`` / ``direction`` take."""
    return factors(model, params, x), model.apply(params, x) - y


def check_batch(model, x, y):
    """x (N, M_0), y (N, C) (or (N,) for C = 1) as ``ngd.check_data`` checks them; traced values
    (under jit) have their shapes checked, their finiteness cannot be."""
    missing = [name for name, v in (("x", x), ("y", y)) if v is None]
    if missing:
        raise ValueError(f"precondition: update needs the batch as extra args x (N, M_0) and y (N, C): "
                         f"{' and '.join(missing)} missing (opt.update(grads, state, params, x=x, y=y))")
    with jax.ensure_compile_time_eval():  # known values are checked now, also inside a trace
        if not (isinstance(x, jax.core.Tracer) or isinstance(y, jax.core.Tracer)):
            return check_data(model, x, y)
        x = jnp.asarray(x)  # traced: the checks on zeros of the same shapes
        _, y_shaped = check_data(model, np.zeros(x.shape, x.dtype), np.zeros(np.shape(y), x.dtype))
    return x, jnp.asarray(y, x.dtype).reshape(y_shaped.shape)


def check_updates(updates, params) -> None:
    """Raise unless ``updates`` has the structure and leaf shapes of ``params``."""
    u_leaves, u_def = jax.tree_util.tree_flatten(updates)
    p_leaves, p_def = jax.tree_util.tree_flatten(params)
    if u_def != p_def or any(np.shape(u) != np.shape(p) for u, p in zip(u_leaves, p_leaves)):
        shapes = lambda t: jax.tree_util.tree_map(np.shape, t)
        raise ValueError(f"precondition: updates (the gradient) must have the structure and shapes of params "
                         f"{shapes(params)}, got {shapes(updates)}")


def zero_state(model, method, rho: float, params, n: int):
    """Zeros with the shapes and dtypes of ``method.init`` on a batch of n samples (x in the params'
    dtype); the values come from ``init`` at the first update."""
    dtype = jnp.result_type(params[0]["W"])
    x = jax.ShapeDtypeStruct((n, model.widths[0]), dtype)
    y = jax.ShapeDtypeStruct((n, model.n_outputs), dtype)
    shapes = jax.eval_shape(lambda p, x, y: method.init(*method_inputs(model, p, x, y), rho), params, x, y)
    return jax.tree_util.tree_map(lambda s: jnp.zeros(s.shape, s.dtype), shapes)


def stateful_direction(model, method, rho: float, params, x, y, state: PreconditionState):
    """(d as W~ blocks, method state) of step t = state.count, as ``train`` takes it:
    state_0 = init(factors_0, g_0), state_t = update(state_{t-1}, factors_t, g_t, t),
    d_t = direction(factors_t, g_t, state_t)."""
    fac, g = method_inputs(model, params, x, y)
    init = lambda: method.init(fac, g, rho)
    if state.method is None:  # lazy: the first update gives the state its shapes
        ms = init()
    else:
        ms = jax.lax.cond(state.count == 0, init, lambda: state.method)
    ms = method.update(ms, fac, g, rho, state.count)
    return method.direction(fac, g, rho, ms), ms


def precondition(model, method, damping=0.0, batch_size: Optional[int] = None,
                 **options) -> optax.GradientTransformationExtraArgs:
    """The method's direction as an optax transformation:
    ``update(updates, state, params, *, x, y) -> (d, state)``, d = (G + rho I)^+ J^T (f(x) - y) / N
    in the params layout ([{"W" (M_l, M_{l-1}), "b" (M_l,)}]) for the batch x (N, M_0), y (N, C).

    ``method``: a registered name with its ``options``, or a method object, as ``train`` takes it;
    ``damping`` = rho. ``updates`` must have the params' structure and shapes and are not used
    otherwise (d comes from params and the batch). The method's conditions (``method.check``) are
    checked once per batch size: at the first update, or here if ``batch_size`` is given.

    State (``PreconditionState``): the update count t and, for stateful methods (``method.stateful``:
    a held GFIM, accumulated Shampoo statistics), the method's state, initialised from the first
    update's params and batch exactly as ``train`` does from its initial params. Without
    ``batch_size`` that state is None until the first update (the state's structure changes once:
    jit traces update twice, and the first step is taken outside a ``lax.scan``); with
    ``batch_size`` = N, ``init`` allocates it with its shapes, every update must have N samples,
    and the state has a fixed structure from the start (a ``lax.scan`` can carry it)."""
    rho = check_damping(damping)
    m = get_method(method, **options)
    stateful = m.stateful
    fn = direction_fn(model, m, rho)  # stateless methods: train's direction function
    check = functools.lru_cache(maxsize=None)(lambda n: m.check(model, n, rho))
    if batch_size is not None:
        if isinstance(batch_size, bool) or int(batch_size) != batch_size or batch_size < 1:
            raise ValueError(f"precondition: batch_size must be an integer >= 1 or None, got {batch_size!r}")
        batch_size = int(batch_size)
        check(batch_size)

    @jax.jit
    def step(params, x, y, state):
        if stateful:
            d, ms = stateful_direction(model, m, rho, params, x, y, state)
        else:
            d, ms = fn(params, x, y), state.method
        return to_params(d), PreconditionState(optax.safe_increment(state.count), ms)

    def init(params):
        model.check_params(params)
        ms = ((None if batch_size is None else zero_state(model, m, rho, params, batch_size))
              if stateful else ())
        return PreconditionState(jnp.zeros((), jnp.int32), ms)

    def update(updates, state, params=None, *, x=None, y=None, **extra_args):
        del extra_args  # optax.chain passes every extra arg to every transformation
        if params is None:
            raise ValueError("precondition: update needs params (the direction is computed from them): "
                             "opt.update(grads, state, params, x=x, y=y)")
        model.check_params(params)
        check_updates(updates, params)
        x, y = check_batch(model, x, y)
        n = x.shape[0]
        if batch_size is not None and n != batch_size:
            raise ValueError(f"precondition: built with batch_size={batch_size}, got a batch of {n} samples")
        check(n)
        d, state = step(params, x, y, state)
        tree = jax.tree_util.tree_structure(params)  # the params' own containers (a tuple of layers too)
        return jax.tree_util.tree_unflatten(tree, jax.tree_util.tree_leaves(d)), state

    return optax.GradientTransformationExtraArgs(init, update)
