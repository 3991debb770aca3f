"""Shampoo (Gupta, Koren, Singer 2018, arXiv 1802.09568; THEORY section 9).

Per layer, with the full-batch matrix gradient G_l = (1/N) sum_{n,c} r_{n,c} delta_{n,c} h~_n^T
(M_l, M_{l-1}+1) and epsilon = rho (THEORY: "shampoo's epsilon is rho"):

    one step (default)   dW_l = (G G^T + rho I)^{-p} G (G^T G + rho I)^{-p}
    accumulate=True      dW_l = (L_t + rho I)^{-p} G_t (R_t + rho I)^{-p},
                         L_t = sum_{s<=t} G_s G_s^T,  R_t = sum_{s<=t} G_s^T G_s  (s: training steps)

with p = ``exponent`` (default 1/4, Shampoo's root for a matrix). At rho = 0 the powers are
pseudo-powers (p-th powers of the nonzero eigenvalues, 0 on the null space).

Structured one-step direction (J never formed). G = E H with E = (1/N) sum_c D_c diag(r_c)
(M_l, N) (column n: sum_c r_{n,c} delta_{n,c} / N), so rank G <= N whatever C. The eigenpairs of
the N x N Grams E^T E = U_E s_E^2 U_E^T and H H^T = U_H s_H^2 U_H^T (numerical zeros dropped) give
E = Q_E s_E U_E^T and H = U_H s_H Q_H^T, which reduce G to the N x N core s_E U_E^T U_H s_H; its
SVD P S W^T gives the thin SVD G = (Q_E P) S (Q_H W)^T, and with f(s) = s (s^2 + rho)^{-2p}

    dW = (Q_E P) diag(f(S)) (Q_H W)^T = E [U_E s_E^+ P f(S) W^T s_H^+ U_H^T] H,
    at rho = 0: f(s) = s^{1-4p} on the nonzero s, 0 elsewhere

(p = 1/4: dW = U V^T, the polar factor of G). For rho > 0 the eps I terms also act on the
complement of span(G) and span(G^T), where they give eps^{-p} (I - U U^T) and its right analogue;
but (I - U U^T) G = 0 = G (I - V V^T), so the step stays in the span: dW = U f(S) V^T exactly.
Cost: the Grams O(N^2 (M_l + M_{l-1})), two N x N eigh and one SVD O(N^3), the product
O(N M_l M_{l-1}), as K-FAC's. (Householder QRs of E and H^T would avoid the squared condition
number of the Grams, but jax's CPU QR of a 2048 x 100 matrix takes 0.2-2 s against 3 ms for its
Gram; the Gram route meets the dense reference to 1e-12 on the registry suite.)

Function space (nonlinear: ``linear`` is False, there is no Theta_G and preconditioned_kernel
refuses). Phi(r) = J d(r). Empirical sources use the generic J d(r) of the base class. Every piece
also reduces to the Grams: with KD = U_D diag(s_D^2) U_D^T, KH = U_H diag(s_H^2) U_H^T (numerical
zeros dropped), Dm^T = Q_D s_D U_D^T and H^T = Q_H s_H U_H^T, so G = Q_D C Q_H^T with the (N C, N)
core C = s_D U_D^T Mr U_H s_H, Mr[(n,c), m] = r_{n,c} delta_{nm} / N. With C = P S W^T,

    Dm dW H^T = U_D s_D P f(S) W^T s_H U_H^T          (train rows: Phi_l(r)_{n,c} is entry ((n,c), n))
    Dm' dW H'^T = KD' U_D s_D^+ P f(S) W^T s_H^+ U_H^T KH'^T     (test rows: the cross Grams)

Nothing there but Grams, so the analytic source (KD = B_l (x) I_C, KH = Sigma_l) gives the
infinite-width Phi(r) (``residual_map`` with an analytic source, train and test rows).

Degree of homogeneity at rho = 0. G(c r) = c G(r); for c > 0 the singular vectors stay and the
singular values scale by c, so f(c s) = c^{1-4p} f(s) and Phi(c r) = c^{1-4p} Phi(r): the degree is
d = 1 - 4p (d = 0 at p = 1/4: the step's size does not depend on the residual's; d = -1 at
p = 1/2). For c < 0 the left singular vectors flip sign: Phi(c r) = -|c|^{1-4p} Phi(r) (Phi is odd).
By THEORY section 9 a geometric schedule then has eta_t proportional to ||r_t||^{4p}. rho > 0
breaks the homogeneity (f(s) ~ s rho^{-2p} for s << sqrt(rho): GD-like, degree 1, there).

``exponent``: 0 < p <= 1/2. p = 0 would be plain GD (no preconditioner); p = 1/2 already inverts
G's singular values, dW = (G^+)^T (degree -1); p > 1/2 over-inverts (a singular direction's step
grows faster than 1/s, degree < -1), and is refused.

State (``accumulate=True``): the statistics are accumulated across training steps, when the
factors change from step to step; span(D_s^T) and span(H_s^T) then move, so a factor form in
those spans of static shape is not exact, and the state is the full matrices, one pair per layer:
[(L_l (M_l, M_l), R_l (M_{l-1}+1, M_{l-1}+1))], sum_l (M_l^2 + (M_{l-1}+1)^2) elements (``init``:
zeros, ``update``: += E (H H^T) E^T and H^T (E^T E) H, never forming G G^T from G). The direction
then takes the eigendecompositions of L_t, R_t, O(M_l^3 + M_{l-1}^3) per step (as Shampoo does).
With accumulate=False the state is () and the step is the one-step rule (``stateful`` is a class
capability: the method may carry state; here only accumulate=True does). A direction asked for
with an empty state (``ngd_direction``, ``direction_fn``) is the first step's: L_0 = G_0 G_0^T,
i.e. the one-step rule, which is also what ``to_dense`` gives for both settings.

Dense reference (``to_dense``): per layer the dense G_l = reshape(J_l^T g / N) (M_l, M_{l-1}+1),
L = G G^T, R = G^T G, their (damped or pseudo) -p powers by numpy eigh, and the block
Lp (x) Rp: for symmetric Lp, Rp, vec_row(Lp G Rp) = (Lp (x) Rp) vec_row(G), and the layer's block
of grad is vec_row(G_l), so (to_dense) @ grad is the step for this problem's residual (the matrix
itself depends on the residual: it is not a preconditioner of other gradients).
"""
from __future__ import annotations

import dataclasses
from typing import final

import jax.numpy as jnp
import numpy as np

from .base import AbstractMethod, PerLayer, ResidualMap, _shaped
from .dense import RCOND
from .kronecker import layer_eig, pseudo_inverse
from .registry import register_method

SV_CUTOFF = float(np.sqrt(RCOND))  # singular values kept at rho = 0: s > SV_CUTOFF s_max (s^2 > RCOND s_max^2)


def singular_weights(s, rho: float, p: float):
    """f(s) of dW = U diag(f(s)) V^T: s (s^2 + rho)^{-2p}; at rho = 0 the pseudo-power s^{1-4p} on
    the singular values above SV_CUTOFF * s_max, 0 on the others (all 0 when G = 0)."""
    if rho > 0:
        return s * (s * s + rho) ** (-2.0 * p)
    keep = s > SV_CUTOFF * jnp.max(s)
    return jnp.where(keep, jnp.where(keep, s, 1.0) ** (1.0 - 4.0 * p), 0.0)


def eig_power(S, rho: float, p: float):
    """(U, w) with (S + rho I)^{-p} = U diag(w) U^T for a symmetric PSD S; at rho = 0 the
    pseudo-power (eigenvalues above RCOND * max, 0 on the others)."""
    lam, U = jnp.linalg.eigh(S)
    lam = jnp.clip(lam, 0.0)
    if rho > 0:
        return U, (lam + rho) ** (-p)
    keep = lam > RCOND * jnp.max(lam)
    return U, jnp.where(keep, jnp.where(keep, lam, 1.0) ** (-p), 0.0)


def dense_power(S: np.ndarray, rho: float, p: float) -> np.ndarray:
    """(S + rho I)^{-p} (pseudo-power at rho = 0) by numpy eigh, for the dense reference."""
    lam, U = np.linalg.eigh(S)
    lam = np.clip(lam, 0.0, None)
    if rho > 0:
        w = (lam + rho) ** (-p)
    else:
        keep = lam > RCOND * lam.max()
        w = np.where(keep, np.where(keep, lam, 1.0) ** (-p), 0.0)
    return (U * w) @ U.T


def gradient_factor(D, g):
    """E (M_l, N) with G_l = E H: column n is sum_c g_{n,c} delta_{n,c} / N."""
    return jnp.einsum("nic,nc->in", D, g) / g.shape[0]


def one_step(E, H, rho: float, p: float):
    """(G G^T + rho)^{-p} G (G^T G + rho)^{-p} for G = E H, from the N x N Grams E^T E and H H^T:
    E = Q_E s_E U_E^T, H = U_H s_H Q_H^T, the core s_E U_E^T U_H s_H = P S W^T, and
    dW = Q_E P f(S) W^T Q_H^T = E [U_E s_E^+ P f(S) W^T s_H^+ U_H^T] H."""
    eig = layer_eig(E.T @ E, H @ H.T, 1, 1)
    se, sh = jnp.sqrt(eig.wd), jnp.sqrt(eig.wh)
    P, s, Wt = jnp.linalg.svd((se[:, None] * (eig.Ud.T @ eig.Uh)) * sh[None, :], full_matrices=False)
    left = (eig.Ud * pseudo_inverse(se, eig.kd)) @ (P * singular_weights(s, rho, p))
    right = (Wt * pseudo_inverse(sh, eig.kh)[None, :]) @ eig.Uh.T
    return (E @ (left @ right)) @ H


def gram_core(eig, r, rho: float, p: float):
    """(left (N C, k) = P f(S) on the U_D basis, right (N, k) = W on the U_H basis) of one layer from
    its Grams (``kronecker.layer_eig``): the SVD of the core s_D U_D^T Mr U_H s_H (module docstring)."""
    n, c = r.shape
    sd, sh = jnp.sqrt(eig.wd), jnp.sqrt(eig.wh)
    a = jnp.einsum("mci,mc->im", eig.Ud.reshape(n, c, -1), r) / n       # U_D^T Mr (N C, N)
    P, s, Wt = jnp.linalg.svd((sd[:, None] * a) @ (eig.Uh * sh), full_matrices=False)
    return P * singular_weights(s, rho, p), Wt.T


def diagonal_rows(left, right, c: int):
    """Phi[n, c] = sum_k left[(n, c), k] right[n, k]: the rows (n, c) of Dm dW H^T at column n."""
    n, k = right.shape
    return jnp.einsum("nck,nk->nc", left.reshape(n, c, k), right)


@register_method(builtin=True)
@final
@dataclasses.dataclass(frozen=True)
class Shampoo(PerLayer):
    name = "shampoo"
    stateful = True  # may carry state: only accumulate=True does (the state is () otherwise)
    exponent: float = 0.25
    accumulate: bool = False

    def __post_init__(self):
        super().__post_init__()
        p = float(self.exponent)
        if not 0.0 < p <= 0.5:
            raise ValueError(f"shampoo: exponent must be in (0, 1/2], got {self.exponent!r}: p = 0 is plain gd, "
                             "p = 1/2 already inverts G's singular values (dW = (G^+)^T), p > 1/2 over-inverts them")

    @property
    def linear(self) -> bool:
        return False  # G, hence the step, depends on the residual

    def check(self, model, n, rho):
        """No rank or width conditions: pseudo-powers define every step at rho = 0; C > 1 is supported."""

    def alpha(self, model, n, convention=None):
        return None  # nonlinear: no Theta_G (radiality and the degree 1 - 4p are its analogues)

    # --- state -------------------------------------------------------------------------
    def init(self, fac, g, rho):
        """accumulate=True: zero accumulators [(L_l (M_l, M_l), R_l (K, K))]; else ()."""
        if not self.accumulate:
            return ()
        return tuple((jnp.zeros((D.shape[1],) * 2, H.dtype), jnp.zeros((H.shape[1],) * 2, H.dtype))
                     for H, D in zip(fac.H, fac.D))

    def update(self, state, fac, g, rho, step):
        """L_l += G G^T = E (H H^T) E^T, R_l += G^T G = H^T (E^T E) H (G = E H never formed)."""
        if not self.accumulate:
            return state
        out = []
        for (Lm, Rm), H, D in zip(state, fac.H, fac.D):
            E = gradient_factor(D, g)
            out.append((Lm + (E @ (H @ H.T)) @ E.T, Rm + (H.T @ (E.T @ E)) @ H))
        return tuple(out)

    # --- direction ---------------------------------------------------------------------
    def layer_direction(self, H, D, g, rho):
        return one_step(gradient_factor(D, g), H, rho, float(self.exponent))

    def direction(self, fac, g, rho, state=()):
        if not (self.accumulate and len(state)):
            return [self.layer_direction(H, D, g, rho) for H, D in zip(fac.H, fac.D)]
        p, out = float(self.exponent), []
        for (Lm, Rm), H, D in zip(state, fac.H, fac.D):
            E = gradient_factor(D, g)
            UL, wL = eig_power(Lm, rho, p)
            UR, wR = eig_power(Rm, rho, p)
            LE = UL @ (wL[:, None] * (UL.T @ E))          # (L + rho)^{-p} E      (M_l, N)
            HR = ((H @ UR) * wR) @ UR.T                   # H (R + rho)^{-p}      (N, K)
            out.append(LE @ HR)
        return out

    def kernel(self, src, rho):
        return AbstractMethod.kernel(self, src, rho)  # the clear "not linear" error

    # --- function space ----------------------------------------------------------------
    def residual_map(self, src, rho, state=()):
        """Empirical sources: J d(r) (base class). Analytic (Grams-only) sources: the Gram-core form
        of the module docstring, train rows and, with cross Grams, test rows."""
        if src.empirical:
            return super().residual_map(src, rho, state)
        if self.accumulate and len(state):
            raise ValueError("shampoo: the accumulated statistics L_t, R_t are M_l x M_l matrices of the "
                             "network, not functions of the Grams: no analytic residual map with a state")
        n, c, p = src.n, src.C, float(self.exponent)
        depth = len(src.train.KH)
        eigs = [layer_eig(src.train.KD[l], src.train.KH[l], 1, 1) for l in range(depth)]
        ld = [e.Ud * jnp.sqrt(e.wd) for e in eigs]
        rh = [e.Uh * jnp.sqrt(e.wh) for e in eigs]

        def train(r):
            out = 0.0
            for l, e in enumerate(eigs):
                left, right = gram_core(e, r, rho, p)
                out = out + diagonal_rows(ld[l] @ left, rh[l] @ right, c)
            return out

        test = None
        if src.cross is not None:
            cx = src.cross.KD[0].shape[0] // src.cross.KH[0].shape[0]
            lx = [src.cross.KD[l] @ (e.Ud * pseudo_inverse(jnp.sqrt(e.wd), e.kd)) for l, e in enumerate(eigs)]
            rx = [src.cross.KH[l] @ (e.Uh * pseudo_inverse(jnp.sqrt(e.wh), e.kh)) for l, e in enumerate(eigs)]

            def test_rows(r):
                out = 0.0
                for l, e in enumerate(eigs):
                    left, right = gram_core(e, r, rho, p)
                    out = out + diagonal_rows(lx[l] @ left, rx[l] @ right, cx)
                return out
            test = _shaped(test_rows, n, c)
        return ResidualMap(_shaped(train, n, c), test)

    # --- dense reference and memory ------------------------------------------------------
    def layer_dense(self, dense, l, rho):
        """(G G^T + rho)^{-p} (x) (G^T G + rho)^{-p} with the dense G_l = reshape(J_l^T g / N)."""
        m, k = dense.widths[l + 1], dense.widths[l] + 1
        G = (dense.layer(l).T @ dense.g / dense.n).reshape(m, k)
        p = float(self.exponent)
        return np.kron(dense_power(G @ G.T, rho, p), dense_power(G.T @ G, rho, p))

    def memory_terms(self, N, C, widths):
        dims = [(m, k + 1) for k, m in zip(widths[:-1], widths[1:])]
        # per layer: E and E X (M_l, N); E^T E, H H^T and their eigenvectors, the core and its P, W (N, N)
        terms = {"gradient factors E, E X": sum(2 * N * m for m, _ in dims),
                 "Grams + eigenvectors, core SVD": 7 * N * N * len(dims)}
        if self.accumulate:
            acc = sum(m * m + k * k for m, k in dims)
            terms["accumulated statistics L_t, R_t (state)"] = acc
            terms["eigenvectors of L_t, R_t"] = acc
        return terms
