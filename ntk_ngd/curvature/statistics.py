"""Statistics estimators of Fisher-type methods (THEORY section 9): which per-sample gradients
g_n = c_n delta_n h~_n^T the second moments average.

Per sample n the estimator gives statistic vectors V_n (C, k) whose outer product S_n = V_n V_n^T is
the second moment of the output-space factor c_n:
  "expected"   (default) V_n = I_C                      (the Fisher of the Gaussian model, the GGN)
  "empirical"  V_n = r_n (k = 1)                        (the empirical Fisher; depends on r)
  "sampled"    V_n = eps_n / sqrt(k), eps ~ N(0, 1)     (k = ``samples`` draws, fixed by ``seed``)
  "rademacher" V_n = eps_n / sqrt(k), eps = +-1
Then F_S = (1/N) sum_n J_n^T S_n J_n = J_S^T J_S / N with the statistic Jacobian J_S = V^T J (N k, P),
whose factors are D_S[n] = D[n] V_n and H, so every structured method runs unchanged on
(D_S, u) with coordinates u_n = V_n^+ r_n: the gradient J^T r / N = J_S^T u / N as long as r_n lies
in span(V_n) (always for expected and empirical; ``samples`` >= C for the random ones). In kernel
space the push-through of section 2 becomes d = J_S^T (Theta_S + N rho)^+ u, Theta_S = V^T Theta V,
and Theta_G = J J_S^T (...) V^+: the Grams KD are sandwiched by V (``statistic_grams``).
"""
from __future__ import annotations

import dataclasses
from typing import Literal, Optional

import jax
import jax.numpy as jnp

from ..layers import Factors, Grams

STATISTICS = ("expected", "empirical", "sampled", "rademacher")


def statistic_vectors(kind: str, g, samples: int = 1, seed: int = 0) -> Optional[jnp.ndarray]:
    """V (N, C, k) for residuals g (N, C); None for "expected" (V = I: nothing to transform)."""
    n, c = g.shape
    if kind == "expected":
        return None
    if kind == "empirical":
        return g[:, :, None]
    key = jax.random.PRNGKey(seed)
    if kind == "sampled":
        eps = jax.random.normal(key, (n, c, samples), g.dtype)
    elif kind == "rademacher":
        eps = jax.random.rademacher(key, (n, c, samples), g.dtype)
    else:
        raise ValueError(f"statistics must be one of {STATISTICS}, got {kind!r}")
    return eps / jnp.sqrt(jnp.asarray(samples, g.dtype))


def coordinates(V, g):
    """u (N, k) with V_n u_n = g_n: the minimum-norm solution V_n^+ g_n (0 where V_n = 0)."""
    return jax.vmap(lambda v, r: jnp.linalg.pinv(v) @ r)(V, g)


def statistic_factors(fac: Factors, V) -> Factors:
    """Factors of J_S: H unchanged, D_S[n] = D[n] V_n (N, M_l, k)."""
    return Factors(fac.H, [jnp.einsum("nmc,nck->nmk", D, V) for D in fac.D])


def block_diag_rows(V):
    """V (N, C, k) as the block-diagonal (N C, N k) matrix."""
    n, c, k = V.shape
    return jnp.einsum("nm,nck->ncmk", jnp.eye(n, dtype=V.dtype), V).reshape(n * c, n * k)


def statistic_grams(g: Grams, V_left, V_right) -> Grams:
    """KD sandwiched: V_left^T KD V_right (None means I), KH unchanged."""
    KD = []
    for kd in g.KD:
        if V_left is not None:
            kd = block_diag_rows(V_left).T @ kd
        if V_right is not None:
            kd = kd @ block_diag_rows(V_right)
        KD.append(kd)
    return Grams(g.KH, KD)


@dataclasses.dataclass(frozen=True)
class Statistics:
    """The statistics option of a Fisher-type method (mixed into its dataclass)."""
    statistics: Literal["expected", "empirical", "sampled", "rademacher"] = "expected"
    samples: int = 1
    seed: int = 0

    def statistic_vectors(self, g):
        return statistic_vectors(self.statistics, g, self.samples, self.seed)

    def fisher_statistics(self, model) -> bool:
        """Whether the second moments are the Fisher's (S_n = I_C): "expected", or "rademacher" with
        C = 1 (eps^2 = 1). Only then do the isotropy constants of THEORY section 4 apply; empirical
        statistics make the map nonlinear, sampled ones reweight it per input (alpha is None)."""
        return self.statistics == "expected" or (self.statistics == "rademacher" and model.n_outputs == 1)

    def check_statistics(self, model, n: int):
        """samples >= 1, and for the random estimators every V_n of full row rank C (the residual
        must lie in the span of the samples, or the gradient is not J_S^T u)."""
        if self.samples < 1:
            raise ValueError(f"{self.name}: samples must be >= 1, got {self.samples}")
        C = model.n_outputs
        if self.statistics not in ("sampled", "rademacher"):
            return
        if self.samples < C:
            raise ValueError(f"{self.name}: statistics={self.statistics!r} needs samples >= C = {C} "
                             f"(got {self.samples}): the residual must lie in the span of the samples")
        V = self.statistic_vectors(jnp.zeros((n, C)))
        s = jnp.linalg.svd(V, compute_uv=False)  # (N, C)
        if C > 1 and not bool(jnp.all(s[:, -1] > 1e-8 * s[:, 0])):
            raise ValueError(f"{self.name}: the {self.statistics} samples (seed={self.seed}, samples={self.samples}) "
                             "do not span the C outputs for some inputs; use more samples or another seed")

    @property
    def linear(self) -> bool:
        return self.statistics != "empirical"
