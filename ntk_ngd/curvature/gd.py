"""Gradient descent: G = I, d = grad = J^T g / N, Theta_G = Theta / N."""
from __future__ import annotations

import dataclasses
from typing import final

import jax.numpy as jnp
import numpy as np

from ..layers import jt_vec, layer_kernels
from .base import AbstractMethod
from .registry import register_method


@register_method(builtin=True)
@final
@dataclasses.dataclass(frozen=True)
class GD(AbstractMethod):
    name = "gd"
    paper = True

    def check(self, model, n, rho):
        """No stated conditions."""

    def alpha(self, model, n, convention=None):
        return None

    def direction(self, fac, g, rho, state=()):
        return jt_vec(fac, g / g.shape[0])

    def kernel(self, src, rho):
        train = jnp.sum(layer_kernels(src.train), 0) / src.n
        cross = None if src.cross is None else jnp.sum(layer_kernels(src.cross), 0) / src.n
        return train, cross

    def to_dense(self, dense, rho):
        return np.eye(dense.J.shape[1])

    def memory_terms(self, N, C, widths):
        return {}
