"""Exact NGD: G = F = J^T J / N. Every layer gets v_l = (Theta + N rho I)^+ g (push-through).

``statistics`` (THEORY section 9): F_S = J_S^T J_S / N, e.g. the empirical Fisher J^T diag(r^2) J / N."""
from __future__ import annotations

import dataclasses
from typing import final

import jax.numpy as jnp

from ..linalg import psd_solve
from .base import LayerDual, kernel_grams
from .dense import gram_inverse
from .registry import register_method
from .statistics import Statistics


@register_method(builtin=True)
@final
@dataclasses.dataclass(frozen=True)
class Exact(Statistics, LayerDual):
    name = "exact"
    isotropy = "finite"
    paper = True

    def check(self, model, n, rho):
        """Theta positive definite (a singular system is reported by ngd_direction); statistics."""
        self.check_statistics(model, n)

    def alpha(self, model, n, convention=None):
        return 1.0 if self.fisher_statistics(model) else None

    def dual(self, thetas, shift, R):
        v = psd_solve(jnp.sum(thetas, 0), R, shift)
        return jnp.broadcast_to(v, (thetas.shape[0],) + v.shape)

    def to_dense(self, dense, rho):
        return gram_inverse(self.statistic_dense(dense).J, dense.n, rho)

    def memory_terms(self, N, C, widths):
        return {"grams + kernels": kernel_grams(N, C, widths), "solve": 2 * (N * C) ** 2}
