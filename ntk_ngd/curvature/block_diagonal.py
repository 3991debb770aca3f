"""Layer-wise block-diagonal NGD: G = blockdiag_l F_ll, v_l = (Theta_l + N rho I)^+ g; alpha = L."""
from __future__ import annotations

import dataclasses
from typing import final

import jax.numpy as jnp

from ..layers import Factors, Grams, grams, jt_vec, layer_kernels
from ..linalg import psd_solve
from .base import PerLayer, kernel_grams
from .dense import gram_inverse
from .registry import register_method
from .statistics import Statistics


@register_method(builtin=True)
@final
@dataclasses.dataclass(frozen=True)
class BlockDiagonal(Statistics, PerLayer):
    name = "block_diagonal"
    isotropy = "finite"
    paper = True

    def check(self, model, n, rho):
        """Every Theta_l positive definite (a singular system is reported by ngd_direction); statistics."""
        self.check_statistics(model, n)

    def alpha(self, model, n, convention=None):
        return float(model.depth) if self.fisher_statistics(model) else None

    def layer_direction(self, H, D, g, rho):
        n, c = g.shape
        fac = Factors([H], [D])
        v = psd_solve(layer_kernels(grams(fac))[0], g.reshape(-1, 1), n * rho)
        return jt_vec(fac, v.reshape(n, c))[0]

    def layer_kernel(self, src, l, rho):
        theta = layer_kernels(Grams([src.train.KH[l]], [src.train.KD[l]]))[0]
        V = psd_solve(theta, jnp.eye(theta.shape[0], dtype=theta.dtype), src.n * rho)
        cross = None if src.cross is None else layer_kernels(Grams([src.cross.KH[l]], [src.cross.KD[l]]))[0] @ V
        return theta @ V, cross

    def layer_dense(self, dense, l, rho):
        return gram_inverse(dense.layer(l), dense.n, rho)

    def memory_terms(self, N, C, widths):
        return {"grams + kernels": kernel_grams(N, C, widths), "solve": 2 * (len(widths) - 1) * (N * C) ** 2}
