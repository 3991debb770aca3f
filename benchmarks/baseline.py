"""The benchmark's dense-Jacobian baseline step, keyed by the method registry.

The baseline forms J (N C, P) by ``jax.vmap`` over samples of ``jax.jacrev`` of the flat parameter
vector (blocks W~_l = [W_l, b_l], row-major), then computes each method in dense linear algebra:
the kernel J J^T, per-layer or per-unit kernels, the K-FAC factors A, B and their
eigendecompositions, diag(J^T J), and dense (LU) solves, independent of the structured Cholesky
path of ``ntk_ngd``. ``BASELINES`` holds, for every built-in method name of
``ntk_ngd.curvature.method_names()``, one ``Baseline``: its dense kernel-space direction, its
memory terms and its flop count. A registered method without an entry (a user's method, or a
built-in name re-registered with another class) gets the generic fallback:

    d = method.to_dense(dense_problem(model, params, x, y), rho) @ grad

which builds the method's own dense (G + rho I)^+ (P, P) in numpy: O(P^2) memory and O(P^3) time,
only for small problems (P up to a few thousand); it is not jit-compiled.

Memory (``estimate``; elements times bytes per element, the same conventions as ``ntk_ngd.memory``):

    params, updated params, direction     3 P + N (M_0 + C)
    J (N C, P) and its pieces             4 N C P   (the per-layer cotangents of the flat vector are
                                          padded to P and summed, then J is reshaped: about four
                                          J-sized buffers in XLA's assignment); 0 for gd and kfac,
                                          whose J^T g XLA fuses into the batched backward pass
    activations                           2 N sum_l M_l
    method:
      gd, diagonal                        0 / P [diag F]
      exact                               2 (N C)^2 [J J^T and its LU]
      block_diagonal                      2 L (N C)^2
      block_tridiagonal                   L (N C)^2 + 2 (L N C)^2
      kfac                                sum_l 2 ((M_{l-1}+1)^2 + M_l^2) [A, B and eigenvectors]
                                          + 2 P_max [rotated gradient block] + activations, deltas
      unit_wise                           2 max_l M_l (N C)^2 [per-unit kernels J_i J_i^T and LU]
      fallback (to_dense)                 N C P [J] + N^2 C sum_l M_l [the factors' Jacobians]
                                          + 2 P^2 [the dense G and its (pseudo-)inverse]
"""
from __future__ import annotations

from typing import Callable, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from ntk_ngd import memory
from ntk_ngd.curvature import (KFAC, BlockDiagonal, BlockTridiagonal, Diagonal, Exact, GD, UnitWise,
                               dense_problem, get_method, tridiagonal_ones)


class Baseline(NamedTuple):
    """The dense baseline of one method class: ``direction(problem, method)`` -> d (P,) (traced),
    ``memory(N, C, widths)`` and ``flops(N, C, widths, jac)`` -> its terms beyond the shared ones
    (``jac``: the flops of the Jacobian), ``jacobian``: whether XLA materializes J (N C, P)."""
    cls: type
    direction: Callable
    memory: Callable
    flops: Callable
    jacobian: bool = True


class Problem:
    """The traced quantities of one baseline step at theta (P,) on (x (N, M_0), y (N, C)):
    J (N C, P), residual g (N C,), grad = J^T g / N, the layer column blocks J_l, and the
    K-FAC factors (``factors()``: h~_{l-1} (N, M_{l-1}+1) and delta_l (N, C, M_l) per layer)."""

    def __init__(self, model, theta, x, y, rho, N):
        w = model.widths
        self.model, self.theta, self.x, self.rho, self.N = model, theta, x, rho, N
        self.L, self.C = model.depth, model.n_outputs
        self.shapes = [(m, k + 1) for k, m in zip(w[:-1], w[1:])]
        self.offs = np.cumsum([0] + [a * b for a, b in self.shapes])
        f = jax.vmap(self.f_one, (None, 0))
        self.J = jax.vmap(jax.jacrev(self.f_one), (None, 0))(theta, x).reshape(N * self.C, -1)   # (N C, P)
        self.g = (f(theta, x) - y).reshape(-1)
        self.grad = self.J.T @ self.g / N
        self.layers = [self.J[:, self.offs[l]:self.offs[l + 1]] for l in range(self.L)]

    def unflatten(self, theta):
        blocks = [theta[self.offs[l]:self.offs[l + 1]].reshape(self.shapes[l]) for l in range(self.L)]
        return [{"W": b[:, :-1], "b": b[:, -1]} for b in blocks]

    def f_one(self, theta, x1):  # (M_0,) -> (C,)
        return self.model.apply(self.unflatten(theta), x1[None])[0]

    def hidden(self, x1, eps):  # forward with perturbations of u_l: f and the h~_{l-1}
        model, h, hs = self.model, x1, []
        for l, p in enumerate(self.unflatten(self.theta)):
            k = p["W"].shape[1]
            ht = jnp.concatenate([model.sigma_w * h / np.sqrt(k), jnp.full((1,), model.sigma_b, h.dtype)])
            hs.append(ht)
            u = p["W"] @ ht[:-1] + p["b"] * ht[-1] + eps[l]
            h = model.phi(u) if l < self.L - 1 else u
        return h, hs

    def factors(self):
        eps0 = [jnp.zeros((m,), self.x.dtype) for m in self.model.widths[1:]]
        hs = jax.vmap(lambda x1: self.hidden(x1, eps0)[1])(self.x)                          # [(N, M_{l-1}+1)]
        ds = jax.vmap(lambda x1: jax.jacrev(lambda e: self.hidden(x1, e)[0])(eps0))(self.x)  # [(N, C, M_l)]
        return hs, ds

    def solve(self, K, B):
        """(K + N rho I)^{-1} B by LU, the pseudo-inverse at rho = 0."""
        if self.rho > 0:
            return jnp.linalg.solve(K + self.N * self.rho * jnp.eye(K.shape[-1], dtype=K.dtype), B)
        return jnp.linalg.pinv(K, hermitian=True) @ B


# ----------------------------------------------------------------------------- dense directions
def gd_direction(p, m):
    return p.grad


def exact_direction(p, m):
    return p.J.T @ p.solve(p.J @ p.J.T, p.g)


def block_diagonal_direction(p, m):
    return jnp.concatenate([Jl.T @ p.solve(Jl @ Jl.T, p.g) for Jl in p.layers])


def block_tridiagonal_direction(p, m):
    L, nc = p.L, p.N * p.C
    K = [Jl @ Jl.T for Jl in p.layers]
    T = tridiagonal_ones(L)
    big = jnp.block([[T[i, j] * K[j] for j in range(L)] for i in range(L)])
    rhs = jnp.tile(p.g, L)
    if p.rho > 0:
        v = jnp.linalg.solve(big + p.N * p.rho * jnp.eye(L * nc, dtype=p.J.dtype), rhs)
    else:
        v = jnp.linalg.lstsq(big, rhs)[0]
    return jnp.concatenate([Jl.T @ v[l * nc:(l + 1) * nc] for l, Jl in enumerate(p.layers)])


def diagonal_direction(p, m):
    diag = jnp.sum(p.J * p.J, axis=0) / p.N
    if p.rho > 0:
        return p.grad / (diag + p.rho)
    out = []
    for l in range(p.L):
        dl, gl = diag[p.offs[l]:p.offs[l + 1]], p.grad[p.offs[l]:p.offs[l + 1]]
        keep = dl > jnp.finfo(dl.dtype).eps * jnp.max(dl)
        out.append(jnp.where(keep, gl / jnp.where(keep, dl, 1.0), 0.0))
    return jnp.concatenate(out)


def unit_wise_direction(p, m):
    nc, out = p.N * p.C, []
    for l, Jl in enumerate(p.layers):
        J3 = Jl.reshape(nc, *p.shapes[l])                           # (N C, M_l, M_{l-1}+1)
        Ku = jnp.einsum("aij,bij->iab", J3, J3)                     # per-unit kernels
        if p.rho > 0:
            rhs = jnp.broadcast_to(p.g, (p.shapes[l][0], nc))[..., None]
            v = jnp.linalg.solve(Ku + p.N * p.rho * jnp.eye(nc, dtype=p.J.dtype), rhs)[..., 0]
        else:
            v = jnp.einsum("iab,b->ia", jnp.linalg.pinv(Ku, hermitian=True), p.g)
        out.append(jnp.einsum("aij,ia->ij", J3, v).reshape(-1))
    return jnp.concatenate(out)


def kfac_direction(p, m):
    hs, ds = p.factors()
    N, rho, out = p.N, p.rho, []
    for l in range(p.L):
        H, Dm = hs[l], ds[l].reshape(N * p.C, -1)
        A, B = H.T @ H / N, Dm.T @ Dm / N
        G = p.grad[p.offs[l]:p.offs[l + 1]].reshape(p.shapes[l])
        la, Va = jnp.linalg.eigh(A)
        lb, Vb = jnp.linalg.eigh(B)
        la, lb = jnp.clip(la, 0), jnp.clip(lb, 0)
        if rho > 0 and m.damping_mode == "factored":
            pi = jnp.sqrt((jnp.trace(A) / A.shape[0]) / (jnp.trace(B) / B.shape[0]))
            wgt = 1.0 / ((lb + jnp.sqrt(rho) / pi)[:, None] * (la + pi * jnp.sqrt(rho))[None, :])
        elif rho > 0:
            wgt = 1.0 / (lb[:, None] * la[None, :] + rho)
        else:
            prod = lb[:, None] * la[None, :]
            keep = prod > 1e-13 * jnp.max(prod)
            wgt = jnp.where(keep, 1.0 / jnp.where(keep, prod, 1.0), 0.0)
        out.append((Vb @ ((Vb.T @ G @ Va) * wgt) @ Va.T).reshape(-1))
    return jnp.concatenate(out)


# ----------------------------------------------------------------------------- the table
def _layers(w):
    return list(zip(w[:-1], w[1:]))


BASELINES = {b.cls.name: b for b in (
    Baseline(GD, gd_direction, lambda N, C, w: {}, lambda N, C, w, jac: 0, jacobian=False),
    Baseline(Exact, exact_direction,
             lambda N, C, w: {"kernel solve": 2 * (N * C) ** 2},
             lambda N, C, w, jac: 2 * (N * C) ** 2 * memory.n_params(w) + (N * C) ** 3),
    Baseline(BlockDiagonal, block_diagonal_direction,
             lambda N, C, w: {"kernel solve": 2 * (len(w) - 1) * (N * C) ** 2},
             lambda N, C, w, jac: 2 * (N * C) ** 2 * memory.n_params(w) + (len(w) - 1) * (N * C) ** 3),
    Baseline(BlockTridiagonal, block_tridiagonal_direction,
             lambda N, C, w: {"kernel solve": (len(w) - 1) * (N * C) ** 2 + 2 * ((len(w) - 1) * N * C) ** 2},
             lambda N, C, w, jac: 2 * (N * C) ** 2 * memory.n_params(w) + ((len(w) - 1) * N * C) ** 3),
    Baseline(KFAC, kfac_direction,
             lambda N, C, w: {"factors + eigenvectors": sum(2 * ((k + 1) ** 2 + m * m) for k, m in _layers(w)),
                              "rotated gradient": 2 * memory.max_block(w),
                              "h~, delta": memory.activation_count(N, C, w)},
             lambda N, C, w, jac: jac + sum(2 * N * (k + 1) ** 2 + 2 * N * C * m * m
                                            + 9 * ((k + 1) ** 3 + m ** 3) + 4 * m * (k + 1) * (m + k + 1)
                                            for k, m in _layers(w)),
             jacobian=False),
    Baseline(UnitWise, unit_wise_direction,
             lambda N, C, w: {"unit kernels": 2 * max(w[1:]) * (N * C) ** 2},
             lambda N, C, w, jac: 2 * (N * C) ** 2 * memory.n_params(w) + sum(w[1:]) * (N * C) ** 3),
    Baseline(Diagonal, diagonal_direction,
             lambda N, C, w: {"diag F": memory.n_params(w)},
             lambda N, C, w, jac: 2 * N * C * memory.n_params(w)),
)}


def baseline_for(method):
    """The ``Baseline`` of a method (name or object), or None: it then runs the to_dense fallback."""
    m = get_method(method)
    b = BASELINES.get(m.name)
    return b if b is not None and isinstance(m, b.cls) else None


# ----------------------------------------------------------------------------- steps
def dense_step(model, method, rho, lr):
    """The fallback baseline step (theta, x, y) -> (theta - lr d, d), d = (G + rho I)^+ grad with the
    method's own dense ``to_dense`` matrix on ``dense_problem``: numpy, not jitted, small problems only."""
    m = get_method(method)
    w = model.widths
    shapes = [(b, k + 1) for k, b in zip(w[:-1], w[1:])]
    offs = np.cumsum([0] + [a * b for a, b in shapes])

    def step(theta, x, y):
        t = jnp.asarray(theta)
        blocks = [t[offs[l]:offs[l + 1]].reshape(shapes[l]) for l in range(len(shapes))]
        params = [{"W": b[:, :-1], "b": b[:, -1]} for b in blocks]
        dense = dense_problem(model, params, x, y)
        d = m.to_dense(dense, rho) @ dense.grad
        return np.asarray(theta) - lr * d, d
    return step


def baseline_step(model, method, rho, N, lr, **options):
    """The dense-Jacobian reference step (theta, x, y) -> (theta - lr d, d) on the flat vector of
    W~_l = [W_l, b_l] blocks (row-major) for ``method`` (a registered name with ``options``, or a
    method object): jit-compiled from the method's ``BASELINES`` entry, else the (unjitted)
    ``dense_step`` fallback."""
    m = get_method(method, **options)
    b = baseline_for(m)
    if b is None:
        return dense_step(model, m, rho, lr)

    def step(theta, x, y):
        d = b.direction(Problem(model, theta, x, y, rho, N), m)
        return theta - lr * d, d
    return jax.jit(step)


# ----------------------------------------------------------------------------- memory and flops
def estimate(method, N: int, C: int, M: int, L: int, M0: int, dtype="float64", widths=None) -> memory.Estimate:
    """Peak bytes of one baseline step for ``method`` (a registered name or a method object)."""
    b = baseline_for(method)
    w = memory.widths_of(M, L, M0, C) if widths is None else tuple(widths)
    C, M0 = w[-1], w[0]
    s, nc, P = memory.dtype_bytes(dtype), N * C, memory.n_params(w)
    # J is materialized only when more than J^T g is needed: for gd and kfac XLA contracts J^T g
    # into the per-sample backward passes (observed in the compiled baseline: no (N C, P) buffer)
    if b is None:
        jac = nc * P
    else:
        jac = 4 * nc * P if b.jacobian else 0
    t = {"params": P, "inputs": N * (M0 + C), "updated params": P, "direction": P,
         "jacobian": jac, "activations": 2 * N * sum(w[1:])}
    if b is None:
        t["factor jacobians"] = N * nc * sum(w[1:])
        t["dense (P, P)"] = 2 * P * P
    else:
        t.update(b.memory(N, C, w))
    t = {k: int(v) * s for k, v in t.items()}
    return memory.Estimate(sum(t.values()), t)


def flops(method, N: int, C: int, widths) -> float:
    """Approximate flops of one baseline step (for the benchmark's extrapolation and FLOP/s)."""
    b, w, nc = baseline_for(method), tuple(widths), N * C
    P = memory.n_params(w)
    jac = nc * 4 * sum(k * m for k, m in _layers(w)) + 2 * N * P
    if b is None:  # J by reverse mode, F = J^T J / N, its (pseudo-)inverse and the product with grad
        return jac + 2 * nc * P * P + 10 * P ** 3 + 2 * P * P
    return jac + 4 * nc * P + b.flops(N, C, w, jac)
