"""Dense float64 problems for the methods' own references (``AbstractMethod.to_dense``).

A ``DenseProblem`` holds, for a small network, the full Jacobian J (N C, P) of the flat W~
vector (blocks W~_l = [W_l, b_l], row-major), computed by ``jax.jacrev`` of the network's
outputs, and the per-layer factors H_l (N, M_{l-1}+1) and Dm_l (N C, M_l) (rows delta_{n,c}),
computed by autodiff through perturbations of u_l: nothing here uses the structured layers of
``layers.py``. Methods build their (G + rho I)^+ from it with numpy; tests and the benchmark
compare the structured steps with d = (G + rho I)^+ J^T g / N.
"""
from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

RCOND = 1e-13


class DenseProblem(NamedTuple):
    """J (N C, P), residual g (N C,), per-layer H (N, M_{l-1}+1) and Dm (N C, M_l), widths."""
    J: np.ndarray
    g: np.ndarray
    H: list
    Dm: list
    widths: tuple

    @property
    def n(self) -> int:
        return self.H[0].shape[0]

    @property
    def C(self) -> int:
        return self.widths[-1]

    @property
    def depth(self) -> int:
        return len(self.widths) - 1

    @property
    def offsets(self) -> np.ndarray:
        return np.cumsum([0] + [m * (k + 1) for k, m in zip(self.widths[:-1], self.widths[1:])])

    def layer(self, l: int) -> np.ndarray:
        """J_l (N C, P_l), the columns of layer l."""
        o = self.offsets
        return self.J[:, o[l]:o[l + 1]]

    @property
    def grad(self) -> np.ndarray:
        """J^T g / N (of the original problem: not meaningful on a ``statistic_problem``)."""
        return self.J.T @ self.g / self.n

    @property
    def fisher(self) -> np.ndarray:
        """F = J^T J / N (P, P)."""
        return self.J.T @ self.J / self.n


def dense_problem(model, params, x, y) -> DenseProblem:
    """The dense problem of ``model`` at ``params`` on (x (N, M_0), y (N, C)), float64 numpy."""
    w, L = model.widths, model.depth
    shapes = [(m, k + 1) for k, m in zip(w[:-1], w[1:])]
    offs = np.cumsum([0] + [a * b for a, b in shapes])

    def unflatten(theta):
        blocks = [theta[offs[l]:offs[l + 1]].reshape(shapes[l]) for l in range(L)]
        return [{"W": b[:, :-1], "b": b[:, -1]} for b in blocks]

    theta0 = jnp.concatenate([jnp.concatenate([p["W"], p["b"][:, None]], 1).reshape(-1) for p in params])
    J = jax.jacrev(lambda t: model.apply(unflatten(t), x).reshape(-1))(theta0)

    def forward(eps):  # u_l perturbed by eps_l: returns f and the h~_{l-1}
        h, hs = x, []
        for l, p in enumerate(params):
            k = p["W"].shape[1]
            ht = jnp.concatenate([model.sigma_w * h / np.sqrt(k), jnp.full((x.shape[0], 1), model.sigma_b)], 1)
            hs.append(ht)
            u = ht @ jnp.concatenate([p["W"], p["b"][:, None]], 1).T + eps[l]
            h = model.phi(u) if l < L - 1 else u
        return h, hs

    n = x.shape[0]
    eps0 = [jnp.zeros((n, m), x.dtype) for m in w[1:]]
    _, hs = forward(eps0)
    jac = jax.jacobian(lambda e: forward(e)[0])(eps0)  # [(N, C, N, M_l)]
    Dm = [np.asarray(j[np.arange(n), :, np.arange(n), :]).reshape(n * w[-1], -1) for j in jac]
    g = np.asarray(model.apply(params, x) - jnp.asarray(y, x.dtype)).reshape(-1)
    return DenseProblem(np.asarray(J), g, [np.asarray(h) for h in hs], Dm, tuple(w))


# ----------------------------------------------------------------------------- dense helpers
def gram_inverse(Js: np.ndarray, n: int, rho: float) -> np.ndarray:
    """(J_S^T J_S / N + rho I)^+ for a column block J_S (N C, P_S): by the SVD of J_S (at rho = 0
    the pseudo-inverse N V diag(1/s^2) V^T, no squared condition number), else by inversion."""
    _, s, Vt = np.linalg.svd(Js, full_matrices=False)
    if rho > 0:  # V diag(1 / (s^2 / N + rho)) V^T + (I - V V^T) / rho, without forming J^T J
        V = Vt.T
        return (V / (s ** 2 / n + rho)) @ V.T + (np.eye(Js.shape[1]) - V @ V.T) / rho
    keep = s > RCOND ** 0.5 * (s[0] if s.size else 0)
    V = Vt[keep].T
    return n * (V / s[keep] ** 2) @ V.T


def sym_inverse(G: np.ndarray, rho: float) -> np.ndarray:
    """(G + rho I)^{-1} for rho > 0, the pseudo-inverse of the symmetric G at rho = 0."""
    if rho > 0:
        return np.linalg.inv(G + rho * np.eye(len(G)))
    return np.linalg.pinv(G, rcond=RCOND, hermitian=True)


def group_inverse(J: np.ndarray, groups: np.ndarray, n: int, rho: float) -> np.ndarray:
    """blockdiag over parameter groups of (F_SS + rho I)^+ (P, P): ``groups`` labels each column."""
    P = J.shape[1]
    out = np.zeros((P, P))
    for k in np.unique(groups):
        s = np.flatnonzero(groups == k)
        out[np.ix_(s, s)] = gram_inverse(J[:, s], n, rho)
    return out


def statistic_problem(dense: DenseProblem, V: np.ndarray) -> DenseProblem:
    """The problem of the statistic Jacobian J_S = V^T J (rows (n, s): V_n[:, s]^T J_n) and its
    factors Dm_S (rows sum_c V_n[c, s] delta_{n,c}); g is kept (the gradient is J^T g / N)."""
    n, c, k = V.shape
    Vb = np.einsum("nm,nck->ncmk", np.eye(n), V).reshape(n * c, n * k)
    return DenseProblem(Vb.T @ dense.J, dense.g, dense.H, [Vb.T @ Dm for Dm in dense.Dm], dense.widths)
