"""Validation at the public entry points, written once: every check names the argument and the problem.

Arrays: real numeric input only (complex, object and string arrays are refused); integer and bool
arrays are cast to the float dtype in use (that of the params, else JAX's default float), so raw
uint8 pixels and integer labels keep their exact values; NaN and inf are refused. Counts are
integers (bool, fractional and non-numeric values are refused) with a lower bound; learning rates
are finite and positive; dampings finite and >= 0.
"""
from __future__ import annotations

import numbers
from typing import Optional

import jax
import jax.numpy as jnp
import numpy as np


def _is_number(v) -> bool:
    return isinstance(v, (numbers.Real, np.number)) and not isinstance(v, (bool, np.bool_)) or (
        isinstance(v, (np.ndarray, jnp.ndarray)) and np.ndim(v) == 0 and np.asarray(v).dtype.kind in "iuf")


def count(value, name: str, minimum: int = 1) -> int:
    """An integer >= ``minimum`` (N, a width, a depth, a number of steps)."""
    if not _is_number(value) or not np.isfinite(float(value)) or float(value) != int(value):
        raise ValueError(f"{name} must be an integer >= {minimum}, got {value!r}")
    if int(value) < minimum:
        raise ValueError(f"{name} must be an integer >= {minimum}, got {int(value)}")
    return int(value)


def real(value, name: str, minimum: Optional[float] = None, strict: bool = False) -> float:
    """A finite real number (>= minimum, or > minimum with ``strict``)."""
    if not _is_number(value) or not np.isfinite(float(value)):
        raise ValueError(f"{name} must be a finite number, got {value!r}")
    v = float(value)
    if minimum is not None and (v <= minimum if strict else v < minimum):
        raise ValueError(f"{name} must be {'>' if strict else '>='} {minimum:g}, got {v:g}")
    return v


def damping(value) -> float:
    """rho: a finite number >= 0."""
    return real(value, "damping", 0.0)


def learning_rate(value, name: str = "lr") -> float:
    """eta: a finite number > 0."""
    return real(value, name, 0.0, strict=True)


def _all_finite(a) -> Optional[bool]:
    """Whether every entry of ``a`` is finite; None where that cannot be known (a tracer, or a constant
    inside a jit trace, where the reduction is staged out)."""
    if isinstance(a, jax.core.Tracer):
        return None
    try:
        return bool(jnp.all(jnp.isfinite(a)))
    except jax.errors.ConcretizationTypeError:
        return None


def model(m, name: str = "model"):
    """An ``ntk_ngd.MLP`` (or an object with its interface: widths, depth, n_outputs, apply)."""
    if not all(hasattr(m, a) for a in ("widths", "depth", "n_outputs", "apply", "check_params")):
        raise TypeError(f"{name} must be an ntk_ngd.MLP (e.g. MLP((M_0, ..., C))), got {type(m).__name__} {m!r:.80}")
    return m


def function(f, name: str):
    """A callable."""
    if not callable(f):
        raise TypeError(f"{name} must be a callable, got {type(f).__name__}")
    return f


def float_dtype(params=None):
    """The float dtype in use: that of the params' first weight matrix, else JAX's default float
    (float64 under jax_enable_x64)."""
    if params:
        return jnp.asarray(params[0]["W"]).dtype
    return jnp.zeros(()).dtype


def array(x, name: str, dtype=None, ndim: Optional[int] = None, cast_floats: bool = True):
    """A finite real jnp array; integer / bool input is cast to ``dtype`` (default: the float in use),
    a float input keeps its dtype unless ``dtype`` is given (and ``cast_floats``)."""
    if x is None:
        raise ValueError(f"{name} must be a real numeric array, got None")
    try:
        a = np.asarray(x) if not isinstance(x, jnp.ndarray) else x
    except (TypeError, ValueError) as e:
        raise ValueError(f"{name} must be a real numeric array, got {type(x).__name__} ({e})") from None
    kind = a.dtype.kind
    if kind == "c":
        raise ValueError(f"{name} is complex ({a.dtype}); ntk-ngd works with real arrays: pass the real part "
                         "or the magnitude explicitly")
    if kind not in "biuf":
        raise ValueError(f"{name} must be a real numeric array, got dtype {a.dtype}")
    if ndim is not None and a.ndim != ndim:
        raise ValueError(f"{name} must be a {ndim}-d array, got shape {a.shape}")
    if kind in "biu":
        a = jnp.asarray(a, dtype or float_dtype())
    else:
        a = jnp.asarray(a, dtype) if dtype is not None and cast_floats else jnp.asarray(a)
    if _all_finite(a) is False:
        n_bad = int(np.sum(~np.isfinite(np.asarray(a))))
        raise ValueError(f"{name} contains {n_bad} NaN or inf entries")
    return a


def inputs(model, x, name: str = "x", dtype=None, cast_floats: bool = True):
    """x (N, M_0) with N >= 1, finite, real (integers cast to the float in use)."""
    a = array(x, name, dtype, cast_floats=cast_floats)
    if a.ndim != 2 or a.shape[1] != model.widths[0]:
        raise ValueError(f"{name} must have shape (N, M_0={model.widths[0]}), got {a.shape}")
    if a.shape[0] < 1:
        hint = " (pass None for no test set)" if "test" in name else ""
        raise ValueError(f"{name} has no rows: N must be >= 1{hint}")
    return a


def targets(model, y, n: int, name: str = "y", dtype=None):
    """y (N, C) (or (N,) when C = 1) of ``dtype``, finite, real; integer targets stay exact."""
    a = array(y, name, dtype)
    if a.ndim == 1 and model.n_outputs == 1:
        a = a[:, None]
    if a.shape != (n, model.n_outputs):
        raise ValueError(f"{name} must have shape (N={n}, C={model.n_outputs}), got {a.shape}")
    return a


def data(model, x, y, dtype=None, names=("x", "y")):
    """(x, y) checked together: y in x's float dtype."""
    xa = inputs(model, x, names[0], dtype)
    return xa, targets(model, y, xa.shape[0], names[1], xa.dtype)


def params(model, p) -> None:
    """The params layout: a list of L dicts {"W": (M_l, M_{l-1}), "b": (M_l,)}, one real float dtype,
    finite entries."""
    if not isinstance(p, (list, tuple)):
        raise ValueError(f"params must be a list of {model.depth} layer dicts {{'W', 'b'}}, got {type(p).__name__}")
    if len(p) != model.depth:
        raise ValueError(f"params must be a list of {model.depth} layer dicts, got {len(p)}")
    dtypes = set()
    for l, (layer, k, m) in enumerate(zip(p, model.widths[:-1], model.widths[1:]), start=1):
        if not isinstance(layer, dict) or set(layer) != {"W", "b"}:
            keys = sorted(layer) if isinstance(layer, dict) else type(layer).__name__
            raise ValueError(f"params layer {l}: expected a dict with keys 'W' and 'b', got {keys}")
        for key, shape in (("W", (m, k)), ("b", (m,))):
            v = layer[key]
            if not isinstance(v, (np.ndarray, jax.Array)) or v.dtype.kind != "f":
                got = v.dtype if isinstance(v, (np.ndarray, jax.Array)) else type(v).__name__
                raise ValueError(f"params layer {l} {key} must be a real floating array, got {got}")
            if np.dtype(v.dtype) not in (np.float32, np.float64):
                raise ValueError(f"params layer {l} {key} is {v.dtype}: use float32 or float64 (half precision is "
                                 "too coarse for the kernel-space solves)")
            if tuple(v.shape) != shape:
                raise ValueError(f"params layer {l}: expected W {(m, k)} and b {(m,)}, got {key} {tuple(v.shape)}")
            if _all_finite(v) is False:
                raise ValueError(f"params layer {l} {key} contains NaN or inf (a diverged run?)")
            dtypes.add(np.dtype(v.dtype))
    if len(dtypes) > 1:
        raise ValueError(f"params mix dtypes {sorted(str(d) for d in dtypes)}; use one float dtype")


def finite_grams(g, name: str, x) -> None:
    """Grams (``layers.Grams``) of finite inputs ``x`` that overflowed: say so (not "singular")."""
    if all(_all_finite(k) is not False for k in list(g.KH) + list(g.KD)):
        return
    big = float(jnp.max(jnp.abs(x))) if x.size else 0.0
    raise FloatingPointError(f"the kernels of {name} overflow to inf/NaN although {name} is finite (largest |entry| "
                             f"{big:.3g}): rescale the inputs (e.g. unit-norm rows)")

