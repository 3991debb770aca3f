"""FOOF (Benzing 2022, arXiv 2201.12250; THEORY section 9): dW_l = G_l A^+ for every layer.

K-FAC with B = I: the preconditioner is I (x) A_{l-1}, A = H^T H / N (H rows h~_n), applied to the
full-batch matrix gradient G_l = (1/N) sum_{n,c} g_{n,c} delta_{n,c} h~_n^T. It has no output-side
factor, hence no ``statistics`` option (the statistics only enter through B). Damping: the step is
(I (x) A + rho I)^{-1} grad = G_l (A + rho I)^{-1} (one damped factor, the Tikhonov inverse); rho = 0
is the pseudo-inverse A^+.

Structured step (J never formed): by the push-through H (A + rho)^{-1} = (K_H / N + rho)^{-1} H,
    dW = Dm^T Mg U_H diag(w_A) U_H^T H / N,    w_A = 1 / (lambda_A + rho)  (rho = 0: 1/lambda_A, 0 on null)
with K_H = H H^T = U_H diag(N lambda_A) U_H^T and Mg[(n,c), m] = g_{n,c} delta_{nm}: one N x N
eigendecomposition per layer (no N C x N C one, unlike K-FAC). On the shared eigen pipeline of
``kronecker.py`` the weights are w = (1, w_A), which gives the kernel (train and test rows).

Function space. With P = I, Q = (A + rho)^{-1}, THEORY section 9 gives
    Theta_G,l = (D D^T) o (H Q H^T) / N = K_D o (P_H (x) 1 1^T)   (rho -> 0),
P_H = H (H^T H)^+ H^T the N x N hat matrix. When rank H_{l-1} = N (M_0 >= N for the first layer,
M_l >= N for the hidden ones) P_H = I and Theta_G,l = blockdiag_n(D_n^T D_n), the C x C blocks of the
delta Gram on the diagonal (||delta_l(x_n)||^2 for C = 1); the last layer (delta_L = I_C) gives I.
At finite width ||delta_l(x_n)||^2 differs between inputs (relative O(M^{-1/2})): FOOF is not
isotropic at finite width. As M -> inf, D_n^T D_n -> B_l(x_n, x_n) I_C (THEORY section 5), which
is the same for all inputs of one norm, so

    alpha = sum_{l=1}^{L} B_l(x, x),   B_L = 1,   ||x|| = 1 (the paper's unit-norm rows),

an isotropy in the wide limit only (``isotropy = "wide"``). ``alpha`` computes B_l(x, x) from the
model by the analytic recursion at one unit-norm input (it depends on sigma_w, sigma_b, M_0 and
the activation: for relu with sigma_b = 0, B_l(x, x) = (sigma_w^2 / 2)^{L-l}, so L at
sigma_w^2 = 2). Inputs of unequal norms give unequal B_l(x_n, x_n): not isotropic.
"""
from __future__ import annotations

import dataclasses
from typing import final

import jax.numpy as jnp
import numpy as np

from .dense import sym_inverse
from .kronecker import Kronecker, keep_mask, pseudo_inverse
from .registry import register_method


def input_side_weights(lam_a, keep_a, rho):
    """w_A of (A + rho I)^{-1} on A's eigenbasis (rho = 0: the pseudo-inverse)."""
    return pseudo_inverse(lam_a, keep_a) if rho == 0 else 1.0 / (lam_a + rho)


@register_method(builtin=True)
@final
@dataclasses.dataclass(frozen=True)
class FOOF(Kronecker):
    name = "foof"
    isotropy = "wide"

    def check(self, model, n, rho):
        """The isotropy conditions: every layer input of rank N (M_0 >= N, hidden M_l >= N)."""
        if self.force:
            return
        if model.widths[0] < n:
            raise ValueError(f"foof needs M_0 >= N (M_0={model.widths[0]}, N={n}) for a full-rank first-layer "
                             "input (P_H = I); pass force=True to run it anyway")
        hidden = model.widths[1:-1]
        if any(m < n for m in hidden):
            raise ValueError(f"foof needs M_l >= N for every hidden layer (N={n}, hidden widths {hidden}) "
                             "for full-rank layer inputs (P_H = I); pass force=True to run it anyway")

    def alpha(self, model, n, convention=None):
        """sum_l B_l(x, x) at one unit-norm input (the wide limit of sum_l ||delta_l(x_n)||^2)."""
        from ..analytic import analytic_kernels
        x = jnp.zeros((1, model.widths[0])).at[0, 0].set(1.0)
        b = np.asarray(analytic_kernels(model, x).b)
        return float(np.sum(b[:, 0, 0]))

    def weights(self, eig, rho):
        return jnp.ones_like(eig.wd), input_side_weights(eig.la, eig.kh, rho)

    def layer_direction(self, H, D, g, rho):
        n, C = g.shape
        wh, Uh = jnp.linalg.eigh(H @ H.T)
        wh = jnp.clip(wh, 0)
        kh = keep_mask(wh)
        w = input_side_weights(jnp.where(kh, wh, 0.0) / n, kh, rho) * kh
        HQ = (Uh * w) @ (Uh.T @ H)                 # N (A + rho)^{-1} applied to the rows: H (A + rho)^{-1}
        return jnp.einsum("nic,nc,nj->ij", D, g, HQ) / n

    def layer_dense(self, dense, l, rho):
        """I_{M_l} (x) (A + rho I)^{-1} (rho = 0: A^+), A = H^T H / N."""
        H = dense.H[l]
        A = H.T @ H / dense.n
        return np.kron(np.eye(dense.widths[l + 1]), sym_inverse(A, rho))

    def memory_terms(self, N, C, widths):
        L = len(widths) - 1
        return {"input Grams + eigenvectors": L * 2 * N * N,
                "scaled inputs H (A + rho)^-1": max(N * (k + 1) for k in widths[:-1])}
