"""Unit-wise NGD: one Fisher block per unit i of layer l, the parameters (W_l[i, :], b_l[i]).

J_{l,i}(x_n)_c = delta_l(x_n)_{i c} h~_n, so Theta_{l,i} = (d_i d_i^T) o (K~ (x) 1 1^T) with
d_i = delta_{l, i} (N C,) and K~ = H H^T. Step: d_{l,i} = J_{l,i}^T v_{l,i},
    v_{l,i} = (Theta_{l,i} + N rho I + E_i)^{-1} g,   E_i = diag(1[d_i = 0]).
E_i only touches rows where Theta_{l,i} vanishes (inactive relu units), whose v is then
multiplied by d_i = 0: the same step for rho > 0 and the pseudo-inverse at rho = 0.
With C > 1 and rho = 0, Theta_{l,i} has rank <= N < N C: the step is J_{l,i}^+ g by SVD of J_{l,i}.
With C = 1 and rho = 0, E_i covers the inactive samples only: where the layer's input Gram K~ is
singular (duplicate inputs, a zero input row, M_{l-1} + 1 < N) an active unit's Theta_{l,i} is
singular too. Then (decided once per layer) K~ = U s U^T, R = U s^{1/2} (s > cutoff), so that
J_{l,i} = diag(d_i) R W^T with W = H^T U s^{-1/2} orthonormal, and per unit F_i = diag(d_i) R (N, r):
the step is J_{l,i}^+ g = W F_i^+ g, Theta_{l,i} Theta_{l,i}^+ = F_i F_i^+ and the test rows
J_{l,i}(x') J_{l,i}^+ = diag(d_i(x')) K~(x', X) U s^{-1/2} F_i^+ (pseudo-inverse semantics: the
minimum-norm step and the projectors J G^+ J^T / N, never NaN).
Function space: Theta_G = sum_{l,i} Theta_{l,i} (Theta_{l,i} + N rho + E_i)^{-1};
alpha = gamma sum_{l<L} M_l + 1 (C = 1, M_0 >= N, rho << 1/M); the paper's code: gamma (L-1) M.
All units of a layer are solved as a batch (vmap over chunks of units, no Python loop). The chunk
(units per batch) defaults to the largest power of two whose per-unit systems fit a 16 MiB working
set (``ntk_ngd.memory.choose_chunk``: 64 at N C = 100), about the last-level cache of a small CPU:
on 2 cores, N = 100, M = 4096, chunk 64 measured 1.1-1.4x faster than 256 (benchmarks/README.md).
"""
from __future__ import annotations

import dataclasses
import warnings
from typing import Literal, Optional, final

import jax
import jax.numpy as jnp
import numpy as np
from jax.scipy.linalg import cho_factor, cho_solve

from ..layers import expand
from ..linalg import chunked_sum, pinv_cutoff
from .base import PerLayer
from .dense import group_inverse
from .registry import register_method

CHUNK_BYTES = 16 * 2 ** 20  # working set of one chunk of per-unit systems (default chunk)


def gram_singular(K):
    """Whether the PSD Gram K (N, N) is numerically singular (the pivot test of ``linalg.psd_solve``)."""
    c = jnp.linalg.cholesky(K)
    piv = jnp.diagonal(c) ** 2
    return ~(jnp.all(jnp.isfinite(c)) & (jnp.min(piv) > pinv_cutoff(jnp.diagonal(K))[0]))


def gram_root(K):
    """(R, Rinv) for the PSD K~ (N, N) = U s U^T: R = U s^{1/2} and Rinv = U s^{-1/2}, with the columns
    of the eigenvalues below the relative cutoff set to 0."""
    s, U = jnp.linalg.eigh(K)
    keep = s > pinv_cutoff(s)
    r = jnp.sqrt(jnp.where(keep, s, 1.0))
    return U * jnp.where(keep, r, 0.0), U * jnp.where(keep, 1.0 / r, 0.0)


def branch(pred, regular, fallback):
    """regular() or fallback(): chosen in Python where pred is concrete, by lax.cond inside jit."""
    if isinstance(pred, jax.core.Tracer):
        return jax.lax.cond(pred, fallback, regular)
    return fallback() if bool(pred) else regular()


def unit_system(d, K, shift):
    """(Theta_i, Theta_i + shift I + E_i) for d = delta_{l,i} (N C,), K = K~ (x) 1 1^T (N C, N C)."""
    theta = jnp.outer(d, d) * K
    return theta, theta + jnp.diag(shift + (d == 0).astype(d.dtype))


@register_method(builtin=True)
@final
@dataclasses.dataclass(frozen=True)
class UnitWise(PerLayer):
    name = "unit_wise"
    isotropy = "wide"
    paper = True
    chunk: Optional[int] = None
    convention: Literal["theory", "paper"] = "theory"

    def _chunk(self, n, C, units, n_test=0):
        if self.chunk is not None:
            return max(1, min(int(self.chunk), units))
        from ..memory import choose_chunk
        return choose_chunk("unit_wise", CHUNK_BYTES, N=n, C=C, n_units=units, n_test=n_test)

    def check(self, model, n, rho):
        if not self.force:
            if model.n_outputs != 1:
                raise ValueError(f"unit_wise is stated for C = 1 output (got C = {model.n_outputs}); "
                                 "pass force=True to run it anyway")
            if model.widths[0] < n:
                raise ValueError(f"unit_wise needs M_0 >= N (M_0={model.widths[0]}, N={n}); "
                                 "pass force=True to run it anyway")
        if rho > 0.1 / max(model.widths[1:]):
            warnings.warn(f"unit_wise: rho = {rho} is not << 1/M = {1 / max(model.widths[1:]):.3g}: the per-unit "
                          "kernels are O(1/M) and the step degrades towards GD with step eta/rho", stacklevel=3)

    def isotropy_for(self, model):
        """"finite" where phi' never vanishes (gamma = 1: erf, tanh, linear): every per-unit kernel
        diag(d_i) K~ diag(d_i) is then PD for rank-N layer inputs and Theta_G = (sum_{l<L} M_l + 1) I
        exactly at rho = 0; "wide" where units switch off (relu: about gamma M_l active per input)."""
        return "finite" if model.active_fraction == 1.0 else "wide"

    def alpha(self, model, n, convention=None):
        hidden = model.widths[1:-1]
        if (convention or self.convention) == "paper":
            return float(model.active_fraction * len(hidden) * (max(hidden) if hidden else 0))
        return float(model.active_fraction * sum(hidden) + 1)

    def layer_direction(self, H, D, g, rho):
        n, C = g.shape
        gf = g.reshape(-1)
        K = expand(H @ H.T, C)
        Hr = jnp.repeat(H, C, axis=0)

        chunk = self._chunk(n, C, D.shape[1])

        def unit_row(d_unit):  # (N, C) -> row (M_{l-1}+1,)
            d = d_unit.reshape(-1)
            if rho == 0 and C > 1:
                return jnp.linalg.pinv(d[:, None] * Hr) @ gf
            _, A = unit_system(d, K, n * rho)
            v = cho_solve(cho_factor(A, lower=True), gf)
            return (d * v).reshape(n, C).sum(-1) @ H

        def regular():
            return jax.lax.map(unit_row, D.transpose(1, 0, 2), batch_size=chunk)

        if not (rho == 0 and C == 1):
            return regular()

        def pseudo_inverse():  # K~ singular: rows (W F_i^+ g)^T = (F_i^+ g)^T Rinv^T H
            R, Rinv = gram_root(K)
            a = jax.lax.map(lambda d: jnp.linalg.pinv(d[:, None] * R) @ gf, D[:, :, 0].T, batch_size=chunk)
            return (a @ Rinv.T) @ H

        return branch(gram_singular(K), regular, pseudo_inverse)

    def kernel(self, src, rho):
        if not src.empirical:  # analytic limit: Theta_G -> alpha I on the training set
            return self.alpha(src.model, src.n) * jnp.eye(src.n * src.C), None
        return super().kernel(src, rho)

    def layer_kernel(self, src, l, rho):
        n, C = src.n, src.C
        H, D = src.fac_train.H[l], src.fac_train.D[l]
        K = expand(H @ H.T, C)
        Dt = D.transpose(1, 0, 2).reshape(D.shape[1], -1)
        Hr = jnp.repeat(H, C, axis=0)
        if src.cross is not None:
            Kx = expand(src.cross.KH[l], C)
            Dx = src.fac_test.D[l].transpose(1, 0, 2).reshape(D.shape[1], -1)
            Hxr = jnp.repeat(src.fac_test.H[l], C, axis=0)

        def unit_ops(d, dx):
            if rho == 0 and C > 1:  # projector J_i J_i^+ and J_i(x') J_i^+
                Jp = jnp.linalg.pinv(d[:, None] * Hr)
                return (d[:, None] * Hr) @ Jp, (None if dx is None else (dx[:, None] * Hxr) @ Jp)
            theta, A = unit_system(d, K, n * rho)
            V = cho_solve(cho_factor(A, lower=True), jnp.eye(A.shape[0], dtype=A.dtype))
            return theta @ V, (None if dx is None else (jnp.outer(dx, d) * Kx) @ V)

        def chunk_sum(idx, valid):
            dx = None if src.cross is None else Dx[idx] * valid[:, None]
            tr, cr = jax.vmap(unit_ops, in_axes=(0, None if dx is None else 0))(Dt[idx] * valid[:, None], dx)
            return tr.sum(0), (0.0 if cr is None else cr.sum(0))

        n_test = 0 if src.cross is None else src.cross.KH[l].shape[0]
        chunk = self._chunk(n, C, D.shape[1], n_test)

        def regular():
            return chunked_sum(chunk_sum, D.shape[1], chunk)

        if not (rho == 0 and C == 1):
            tr, cr = regular()
            return tr, (None if src.cross is None else cr)

        def pseudo_inverse():  # K~ singular: F_i F_i^+ and diag(d_i(x')) K~(x', X) Rinv F_i^+
            R, Rinv = gram_root(K)
            KxR = None if src.cross is None else src.cross.KH[l] @ Rinv

            def ops(d, dx):
                F = d[:, None] * R
                Fp = jnp.linalg.pinv(F)
                return F @ Fp, (None if dx is None else (dx[:, None] * KxR) @ Fp)

            def pinv_chunk(idx, valid):
                dx = None if src.cross is None else Dx[idx] * valid[:, None]
                tr, cr = jax.vmap(ops, in_axes=(0, None if dx is None else 0))(Dt[idx] * valid[:, None], dx)
                return tr.sum(0), (0.0 if cr is None else cr.sum(0))
            return chunked_sum(pinv_chunk, D.shape[1], chunk)

        tr, cr = branch(gram_singular(K), regular, pseudo_inverse)
        return tr, (None if src.cross is None else cr)

    def layer_dense(self, dense, l, rho):
        """(F_ii + rho I)^+ per unit i: the parameters (W_l[i, :], b_l[i])."""
        k = dense.widths[l] + 1
        units = np.repeat(np.arange(dense.widths[l + 1]), k)
        return group_inverse(dense.layer(l), units, dense.n, rho)

    def memory_terms(self, N, C, widths):
        from ..memory import unit_chunk_count
        nc, units = N * C, max(widths[1:])
        chunk = 256 if self.chunk is None else self.chunk
        return {"unit Grams": nc * nc, "unit chunk": unit_chunk_count(N, C, min(chunk, units))}
