"""K-FAC: G = blockdiag_l B_l (x) A_{l-1} (THEORY section 4), on the shared eigen pipeline.

A_{l-1} = H^T H / N (H rows h~_n), B_l = Dm^T Dm / N (Dm rows delta_{n,c}, N C of them); with
``statistics`` (THEORY section 9) the rows of Dm are those of D_n V_n (B = D^T diag(w) D / N, w_n = E c_n^2). Weights
on the eigenbasis of B (x) A (``kronecker.py``):
    tikhonov  (B (x) A + rho I)^{-1}:        w_ij = 1 / (lambda_B,i lambda_A,j + rho)
    factored  (B + sqrt(rho)/pi)^{-1} (x) (A + pi sqrt(rho))^{-1},  pi^2 = (tr A / dim A) / (tr B / dim B)
    rho = 0   B^+ (x) A^+.
Function space: Theta_G,l = N P_D o (P_H (x) 1 1^T) at rho = 0 (P = hat matrices).
alpha = min(N, M_0) + (L - 2) N + 1 (L >= 2; M_0 < N needs Forster inputs); the paper's code: N L.
"""
from __future__ import annotations

import dataclasses
from typing import Literal, final

import numpy as np

from .dense import sym_inverse
from .kronecker import Kronecker, pseudo_inverse
from .registry import register_method
from .statistics import Statistics

MODES = ("tikhonov", "factored")


def core_weights(lam_b, lam_a, keep_b, keep_a, rho, mode, pi=1.0):
    """Weights of the damped inverse on the eigenbasis: (w_B, w_A) when it factorizes (rho = 0
    pseudo-inverse, factored damping), else the full (r_D, r_H) tikhonov matrix."""
    if rho == 0:
        return pseudo_inverse(lam_b, keep_b), pseudo_inverse(lam_a, keep_a)
    if mode == "factored":
        sr = np.sqrt(rho)
        return 1.0 / (lam_b + sr / pi), 1.0 / (lam_a + pi * sr)
    return 1.0 / (lam_b[:, None] * lam_a[None, :] + rho)


@register_method(builtin=True)
@final
@dataclasses.dataclass(frozen=True)
class KFAC(Statistics, Kronecker):
    name = "kfac"
    isotropy = "finite"
    paper = True
    damping_mode: Literal["tikhonov", "factored"] = "tikhonov"
    forster: bool = False
    convention: Literal["theory", "paper"] = "theory"

    def check(self, model, n, rho):
        self.check_statistics(model, n)
        if self.force:
            return
        C, hidden = model.n_outputs, model.widths[1:-1]
        if any(m < n * C for m in hidden):
            raise ValueError(f"kfac needs N C <= M_l for every hidden layer (N={n}, C={C}, hidden widths "
                             f"{hidden}); pass force=True to run it anyway")
        if model.widths[0] < n and not self.forster:
            raise ValueError(f"kfac needs M_0 >= N (M_0={model.widths[0]}, N={n}) or Forster-transformed "
                             "inputs (forster=True, see ntk_ngd.data.forster_fit); pass force=True to run it anyway")

    def alpha(self, model, n, convention=None):
        if not self.fisher_statistics(model):
            return None
        L = model.depth
        if (convention or self.convention) == "paper":
            return float(n * L)
        first = min(model.widths[0], n) / n  # Forster: leverage scores M_0 / N
        if L == 1:
            return float(first)
        return float(first * n + (L - 2) * n + 1)

    def weights(self, eig, rho):
        return core_weights(eig.lb, eig.la, eig.kd, eig.kh, rho, self.damping_mode, eig.pi)

    def layer_dense(self, dense, l, rho):
        """(B (x) A + rho I)^{-1}, (B + sqrt(rho)/pi) (x) (A + pi sqrt(rho)) inverted, or B^+ (x) A^+."""
        H, Dm, n = dense.H[l], dense.Dm[l], dense.n
        A, B = H.T @ H / n, Dm.T @ Dm / n
        if rho == 0:
            return np.kron(sym_inverse(B, 0.0), sym_inverse(A, 0.0))
        if self.damping_mode == "factored":
            pi = np.sqrt((np.trace(A) / len(A)) / (np.trace(B) / len(B)))
            return np.kron(sym_inverse(B, np.sqrt(rho) / pi), sym_inverse(A, pi * np.sqrt(rho)))
        return sym_inverse(np.kron(B, A), rho)
