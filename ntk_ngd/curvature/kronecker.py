"""The shared eigen pipeline of Kronecker-type per-layer rules (THEORY sections 4 and 9).

Per layer, with H (N, M_{l-1}+1) the rows h~_n and Dm (N C, M_l) the rows delta_{n,c}, the Grams
KH = H H^T = U_H diag(N lambda_A) U_H^T and KD = Dm Dm^T = U_D diag(N lambda_B) U_D^T carry the
eigenvalues of A = H^T H / N and B = Dm^T Dm / N. The gradient block (1/N) Dm^T diag(g) H lies in
span(Dm^T) (x) span(H^T), so a rule that weights the eigenbasis of B (x) A by w_ij acts as

    dW = Dm^T U_D [(U_D^T diag(g) U_H) o w / N] U_H^T H              (the singular values cancel)
    Theta_G,l = sum_ij (A_ai B_aj) w_ij (A_bi B_bj) / N,   A = U_D s_D,  B = (U_H s_H) (x) 1_C

(a Hadamard product of two N C x N C matrices when w = w_B w_A^T factorizes), built from the Grams
alone, so empirical and analytic sources share it. A rule (K-FAC 1/(lambda_B lambda_A) with its
dampings, and the methods of THEORY section 9) is ``Kronecker.weights``; test rows use the
cross Grams in place of the left factors.

Row-weighted factors (``Kronecker.row_scales``, default none): a rule whose factors are
B' = Dm^T diag(a^2) Dm / N and A' = H^T diag(b^2) H / N (per-sample weights, e.g. TNT) runs the same
pipeline on Dm' = diag(a) Dm, H' = diag(b) H, whose Grams are KD o a a^T and KH o b b^T (the scales
come from the train Grams, so the analytic face keeps working). The gradient is unchanged,
Dm^T diag(g) H = Dm'^T diag(g / (a b)) H' (a sample with a b = 0 contributes nothing), and in
Theta_G the rows of J_l stay unweighted: A = diag(1/a) U_D' s_D', B = diag(1/b) U_H' s_H' (x) 1_C.
"""
from __future__ import annotations

import abc
import dataclasses
from typing import NamedTuple

import jax.numpy as jnp

from .base import PerLayer


class LayerEig(NamedTuple):
    """Eigenpairs of one layer's Grams: U_D (N C, N C), U_H (N, N), Gram eigenvalues wd, wh (zeroed
    below the cutoff), keep masks kd, kh, and the factor eigenvalues lb = wd / N, la = wh / N."""
    Ud: jnp.ndarray
    Uh: jnp.ndarray
    wd: jnp.ndarray
    wh: jnp.ndarray
    kd: jnp.ndarray
    kh: jnp.ndarray
    dim_a: int
    dim_b: int

    @property
    def n(self):
        return self.Uh.shape[0]

    @property
    def la(self):
        return self.wh / self.n

    @property
    def lb(self):
        return self.wd / self.n

    @property
    def pi(self):
        """pi = sqrt((tr A / dim A) / (tr B / dim B)) of factored damping."""
        return jnp.sqrt((jnp.sum(self.la) / self.dim_a) / (jnp.sum(self.lb) / self.dim_b))


def keep_mask(s):
    """Eigenvalues of a Gram above the numerical cutoff (numerical zeros are zeros)."""
    return s > jnp.finfo(s.dtype).eps * 10 * max(s.shape[0], 1) * jnp.max(s)


def layer_eig(KD, KH, dim_a: int, dim_b: int) -> LayerEig:
    wd, Ud = jnp.linalg.eigh(KD)
    wh, Uh = jnp.linalg.eigh(KH)
    wd, wh = jnp.clip(wd, 0), jnp.clip(wh, 0)
    kd, kh = keep_mask(wd), keep_mask(wh)
    return LayerEig(Ud, Uh, jnp.where(kd, wd, 0.0), jnp.where(kh, wh, 0.0), kd, kh, dim_a, dim_b)


def pseudo_inverse(lam, keep):
    return jnp.where(keep, 1.0 / jnp.where(keep, lam, 1.0), 0.0)


def row_scaled(KD, KH, scales):
    """The Grams of diag(a) Dm and diag(b) H: KD o a a^T, KH o b b^T (unchanged for scales None)."""
    if scales is None:
        return KD, KH
    a, b = scales
    return KD * jnp.outer(a, a), KH * jnp.outer(b, b)


def as_matrix(w):
    return jnp.outer(*w) if isinstance(w, tuple) else w


def contract(A1, B1, w, A2, B2):
    """sum_ij (A1_ai B1_aj) w_ij (A2_bi B2_bj); a Hadamard product when w = (w_B, w_A) factorizes."""
    if isinstance(w, tuple):
        return ((A1 * w[0]) @ A2.T) * ((B1 * w[1]) @ B2.T)
    return jnp.einsum("ai,aj,ij,bi,bj->ab", A1, B1, w, A2, B2, optimize=True)


@dataclasses.dataclass(frozen=True)
class Kronecker(PerLayer):
    """A per-layer rule that weights the eigenbasis of B (x) A: subclasses give ``weights``."""

    @abc.abstractmethod
    def weights(self, eig: LayerEig, rho: float):
        """w on the (U_D, U_H) eigenbasis: a pair (w_B (N C,), w_A (N,)) when it factorizes, else
        an (N C, N) matrix; zero on numerically null directions."""

    def row_scales(self, KD, KH):
        """Per-sample row scales (a (N C,), b (N,)) of the factors, Dm -> diag(a) Dm and
        H -> diag(b) H, from the train Grams KD (N C, N C), KH (N, N); None (default): unscaled."""
        return None

    def layer_direction(self, H, D, g, rho):
        n, C = g.shape
        m = D.shape[1]
        Dm = D.transpose(0, 2, 1).reshape(n * C, m)
        KD, KH = Dm @ Dm.T, H @ H.T
        scales = self.row_scales(KD, KH)
        if scales is not None:
            a, b = scales
            KD, KH = row_scaled(KD, KH, scales)
            Dm, H = a[:, None] * Dm, b[:, None] * H
            g = g * pseudo_inverse(a, a > 0).reshape(n, C) * pseudo_inverse(b, b > 0)[:, None]
        eig = layer_eig(KD, KH, H.shape[1], m)
        # exact zeros on numerically null directions (Dm^T u = 0 there; rounding times 1/rho would remain)
        w = as_matrix(self.weights(eig, rho)) * (eig.kd[:, None] & eig.kh[None, :])
        core = jnp.einsum("nci,nc,nj->ij", eig.Ud.reshape(n, C, -1), g, eig.Uh) * w / n
        return Dm.T @ ((eig.Ud @ core @ eig.Uh.T) @ H)

    def layer_kernel(self, src, l, rho):
        n, C, widths = src.n, src.C, src.model.widths
        scales = self.row_scales(src.train.KD[l], src.train.KH[l])
        eig = layer_eig(*row_scaled(src.train.KD[l], src.train.KH[l], scales), widths[l] + 1, widths[l + 1])
        sd, sh = jnp.sqrt(eig.wd), jnp.sqrt(eig.wh)
        w = self.weights(eig, rho)
        A, B = eig.Ud * sd, jnp.repeat(eig.Uh * sh, C, axis=0)
        KDx, KHx = (None, None) if src.cross is None else (src.cross.KD[l], src.cross.KH[l])
        if scales is not None:  # rows of J_l unweighted; the cross Grams meet Dm', H' on the right
            a, b = scales
            A = A * pseudo_inverse(a, a > 0)[:, None]
            B = B * jnp.repeat(pseudo_inverse(b, b > 0), C)[:, None]
            KDx, KHx = (None, None) if src.cross is None else (KDx * a[None, :], KHx * b[None, :])
        train = contract(A, B, w, A, B) / n
        if src.cross is None:
            return train, None
        Ax = KDx @ eig.Ud * pseudo_inverse(sd, eig.kd)
        Cx = KDx.shape[0] // KHx.shape[0]  # outputs of the left set
        Bx = jnp.repeat(KHx @ eig.Uh * pseudo_inverse(sh, eig.kh), Cx, axis=0)
        return train, contract(Ax, Bx, w, A, B) / n

    def memory_terms(self, N, C, widths):
        nc, L = N * C, len(widths) - 1
        return {"factor Grams + eigenvectors": L * (2 * (nc * nc + N * N) + 2 * nc * N),
                "core products": max(nc * (k + 1) for k in widths[:-1])}

