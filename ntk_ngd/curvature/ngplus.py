"""NG+ (Yang et al. 2021, arXiv 2106.07454): a generalized Fisher (GFIM) built from matrix-shaped
per-sample gradients, per layer (THEORY section 9).

Per layer l, with the statistic factors of ``statistics.py`` (rows d_{n,s} = (D_n V_n)[:, s] of
D_S, k of them per sample; c_n = r_n for "empirical", the authors' choice and the default here)
the per-sample matrix gradients are g_{n,s} = d_{n,s} h~_n^T and

    output side  GFIM_out = mean_n sum_s g g^T = D_S^T diag(q) D_S / N     (M_l x M_l),  q_{n,s} = ||h~_n||^2
                 dW = (GFIM_out + rho I)^+ G
    input side   GFIM_in  = mean_n sum_s g^T g = H^T diag(w) H / N         (a x a),      w_n = sum_s ||d_{n,s}||^2
                 dW = G (GFIM_in + rho I)^+
    side "auto"  per layer the input side where a = M_{l-1} + 1 >= N C, the output side otherwise;

G = J_l^T r / N the full-batch matrix gradient (a = M_{l-1} + 1 with the bias column).

Damping. rho is added to the GFIM itself: (GFIM + rho I)^{-1}, which is exactly THEORY's
(G + rho I)^{-1} in parameter space, since the preconditioner of one layer is GFIM_out (x) I_a
(GFIM_in (x) I_{M_l} for the input side) in the row-major W~ layout. The authors' code adds
sqrt(damping) to the GFIM's diagonal: their ``damping`` = rho^2 (rho = sqrt(their damping)).
rho = 0 means pseudo-inverses.

Structured step (no M x M matrix). With B = diag(sqrt q) D_S (N k, M_l) the GFIM is B^T B / N and G
lies in the row space of D_S, so by push-through
    output  dW = D_S^T R Z,    R = diag(sqrt q) (K / N + rho)^+ diag(1/sqrt q) / N,  K = B B^T (N k x N k),
            Z the rows u_{n,s} h~_n (u the statistic coordinates of r);
    input   dW = Y^T R' H,     R' = diag(1/sqrt w) (K' / N + rho)^+ diag(sqrt w) / N,  K' = diag(sqrt w) KH diag(sqrt w),
            Y the rows y_n = D_n r_n;
the same Grams give the function-space form (train and test rows x'):
    output  Phi_l(r)[x'c] = sum_m (KD_S(x', .) R)[x'c, (m,s)] KH(x', m) u_{m,s}
    input   Phi_l(r)[x'c] = sum_(n,s) KD_S(x', .)[x'c, (n,s)] (KH(x', .) R'^T)[x', n] u_{n,s}
(the kernel Theta_G,l = (D P D^T) o (H Q H^T) / N of THEORY 9 for P, Q the two inverses), for
empirical and analytic sources alike; for statistics="empirical" V = r and Phi is evaluated for
each r (``residual_map`` on analytic sources), the other statistics give a linear ``kernel``.

What the derivation gives at rho -> 0 (per layer, finite width, pseudo-inverses):
  * output side, hidden layer (l < L) with D of full row rank N C (N C <= M_l): D P D^T = N diag(1/q),
    so Theta_G,l = blockdiag_n (V_n V_n^T)^{-1}: exactly I for expected statistics (and for
    rademacher with C = 1), blockdiag of inverse sample moments for sampled ones;
  * output side, last layer (D_L = 1 (x) I_C, rank C): Theta_G,L = KH_L (x) I_C / tr KH_L, not isotropic;
  * input side, H of full row rank N (N <= M_{l-1} + [sigma_b != 0]): Theta_G,l =
    blockdiag_n D_n^T S_n D_n / tr(D_n^T S_n D_n): I for C = 1 (expected), I_C / C for the last
    layer, and I_C / C for hidden layers only as M grows (D_n^T D_n -> B_l(x_n, x_n) I_C);
  so alpha = sum_l [1 on the output side (l < L), 1 / C on the input side], None where the last
  layer is on the output side, a rank condition fails, or the statistics are not expected (or
  rademacher with C = 1); e.g. side="input" / "auto" with C = 1 wide enough: alpha = L.
  * statistics="empirical", C = 1: every such layer gives Phi_l(r) = r^+ (elementwise 1/r_n,
    0 where r_n = 0) and the output-side last layer KH_L r / (r^T diag(KH_L) r): the default
    (output side) is Phi(r) = (L - 1) r^+ + KH_L r / (r^T diag(KH_L) r), homogeneous of degree -1
    and not radial; side="input" (or "auto", wide) gives Phi(r) = L r^+.

``hold`` = k > 1 makes the method stateful: the state is, per layer, the GFIM's factor B (or B')
and the eigenpairs of its Gram, computed by ``init`` at the first step and refreshed by ``update``
whenever step % k == 0; in between the direction applies the held (GFIM + rho I)^+ to the current
full-batch gradient (GFIM^+ G = N B^T U diag(1/s^2) U^T B G, Woodbury for rho > 0).
"""
from __future__ import annotations

import dataclasses
from typing import Literal, final

import jax
import jax.numpy as jnp
import numpy as np

from ..layers import Grams, expand
from .base import KernelSource, PerLayer, ResidualMap, _shaped
from .dense import sym_inverse
from .kronecker import keep_mask, pseudo_inverse
from .registry import register_method
from .statistics import Statistics, block_diag_rows, coordinates, statistic_grams

SIDES = ("output", "input", "auto")


class _Declared:
    """A declared capability that depends on the options: ``fn(instance)``; on the class, the value
    of the default instance (so ``METHODS[name].stateful`` stays a bool)."""

    def __init__(self, fn):
        self.fn = fn

    def __get__(self, obj, cls):
        return self.fn(cls() if obj is None else obj)


def _stateful(m) -> bool:
    return m.hold > 1


def _isotropy(m):
    if m.side == "output" or m.statistics not in ("expected", "rademacher"):
        return None
    return "finite"  # C = 1 (and the last layer for any C); input-side hidden layers with C > 1: as M grows


def gram_inverse(K, n: int, rho: float):
    """(K / N + rho I)^+ of a symmetric PSD Gram K, through its eigenpairs (numerical nulls -> 0)."""
    s, U = jnp.linalg.eigh(K)
    s = jnp.clip(s, 0)
    keep = keep_mask(s)
    w = pseudo_inverse(s / n + rho, keep)
    return (U * w) @ U.T


def _apply_held(s, U, keep, n: int, rho: float):
    """Weights c on U such that (B^T B / N + rho)^+ X = X / rho - B^T U diag(c) U^T B X (rho > 0) or
    N B^T U diag(c) U^T B X (rho = 0), for held eigenpairs (s, U) of K = B B^T."""
    if rho == 0:
        return pseudo_inverse(s * s, keep)
    return jnp.where(keep, 1.0 / (n * rho * (s / n + rho)), 0.0)


@register_method(builtin=True)
@final
@dataclasses.dataclass(frozen=True)
class NGPlus(Statistics, PerLayer):
    name = "ngplus"
    analytic = True
    paper = False
    stateful = _Declared(_stateful)
    isotropy = _Declared(_isotropy)
    statistics: Literal["expected", "empirical", "sampled", "rademacher"] = "empirical"
    side: Literal["output", "input", "auto"] = "output"
    hold: int = 1

    def __post_init__(self):
        super().__post_init__()
        if self.hold < 1:
            raise ValueError(f"ngplus: hold must be an integer >= 1 (the GFIM is recomputed every hold "
                             f"training steps), got {self.hold}")

    # --- which side, per layer ------------------------------------------------------------
    def sides(self, inputs, n: int, C: int) -> tuple:
        """Side of every layer from the layer input dimensions a_l = M_{l-1} + 1."""
        if self.side == "auto":
            return tuple("input" if a >= n * C else "output" for a in inputs)
        return (self.side,) * len(inputs)

    def model_sides(self, widths, n: int) -> tuple:
        return self.sides([k + 1 for k in widths[:-1]], n, widths[-1])

    # --- conditions and constants ---------------------------------------------------------
    def check(self, model, n, rho):
        if self.hold < 1:
            raise ValueError(f"ngplus: hold must be >= 1, got {self.hold}")
        if self.side not in SIDES:
            raise ValueError(f"ngplus: side must be one of {SIDES}, got {self.side!r}")
        self.check_statistics(model, n)

    def alpha(self, model, n, convention=None):
        """sum_l (1 output side, l < L; 1 / C input side) where the derivation above holds exactly
        (C = 1) or as M grows (input-side hidden layers, C > 1); None otherwise."""
        w, C, L = model.widths, model.n_outputs, model.depth
        if not (self.statistics == "expected" or (self.statistics == "rademacher" and C == 1)):
            return None
        total = 0.0
        for l, side in enumerate(self.model_sides(w, n)):
            if side == "output":
                if l == L - 1:
                    if n > 1:
                        return None  # Theta_G,L = KH_L (x) I_C / tr KH_L
                    total += 1.0
                elif n * C <= w[l + 1]:
                    total += 1.0
                else:
                    return None
            else:
                if n > w[l] + (1 if model.sigma_b != 0 else 0):
                    return None
                total += 1.0 / C
        return float(total)

    # --- structured direction -------------------------------------------------------------
    def layer_direction(self, H, D, g, rho, side=None):
        """W~ block of one layer from H (N, a), statistic factors D (N, M_l, k), coordinates g (N, k)."""
        side = self.side if side is None else side
        if side not in ("output", "input"):
            raise ValueError("ngplus: layer_direction needs side 'output' or 'input' (auto is resolved per network)")
        n, k = g.shape
        if side == "output":
            m = D.shape[1]
            Dm = D.transpose(0, 2, 1).reshape(n * k, m)  # rows (n, s)
            sq = jnp.repeat(jnp.sqrt(jnp.sum(H * H, axis=1)), k)
            isq = pseudo_inverse(sq, sq > 0)
            K = sq[:, None] * (Dm @ Dm.T) * sq[None, :]
            R = sq[:, None] * gram_inverse(K, n, rho) * isq[None, :] / n
            X = (R * g.reshape(-1)[None, :]).reshape(n * k, n, k).sum(-1)  # (N k, N): R Z = X H
            return (Dm.T @ X) @ H
        Y = jnp.einsum("nmk,nk->nm", D, g)
        sw = jnp.sqrt(jnp.sum(D * D, axis=(1, 2)))
        isw = pseudo_inverse(sw, sw > 0)
        K = sw[:, None] * (H @ H.T) * sw[None, :]
        R = isw[:, None] * gram_inverse(K, n, rho) * sw[None, :] / n
        return (Y.T @ R) @ H

    def direction(self, fac, g, rho, state=()):
        n, C = g.shape
        sides = self.sides([H.shape[1] for H in fac.H], n, C)
        if state:
            return [self._held_direction(H, D, g, rho, side, st)
                    for H, D, side, st in zip(fac.H, fac.D, sides, state)]
        fs, u = self.statistic_inputs(fac, g)
        return [self.layer_direction(H, D, u, rho, side) for H, D, side in zip(fs.H, fs.D, sides)]

    # --- the held GFIM (hold > 1) ---------------------------------------------------------
    def _gfim(self, fac, g):
        """Per layer (B, U, s, keep): GFIM = B^T B / N (output) or its input-side analogue, with
        the eigenpairs (s, U) of B B^T; shapes depend only on the network and N."""
        n, C = g.shape
        sides = self.sides([H.shape[1] for H in fac.H], n, C)
        fs, _ = self.statistic_inputs(fac, g)
        out = []
        for H, D, side in zip(fs.H, fs.D, sides):
            k = D.shape[2]
            if side == "output":
                Dm = D.transpose(0, 2, 1).reshape(n * k, D.shape[1])
                B = jnp.repeat(jnp.sqrt(jnp.sum(H * H, axis=1)), k)[:, None] * Dm
            else:
                B = jnp.sqrt(jnp.sum(D * D, axis=(1, 2)))[:, None] * H
            s, U = jnp.linalg.eigh(B @ B.T)
            s = jnp.clip(s, 0)
            keep = keep_mask(s)
            out.append((B, U, jnp.where(keep, s, 0.0), keep))
        return tuple(out)

    def _held_direction(self, H, D, g, rho, side, st):
        """(GFIM_held + rho I)^+ G (output) or G (GFIM_held + rho I)^+ (input) with the current
        full-batch G = J_l^T g / N (real factors H, D (N, M_l, C), residual g (N, C))."""
        B, U, s, keep = st
        n = g.shape[0]
        c = _apply_held(s, U, keep, n, rho)
        Y = jnp.einsum("nmc,nc->nm", D, g)  # G = Y^T H / N
        if side == "output":
            BG = ((B @ Y.T) @ H) / n  # B G (r, a)
            corr = B.T @ ((U * c) @ (U.T @ BG))
            return n * corr if rho == 0 else (Y.T @ H) / (n * rho) - corr
        GB = (Y.T @ (H @ B.T)) / n  # G B^T (M_l, r)
        corr = ((GB @ U) * c) @ (U.T @ B)
        return n * corr if rho == 0 else (Y.T @ H) / (n * rho) - corr

    def init(self, fac, g, rho):
        return self._gfim(fac, g) if self.hold > 1 else ()

    def update(self, state, fac, g, rho, step):
        if self.hold == 1:
            return state
        return jax.lax.cond(jnp.asarray(step) % self.hold == 0, lambda: self._gfim(fac, g), lambda: state)

    # --- function space ---------------------------------------------------------------------
    def layer_kernel(self, src, l, rho, side=None):
        """(train, cross) of layer l on a (statistic) source: operators from the coordinates u
        (N k) to the outputs; see the module docstring."""
        side = self.side if side is None else side
        n = src.n
        KD, KH = src.train.KD[l], src.train.KH[l]
        k = KD.shape[0] // n
        if side == "output":
            sq = jnp.repeat(jnp.sqrt(jnp.clip(jnp.diag(KH), 0)), k)
            isq = pseudo_inverse(sq, sq > 0)
            K = sq[:, None] * KD * sq[None, :]
            R = sq[:, None] * gram_inverse(K, n, rho) * isq[None, :] / n
            train = (KD @ R) * expand(KH, k, k)
            if src.cross is None:
                return train, None
            KDx, KHx = src.cross.KD[l], src.cross.KH[l]
            return train, (KDx @ R) * expand(KHx, KDx.shape[0] // KHx.shape[0], k)
        sw = jnp.sqrt(jnp.clip(jnp.diag(KD).reshape(n, k).sum(1), 0))
        isw = pseudo_inverse(sw, sw > 0)
        K = sw[:, None] * KH * sw[None, :]
        R = isw[:, None] * gram_inverse(K, n, rho) * sw[None, :] / n
        train = KD * expand(KH @ R.T, k, k)
        if src.cross is None:
            return train, None
        KDx, KHx = src.cross.KD[l], src.cross.KH[l]
        return train, KDx * expand(KHx @ R.T, KDx.shape[0] // KHx.shape[0], k)

    def _layer_sum(self, src, rho, sides):
        train, cross = 0.0, (None if src.cross is None else 0.0)
        for l, side in enumerate(sides):
            tr, cr = self.layer_kernel(src, l, rho, side)
            train = train + tr
            if cross is not None:
                cross = cross + cr
        return train, cross

    def kernel(self, src, rho):
        if not self.linear:
            return super().kernel(src, rho)  # the clear "not linear" error
        sides = self.model_sides(src.model.widths, src.n)
        src_s, finish = self.statistic_source(src)
        return finish(*self._layer_sum(src_s, rho, sides))

    def residual_map(self, src, rho, state=()):
        """Empirical sources: J d(r) (base class, with the held state). Analytic sources with
        statistics="empirical": the Gram form with V = r, evaluated for each r."""
        if not src.empirical and state:
            raise ValueError("ngplus: a held GFIM (state) needs an empirical source (the factors)")
        if src.empirical or self.linear:
            return super().residual_map(src, rho, state)
        n, c = src.n, src.C
        sides = self.model_sides(src.model.widths, n)
        left = [src.train] + ([] if src.cross is None else [src.cross])
        L = len(src.train.KH)

        def operator(r):
            V = self.statistic_vectors(r)
            u = coordinates(V, r).reshape(-1)
            Vb = block_diag_rows(V)
            cross = Grams([jnp.concatenate([gm.KH[l] for gm in left]) for l in range(L)],
                          [jnp.concatenate([gm.KD[l] for gm in left]) @ Vb for l in range(L)])
            src_s = KernelSource(src.model, statistic_grams(src.train, V, V), cross)
            _, op = self._layer_sum(src_s, rho, sides)
            return (op @ u).reshape(-1, c)

        train = _shaped(lambda r: operator(r)[:n], n, c)
        test = None if src.cross is None else _shaped(lambda r: operator(r)[n:], n, c)
        return ResidualMap(train, test)

    # --- dense reference ------------------------------------------------------------------
    def layer_dense(self, dense, l, rho):
        """From the definition: per-sample gradients g_{n,s} = d_{n,s} h~_n^T of the statistic
        problem, GFIM = mean_n sum_s g g^T (or g^T g), and the operator of dW = GFIM^+ G
        (G GFIM^+) on the row-major W~: (GFIM + rho)^+ (x) I_a (or I_{M_l} (x) (GFIM + rho)^+)."""
        H, Dm, n = dense.H[l], dense.Dm[l], dense.n
        k, m, a = Dm.shape[0] // n, Dm.shape[1], H.shape[1]
        side = self.model_sides(dense.widths, n)[l]
        gs = Dm.reshape(n, k, m)[:, :, :, None] * H[:, None, None, :]  # (N, k, M_l, a)
        if side == "output":
            gfim = np.einsum("nsia,nsja->ij", gs, gs) / n
            return np.kron(sym_inverse(gfim, rho), np.eye(a))
        gfim = np.einsum("nsmi,nsmj->ij", gs, gs) / n
        return np.kron(np.eye(m), sym_inverse(gfim, rho))

    def memory_terms(self, N, C, widths):
        k = {"expected": C, "empirical": 1}.get(self.statistics, self.samples)
        sides = self.model_sides(widths, N)
        rows = [N * k if s == "output" else N for s in sides]
        t = {"GFIM Grams + eigenvectors": sum(2 * r * r + N * N for r in rows),
             "core products": max(m * N for m in widths[1:])}
        if self.statistics != "expected":
            t["statistic factors"] = sum(N * m * k for m in widths[1:])
        if self.hold > 1:
            t["held GFIM factors"] = sum(r * (m if s == "output" else a + 1) + r * r + r
                                         for r, s, m, a in zip(rows, sides, widths[1:], widths[:-1]))
        return t
