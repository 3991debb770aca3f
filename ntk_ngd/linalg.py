"""Kernel-space linear algebra: damped PSD solves with a stable pseudo-inverse fallback."""
from __future__ import annotations

import jax
import jax.numpy as jnp
from jax.scipy.linalg import cho_solve


def pinv_cutoff(w):
    """Eigenvalue cutoff below which a PSD matrix's eigenvalue counts as zero (numpy.linalg.pinv-like)."""
    return jnp.finfo(w.dtype).eps * w.shape[-1] * 10 * jnp.max(jnp.abs(w), axis=-1, keepdims=True)


def eigh_pinv_solve(A, B):
    """A^+ B for symmetric PSD A (n, n), B (n, k), via eigh with a relative cutoff."""
    w, V = jnp.linalg.eigh(A)
    winv = jnp.where(w > pinv_cutoff(w), 1.0 / jnp.where(w > 0, w, 1.0), 0.0)
    return V @ (winv[:, None] * (V.T @ B))


def psd_solve(K, B, shift=0.0):
    """(K + shift I)^+ B for symmetric PSD K (n, n), B (n,) or (n, k).

    Cholesky when K + shift I is numerically positive definite, otherwise the
    eigendecomposition pseudo-inverse (the minimum-norm solution).
    """
    vec = B.ndim == 1
    B2 = B[:, None] if vec else B
    A = K + shift * jnp.eye(K.shape[0], dtype=K.dtype)
    c = jnp.linalg.cholesky(A)
    piv = jnp.diagonal(c) ** 2
    ok = jnp.all(jnp.isfinite(c)) & (jnp.min(piv) > pinv_cutoff(jnp.diagonal(A))[0])
    X = jax.lax.cond(ok, lambda: cho_solve((c, True), B2), lambda: eigh_pinv_solve(A, B2))
    return X[:, 0] if vec else X


def chunked_sum(fn, n: int, chunk: int):
    """sum_{i < n} fn(idx) over index chunks idx of size ``chunk`` (fn must mask idx >= n itself).

    ``fn(idx, valid)`` gets an int array of indices and a boolean mask; bounds memory by ``chunk``.
    """
    n_chunks = -(-n // chunk)
    idx = jnp.arange(n_chunks * chunk).reshape(n_chunks, chunk)

    def body(acc, ix):
        return jax.tree_util.tree_map(jnp.add, acc, fn(jnp.minimum(ix, n - 1), ix < n)), None

    first = fn(jnp.minimum(idx[0], n - 1), idx[0] < n)
    if n_chunks == 1:
        return first
    acc, _ = jax.lax.scan(body, first, idx[1:])
    return acc


def equilibrated_solve(A, B):
    """A^{-1} B for a symmetric (possibly indefinite) A, with the symmetric diagonal equilibration
    W A W (W = diag(1 / sqrt(max(|A_ii|, 1)))): LU with partial pivoting on a matrix whose large
    diagonal entries (a damping term that dominates a row) are scaled to 1, so its error is set by
    the conditioning of the equilibrated matrix, not by the spread of the diagonal."""
    w = 1.0 / jnp.sqrt(jnp.maximum(jnp.abs(jnp.diagonal(A)), 1.0))
    X = jnp.linalg.solve(w[:, None] * A * w[None, :], w[:, None] * B)
    return w[:, None] * X


def sym_pinv_apply(A, B):
    """A^+ B for a symmetric (possibly indefinite) A (n, n), B (n, k): eigh with the relative cutoff
    ``pinv_cutoff`` on |eigenvalues|."""
    w, V = jnp.linalg.eigh(A)
    a = jnp.abs(w)
    keep = a > pinv_cutoff(a)
    winv = jnp.where(keep, 1.0 / jnp.where(keep, w, 1.0), 0.0)
    return V @ (winv[:, None] * (V.T @ B))
