"""A user's method in one file: the layers split into two groups (first half, second half), one
Fisher block each, G = blockdiag(F_first, F_second); importing this file registers it.

    ntk-ngd --plugin tests/two_blocks.py train --method two_blocks
"""
import dataclasses
from typing import final

import jax.numpy as jnp
import numpy as np

from ntk_ngd.curvature import AbstractMethod, register_method
from ntk_ngd.curvature.dense import gram_inverse
from ntk_ngd.layers import grams, jt_vec, layer_kernels
from ntk_ngd.linalg import psd_solve


def groups(L: int):
    return [g for g in (list(range(L // 2)), list(range(L // 2, L))) if g]


@register_method
@final
@dataclasses.dataclass(frozen=True)
class TwoBlocks(AbstractMethod):
    """d_l = J_l^T (Theta_group + N rho I)^+ g for the group of layer l; alpha = number of groups."""
    name = "two_blocks"
    isotropy = "finite"

    def check(self, model, n, rho):
        """No stated conditions."""

    def alpha(self, model, n, convention=None):
        return float(len(groups(model.depth)))

    def _duals(self, thetas, shift, R):
        """v_l (L, N C, k): the group solve of every layer's group."""
        v = [None] * thetas.shape[0]
        for grp in groups(thetas.shape[0]):
            sol = psd_solve(jnp.sum(thetas[jnp.array(grp)], 0), R, shift)
            for l in grp:
                v[l] = sol
        return v

    def direction(self, fac, g, rho, state=()):
        n, c = g.shape
        v = self._duals(layer_kernels(grams(fac)), n * rho, g.reshape(-1, 1))
        return jt_vec(fac, [vl.reshape(n, c) for vl in v])

    def kernel(self, src, rho):
        thetas = layer_kernels(src.train)
        V = self._duals(thetas, src.n * rho, jnp.eye(thetas.shape[1], dtype=thetas.dtype))
        train = sum(t @ v for t, v in zip(thetas, V))
        cross = None if src.cross is None else sum(t @ v for t, v in zip(layer_kernels(src.cross), V))
        return train, cross

    def to_dense(self, dense, rho):
        o = dense.offsets
        out = np.zeros((o[-1], o[-1]))
        for grp in groups(dense.depth):
            s = slice(o[grp[0]], o[grp[-1] + 1])
            out[s, s] = gram_inverse(dense.J[:, s], dense.n, rho)
        return out

    def memory_terms(self, N, C, widths):
        L, nc = len(widths) - 1, N * C
        return {"grams + kernels": L * (N * N + 2 * nc * nc), "solve": 4 * nc * nc}
