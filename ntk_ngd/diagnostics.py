"""Function-space diagnostics of a method's step, linear and nonlinear alike (THEORY sections 3, 9).

Linear maps Phi(r) = Theta_G r: the spectrum of Theta_G (N C,), its mean alpha_hat = tr Theta_G / (N C)
(the isotropy constant computed from the kernels), the spread (lambda_max - lambda_min) / alpha and
the isotropy error ||Theta_G / alpha - I||_2.
Nonlinear maps: radiality sin angle(r, Phi(r)) = min_eta ||r - eta Phi(r)|| / ||r|| (0 iff Phi(r) is
parallel to r: the analogue of isotropy), the line-search step eta(r) = <r, Phi(r)> / ||Phi(r)||^2
that attains it, and the degree d of homogeneity (Phi(c r) = c^d Phi(r), c > 0), which fixes the step
schedule eta_t ~ ||r_t||^(1 - d) under which r_{t+1} = r_t - eta_t Phi(r_t) can converge geometrically.
A linear map is radial at every r exactly when it is isotropic, and homogeneous of degree 1.
"""
from __future__ import annotations

from typing import Callable, NamedTuple, Optional, Sequence

import jax.numpy as jnp
import numpy as np


class OperatorSummary(NamedTuple):
    """eigenvalues (N C,) ascending, alpha_hat = their mean, alpha (the reference: the method's
    isotropy constant, else alpha_hat), spread = (max - min) / alpha, iso_err = max |lambda / alpha - 1|."""
    eigenvalues: np.ndarray
    alpha_hat: float
    alpha: float
    spread: float
    iso_err: float


def operator_summary(theta_g, alpha: Optional[float] = None) -> OperatorSummary:
    """Diagnostics of a linear map from its symmetric Theta_G (N C, N C)."""
    w = np.linalg.eigvalsh(0.5 * (np.asarray(theta_g) + np.asarray(theta_g).T))
    alpha_hat = float(np.mean(w))
    ref = alpha_hat if alpha is None else float(alpha)
    if not ref > 0:
        raise ValueError(f"Theta_G has mean eigenvalue {alpha_hat:.3g} <= 0: not a descent operator")
    return OperatorSummary(w, alpha_hat, ref, float((w[-1] - w[0]) / ref), float(np.max(np.abs(w / ref - 1.0))))


def _flat(v) -> np.ndarray:
    return np.asarray(v, float).reshape(-1)


def radiality(r, phi_r) -> float:
    """sin angle(r, Phi(r)) in [0, 1] = min_eta ||r - eta Phi(r)|| / ||r|| (1 where Phi(r) = 0 or
    points away from r)."""
    r, p = _flat(r), _flat(phi_r)
    nr, npp = np.linalg.norm(r), np.linalg.norm(p)
    if nr == 0:
        raise ValueError("radiality needs a nonzero residual r")
    if npp == 0:
        return 1.0
    cos = float(r @ p) / (nr * npp)
    return float(np.sqrt(max(0.0, 1.0 - cos * cos))) if cos > 0 else 1.0


def line_search_lr(r, phi_r) -> float:
    """eta = <r, Phi(r)> / ||Phi(r)||^2, the step minimizing ||r - eta Phi(r)|| (refused if <= 0)."""
    r, p = _flat(r), _flat(phi_r)
    num, den = float(r @ p), float(p @ p)
    if not (den > 0 and num > 0):
        raise ValueError(f"the step Phi(r) does not descend along r (<r, Phi(r)> = {num:.3g}): no line-search lr")
    return num / den


class Homogeneity(NamedTuple):
    """degree d fitted from ||Phi(c r)|| = c^d ||Phi(r)||; deviation = max_c ||Phi(c r) - c^d Phi(r)|| /
    ||c^d Phi(r)|| (0 for an exactly homogeneous map)."""
    degree: float
    deviation: float


def homogeneity(phi: Callable, r, scales: Sequence[float] = (0.5, 2.0)) -> Homogeneity:
    """Degree of homogeneity of ``phi`` at r (r and Phi(r) any shape, compared flattened)."""
    r = jnp.asarray(r)
    base = _flat(phi(r))
    nb = np.linalg.norm(base)
    if nb == 0:
        raise ValueError("Phi(r) = 0: no degree of homogeneity at this r")
    cs = np.asarray(scales, float)
    outs = [_flat(phi(c * r)) for c in cs]
    d = float(np.mean([np.log(np.linalg.norm(o) / nb) / np.log(c) for o, c in zip(outs, cs)]))
    dev = max(float(np.linalg.norm(o - c ** d * base) / (c ** d * nb)) for o, c in zip(outs, cs))
    return Homogeneity(d, dev)


def schedule_power(degree: float) -> float:
    """q = 1 - d: eta_t = eta_0 (||r_t|| / ||r_0||)^q makes each step eta_t Phi(r_t) scale like r_t
    (geometric convergence at a radial r; ``train(lr_power=q)``)."""
    return 1.0 - float(degree)
