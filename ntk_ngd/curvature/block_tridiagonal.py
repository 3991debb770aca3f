"""Block tri-diagonal NGD: G keeps the blocks F_lk with |l - k| <= 1 (THEORY section 4).

With T the L x L tri-diagonal matrix of ones, G = Jb^T (T (x) I) Jb / N (Jb = blockdiag J_l), and
d_l = J_l^T v_l with  [(T (x) I) blockdiag(Theta_l) + N rho I] v = 1_L (x) g.
At rho = 0: Theta_l v_l = c_l g + sum_j Z_lj w_j with c = T^+ 1, Z a basis of null(T)
(non-empty exactly when L = 3s + 2) and w fixed by v in range(T (x) I): the minimum-norm
(pseudo-inverse) solution, which is also the rho -> 0 limit. alpha = 1^T T^+ 1 = ceil(L / 3).
"""
from __future__ import annotations

import dataclasses
import warnings
from typing import final

import jax.numpy as jnp
import numpy as np

from ..linalg import psd_solve
from .base import LayerDual, kernel_grams
from .dense import sym_inverse
from .registry import register_method


def tridiagonal_ones(L: int) -> np.ndarray:
    """T: the L x L tri-diagonal matrix of ones."""
    return np.eye(L) + np.eye(L, k=1) + np.eye(L, k=-1)


def coupling(L: int):
    """(T, c = T^+ 1, Z = orthonormal basis of null(T) (L, k))."""
    T = tridiagonal_ones(L)
    w, V = np.linalg.eigh(T)
    null = np.abs(w) < 1e-10
    return T, np.linalg.pinv(T) @ np.ones(L), V[:, null]


@register_method(builtin=True)
@final
@dataclasses.dataclass(frozen=True)
class BlockTridiagonal(LayerDual):
    name = "block_tridiagonal"
    isotropy = "finite"
    paper = True

    def check(self, model, n, rho):
        if rho == 0 and model.depth % 3 == 2:
            warnings.warn(f"block_tridiagonal: T is singular for L = {model.depth} (= 3s + 2); at rho = 0 "
                          "the pseudo-inverse (minimum-norm) step is used", stacklevel=3)

    def alpha(self, model, n, convention=None):
        return float(np.sum(coupling(model.depth)[1]))

    def dual(self, thetas, shift, R):
        L, nc, _ = thetas.shape
        T, c, Z = coupling(L)
        if not (isinstance(shift, (int, float)) and shift == 0):
            blocks = jnp.asarray(T, thetas.dtype)[:, :, None, None] * thetas[None]  # (l, k): T_lk Theta_k
            M = blocks.transpose(0, 2, 1, 3).reshape(L * nc, L * nc) + shift * jnp.eye(L * nc, dtype=thetas.dtype)
            return jnp.linalg.solve(M, jnp.tile(R, (L, 1))).reshape(L, nc, -1)
        Q = jnp.stack([psd_solve(t, jnp.eye(nc, dtype=t.dtype)) for t in thetas])  # Theta_l^+
        v = jnp.asarray(c, thetas.dtype)[:, None, None] * (Q @ R)
        k = Z.shape[1]
        if k:
            Zj = jnp.asarray(Z, thetas.dtype)
            Mz = jnp.einsum("la,lb,lij->aibj", Zj, Zj, Q).reshape(k * nc, k * nc)
            rhs = -jnp.einsum("la,lij->aij", Zj, v).reshape(k * nc, -1)
            w = jnp.linalg.solve(Mz, rhs).reshape(k, nc, -1)
            v = v + jnp.einsum("la,lij,ajk->lik", Zj, Q, w)
        return v

    def to_dense(self, dense, rho):
        """The masked Fisher (blocks |l - k| <= 1) and its (pseudo-)inverse."""
        layer = np.concatenate([np.full(o1 - o0, l) for l, (o0, o1) in
                                enumerate(zip(dense.offsets[:-1], dense.offsets[1:]))])
        G = dense.fisher * (np.abs(layer[:, None] - layer[None, :]) <= 1)
        return sym_inverse(G, rho)

    def memory_terms(self, N, C, widths):
        return {"grams + kernels": kernel_grams(N, C, widths), "solve": 2 * ((len(widths) - 1) * N * C) ** 2}
