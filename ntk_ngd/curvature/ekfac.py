"""EKFAC (George et al. 2018, arXiv 1806.03884; THEORY section 9): K-FAC's eigenbasis, re-scaled.

Per layer, U_B and U_A are eigenbases of K-FAC's factors B = Dm^T Dm / N (rows of Dm: the N C vectors
delta_{n,c}, or with ``statistics`` the columns of D_n V_n) and A = H^T H / N, and the eigenvalues
lambda_B,i lambda_A,j of B (x) A are replaced by the second moments of the per-sample gradients in
that basis (the exact diagonal of F_l in the Kronecker-factored eigenbasis):

    s_ij = (1/N) sum_{n,c} (U_B^T delta_{n,c})_i^2 (U_A^T h~_n)_j^2
    dW = U_B [(U_B^T G U_A) / (s + rho)] U_A^T,   rho = 0: 1/s on s > 0, 0 where s = 0

(damping: the exact (G_EKFAC + rho I)^{-1}, G_EKFAC = (U_B (x) U_A) diag(s) (U_B (x) U_A)^T, which
is diagonal in that basis: the Tikhonov inverse costs nothing extra).

s_ij in the dual (Gram) eigenbasis. With the thin SVDs Dm = U_D s_D V_D^T (K_D = Dm Dm^T =
U_D diag(s_D^2) U_D^T, V_D: the eigenvectors of B with nonzero eigenvalue s_D^2 / N) and
H = U_H s_H V_H^T, V_D^T Dm^T = s_D U_D^T, i.e. (V_D^T delta_a)_i = s_D,i U_D[a, i] for a row
a = (n, c), and likewise (V_H^T h~_n)_j = s_H,j U_H[n, j]. Hence, for C = 1,

    s_ij = (1/N) s_D,i^2 s_H,j^2 sum_n U_D[n, i]^2 U_H[n, j]^2 = N lambda_B,i lambda_A,j (Q_D^T Q_H)_ij

with Q_D[n, i] = U_D[n, i]^2, Q_H[n, j] = U_H[n, j]^2, and for C > 1 the C rows of a sample are
summed first: Q_D[n, i] = sum_c U_D[(n, c), i]^2 ((N, N C); the h~ factor is shared by the C
rows). The eigenvectors of B (or A) with zero eigenvalue have (U_B^T delta)_i = 0 for every row, so
s = 0 there and the pseudo-inverse drops them, exactly as the pipeline's keep masks do. So EKFAC is
K-FAC with its weights 1/(lambda_B lambda_A) multiplied by 1 / (N (Q_D^T Q_H)_ij): a
``Kronecker.weights`` matrix (it does not factorize), built from the Grams alone, hence the
analytic face (the eigenvectors of B_l (x) I_C and Sigma_l). (s is invariant under rotations inside a
degenerate eigenspace of B only where the samples' sums over c make it so, e.g. B_L = I_C of the
last layer with expected statistics; generic hidden-layer Grams have simple spectra.)

Facts that follow (tested in tests/test_kronecker_methods.py):
  * last layer, expected statistics: delta_L = I_C, so K_D = (1 1^T) (x) I_C, Q_D[n, i] = 1/N on its
    C kept eigenvectors, N (Q_D^T Q_H)_ij = sum_n U_H[n, j]^2 = 1 and s_ij = lambda_B,i lambda_A,j:
    EKFAC is K-FAC there, and for L = 1 the two methods are the same (tikhonov damping);
  * tr Theta_G,l = tr(G^+ F_l) = sum_ij s_ij / s_ij = (number of pairs with s_ij > 0), K-FAC's trace
    (rank B_l rank A_l, N^2 C for a full-rank hidden layer, N C for the last one);
  * but Theta_G,l = sum_ij (U_D[:, i] U_D[:, i]^T) o (U_H[:, j] U_H[:, j]^T (x) 1 1^T) / (Q_D^T Q_H)_ij
    is not a multiple of I (the correction N (Q_D^T Q_H)_ij is not 1; e.g. diagonal Grams would give
    1 I per layer where K-FAC gives N I), neither at finite width nor in the wide limit (the Gram
    eigenvectors converge to those of the analytic kernels, with the same defect): EKFAC has no
    isotropy constant (``alpha`` None, ``isotropy`` None).
"""
from __future__ import annotations

import dataclasses
from typing import final

import jax.numpy as jnp
import numpy as np

from .kronecker import Kronecker, keep_mask
from .registry import register_method
from .statistics import Statistics


def gram_second_moments(eig):
    """s (N C, N) of EKFAC on the Gram eigenbasis: s_ij = wd_i wh_j (Q_D^T Q_H)_ij / N (see above),
    zero on numerically null directions."""
    n = eig.n
    Q_D = jnp.sum(eig.Ud.reshape(n, -1, eig.Ud.shape[1]) ** 2, axis=1)   # (N, N C): sum over c
    Q_H = eig.Uh ** 2                                                      # (N, N)
    return eig.wd[:, None] * eig.wh[None, :] * (Q_D.T @ Q_H) / n


def second_moment_weights(s, keep, rho):
    """1 / (s + rho) (rho = 0: 1/s where s is kept, else 0)."""
    if rho > 0:
        return jnp.where(keep, 1.0 / (s + rho), 0.0)
    keep = keep & (s > jnp.finfo(s.dtype).eps * jnp.max(s))
    return jnp.where(keep, 1.0 / jnp.where(keep, s, 1.0), 0.0)


@register_method(builtin=True)
@final
@dataclasses.dataclass(frozen=True)
class EKFAC(Statistics, Kronecker):
    name = "ekfac"
    isotropy = None

    def check(self, model, n, rho):
        """The statistics' conditions; EKFAC's step is defined (pseudo-inverse) at any rank."""
        self.check_statistics(model, n)

    def alpha(self, model, n, convention=None):
        return None

    def weights(self, eig, rho):
        keep = eig.kd[:, None] & eig.kh[None, :]
        return second_moment_weights(gram_second_moments(eig), keep, rho)

    def layer_dense(self, dense, l, rho):
        """(U_B (x) U_A) diag(1/(s + rho)) (U_B (x) U_A)^T from the M_l x M_l and (M_{l-1}+1)^2
        eigendecompositions of B and A and the per-sample rows (the THEORY 9 definition)."""
        H, Dm, n = dense.H[l], dense.Dm[l], dense.n
        C = Dm.shape[0] // n
        lb, Ub = np.linalg.eigh(Dm.T @ Dm / n)
        la, Ua = np.linalg.eigh(H.T @ H / n)
        kb, ka = np.asarray(keep_mask(jnp.asarray(lb))), np.asarray(keep_mask(jnp.asarray(la)))
        pb = (Dm @ Ub) ** 2                          # (N C, M_l): (U_B^T delta_{n,c})_i^2
        pa = np.repeat((H @ Ua) ** 2, C, axis=0)     # (N C, M_{l-1}+1): (U_A^T h~_n)_j^2
        s = pb.T @ pa / n
        keep = kb[:, None] & ka[None, :]
        if rho > 0:
            w = 1.0 / (s + rho)
        else:
            keep = keep & (s > np.finfo(s.dtype).eps * s.max())
            w = np.where(keep, 1.0 / np.where(keep, s, 1.0), 0.0)
        U = np.kron(Ub, Ua)
        return (U * w.reshape(-1)) @ U.T

    def memory_terms(self, N, C, widths):
        terms = super().memory_terms(N, C, widths)
        terms["second moments s"] = 2 * N * C * N
        return terms
