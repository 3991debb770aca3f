"""Structured per-layer quantities from one forward and one backward pass (THEORY section 2).

For layer l the effective weight is W~_l = [W_l, b_l] (M_l, M_{l-1}+1) acting on
h~_{l-1} = [sigma_w h_{l-1} / sqrt(M_{l-1}), sigma_b], so that

    J_l(x)_{c, (i, j)} = delta_l(x)_{i c} h~_{l-1}(x)_j          (Jacobian never formed)
    Theta_l(x, x')_{c c'} = [delta_l(x)^T delta_l(x')]_{c c'} * (h~(x) . h~(x'))

``Factors`` holds, per layer, H = h~_{l-1} stacked over samples (N, M_{l-1}+1) and
D = delta_l stacked over samples (N, M_l, C). ``Grams`` holds the two Gram matrices
from which every kernel-space object is built: KH = H1 H2^T (N1, N2) and
KD = delta Gram (N1 C, N2 C) ordered (sample, output). Empirical factors and the
analytic infinite-width limit (``analytic.py``) both produce ``Grams``.
"""
from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np


class Factors(NamedTuple):
    """Per-layer factors: H[l] (N, M_{l-1}+1) and D[l] (N, M_l, C), l = 1..L (0-indexed lists)."""
    H: list
    D: list


class Grams(NamedTuple):
    """Per-layer Grams between input sets 1 and 2: KH[l] (N1, N2), KD[l] (N1 C, N2 C)."""
    KH: list
    KD: list


def factors(model, params, x) -> Factors:
    """Forward pass for h~_{l-1}, backward pass for delta_l = d f / d u_l (delta_L = I_C)."""
    L, C, N = model.depth, model.n_outputs, x.shape[0]
    H, U = [], []
    h = x.astype(jnp.result_type(x.dtype, params[0]["W"].dtype))  # the promoted dtype (as in MLP.apply)
    for l, p in enumerate(params):
        m_in = p["W"].shape[1]
        # u_l written exactly as in MLP.apply (no [W, b] copy): under jit, XLA's common-subexpression
        # elimination then merges this forward pass with an MLP.apply on the same params and x.
        hs = float(model.sigma_w / np.sqrt(m_in)) * h  # a Python float: float32 params stay float32
        u = hs @ p["W"].T + model.sigma_b * p["b"]
        H.append(jnp.concatenate([hs, jnp.full((N, 1), model.sigma_b, h.dtype)], axis=1))
        U.append(u)
        h = model.phi(u)
    D = [None] * L
    D[L - 1] = jnp.broadcast_to(jnp.eye(C, dtype=x.dtype), (N, C, C))
    dphi = model.dphi
    for l in range(L - 2, -1, -1):
        W_next = params[l + 1]["W"]
        back = jnp.einsum("mi,nmc->nic", W_next, D[l + 1]) * float(model.sigma_w / np.sqrt(W_next.shape[1]))
        D[l] = dphi(U[l])[:, :, None] * back
    return Factors(H, D)


def grams(f1: Factors, f2: Factors | None = None) -> Grams:
    """Layer Grams KH = H1 H2^T (N1, N2) and KD[(n,c),(m,c')] = delta1_n^T delta2_m (N1 C, N2 C)."""
    f2 = f1 if f2 is None else f2
    KH = [h1 @ h2.T for h1, h2 in zip(f1.H, f2.H)]
    KD = []
    for d1, d2 in zip(f1.D, f2.D):
        n1, _, c = d1.shape
        KD.append(jnp.einsum("nic,mid->ncmd", d1, d2).reshape(n1 * c, d2.shape[0] * c))
    return Grams(KH, KD)


def expand(KH, C: int, C2: int | None = None):
    """KH (N1, N2) -> KH (x) 1_{C x C2}, (N1 C, N2 C2) with (sample, output) ordering (C2 = C by default)."""
    return jnp.repeat(jnp.repeat(KH, C, axis=0), C if C2 is None else C2, axis=1)


def layer_kernels(g: Grams) -> jnp.ndarray:
    """Theta_l = KD_l o (KH_l (x) 1 1^T): (L, N1 C1, N2 C2) (C1 = C2 = C but for statistic Grams)."""
    c1 = g.KD[0].shape[0] // g.KH[0].shape[0]
    c2 = g.KD[0].shape[1] // g.KH[0].shape[1]
    return jnp.stack([kd * expand(kh, c1, c2) for kh, kd in zip(g.KH, g.KD)])


def empirical_layerwise_ntk(model, params, x1, x2=None) -> jnp.ndarray:
    """Empirical layer-wise NTK Theta_l(x1, x2), (L, N1 C, N2 C), from the structured factors."""
    f1 = factors(model, params, x1)
    f2 = f1 if x2 is None else factors(model, params, x2)
    return layer_kernels(grams(f1, f2))


# --- structured Jacobian products ---------------------------------------------------
def jt_vec(f: Factors, v) -> list:
    """J_l^T v per layer for v (L or 1 of) (N, C): returns [(M_l, M_{l-1}+1)] (the W~ blocks).

    ``v`` is a list with one (N, C) array per layer, or a single (N, C) array used for all.
    """
    vs = v if isinstance(v, (list, tuple)) else [v] * len(f.H)
    return [jnp.einsum("nic,nc,nj->ij", d, vl, h) for h, d, vl in zip(f.H, f.D, vs)]


def j_vec(f: Factors, blocks) -> jnp.ndarray:
    """J d = sum_l J_l d_l for W~ blocks d_l (M_l, M_{l-1}+1): returns (N, C)."""
    return sum(jnp.einsum("nic,ij,nj->nc", d, b, h) for h, d, b in zip(f.H, f.D, blocks))


def to_params(blocks) -> list:
    """W~ blocks (M_l, M_{l-1}+1) -> params layout [{"W", "b"}]."""
    return [{"W": b[:, :-1], "b": b[:, -1]} for b in blocks]


def from_params(params) -> list:
    """params layout -> W~ blocks [W_l, b_l]."""
    return [jnp.concatenate([p["W"], p["b"][:, None]], axis=1) for p in params]


# --- generic autodiff path ----------------------------------------------------------
def autodiff_layer_kernels(apply, params, x1, x2=None) -> jnp.ndarray:
    """Layer kernels by Jacobian contraction for any ``apply(params, x) -> (N, C)``.

    A "layer" is a top-level entry of the params list. Returns (L, N1 C, N2 C).
    """
    def layer_jacobians(x):
        jac = jax.jacrev(apply)(params, x)  # leaves (N, C, *leaf_shape)
        out = []
        for layer in jac:
            leaves = jax.tree_util.tree_leaves(layer)
            n, c = leaves[0].shape[:2]
            out.append(jnp.concatenate([a.reshape(n * c, -1) for a in leaves], axis=1))
        return out

    j1 = layer_jacobians(x1)
    j2 = j1 if x2 is None else layer_jacobians(x2)
    return jnp.stack([a @ b.T for a, b in zip(j1, j2)])
