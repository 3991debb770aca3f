"""Block tri-diagonal NGD: G keeps the blocks F_lk with |l - k| <= 1 (THEORY section 4).

With T the L x L tri-diagonal matrix of ones, G = Jb^T (T (x) I) Jb / N (Jb = blockdiag J_l), and
d_l = J_l^T v_l with  [(T (x) I) blockdiag(Theta_l) + N rho I] v = 1_L (x) g.

That system is not solved as written: its conditioning blows up as rho -> 0 when T is singular
(L = 3s + 2) or a Theta_l is rank-deficient, although the step itself stays bounded. Instead
(THEORY section 4, "Block tri-diagonal numerics"):
  * T = V diag(lambda) V^T in closed form (lambda_k = 1 + 2 cos(k pi / (L+1)), sine eigenvectors);
    its null mode (lambda_k = 0 exactly when 3k = 2(L+1)) is dropped exactly: with
    Vt = V' |Lambda'|^{1/2} (L x L'), E = sign(Lambda') (x) I and gamma = |Lambda'|^{-1/2} V'^T 1
    (so that 1 = Vt gamma), T = Vt sign(Lambda') Vt^T and v = (Vt (x) I) y with
        (Q + N rho E) y = E (gamma (x) g),   Q = (Vt (x) I)^T blockdiag(Theta_l) (Vt (x) I),
    Theta_G = (gamma (x) I)^T Q y; Q is PSD (positive definite when every Theta_l is: Cholesky);
  * where Q is singular (duplicate inputs, zero rows, N C > M_l), Q = P diag(q) P^T with the
    directions q ~ 0 dropped, and the scaled symmetric system (M + N rho diag(1/q)) h = B g with
    M = P^T E P (|M| <= 1), B = P^T (gamma (x) I): y = P diag(1/q) h, Theta_G = B^T h.
At rho = 0 this is the minimum-norm (pseudo-inverse) step G^+ grad, equal to the rho -> 0+ limit
where it exists; where M itself is singular, S (S M S)^+ S with S = diag(q)^{1/2}.
alpha = 1^T T^+ 1 = ceil(L / 3).

G is indefinite for L >= 3 (T has floor(L/3) negative eigenvalues): N G's non-zero eigenvalues
nu are those of c^T E c (Q = c c^T) or S M S, and G + rho I is singular at rho = -nu_j / N for
each negative nu_j; rho_lo, rho_hi are the smallest and largest |nu_j^-| / N. Where rho is
within a relative sqrt(eps) of such a value the method refuses (a ValueError where the kernels
are concrete; inside jit a warning and NaN, which ``ngd_direction`` reports as a ValueError and
``train`` as a FloatingPointError); where rho lies in [rho_lo / 2, 2 rho_hi] it warns
(``IndefiniteDampingWarning``): the step is defined but amplified and Theta_G is far from alpha I.
With Q positive definite two Cholesky tests decide whether rho is outside that range; only
inside it (or where Q is singular) is the spectrum computed.
"""
from __future__ import annotations

import dataclasses
import functools
import warnings
from typing import NamedTuple, final

import jax
import jax.numpy as jnp
import numpy as np
from jax.scipy.linalg import cho_solve

from ..layers import grams, jt_vec, layer_kernels
from ..linalg import equilibrated_solve, pinv_cutoff, sym_pinv_apply
from .base import LayerDual, kernel_grams
from .dense import sym_inverse
from .registry import register_method


class IndefiniteDampingWarning(UserWarning):
    """The damping lies where G_BTD + rho I (G_BTD indefinite, L >= 3) is singular or nearly so."""


def tridiagonal_ones(L: int) -> np.ndarray:
    """T: the L x L tri-diagonal matrix of ones."""
    return np.eye(L) + np.eye(L, k=1) + np.eye(L, k=-1)


def eigen_coupling(L: int):
    """(lambda (L,), V (L, L)): T = V diag(lambda) V^T in closed form, lambda_k = 1 + 2 cos(k pi/(L+1)),
    V_lk = sqrt(2/(L+1)) sin(l k pi/(L+1)); lambda_k is set to exactly 0 where 3k = 2(L+1)."""
    k = np.arange(1, L + 1)
    lam = 1.0 + 2.0 * np.cos(k * np.pi / (L + 1))
    lam[3 * k == 2 * (L + 1)] = 0.0
    V = np.sqrt(2.0 / (L + 1)) * np.sin(np.outer(k, k) * np.pi / (L + 1))
    return lam, V


def coupling(L: int):
    """(T, c = T^+ 1, Z = orthonormal basis of null(T) (L, k)), from the closed-form eigenpairs."""
    lam, V = eigen_coupling(L)
    nz = lam != 0
    c = V[:, nz] @ ((V[:, nz].T @ np.ones(L)) / lam[nz])
    return tridiagonal_ones(L), c, V[:, ~nz]


def deflation(L: int):
    """(Vt (L, L'), sign (L',), gamma (L',)): T = Vt diag(sign) Vt^T over the L' non-null modes,
    1_L = Vt gamma (1 is orthogonal to null(T)) and Vt^T T^+ 1 = sign * gamma."""
    lam, V = eigen_coupling(L)
    nz = lam != 0
    a = np.abs(lam[nz])
    return V[:, nz] * np.sqrt(a), np.sign(lam[nz]), (V[:, nz].T @ np.ones(L)) / np.sqrt(a)


def _static_zero(shift) -> bool:
    return isinstance(shift, (int, float, np.number)) and float(shift) == 0.0


def _branch(pred, fallback, regular):
    """fallback() if pred else regular(): in Python where pred is concrete, by lax.cond inside jit."""
    if isinstance(pred, jax.core.Tracer):
        return jax.lax.cond(pred, fallback, regular)
    return fallback() if bool(pred) else regular()


class Deflated(NamedTuple):
    """The kernel-space system with T's null modes removed (module docstring)."""
    Vt: jnp.ndarray     # (L, L')
    E: jnp.ndarray      # (L' N C,) sign(Lambda') (x) 1
    Gm: jnp.ndarray     # (L' N C, N C) gamma (x) I
    Q: jnp.ndarray      # (L' N C, L' N C) (Vt (x) I)^T blockdiag(Theta_l) (Vt (x) I)
    indefinite: bool    # T has a negative eigenvalue (L >= 3)


def deflated_system(thetas) -> Deflated:
    L, nc, _ = thetas.shape
    dt = thetas.dtype
    Vt, sgn, gamma = deflation(L)
    Vj = jnp.asarray(Vt, dt)
    n = len(sgn) * nc
    Q = jnp.einsum("lk,lm,lij->kimj", Vj, Vj, thetas).reshape(n, n)
    E = jnp.repeat(jnp.asarray(sgn, dt), nc)
    Gm = jnp.kron(jnp.asarray(gamma, dt)[:, None], jnp.eye(nc, dtype=dt))
    return Deflated(Vj, E, Gm, 0.5 * (Q + Q.T), bool(np.any(sgn < 0)))


def _positive_definite(Q):
    """(Cholesky factor, Q numerically positive definite): the pivot test of ``linalg.psd_solve``."""
    c = jnp.linalg.cholesky(Q)
    piv = jnp.diagonal(c) ** 2
    return c, jnp.all(jnp.isfinite(c)) & (jnp.min(piv) > pinv_cutoff(jnp.diagonal(Q))[0])


def _definite(A):
    """A (symmetric) is positive definite: its Cholesky factor exists (finite, positive pivots)."""
    c = jnp.linalg.cholesky(A)
    return jnp.all(jnp.isfinite(c)) & (jnp.min(jnp.diagonal(c)) > 0)


def _no_damping_issue(dtype):
    inf = jnp.asarray(jnp.inf, dtype)
    return inf, jnp.zeros((), dtype), inf


def _cholesky_path(ds: Deflated, c, shift, R, kernel: bool, spectrum: bool):
    """Q positive definite: (Q + shift E) y = E (gamma (x) R); Theta_G = (gamma (x) I)^T Q y.
    Damping check: N G has the non-zero eigenvalues nu of X = c^T E c (Q = c c^T, E Q ~ X), with
    m = rank(E_-) negative ones; #(nu < -s) = m - #neg(Q + s E) (Haynsworth inertia additivity), so
    Q + 2 shift E positive definite <=> every |nu^-| >= 2 shift, and X + shift / 2 positive definite
    <=> every |nu^-| <= shift / 2: two Cholesky tests; only where both fail (shift in the warning
    range) is the spectrum of X computed."""
    rhs = ds.E[:, None] * (ds.Gm @ R)
    if _static_zero(shift):
        y = cho_solve((c, True), rhs)
    else:
        y = equilibrated_solve(ds.Q + jnp.diag(shift * ds.E), rhs)
    train = ds.Gm.T @ (ds.Q @ y) if kernel else None
    diag = None
    if spectrum:
        X = c.T @ (ds.E[:, None] * c)
        X = 0.5 * (X + X.T)
        safe = (_definite(ds.Q + jnp.diag(2 * shift * ds.E))
                | _definite(X + 0.5 * shift * jnp.eye(len(X), dtype=X.dtype)))
        diag = _branch(safe, lambda: _no_damping_issue(X.dtype),
                       lambda: indefinite_spectrum(jnp.linalg.eigh(X)[0], shift))
    return y, train, diag


def _eigen_path(ds: Deflated, shift, R, kernel: bool, spectrum: bool):
    """Q singular (rank-deficient layer kernels): Q = P diag(q) P^T with q ~ 0 dropped; scaled system
    (M + shift diag(1/q)) h = B R, M = P^T E P, B = P^T (gamma (x) I); y = P diag(1/q) h,
    Theta_G = B^T h; at shift = 0 M^{-1}, or S (S M S)^+ S (S = diag(q)^{1/2}) where M is singular."""
    q, P = jnp.linalg.eigh(ds.Q)
    keep = q > pinv_cutoff(q)
    q = jnp.where(keep, q, 0.0)
    qs = jnp.where(keep, q, 1.0)
    M = (P.T * ds.E[None, :]) @ P
    M = jnp.where(keep[:, None] & keep[None, :], 0.5 * (M + M.T), 0.0) + jnp.diag(jnp.where(keep, 0.0, 1.0))
    B = jnp.where(keep[:, None], P.T @ ds.Gm, 0.0)
    rhs = B @ R
    s = jnp.sqrt(q)
    if not ds.indefinite:  # T positive semi-definite (L <= 2): M = I on the kept directions
        h = jnp.where(keep[:, None], rhs * (qs / (qs + shift))[:, None], 0.0)
    elif _static_zero(shift):  # M^{-1} rhs by eigh (|M| <= 1); where M is singular, S (S M S)^+ S rhs
        m, Z = jnp.linalg.eigh(M)
        h = jax.lax.cond(jnp.min(jnp.abs(m)) > pinv_cutoff(jnp.abs(m))[0],
                         lambda: Z @ ((Z.T @ rhs) / m[:, None]),
                         lambda: s[:, None] * sym_pinv_apply(s[:, None] * M * s[None, :], s[:, None] * rhs))
    else:
        h = equilibrated_solve(M + jnp.diag(jnp.where(keep, shift / qs, 0.0)), rhs)
    y = P @ jnp.where(keep[:, None], h / qs[:, None], 0.0)
    train = B.T @ h if kernel else None
    diag = indefinite_spectrum(jnp.linalg.eigh(s[:, None] * M * s[None, :])[0], shift) if spectrum else None
    return y, train, diag


def coupled_solve(thetas, shift, R, kernel: bool = False):
    """(v (L, N C, k), Theta_G (N C, N C) if kernel (then R = I) else None, diag or None): the dual
    variables of [(T (x) I) blockdiag(Theta_l) + shift I] v = 1 (x) R (pseudo-inverse at shift = 0)
    and, where the damping must be checked (L >= 3, shift > 0), ``indefinite_spectrum`` of N G_BTD."""
    L, nc, _ = thetas.shape
    ds = deflated_system(thetas)
    spectrum = ds.indefinite and not _static_zero(shift)
    c, pd = _positive_definite(ds.Q)
    y, train, diag = _branch(~pd, lambda: _eigen_path(ds, shift, R, kernel, spectrum),
                             lambda: _cholesky_path(ds, c, shift, R, kernel, spectrum))
    v = jnp.einsum("lk,kij->lij", ds.Vt, y.reshape(ds.Vt.shape[1], nc, -1))
    return v, train, diag


def indefinite_spectrum(nu, shift):
    """(lo, hi, delta) in units of N rho: lo, hi the smallest and largest |nu_j| over the negative
    eigenvalues nu_j of N G_BTD, delta = min_j |nu_j + shift| / |nu_j| (inf and 0 where none)."""
    a = jnp.abs(nu)
    neg = nu < -pinv_cutoff(a)
    inf = jnp.asarray(jnp.inf, nu.dtype)
    lo = jnp.min(jnp.where(neg, a, inf))
    hi = jnp.max(jnp.where(neg, a, 0.0))
    delta = jnp.min(jnp.where(neg, jnp.abs(nu + shift) / jnp.where(neg, a, 1.0), inf))
    return lo, hi, delta


def _report(L, rho, unit, tau, lo, hi, delta, concrete=True):
    """Raise (concrete) or warn (inside jit, the step becomes NaN) where G + rho I is numerically
    singular; warn where rho is in [lo / 2, 2 hi]. lo, hi, delta may carry batch dimensions."""
    lo, hi, delta = float(np.min(lo)), float(np.max(hi)), float(np.min(delta))
    if not np.isfinite(lo):
        return
    name = "rho" if unit == "rho" else "N rho"
    span = (f"G_BTD is indefinite for L = {L} >= 3 (T has negative eigenvalues); here its negative eigenvalues "
            f"are -{name}' for {name}' in [{lo:.3g}, {hi:.3g}], and G + rho I is singular at each of them")
    advice = f"use {name} < {lo / 2:.3g} or {name} > {2 * hi:.3g}, or rho = 0 (the pseudo-inverse step)"
    if delta < tau:
        msg = (f"block_tridiagonal: damping {name} = {rho:.6g} makes G_BTD + rho I singular to working "
               f"precision (relative distance {delta:.2g} < {tau:.2g} to a negative eigenvalue): {span}; {advice}")
        if concrete:
            raise ValueError(msg)
        warnings.warn(msg + " (the step is returned as NaN)", IndefiniteDampingWarning, stacklevel=2)
    elif lo / 2 <= rho <= 2 * hi:
        warnings.warn(f"block_tridiagonal: damping {name} = {rho:.6g} is in the unsafe range [{lo / 2:.3g}, "
                      f"{2 * hi:.3g}]: {span} (the nearest at relative distance {delta:.2g}). The step is "
                      f"amplified by up to {1 / delta:.3g} and Theta_G is far from alpha I: training may "
                      f"diverge; {advice}", IndefiniteDampingWarning, stacklevel=2)


def guard(out, diag, shift, L: int, rho=None, n=None):
    """Check the damping against (lo, hi, delta) of ``indefinite_spectrum`` (module docstring) and
    pass ``out`` through (NaN inside jit where refused); diag None: nothing to check (L <= 2, rho = 0)."""
    if diag is None:
        return out
    lo, hi, delta = diag
    if rho is None or n is None:
        unit, rho = "N rho", shift
    else:
        unit, lo, hi = "rho", lo / n, hi / n
    tau = float(np.sqrt(np.finfo(delta.dtype).eps))
    if not any(isinstance(a, jax.core.Tracer) for a in (lo, hi, delta, rho)):
        _report(L, float(rho), unit, tau, np.asarray(lo), np.asarray(hi), np.asarray(delta))
        return out
    jax.debug.callback(functools.partial(_report, L, rho, unit, tau, concrete=False), lo, hi, delta)
    return jax.tree_util.tree_map(lambda a: jnp.where(delta < tau, jnp.nan, a), out)


@register_method(builtin=True)
@final
@dataclasses.dataclass(frozen=True)
class BlockTridiagonal(LayerDual):
    name = "block_tridiagonal"
    isotropy = "finite"
    paper = True

    def check(self, model, n, rho):
        """L = 3s + 2 at rho = 0: a warning (pseudo-inverse step). L <= 2: G is PSD, every rho > 0 is
        safe. L >= 3: whether rho is safe depends on the layer kernels, checked at the solve."""
        if rho == 0 and model.depth % 3 == 2:
            warnings.warn(f"block_tridiagonal: T is singular for L = {model.depth} (= 3s + 2); at rho = 0 "
                          "the pseudo-inverse (minimum-norm) step is used", stacklevel=3)

    def alpha(self, model, n, convention=None):
        return float(np.sum(coupling(model.depth)[1]))

    def _solve(self, thetas, shift, R, rho=None, n=None):
        v, _, diag = coupled_solve(thetas, shift, R)
        return guard(v, diag, shift, thetas.shape[0], rho, n)

    def dual(self, thetas, shift, R):
        return self._solve(thetas, shift, R)

    def direction(self, fac, g, rho, state=()):
        fac, g = self.statistic_inputs(fac, g)
        n, c = g.shape
        v = self._solve(layer_kernels(grams(fac)), n * rho, g.reshape(-1, 1), rho, n)
        return jt_vec(fac, [vl.reshape(n, c) for vl in v])

    def kernel(self, src, rho):
        """Theta_G from the deflated system (module docstring): alpha I to round-off at rho = 0 when
        the layer kernels are positive definite; test rows sum_l Theta_l(x', X) v_l."""
        src, finish = self.statistic_source(src)
        thetas = layer_kernels(src.train)
        shift = src.n * rho
        v, train, diag = coupled_solve(thetas, shift, jnp.eye(thetas.shape[1], dtype=thetas.dtype), kernel=True)
        train = 0.5 * (train + train.T)
        cross = None if src.cross is None else jnp.einsum("lab,lbc->ac", layer_kernels(src.cross), v)
        train, cross = guard((train, cross), diag, shift, thetas.shape[0], rho, src.n)
        return finish(train, cross)

    def to_dense(self, dense, rho):
        """The masked Fisher (blocks |l - k| <= 1) and its (pseudo-)inverse."""
        layer = np.concatenate([np.full(o1 - o0, l) for l, (o0, o1) in
                                enumerate(zip(dense.offsets[:-1], dense.offsets[1:]))])
        G = dense.fisher * (np.abs(layer[:, None] - layer[None, :]) <= 1)
        return sym_inverse(G, rho)

    def memory_terms(self, N, C, widths):
        """Grams and kernels, the coupled system and its LU (2 (L N C)^2), and the deflated system:
        Q and its Cholesky factor or eigenvectors, M or the damping check's X = c^T E c, the two
        Cholesky tests and the eigenvectors of X (8 (L' N C)^2, L' = L - [L = 3s + 2])."""
        L = len(widths) - 1
        Lp = L - int(L % 3 == 2)
        return {"grams + kernels": kernel_grams(N, C, widths), "solve": 2 * (L * N * C) ** 2,
                "deflated system": 8 * (Lp * N * C) ** 2}
