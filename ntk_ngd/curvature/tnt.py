"""TNT (Ren & Goldfarb 2021, arXiv 2106.02925; kfac-jax DenseTNT; THEORY section 9).

The per-sample gradients g_n = c_n delta_n h~_n^T (C > 1: rows delta_{n,c}; ``statistics`` choose c_n,
through the statistic factors D_n V_n) give the trace-normalized Kronecker factors

    L = (1/N) sum_{n,c} c_n^2 ||h~_n||^2 delta_{n,c} delta_{n,c}^T        (M_l x M_l)
    R = (1/N) sum_{n,c} c_n^2 ||delta_{n,c}||^2 h~_n h~_n^T              ((M_{l-1}+1)^2)
    tr F_l = (1/N) sum_{n,c} c_n^2 ||delta_{n,c}||^2 ||h~_n||^2 = tr L = tr R
    G_TNT = L (x) R / tr F_l,    rho = 0: dW = tr F_l L^+ G_l R^+.

These are K-FAC's factors with per-sample row weights: L = Dm'^T Dm' / N, R = H'^T H' / N for
Dm' = diag(a) Dm, a_(n,c) = ||h~_n|| = sqrt(K_H[n, n]), and H' = diag(b) H,
b_n = (sum_c ||delta_{n,c}||^2)^{1/2} = (sum_c K_D[(n,c), (n,c)])^{1/2}: the diagonals of the Grams.
So TNT is ``Kronecker`` with ``row_scales`` (a, b) and K-FAC's weights on (lambda_L / tr F, lambda_R),
and tr F = sum lambda_L is the sum of the scaled Gram's eigenvalues / N. Dampings (option
``damping_mode``, as K-FAC's):
    tikhonov  (L (x) R / tr F + rho I)^{-1}: w_ij = 1 / (lambda_L,i lambda_R,j / tr F + rho)
    factored  (L / tr F + sqrt(rho)/pi I)^{-1} (x) (R + pi sqrt(rho) I)^{-1},
              pi^2 = (tr R / dim R) / (tr(L / tr F) / dim L) = tr F dim L / dim R
(the factored form does not depend on how tr F is split between the factors: pi absorbs it).

Function space (THEORY section 9 with P = tr F L^+, Q = R^+), rho -> 0:
    Theta_G,l = N tr F (diag(1/a) P_D' diag(1/a)) o (diag(1/b) P_H' diag(1/b) (x) 1 1^T),
P_D', P_H' the hat matrices of Dm', H'. A hidden layer with N C <= M_l and full-rank layer input
has P_D' = I, P_H' = I:  Theta_G,l = N diag(tr F_l / (||h~_n||^2 sum_c ||delta_{n,c}||^2)) (x) I_C
= N diag(mean_m tr Theta_l(m, m) / tr Theta_l(n, n)): not N I at finite width (the layer NTK's
diagonal varies by O(M^{-1/2})), N I in the wide limit for inputs of equal norms (then
Theta_l(x_n, x_n) is the same for all n). The first layer with M_0 >= N is a hidden-type layer.
The last layer (delta_L = I_C, b_n^2 = C) gives exactly I whenever rank H_{L-1} = N:
P_D' = (a a^T / ||a||^2) (x) I_C, entries N tr F / (||a||^2 C) = 1 (tr F = C ||a||^2 / N). So

    alpha = (L - 1) N + 1   (M_0 >= N, N C <= M_l, equal-norm inputs; L = 1: alpha = 1 exactly),

K-FAC's constant, reached only as M grows (``isotropy = "wide"``).
"""
from __future__ import annotations

import dataclasses
from typing import Literal, final

import jax.numpy as jnp
import numpy as np

from .dense import sym_inverse
from .kfac import core_weights
from .kronecker import Kronecker
from .registry import register_method
from .statistics import Statistics


def tnt_row_scales(KD, KH):
    """a (N C,) = ||h~_n|| per row (n, c), b (N,) = (sum_c ||delta_{n,c}||^2)^{1/2}, from the Gram diagonals."""
    n = KH.shape[0]
    C = KD.shape[0] // n
    a = jnp.repeat(jnp.sqrt(jnp.clip(jnp.diagonal(KH), 0)), C)
    b = jnp.sqrt(jnp.clip(jnp.diagonal(KD).reshape(n, C).sum(1), 0))
    return a, b


@register_method(builtin=True)
@final
@dataclasses.dataclass(frozen=True)
class TNT(Statistics, Kronecker):
    name = "tnt"
    isotropy = "wide"
    damping_mode: Literal["tikhonov", "factored"] = "tikhonov"

    def check(self, model, n, rho):
        """The statistics' conditions, and the isotropy conditions (K-FAC's without Forster)."""
        self.check_statistics(model, n)
        if self.force:
            return
        C, hidden = model.n_outputs, model.widths[1:-1]
        if any(m < n * C for m in hidden):
            raise ValueError(f"tnt needs N C <= M_l for every hidden layer (N={n}, C={C}, hidden widths "
                             f"{hidden}); pass force=True to run it anyway")
        if model.widths[0] < n:
            raise ValueError(f"tnt needs M_0 >= N (M_0={model.widths[0]}, N={n}); pass force=True to run it anyway")

    def alpha(self, model, n, convention=None):
        """(L - 1) N + 1 (see the module docstring); None where M_0 < N (the first layer then gives
        N diag(leverage scores of diag(b) H) / ..., not a multiple of I)."""
        if model.widths[0] < n or not self.fisher_statistics(model):
            return None
        return float((model.depth - 1) * n + 1)

    def row_scales(self, KD, KH):
        return tnt_row_scales(KD, KH)

    def weights(self, eig, rho):
        trf = jnp.sum(eig.lb)                      # tr L = tr F_l
        lb = eig.lb / trf                          # eigenvalues of L / tr F
        pi = jnp.sqrt((jnp.sum(eig.la) / eig.dim_a) / (jnp.sum(lb) / eig.dim_b))
        return core_weights(lb, eig.la, eig.kd, eig.kh, rho, self.damping_mode, pi)

    def layer_dense(self, dense, l, rho):
        """tr F L^+ (x) R^+, (L (x) R / tr F + rho I)^{-1}, or the factored inverse, from the definition."""
        H, Dm, n = dense.H[l], dense.Dm[l], dense.n
        C = Dm.shape[0] // n
        h2 = np.sum(H * H, 1)                                    # ||h~_n||^2
        d2 = np.sum(Dm * Dm, 1)                                  # ||delta_{n,c}||^2, rows (n, c)
        Lf = np.einsum("a,ai,aj->ij", np.repeat(h2, C), Dm, Dm) / n
        Rf = np.einsum("n,ni,nj->ij", d2.reshape(n, C).sum(1), H, H) / n
        trf = np.sum(np.repeat(h2, C) * d2) / n
        if rho == 0:
            return trf * np.kron(sym_inverse(Lf, 0.0), sym_inverse(Rf, 0.0))
        if self.damping_mode == "factored":
            Ls = Lf / trf
            pi = np.sqrt((np.trace(Rf) / len(Rf)) / (np.trace(Ls) / len(Ls)))
            return np.kron(sym_inverse(Ls, np.sqrt(rho) / pi), sym_inverse(Rf, pi * np.sqrt(rho)))
        return sym_inverse(np.kron(Lf, Rf) / trf, rho)

    def memory_terms(self, N, C, widths):
        terms = super().memory_terms(N, C, widths)
        terms["scaled factors Dm', H'"] = max(N * C * m + N * (k + 1) for k, m in zip(widths[:-1], widths[1:]))
        return terms
