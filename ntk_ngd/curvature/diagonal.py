"""Element-wise diagonal NGD: G = diag(F), F_pp = (1/N) sum_{n,c} J_{n c p}^2 (the paper's negative example).

For W~_l[i, j]: diag = (1/N) sum_{n,c} delta_{n i c}^2 h~_{n j}^2. d = grad / (diag + rho), with
the pseudo-inverse (0) where diag vanishes at rho = 0. Function space:
Theta_G = (1/N) sum_l sum_i (delta_i delta_i^T) o (H diag(w_i) H^T), w = 1 / (diag + rho): a
reweighted NTK with a spread spectrum (not isotropic). Needs the factors (no analytic source).
"""
from __future__ import annotations

import dataclasses
from typing import final

import jax.numpy as jnp
import numpy as np

from ..layers import Factors, jt_vec
from ..linalg import chunked_sum
from .base import PerLayer
from .registry import register_method


def inverse_diagonal(H, D, rho):
    """1 / (diag F_l + rho) as an (M_l, M_{l-1}+1) block; 0 where diag F = 0 and rho = 0."""
    diag = jnp.einsum("nic,nj->ij", D ** 2, H ** 2) / H.shape[0]
    if rho == 0:
        keep = diag > jnp.finfo(diag.dtype).eps * jnp.max(diag)
        return jnp.where(keep, 1.0 / jnp.where(keep, diag, 1.0), 0.0)
    return 1.0 / (diag + rho)


@register_method(builtin=True)
@final
@dataclasses.dataclass(frozen=True)
class Diagonal(PerLayer):
    name = "diagonal"
    analytic = False
    paper = True
    chunk: int = 128

    def check(self, model, n, rho):
        """No stated conditions (diag F = 0 entries get the pseudo-inverse 0 at rho = 0)."""

    def alpha(self, model, n, convention=None):
        return None

    def layer_direction(self, H, D, g, rho):
        grad = jt_vec(Factors([H], [D]), g / g.shape[0])[0]
        return grad * inverse_diagonal(H, D, rho)

    def kernel(self, src, rho):
        if not src.empirical:
            raise ValueError("diagonal NGD has no analytic (infinite-width) operator: use an empirical source")
        return super().kernel(src, rho)

    def layer_kernel(self, src, l, rho):
        n = src.n
        Hb, Db = src.fac_train.H[l], src.fac_train.D[l]
        w = inverse_diagonal(Hb, Db, rho)

        def block(Ha, Da):
            def chunk(idx, valid):
                Q = jnp.einsum("aj,ij,bj->iab", Ha, w[idx] * valid[:, None], Hb)
                return jnp.einsum("aic,bid,iab->acbd", Da[:, idx], Db[:, idx], Q)

            s = chunked_sum(chunk, w.shape[0], min(self.chunk, w.shape[0]))
            return s.reshape(s.shape[0] * s.shape[1], -1) / n

        cross = None if src.cross is None else block(src.fac_test.H[l], src.fac_test.D[l])
        return block(Hb, Db), cross

    def layer_dense(self, dense, l, rho):
        Jl = dense.layer(l)
        diag = np.sum(Jl ** 2, axis=0) / dense.n
        if rho > 0:
            return np.diag(1.0 / (diag + rho))
        keep = diag > np.finfo(float).eps * np.max(diag)
        return np.diag(np.where(keep, 1.0 / np.where(keep, diag, 1.0), 0.0))

    def memory_terms(self, N, C, widths):
        from ..memory import max_block
        return {"inverse diagonal + gradient": 2 * max_block(widths)}
