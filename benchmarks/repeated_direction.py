#!/usr/bin/env python
"""Repeated ``ngd_direction`` calls against the compiled direction function alone (issue 10).

Times ``--calls`` (20) calls of ``ntk_ngd.ngd_direction(model, params, x, y, METHOD)`` (default kfac,
rho = 0; N = 100, M = 1024, L = 3, M_0 = 784, C = 1, synthetic unit-norm inputs, float64) against
as many calls of the jitted direction function itself: ``ntk_ngd.ngd.compiled_direction(model, method,
rho)`` where it exists, else ``jax.jit(ntk_ngd.ngd.direction_fn(model, METHOD, rho))`` built once (the
code before the cache, whose ``ngd_direction`` compiled anew on every call). Both are called once
before the timed loops (that first ``ngd_direction`` call is reported as "first call"); each round
times the two loops back to back, and the figure is each loop's best round (a shared CPU adds noise).
Prints both totals and their ratio. Nothing is asserted: a benchmark figure, not a test.

    python benchmarks/repeated_direction.py                     # the figure in benchmarks/README.md
    PYTHONPATH=/path/to/other/checkout python benchmarks/repeated_direction.py   # another version
"""
from __future__ import annotations

import argparse
import os
import sys
import time


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--method", default="kfac")
    p.add_argument("--n", type=int, default=100)
    p.add_argument("--width", "-M", type=int, default=1024)
    p.add_argument("--depth", "-L", type=int, default=3)
    p.add_argument("--m0", type=int, default=784)
    p.add_argument("--rho", type=float, default=0.0)
    p.add_argument("--calls", type=int, default=20)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--seed", type=int, default=0)
    a = p.parse_args(argv)
    for var in ("OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS", "OMP_NUM_THREADS"):
        os.environ.setdefault(var, "1")
    os.environ.setdefault("JAX_PLATFORMS", "cpu")
    flags = os.environ.get("XLA_FLAGS", "")
    if "concurrency_optimized_scheduler" not in flags:  # as bench.py (jaxlib 0.10.2, README "Known issues")
        os.environ["XLA_FLAGS"] = (flags + " --xla_cpu_enable_concurrency_optimized_scheduler=false").strip()

    import jax
    jax.config.update("jax_enable_x64", True)
    import jax.numpy as jnp
    import ntk_ngd
    from ntk_ngd import MLP, ngd
    from ntk_ngd.curvature import get_method

    model = MLP((a.m0,) + (a.width,) * (a.depth - 1) + (1,), "relu")
    k1, k2, k3 = jax.random.split(jax.random.PRNGKey(a.seed), 3)
    params = model.init(k1)
    x = jax.random.normal(k2, (a.n, a.m0))
    x = x / jnp.linalg.norm(x, axis=1, keepdims=True)
    y = 0.5 * jnp.sign(jax.random.normal(k3, (a.n, 1)))

    if hasattr(ngd, "compiled_direction"):
        ref = ngd.compiled_direction(model, get_method(a.method), a.rho)
        ref_name = "ntk_ngd.ngd.compiled_direction"
    else:
        ref = jax.jit(ngd.direction_fn(model, a.method, a.rho))
        ref_name = "jax.jit(ntk_ngd.ngd.direction_fn(...)) built once"

    def loop(fn):
        t0 = time.perf_counter()
        for _ in range(a.calls):
            jax.block_until_ready(fn())
        return time.perf_counter() - t0

    call_api = lambda: ntk_ngd.ngd_direction(model, params, x, y, a.method, a.rho)
    call_ref = lambda: ref(params, x, y)
    t0 = time.perf_counter()
    jax.block_until_ready(call_api())
    first = time.perf_counter() - t0
    jax.block_until_ready(call_ref())
    rounds = []
    for r in range(a.rounds):
        t_api, t_ref = loop(call_api), loop(call_ref)
        rounds.append((t_api, t_ref))
        print(f"round {r + 1}: ngd_direction x {a.calls} {t_api:.3f} s, compiled function x {a.calls} "
              f"{t_ref:.3f} s, ratio {t_api / t_ref:.2f}", flush=True)
    t_api, t_ref = min(t[0] for t in rounds), min(t[1] for t in rounds)
    print(f"# {a.method}, N = {a.n}, M = {a.width}, L = {a.depth}, M_0 = {a.m0}, rho = {a.rho:g}, float64; "
          f"jax {jax.__version__}, {os.cpu_count()} CPUs; ntk_ngd from {os.path.dirname(ntk_ngd.__file__)}")
    print(f"# reference: {ref_name}")
    print(f"# first ngd_direction call {first:.3f} s; best of {a.rounds} rounds: ngd_direction x {a.calls} "
          f"{t_api:.3f} s, compiled function x {a.calls} {t_ref:.3f} s, ratio {t_api / t_ref:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
