"""Fully connected network in NTK parameterization (THEORY section 1).

    h_0 = x,  u_l = (sigma_w / sqrt(M_{l-1})) W_l h_{l-1} + sigma_b b_l,  h_l = phi(u_l),  f(x) = u_L

Params layout (public contract): a list of L dicts ``{"W": (M_l, M_{l-1}), "b": (M_l,)}``
with i.i.d. N(0, 1) entries at init.
"""
from __future__ import annotations

import dataclasses
from typing import Callable, Union

import jax
import jax.numpy as jnp
import numpy as np
from jax.scipy.special import erf

ACTIVATIONS: dict[str, Callable] = {
    "relu": jax.nn.relu,
    "erf": erf,
    "tanh": jnp.tanh,
    "linear": lambda u: u,
}

# P(phi'(u) != 0) for u ~ N(0, s), s > 0: the unit-wise constant gamma (THEORY section 4).
ACTIVE_FRACTION = {"relu": 0.5, "erf": 1.0, "tanh": 1.0, "linear": 1.0}


def derivative(phi: Callable) -> Callable:
    """Elementwise derivative phi'(u) of an elementwise, jax-traceable phi (by forward-mode AD)."""
    def dphi(u):
        return jax.jvp(phi, (u,), (jnp.ones_like(u),))[1]
    return dphi


@dataclasses.dataclass(frozen=True)
class MLP:
    """MLP(widths=(M_0, ..., M_L), activation, sigma_w, sigma_b); M_L = C outputs.

    ``activation`` is one of ``relu, erf, tanh, linear`` or any jax-traceable
    elementwise function (its derivative comes from autodiff).
    """

    widths: tuple
    activation: Union[str, Callable] = "relu"
    sigma_w: float = 2 ** 0.5
    sigma_b: float = 0.0

    def __post_init__(self):
        widths = tuple(self.widths) if isinstance(self.widths, (list, tuple, np.ndarray)) else None
        if widths is None or len(widths) < 2:
            raise ValueError(f"widths must be a sequence (M_0, ..., M_L) of length >= 2, got {self.widths!r}")
        from . import checks
        try:
            widths = tuple(checks.count(w, "width") for w in widths)
        except ValueError:
            raise ValueError(f"every width must be an integer >= 1, got widths={widths}") from None
        object.__setattr__(self, "widths", widths)
        if isinstance(self.activation, str):
            if self.activation not in ACTIVATIONS:
                raise ValueError(f"unknown activation {self.activation!r}; choose one of "
                                 f"{sorted(ACTIVATIONS)} or pass a callable")
        elif not callable(self.activation):
            raise ValueError(f"activation must be a name or a callable, got {self.activation!r}")
        object.__setattr__(self, "sigma_w", checks.real(self.sigma_w, "sigma_w", 0.0, strict=True))
        object.__setattr__(self, "sigma_b", checks.real(self.sigma_b, "sigma_b", 0.0))

    # --- shapes -----------------------------------------------------------------
    @property
    def depth(self) -> int:
        """L, the number of weight layers."""
        return len(self.widths) - 1

    @property
    def n_outputs(self) -> int:
        """C = M_L."""
        return self.widths[-1]

    @property
    def n_params(self) -> int:
        return sum(m * (k + 1) for k, m in zip(self.widths[:-1], self.widths[1:]))

    @property
    def activation_name(self) -> str:
        return self.activation if isinstance(self.activation, str) else getattr(
            self.activation, "__name__", "custom")

    @property
    def phi(self) -> Callable:
        return ACTIVATIONS[self.activation] if isinstance(self.activation, str) else self.activation

    @property
    def dphi(self) -> Callable:
        return derivative(self.phi)

    @property
    def active_fraction(self) -> float:
        """gamma = P(phi'(u) != 0) (1/2 relu, 1 otherwise; 1 assumed for custom activations)."""
        return ACTIVE_FRACTION.get(self.activation_name, 1.0)

    # --- parameters and forward pass -----------------------------------------------
    def init(self, key) -> list:
        """i.i.d. N(0, 1) params: list of L dicts {"W": (M_l, M_{l-1}), "b": (M_l,)}."""
        try:
            keys = jax.random.split(key, 2 * self.depth)
        except (TypeError, ValueError) as e:
            raise ValueError(f"key must be a jax PRNG key (jax.random.PRNGKey(seed) or jax.random.key(seed)), got "
                             f"{type(key).__name__} {key!r:.60} ({str(e).splitlines()[0][:120]})") from None
        dtype = jnp.zeros(()).dtype  # float64 under jax_enable_x64
        return [
            {"W": jax.random.normal(keys[2 * i], (m, k), dtype),
             "b": jax.random.normal(keys[2 * i + 1], (m,), dtype)}
            for i, (k, m) in enumerate(zip(self.widths[:-1], self.widths[1:]))
        ]

    def check_params(self, params) -> None:
        """The params layout, one real float dtype, finite entries (``checks.params``)."""
        from . import checks
        checks.params(self, params)

    def check_inputs(self, x, name: str = "x"):
        """x (N, M_0), N >= 1, real and finite; integer input cast to the float in use (``checks.inputs``)."""
        from . import checks
        return checks.inputs(self, x, name)

    def apply(self, params, x) -> jnp.ndarray:
        """f(x): (N, M_0) -> (N, C). Checks the params layout and x (real, (N, M_0), finite where known;
        integer / bool x is cast to the params' float dtype)."""
        from . import checks
        checks.params(self, params)
        h = checks.inputs(self, x, "x", checks.float_dtype(params), cast_floats=False)
        h = h.astype(jnp.result_type(h.dtype, params[0]["W"].dtype))  # float32 x, float64 params: float64
        for l, p in enumerate(params):
            # a Python float scale: a numpy float64 would promote float32 params to float64
            u = float(self.sigma_w / np.sqrt(p["W"].shape[1])) * h @ p["W"].T + self.sigma_b * p["b"]
            h = self.phi(u) if l < len(params) - 1 else u
        return h
