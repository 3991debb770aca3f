"""Peak-memory estimates (bytes) for the NGD steps and the kernel builds, and ``choose_chunk`` to
size the chunked / tiled paths for a memory budget. (The benchmark's dense-Jacobian baseline has
its own per-method memory table, ``estimate`` in benchmarks/baseline.py.)

Conventions (THEORY sections 1-2): an MLP with widths (M_0, M, ..., M, C), L weight layers
(L - 1 hidden layers of width M), N samples, s bytes per element (8 float64, 4 float32),

    P     = sum_l M_l (M_{l-1} + 1)         parameters (W~_l = [W_l, b_l] blocks)
    P_max = max_l M_l (M_{l-1} + 1)         the largest block (the hidden-to-hidden one for L >= 3)

Every estimate is a sum of named terms (``Estimate.terms``, element counts times s); the model
is "everything that is alive at the peak", an upper-bound-style count of the arrays the
computation creates, not a simulation of XLA's buffer assignment. The benchmark
(benchmarks/bench.py) prints it next to XLA's own buffer assignment of the compiled step
(``compiled.memory_analysis()``: arguments + outputs + temporaries) and next to the measured
resident-set growth, and tests/test_memory.py checks each term against a direct count of the
arrays the code makes on small cases.

Structured step (``ntk_ngd.ngd.direction_fn`` + the update, returning the updated parameters
and the direction):

    params + x, y                  P + N (M_0 + C)                  (arguments)
    updated params, direction      2 P                              (outputs)
    activations                    N sum_l (M_{l-1}+1)  [h~]  +  N C sum_l M_l  [delta]
                                   + 2 N sum_{l<L} M_l  [u_l, phi'(u_l)]
    method:
      gd                           0
      exact                        L N^2 + 2 L (N C)^2 [Grams, layer kernels] + 2 (N C)^2 [solve]
      block_diagonal               L N^2 + 2 L (N C)^2 + 2 L (N C)^2
      block_tridiagonal            L N^2 + 2 L (N C)^2 + 2 (L N C)^2 [the coupled system and its LU]
      kfac                         L [2 ((N C)^2 + N^2) + 2 N C N]  [Grams Dm Dm^T, H H^T, their
                                   eigenvectors, the (N C, N) core and U_D core U_H^T]
                                   + max_l N C (M_{l-1} + 1)        [(U_D core U_H^T) H]
      unit_wise                    (N C)^2 [K~] + chunk (3 (N C)^2 + 2 N C)   [per unit: Theta_i, its
                                   shifted copy and Cholesky factor, right-hand side and solution]
      diagonal                     2 P_max                          [1/(diag F + rho) and J^T g blocks]

Kernel builds: layer Grams from the factors (params path: params + factors + Grams), the same
with weights generated per tile (no params: one weight tile of ``tile`` rows, its random bits),
and the analytic kernels over square input tiles (per pair of a tile: (4 L + 3) words for the
closed forms, plus 3 ``quad_order`` words for quadrature; calibrated against XLA's buffer
assignment of one block), plus the (L, N1, N2) host output.
"""
from __future__ import annotations

from typing import NamedTuple

import numpy as np


def dtype_bytes(dtype) -> int:
    """Bytes per element of a float dtype name or numpy/jax dtype ("float64" -> 8)."""
    return int(np.dtype(dtype).itemsize)


def widths_of(M: int, L: int, M0: int, C: int) -> tuple:
    """(M_0, M, ..., M, C): L weight layers, L - 1 hidden layers of width M."""
    if L < 1:
        raise ValueError(f"L must be >= 1, got {L}")
    return (int(M0),) + (int(M),) * (L - 1) + (int(C),)


def n_params(widths) -> int:
    """P = sum_l M_l (M_{l-1} + 1)."""
    return int(sum(m * (k + 1) for k, m in zip(widths[:-1], widths[1:])))


def max_block(widths) -> int:
    """P_max = max_l M_l (M_{l-1} + 1)."""
    return int(max(m * (k + 1) for k, m in zip(widths[:-1], widths[1:])))


class Estimate(NamedTuple):
    """total bytes and the named terms (bytes) it sums."""
    total: int
    terms: dict

    def __str__(self):
        parts = ", ".join(f"{k} {fmt_bytes(v)}" for k, v in self.terms.items() if v)
        return f"{fmt_bytes(self.total)} ({parts})"


def fmt_bytes(b) -> str:
    if b is None:
        return "-"
    b = float(b)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(b) < 1024 or unit == "TiB":
            return f"{b:.0f} {unit}" if unit == "B" else f"{b:.1f} {unit}"
        b /= 1024


def _estimate(terms: dict, s: int) -> Estimate:
    terms = {k: int(v) * s for k, v in terms.items()}
    return Estimate(sum(terms.values()), terms)


def activation_count(N: int, C: int, widths) -> int:
    """h~ (N, M_{l-1}+1), delta (N, M_l, C), u_l and phi'(u_l) (N, M_l) for hidden l: elements."""
    L = len(widths) - 1
    h = N * sum(k + 1 for k in widths[:-1])
    d = N * C * sum(widths[1:])
    u = 2 * N * sum(widths[1:L])
    return h + d + u


def unit_chunk_count(N: int, C: int, chunk: int) -> int:
    """Elements alive per chunk of units in the unit-wise direction (see the module docstring)."""
    nc = N * C
    return chunk * (3 * nc * nc + 2 * nc)


def step_estimate(method, N: int, C: int, M: int, L: int, M0: int, dtype="float64",
                  chunk: int = 256, widths=None) -> Estimate:
    """Peak bytes of one structured NGD step (direction + update) for ``method`` (a registered name
    or a method object): arguments, outputs and activations plus the method's ``memory_terms``.

    ``widths`` overrides (M_0, M, ..., M, C) for non-uniform networks; ``chunk`` is the
    unit-wise chunk (units solved at once) for a method named by a string that has that option.
    """
    from .curvature import get_method
    m = get_method(method)
    if isinstance(method, str) and "chunk" in m.options():
        m = get_method(method, chunk=int(chunk))
    w = widths_of(M, L, M0, C) if widths is None else tuple(widths)
    C, M0 = w[-1], w[0]
    s, P = dtype_bytes(dtype), n_params(w)
    t = {"params": P, "inputs": N * (M0 + C), "updated params": P, "direction": P,
         "activations": activation_count(N, C, w)}
    t.update(m.memory_terms(N, C, w))
    return _estimate(t, s)


def gram_build_estimate(N: int, C: int, M: int, L: int, M0: int, dtype="float64", tiled: bool = False,
                        tile: int = 1024, devices: int = 1, widths=None) -> Estimate:
    """Peak bytes per device of the layer-Gram build (``ntk_ngd.sharding.layer_grams`` with
    params, or ``tiled_layer_grams`` with weights generated per ``tile`` rows)."""
    w = widths_of(M, L, M0, C) if widths is None else tuple(widths)
    L, C, M0 = len(w) - 1, w[-1], w[0]
    s, nc = dtype_bytes(dtype), N * C
    n_loc = -(-N // devices)
    t = {"inputs": N * M0}
    if tiled:
        mmax = max(w[:-1])
        t["weight tile"] = 3 * tile * mmax  # the tile and its random bits (2 x 32-bit per element, f64)
    else:
        t["params"] = n_params(w)
    # local factors, the gathered (all samples) factors, and the Grams (local rows, all columns)
    t["factors"] = activation_count(n_loc, C, w) + activation_count(N, C, w)
    t["grams"] = L * (n_loc * N + (n_loc * C) * nc)
    return _estimate(t, s)


def analytic_pair_words(L: int, closed_form: bool = True, quad_order: int = 64) -> int:
    """Words per pair of inputs alive while one analytic block is computed (see module docstring)."""
    return 4 * L + 3 + (0 if closed_form else 3 * quad_order)


def analytic_estimate(N1: int, N2: int, L: int, dtype="float64", tile: int = 512, closed_form: bool = True,
                      quad_order: int = 64, devices: int = 1) -> Estimate:
    """Peak bytes of ``ntk_ngd.sharding.analytic_layerwise_ntk``: the (L, N1, N2) host output plus,
    per device, one block of (tile / devices) x tile pairs (two blocks in flight)."""
    s = dtype_bytes(dtype)
    rows = -(-tile // devices)
    t = {"output": L * N1 * N2, "inputs": 0,
         "blocks in flight": 2 * devices * rows * tile * analytic_pair_words(L, closed_form, quad_order)}
    return _estimate(t, s)


def available_bytes(device=None) -> int | None:
    """Memory a new computation can use: the device allocator's limit minus what is in use (GPU),
    else the host's MemAvailable (/proc/meminfo); None where neither is known."""
    if device is not None and getattr(device, "platform", "cpu") != "cpu":
        st = device.memory_stats() or {}
        if "bytes_limit" in st:
            return int(st["bytes_limit"] - st.get("bytes_in_use", 0))
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


def check_fits(method: str, widths, N: int, n_test: int = 0, dtype="float64", fraction: float = 0.8,
               device=None) -> Estimate:
    """Refuse, before anything is allocated, a training run + comparison that cannot fit.

    Needs the structured step (``step_estimate``) plus the comparison's extras: the (L, N + n_test, N)
    layer kernels of the empirical and analytic sources and the Theta_G's. Raises ``MemoryError``
    naming the estimate and the memory available when the total exceeds ``fraction`` of it (on a
    CPU the kernel's OOM killer would end the whole sweep, not just this point); returns the estimate.
    """
    w = tuple(int(v) for v in widths)
    L, C = len(w) - 1, w[-1]
    est = step_estimate(method, N, C, w[1], L, w[0], dtype, widths=w)
    extra = _estimate({"kernel sources": 2 * L * (N + n_test) * N * (1 + C * C),
                       "Theta_G": 4 * (N * C) * ((N + n_test) * C)}, dtype_bytes(dtype))
    total = Estimate(est.total + extra.total, {**est.terms, **extra.terms})
    avail = available_bytes(device)
    if avail is not None and total.total > fraction * avail:
        raise MemoryError(f"{method} with widths {w}, N = {N}: needs about {fmt_bytes(total.total)} "
                          f"(ntk_ngd.memory.check_fits: {total}), more than {fraction:.0%} of the "
                          f"{fmt_bytes(avail)} available; use a smaller width or N")
    return total


def choose_chunk(kind: str, budget_bytes: float, *, N: int | None = None, C: int = 1, n_units: int | None = None,
                 n_test: int = 0, M_in: int | None = None, L: int | None = None, dtype="float64",
                 closed_form: bool = True, quad_order: int = 64, devices: int = 1,
                 power_of_two: bool = True, minimum: int = 1) -> int:
    """Largest chunk (tile) whose working set fits ``budget_bytes``.

    kind:
      "unit_wise"  units solved at once in ``UnitWise.direction`` (option ``chunk``): per unit
                   3 (N C)^2 + 2 N C elements; with n_test > 0, for ``UnitWise.kernel``: per unit
                   5 (N C)^2 + 2 n_test C (N C). Needs N; n_units caps the result.
      "diagonal"   units per chunk in ``Diagonal.kernel`` (option ``chunk``): per unit
                   N_a N_b (1 + C^2) with N_a = n_test or N, N_b = N. Needs N.
      "analytic"   square tile (rows = columns per block) of ``sharding.analytic_layerwise_ntk``
                   (or ``analytic.analytic_kernels(tile=...)``): (4 L + 3 [+ 3 quad_order]) words
                   per pair, two blocks in flight, rows split over ``devices``. Needs L.
      "weights"    rows of W_l per tile in ``sharding.tiled_layer_grams`` / ``init_tiled``:
                   3 M_in elements per row (the tile and its random bits). Needs M_in.
    The result is at least ``minimum`` (even if that exceeds the budget) and, with
    ``power_of_two``, rounded down to a power of two (friendlier shapes, fewer recompilations).
    """
    s = dtype_bytes(dtype)
    budget = float(budget_bytes) / s  # in elements
    if kind == "unit_wise":
        if N is None:
            raise ValueError("choose_chunk('unit_wise') needs N")
        nc = N * C
        per = (3 * nc * nc + 2 * nc) if not n_test else (5 * nc * nc + 2 * n_test * C * nc)
        c = budget / per
    elif kind == "diagonal":
        if N is None:
            raise ValueError("choose_chunk('diagonal') needs N")
        na = n_test or N
        c = budget / (na * N * (1 + C * C))
    elif kind == "analytic":
        if L is None:
            raise ValueError("choose_chunk('analytic') needs L")
        words = analytic_pair_words(L, closed_form, quad_order)
        # 2 blocks in flight, each (tile / devices) x tile per device: budget >= 2 tile^2 words / devices
        c = np.sqrt(budget * devices / (2 * words))
    elif kind == "weights":
        if M_in is None:
            raise ValueError("choose_chunk('weights') needs M_in")
        c = budget / (3 * M_in)
    else:
        raise ValueError(f"unknown kind {kind!r}; choose unit_wise, diagonal, analytic or weights")
    c = int(np.floor(c))
    if power_of_two and c >= 1:
        c = 1 << (c.bit_length() - 1)
    if n_units is not None:
        c = min(c, int(n_units))
    return max(int(minimum), c)


__all__ = ["Estimate", "dtype_bytes", "widths_of", "n_params", "max_block", "fmt_bytes",
           "activation_count", "unit_chunk_count", "step_estimate", "gram_build_estimate",
           "analytic_pair_words", "analytic_estimate", "available_bytes", "check_fits", "choose_chunk"]
