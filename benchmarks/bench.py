#!/usr/bin/env python
"""Structured NGD steps against a naive dense-Jacobian baseline, kernel builds and analytic kernels.

One run times, for every registered method (``ntk_ngd.curvature.method_names()``: the built-ins gd,
exact, block_diagonal, block_tridiagonal, kfac, unit_wise, diagonal and any method a ``--plugin``
module registers), widths M and sample counts N (L layers, M_0 inputs, synthetic unit-norm inputs):

* the structured step: ``jax.jit`` of ``ntk_ngd.ngd.direction_fn(model, method, rho, n_train=N)``
  plus the parameter update (it returns the updated parameters and the direction);
* the dense baseline (benchmarks/baseline.py, keyed by the registry): J (N C, P) by ``jax.vmap``
  over samples of ``jax.jacrev`` of the flat parameter vector, then the method in dense linear
  algebra (kernel J J^T or per-layer / per-unit kernels, the K-FAC factors A, B and their
  eigendecompositions, diag(J^T J)), dense solves, same data and weights; a method without its own
  baseline uses its dense ``to_dense`` matrix (small problems only); skipped with "does not fit"
  when its memory estimate (``baseline.estimate``) exceeds the budget;
* compile time, median and minimum step time (after a warm-up call), peak memory three ways
  (the ``ntk_ngd.memory`` estimate, XLA's buffer assignment of the compiled step, and the measured
  resident-set growth on CPU / the device allocator's peak on GPU), the baseline/structured time
  ratio, and the relative difference of the two directions (printed; 1e-10 in float64);
* the layer-Gram (empirical kernel) build, with params or with weights generated per tile
  (the large-width path), with its analytic flop count and achieved FLOP/s (against ``--peak-gflops``);
* the analytic layer-wise NTK for ``--analytic-n`` inputs: ``ntk_ngd.analytic.analytic_layerwise_ntk``
  and the tiled, device-sharded ``ntk_ngd.sharding.analytic_layerwise_ntk``.

Writes JSON (``--out``) and prints tables. See benchmarks/README.md for the figures and commands.
"""
from __future__ import annotations

import argparse
import ctypes
import json
import os
import platform
import sys
import time
import warnings

TOL = {"float64": 1e-10, "float32": 1e-3}
# analytic flop count per pair and layer of the closed-form dual kernels (relu / erf: the
# vectorized arctangent, square roots and the recursions, sqrt and divide counted as 1 flop)
ANALYTIC_FLOPS_PER_PAIR_LAYER = 60
KNOWN_PEAK_GFLOPS = {  # dense (non-tensor-core) peaks, GFLOP/s: (float32, float64)
    "H100": (67_000, 34_000), "H200": (67_000, 34_000), "A100": (19_500, 9_700),
}
TARGETS = [  # (name, section, selector, limit in seconds)
    ("exact step, N=100, M=2048", "steps", dict(method="exact", N=100, M=2048), 0.2),
    ("block_diagonal step, N=100, M=2048", "steps", dict(method="block_diagonal", N=100, M=2048), 0.2),
    ("block_tridiagonal step, N=100, M=2048", "steps", dict(method="block_tridiagonal", N=100, M=2048), 0.2),
    ("kfac step, N=100, M=2048", "steps", dict(method="kfac", N=100, M=2048), 0.1),
    ("unit_wise step, N=100, M=4096", "steps", dict(method="unit_wise", N=100, M=4096), 1.0),
    ("analytic layer-wise NTK, N=10000 (tiled)", "analytic", dict(N=10000, impl="ntk_ngd.sharding.analytic_layerwise_ntk"), 20.0),
    ("analytic layer-wise NTK, N=10000 (analytic.py)", "analytic", dict(N=10000, impl="ntk_ngd.analytic.analytic_layerwise_ntk"), 20.0),
]


# --- command line and environment (before numpy / jax are imported) ----------------------------
def build_parser(methods=None, add_help=True):
    """The command line; ``methods`` (the registered names) are the ``--methods`` choices."""
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0], add_help=add_help,
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--widths", type=int, nargs="+", default=None,
                   help="hidden widths M (default 2^8..2^14, capped by --max-width)")
    p.add_argument("--max-width", type=int, default=None, help="drop widths above this")
    p.add_argument("--n", type=int, nargs="+", default=None, help="training-set sizes N (default 100 1000)")
    p.add_argument("--methods", nargs="+", default=None, choices=methods,
                   help="registered methods (ntk_ngd.curvature.method_names(); default: all of them)")
    p.add_argument("--plugin", action="append", default=[],
                   help="module or .py file that registers methods (ntk_ngd.plugins; also $NTK_NGD_PLUGINS)")
    p.add_argument("--depth", "-L", type=int, default=3, help="L, weight layers")
    p.add_argument("--m0", type=int, default=None, help="M_0, input dimension (784; 16 with --quick, so that the "
                   "P x P dense fallback of methods without a dedicated baseline fits)")
    p.add_argument("--outputs", "-C", type=int, default=1, help="C, outputs")
    p.add_argument("--activation", default="relu")
    p.add_argument("--rho", type=float, default=None,
                   help="damping rho (parameter space); default 1e-8 in float64, 1e-5 in float32 (a smaller rho "
                        "sits below float32's resolution of the Fisher's eigenvalues: the dense K-FAC baseline "
                        "then differs from the structured step by roundoff, 1e-3 at rho = 1e-8)")
    p.add_argument("--lr", type=float, default=0.1, help="eta of the update theta - eta d")
    p.add_argument("--dtype", choices=("float32", "float64"), default="float64")
    p.add_argument("--device", choices=("cpu", "gpu"), default="cpu")
    p.add_argument("--repeats", type=int, default=5, help="timed calls per case (after one warm-up call)")
    p.add_argument("--case-seconds", type=float, default=60.0,
                   help="time budget per case: fewer repeats when one call is slow (at least 1)")
    p.add_argument("--max-step-seconds", type=float, default=30.0,
                   help="skip a case whose step time, extrapolated from the previous width by the flop "
                        "model, exceeds this")
    p.add_argument("--assumed-gflops", type=float, default=None,
                   help="throughput used to extrapolate the first width (default 10 on CPU, 5000 on GPU)")
    p.add_argument("--mem-budget-gb", type=float, default=None,
                   help="memory budget (GiB) for a case; default 40%% of MemAvailable (CPU) or 90%% of the "
                        "device memory (GPU)")
    p.add_argument("--no-baseline", action="store_true", help="structured steps only")
    p.add_argument("--baseline-max-width", type=int, default=None, help="no baseline above this width")
    p.add_argument("--unit-chunk", type=int, default=None,
                   help="unit_wise chunk (default: memory.choose_chunk with a 16 MiB working set on CPU, "
                        "a quarter of the budget on GPU)")
    p.add_argument("--kernel-widths", type=int, nargs="*", default=None,
                   help="widths for the layer-Gram build (default: the step widths)")
    p.add_argument("--kernel-n", type=int, nargs="*", default=None, help="N for the Gram build (default --n)")
    p.add_argument("--kernel-path", choices=("auto", "params", "tiled", "both"), default="auto",
                   help="Gram build with materialized params, weights generated per tile, or both "
                        "(auto: params when they fit a quarter of the budget, else tiled)")
    p.add_argument("--weight-tile", type=int, default=None, help="rows of W_l per tile on the tiled path")
    p.add_argument("--weight-block", type=int, default=256, help="rows per weight generation block")
    p.add_argument("--analytic-n", type=int, nargs="*", default=None,
                   help="N for the analytic kernels (default 10000; [] to skip)")
    p.add_argument("--analytic-tile", type=int, default=None, help="tile of the sharded analytic path")
    p.add_argument("--analytic-impl", nargs="+", default=["sharding", "analytic"], choices=("sharding", "analytic"))
    p.add_argument("--peak-gflops", type=float, default=None,
                   help="peak GFLOP/s of one device for the FLOP/s fraction (default: known GPUs)")
    p.add_argument("--blas-threads", type=int, default=1,
                   help="OPENBLAS/MKL/OMP threads for the LAPACK calls (eigh, svd, cholesky); 1 avoids "
                        "thread oversubscription on a shared CPU (see README)")
    p.add_argument("--host-devices", type=int, default=None,
                   help="CPU only: split the host into this many XLA devices (sharding tests)")
    p.add_argument("--keep-xla-scheduler", action="store_true",
                   help="CPU: keep XLA's concurrency-optimized scheduler (off by default: it deadlocks some "
                        "programs on jaxlib 0.10.2, see README)")
    p.add_argument("--tf32", action="store_true",
                   help="GPU float32: allow TF32 tensor-core matmuls (default: precision 'highest')")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default=None, help="JSON output path")
    p.add_argument("--quick", action="store_true", help="tiny sizes for CI (a few seconds of work)")
    p.add_argument("--skip-steps", action="store_true")
    p.add_argument("--skip-kernels", action="store_true")
    return p


def parse_env_args(argv=None):
    """The options that ``configure_environment`` reads, parsed without importing numpy / jax."""
    return build_parser(add_help=False).parse_known_args(argv)[0]


def parse_args(argv=None, methods=None):
    """The full command line. ``methods`` defaults to ``ntk_ngd.curvature.method_names()``, which
    imports jax: call ``configure_environment(parse_env_args(argv))`` (and load plugins) first."""
    if methods is None:
        from ntk_ngd.curvature import method_names
        methods = method_names()
    a = build_parser(tuple(methods)).parse_args(argv)
    a.methods = list(methods) if a.methods is None else a.methods
    if a.quick:
        a.m0 = a.m0 or 16
        a.widths = a.widths or [32]
        a.n = a.n or [8]
        a.repeats = min(a.repeats, 2)
        a.kernel_widths = [32] if a.kernel_widths is None else a.kernel_widths
        a.kernel_path = "both" if a.kernel_path == "auto" else a.kernel_path
        a.weight_tile = a.weight_tile or 16
        a.weight_block = 8 if a.weight_block == 256 else a.weight_block
        a.analytic_n = [40] if a.analytic_n is None else a.analytic_n
        a.analytic_tile = a.analytic_tile or 16
    a.m0 = a.m0 or 784
    if a.rho is None and a.quick:  # the dense fallbacks invert G + rho I with G of rank N << P:
        a.rho = 1e-4 if a.dtype == "float64" else 1e-3  # their round-off grows like lambda_max / rho
    if a.rho is None:
        a.rho = 1e-8 if a.dtype == "float64" else 1e-5
    a.widths = a.widths or [2 ** k for k in range(8, 15)]
    if a.max_width:
        a.widths = [w for w in a.widths if w <= a.max_width]
    a.n = a.n or [100, 1000]
    a.kernel_widths = a.widths if a.kernel_widths is None else a.kernel_widths
    a.kernel_n = a.n if a.kernel_n is None else a.kernel_n
    a.analytic_n = [10000] if a.analytic_n is None else a.analytic_n
    return a


def configure_environment(a):
    """Thread counts and platform, set before numpy / jax load (they read them at import)."""
    for var in ("OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS", "OMP_NUM_THREADS"):
        os.environ[var] = str(a.blas_threads)
    if a.device == "cpu":
        os.environ["JAX_PLATFORMS"] = "cpu"
    # gpu: JAX_PLATFORMS left as it is; check_device asks jax for its GPUs
    flags = os.environ.get("XLA_FLAGS", "")
    if a.device == "cpu" and not a.keep_xla_scheduler and "concurrency_optimized_scheduler" not in flags:
        # XLA:CPU (jaxlib 0.10.2) deadlocks in some programs under its concurrency-optimized
        # scheduler, e.g. the dense unit-wise baseline at N=100, M=256: every thread idle, the caller
        # blocked in block_until_ready forever (README, "Known issues")
        flags += " --xla_cpu_enable_concurrency_optimized_scheduler=false"
    if a.host_devices and a.device == "cpu":
        flags += f" --xla_force_host_platform_device_count={a.host_devices}"
    os.environ["XLA_FLAGS"] = flags.strip()


class NoGPU(RuntimeError):
    pass


def check_device(a):
    import jax
    if a.device == "gpu":
        try:
            devs = jax.devices("gpu")
        except Exception as e:  # noqa: BLE001 - jax raises RuntimeError with backend details
            why = f"{type(e).__name__}: {e}" if str(e) else type(e).__name__
            raise NoGPU(f"--device gpu: no CUDA GPU is visible to JAX ({why}). Install a CUDA "
                        "build of jaxlib (pip install 'jax[cuda12]') on a machine with an NVIDIA GPU, or run "
                        "with --device cpu.") from None
        if not devs:
            raise NoGPU("--device gpu: jax.devices('gpu') is empty; run with --device cpu")
        return devs
    return jax.devices("cpu")


# --- memory measurement ------------------------------------------------------------------------
def _proc_status(key):
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith(key):
                    return int(line.split()[1]) * 1024
    except OSError:
        return None
    return None


class PeakMemory:
    """Peak memory of one call.

    CPU: resident-set growth. glibc's free memory is returned to the OS (``malloc_trim(0)``),
    the kernel's peak-RSS counter is reset (write "5" to /proc/self/clear_refs, Linux >= 4.0),
    the call runs, and the peak is VmHWM - VmRSS(before). Arrays that exist before the call
    (parameters, inputs) are not counted. GPU: the allocator's ``peak_bytes_in_use`` minus
    ``bytes_in_use`` before; that counter cannot be reset, so a call whose peak is below an
    earlier one reads 0 and is reported as None (XLA's buffer assignment is reported anyway).
    """

    def __init__(self, device):
        self.device = device
        self.gpu = device.platform != "cpu"
        try:
            self.libc = ctypes.CDLL("libc.so.6")
        except OSError:
            self.libc = None
        self.cpu_ok = (not self.gpu and _proc_status("VmHWM:") is not None and os.access("/proc/self/clear_refs", os.W_OK))
        self.method = ("device allocator peak_bytes_in_use growth" if self.gpu else
                       "resident-set growth (malloc_trim, clear_refs=5, VmHWM - VmRSS)" if self.cpu_ok else "unavailable")

    def run(self, fn):
        import jax
        if self.gpu:
            st = self.device.memory_stats() or {}
            before, peak0 = st.get("bytes_in_use"), st.get("peak_bytes_in_use")
            out = jax.block_until_ready(fn())
            st = self.device.memory_stats() or {}
            peak = st.get("peak_bytes_in_use")
            if before is None or peak is None or peak <= peak0:
                return out, None
            return out, int(peak - before)
        if not self.cpu_ok:
            return jax.block_until_ready(fn()), None
        if self.libc is not None:
            self.libc.malloc_trim(0)
        before = _proc_status("VmRSS:")
        try:
            with open("/proc/self/clear_refs", "w") as f:
                f.write("5")
        except OSError:
            self.cpu_ok = False
            return jax.block_until_ready(fn()), None
        out = jax.block_until_ready(fn())
        return out, int(_proc_status("VmHWM:") - before)


def xla_bytes(compiled):
    """XLA's buffer assignment of a compiled executable: arguments + outputs + temporaries - aliases."""
    try:
        m = compiled.memory_analysis()
        return int(m.argument_size_in_bytes + m.output_size_in_bytes + m.temp_size_in_bytes - m.alias_size_in_bytes)
    except Exception:  # noqa: BLE001 - not every backend implements it
        return None


# --- flop model (approximate; for extrapolation and FLOP/s) ------------------------------------
def gram_flops(N, C, w, grams=True):
    L = len(w) - 1
    fwd = 2 * N * sum(k * m for k, m in zip(w[:-1], w[1:]))
    bwd = 2 * N * C * sum(w[l] * w[l + 1] for l in range(1, L))
    g = sum(2 * N * N * (k + 1) + 2 * (N * C) ** 2 * m for k, m in zip(w[:-1], w[1:])) if grams else 0
    return fwd + bwd + g


def step_flops(method, N, C, w, baseline=False):
    """Flops of one structured step, or of one baseline step (``baseline.flops``, per method)."""
    if baseline:
        import baseline as dense
        return dense.flops(method, N, C, w)
    L, nc = len(w) - 1, N * C
    P = sum(m * (k + 1) for k, m in zip(w[:-1], w[1:]))
    base = gram_flops(N, C, w, grams=False) + 2 * nc * P
    g = gram_flops(N, C, w) - gram_flops(N, C, w, grams=False)
    svd = lambda a, b: 4 * min(a, b) ** 2 * max(a, b) + 8 * min(a, b) ** 3
    extra = {"gd": 0, "exact": g + nc ** 3 / 3, "block_diagonal": g + L * nc ** 3 / 3,
             "block_tridiagonal": g + (2 / 3) * (L * nc) ** 3,
             "kfac": sum(svd(nc, m) + svd(N, k + 1) for k, m in zip(w[:-1], w[1:])),
             "unit_wise": sum(2 * N * N * (k + 1) + m * (nc ** 3 / 3 + 5 * nc * nc) for k, m in zip(w[:-1], w[1:])),
             "diagonal": 2 * nc * P + P}.get(method, g)  # a method without a model: the Gram products
    return base + extra


# --- the two step implementations ---------------------------------------------------------------
def structured_step(model, method, rho, N, lr, options):
    import jax
    from ntk_ngd.ngd import direction_fn
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        fn = direction_fn(model, method, rho, n_train=N, **options)

    def step(params, x, y):
        d = fn(params, x, y)
        new = [{"W": p["W"] - lr * b[:, :-1], "b": p["b"] - lr * b[:, -1]} for p, b in zip(params, d)]
        return new, d
    return jax.jit(step)


# --- timing -------------------------------------------------------------------------------------
def run_case(jitted, args, a, mem):
    """compile, warm-up (memory measured), timed calls; returns (record, warm-up outputs). A step
    that is not jitted (the baseline's to_dense fallback) runs as it is: no compile time, no XLA bytes."""
    import jax
    import numpy as np
    compiled, compile_s = jitted, None
    if hasattr(jitted, "lower"):
        t0 = time.perf_counter()
        compiled = jitted.lower(*args).compile()
        compile_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    out, peak = mem.run(lambda: compiled(*args))
    first = time.perf_counter() - t0
    reps = max(1, min(a.repeats, int(a.case_seconds // max(first, 1e-9))))
    times = []
    for _ in range(reps):
        t0 = time.perf_counter()
        jax.block_until_ready(compiled(*args))
        times.append(time.perf_counter() - t0)
    rec = {"status": "ok", "compile_s": compile_s, "first_call_s": first, "median_s": float(np.median(times)),
           "min_s": float(np.min(times)), "repeats": reps, "times_s": times,
           "xla_bytes": xla_bytes(compiled) if compile_s is not None else None, "measured_peak_bytes": peak}
    return rec, out


def flat_blocks(d):
    import numpy as np
    return np.concatenate([np.asarray(b).reshape(-1) for b in d])


def synthetic(N, M0, C, dtype, seed):
    import jax
    import jax.numpy as jnp
    k1, k2 = jax.random.split(jax.random.PRNGKey(seed + 1))
    x = jax.random.normal(k1, (N, M0), dtype)
    x = x / jnp.linalg.norm(x, axis=1, keepdims=True)
    y = 0.5 * jnp.sign(jax.random.normal(k2, (N, C), dtype))
    return x, y


# --- sections -----------------------------------------------------------------------------------
def bench_steps(a, ctx):
    import jax
    import numpy as np
    from ntk_ngd import MLP
    from ntk_ngd import memory, sharding
    from ntk_ngd.curvature import get_method
    from ntk_ngd.layers import from_params
    import baseline as dense

    rows, mem, budget, dt = [], ctx["mem"], ctx["budget"], a.dtype
    gflops0 = ctx["assumed_gflops"]
    prev = {}  # (method, N, kind) -> (flops, seconds) of the last measured width
    for N in a.n:
        x, y = synthetic(N, a.m0, a.outputs, dt, a.seed)
        for M in a.widths:
            model = MLP(memory.widths_of(M, a.depth, a.m0, a.outputs), a.activation)
            w = model.widths
            params = None
            for method in a.methods:
                rec = {"method": method, "N": N, "M": M, "L": a.depth, "M0": a.m0, "C": a.outputs, "P": model.n_params,
                       "rho": a.rho, "dtype": dt}
                options, chunk = {}, 256
                if method == "unit_wise":
                    chunk = a.unit_chunk or memory.choose_chunk(
                        "unit_wise", ctx["unit_chunk_budget"], N=N, C=a.outputs, n_units=M, dtype=dt)
                    options["chunk"] = rec["chunk"] = chunk
                try:  # the method's stated conditions (THEORY section 4); timed anyway when they fail
                    with warnings.catch_warnings():
                        warnings.simplefilter("ignore")
                        get_method(method, **options).check(model, N, a.rho)
                except ValueError as e:
                    options["force"] = True
                    rec["forced"] = str(e).split(";")[0]
                est_s = memory.step_estimate(method, N, a.outputs, M, a.depth, a.m0, dt, chunk=chunk)
                est_b = dense.estimate(method, N, a.outputs, M, a.depth, a.m0, dt)
                rec["structured"] = {"estimate_bytes": est_s.total, "estimate_terms": est_s.terms}
                rec["baseline"] = {"estimate_bytes": est_b.total, "estimate_terms": est_b.terms,
                                   "impl": "dense kernels" if dense.baseline_for(method) else "to_dense fallback"}
                d_struct = None
                for kind in ("structured", "baseline"):
                    r = rec[kind]
                    fl = step_flops(method, N, a.outputs, w, baseline=kind == "baseline")
                    r["flops"] = fl
                    if kind == "baseline" and (a.no_baseline or (a.baseline_max_width and M > a.baseline_max_width)):
                        r["status"] = "skipped (--no-baseline / --baseline-max-width)"
                        continue
                    if r["estimate_bytes"] > budget:
                        r["status"] = f"does not fit (estimate {memory.fmt_bytes(r['estimate_bytes'])} > budget {memory.fmt_bytes(budget)})"
                        continue
                    last = prev.get((method, N, kind))
                    t_est = (last[1] * fl / last[0]) if last else fl / (gflops0 * 1e9)
                    r["extrapolated_s"] = t_est
                    if t_est > a.max_step_seconds:
                        r["status"] = f"skipped (extrapolated {t_est:.3g} s/step > --max-step-seconds {a.max_step_seconds:g})"
                        continue
                    if params is None:
                        params = sharding.init_tiled(model, jax.random.PRNGKey(a.seed), dtype=dt)
                    try:
                        if kind == "structured":
                            jitted = structured_step(model, method, a.rho, N, a.lr, options)
                            r2, out = run_case(jitted, (params, x, y), a, mem)
                            d_struct = flat_blocks(out[1]) if not a.no_baseline else None
                        else:
                            theta = flat_blocks(from_params(params))
                            theta = jax.device_put(theta.astype(dt), ctx["device"])
                            jitted = dense.baseline_step(model, method, a.rho, N, a.lr)
                            r2, out = run_case(jitted, (theta, x, y), a, mem)
                            d_base = np.asarray(out[1])
                            del theta
                    except Exception as e:  # noqa: BLE001 - record and go on (e.g. out of memory)
                        r["status"] = f"failed: {type(e).__name__}: {str(e).splitlines()[0][:200]}"
                        continue
                    finally:
                        out = None
                    r.update(r2)
                    r["gflops_per_s"] = fl / r["median_s"] / 1e9
                    prev[(method, N, kind)] = (fl, r["median_s"])
                    if kind == "baseline" and d_struct is not None:
                        err = float(np.linalg.norm(d_struct - d_base) / max(np.linalg.norm(d_base), 1e-300))
                        rec["rel_error"] = err
                        rec["agree"] = bool(err < TOL[dt])
                if rec["structured"].get("status") == "ok" and rec["baseline"].get("status") == "ok":
                    rec["speedup"] = rec["baseline"]["median_s"] / rec["structured"]["median_s"]
                rows.append(rec)
                print_step_row(rec, flush=True)
            del params
    return rows


def bench_kernels(a, ctx):
    import jax
    import numpy as np
    from ntk_ngd import MLP
    from ntk_ngd import memory, sharding
    from ntk_ngd.layers import layer_kernels

    rows, budget, dt, mesh = [], ctx["budget"], a.dtype, ctx["mesh"]
    peak = ctx["peak_gflops"]
    for N in a.kernel_n:
        x, _ = synthetic(N, a.m0, a.outputs, dt, a.seed)
        for M in a.kernel_widths:
            model = MLP(memory.widths_of(M, a.depth, a.m0, a.outputs), a.activation)
            w = model.widths
            s = memory.dtype_bytes(dt)
            paths = {"auto": ["params" if model.n_params * s * 4 <= budget else "tiled"],
                     "both": ["params", "tiled"]}.get(a.kernel_path, [a.kernel_path])
            key = jax.random.PRNGKey(a.seed)
            tile = a.weight_tile or max(a.weight_block, memory.choose_chunk(
                "weights", budget / 8, M_in=max(w[:-1]), dtype=dt) // a.weight_block * a.weight_block)
            results = {}
            for path in paths:
                est = memory.gram_build_estimate(N, a.outputs, M, a.depth, a.m0, dt, tiled=path == "tiled",
                                                 tile=tile, devices=mesh.size)
                fl = gram_flops(N, a.outputs, w)
                rec = {"N": N, "M": M, "L": a.depth, "path": path, "devices": mesh.size, "dtype": dt, "flops": fl,
                       "estimate_bytes": est.total, "weight_tile": tile if path == "tiled" else None}
                if est.total > budget:
                    rec["status"] = f"does not fit (estimate {memory.fmt_bytes(est.total)})"
                    rows.append(rec)
                    print_kernel_row(rec)
                    continue
                if path == "params":
                    params = sharding.init_tiled(model, key, block=a.weight_block, dtype=dt)
                    fn = lambda: sharding.layer_grams(model, params, x, mesh=mesh)
                else:
                    fn = lambda: sharding.tiled_layer_grams(model, key, x, block=a.weight_block, tile=tile, mesh=mesh,
                                                            dtype=dt)
                t0 = time.perf_counter()
                g = jax.block_until_ready(fn())  # includes compilation
                first = time.perf_counter() - t0
                times = []
                for _ in range(max(1, min(a.repeats, int(a.case_seconds // max(first, 1e-9))))):
                    t0 = time.perf_counter()
                    g = jax.block_until_ready(fn())
                    times.append(time.perf_counter() - t0)
                med = float(np.median(times))
                rec.update(status="ok", first_call_s=first, median_s=med, min_s=float(min(times)), repeats=len(times),
                           gflops_per_s=fl / med / 1e9)
                if peak:
                    rec["peak_fraction"] = fl / med / 1e9 / (peak * mesh.size)
                results[path] = np.asarray(layer_kernels(g))
                if path == "params":
                    del params
                del g
                if len(results) == 2:
                    p_, t_ = results["params"], results["tiled"]
                    rec["rel_error_vs_params"] = float(np.max(np.abs(p_ - t_)) / np.max(np.abs(p_)))
                rows.append(rec)
                print_kernel_row(rec)
    return rows


def bench_analytic(a, ctx):
    import jax
    import numpy as np
    from ntk_ngd import MLP
    from ntk_ngd import memory, sharding

    rows, mesh, dt = [], ctx["mesh"], a.dtype
    model = MLP(memory.widths_of(max(a.widths), a.depth, a.m0, a.outputs), a.activation)
    for N in a.analytic_n:
        x, _ = synthetic(N, a.m0, a.outputs, dt, a.seed)
        results = {}
        for impl in a.analytic_impl:
            name = {"sharding": "ntk_ngd.sharding.analytic_layerwise_ntk",
                    "analytic": "ntk_ngd.analytic.analytic_layerwise_ntk"}[impl]
            rec = {"impl": name, "N": N, "L": a.depth, "activation": a.activation, "dtype": dt, "devices": 1}
            if impl == "sharding":
                tile = a.analytic_tile or ctx["analytic_tile"]
                tile = min(tile, max(mesh.size, memory.choose_chunk("analytic", ctx["budget"] / 4, L=a.depth, dtype=dt,
                                                                    devices=mesh.size)))
                rec.update(tile=tile, devices=mesh.size)
                est = memory.analytic_estimate(N, N, a.depth, dt, tile=tile, devices=mesh.size)
                fn = lambda: sharding.analytic_layerwise_ntk(model, x, tile=tile, mesh=mesh)
            else:
                from ntk_ngd import analytic
                # analytic_kernels keeps sigma, b, theta (L, N, N each), nngp and ntk: (3 L + 2) N^2 words
                est = memory.Estimate((3 * a.depth + 2) * N * N * memory.dtype_bytes(dt), {})
                fn = lambda: analytic.analytic_layerwise_ntk(model, x)
            rec["estimate_bytes"] = est.total
            if est.total > ctx["budget"]:
                rec["status"] = f"does not fit (estimate {memory.fmt_bytes(est.total)})"
                rows.append(rec)
                print_analytic_row(rec)
                continue
            times, first = [], None
            reps = 1 if N >= 4000 else max(1, a.repeats)
            for r in range(reps + 1):
                t0 = time.perf_counter()
                out = jax.block_until_ready(fn())
                (times.append if r else (lambda t: None))(time.perf_counter() - t0)
                if r == 0:
                    first = time.perf_counter() - t0
                if r == reps:
                    results[impl] = np.asarray(out)
                del out
            med = float(np.median(times))
            pairs = N * (N + 1) / 2
            fl = pairs * (2 * a.m0 + ANALYTIC_FLOPS_PER_PAIR_LAYER * (a.depth - 1) + 3 * a.depth)
            rec.update(status="ok", first_call_s=first, median_s=med, min_s=float(min(times)), repeats=len(times),
                       flops=fl, gflops_per_s=fl / med / 1e9)
            if ctx["peak_gflops"]:
                rec["peak_fraction"] = fl / med / 1e9 / (ctx["peak_gflops"] * rec["devices"])
            rows.append(rec)
            print_analytic_row(rec)
        if len(results) == 2:
            a_, s_ = results["analytic"], results["sharding"]
            rows[-1]["rel_error_vs_analytic"] = float(np.max(np.abs(a_ - s_)) / np.max(np.abs(a_)))
            print(f"    sharded vs analytic.py: max relative difference {rows[-1]['rel_error_vs_analytic']:.2e}")
        results.clear()
    return rows


# --- printing -----------------------------------------------------------------------------------
def _t(r):
    if r.get("status") != "ok":
        s = r.get("status", "-")
        return ("does not fit" if s.startswith("does not fit") else s.split(" (")[0])[:14]
    return f"{r['median_s']:.4f}"


def _mb(v):
    return "-" if v is None else f"{v / 2 ** 20:.0f}"


STEP_HEADER = (f"{'N':>5} {'M':>6} {'method':<18} {'compile':>7} {'step s':>8} {'min s':>8} | {'baseline s':>14} "
               f"{'ratio':>7} | {'est/xla/rss MiB (struct)':>26} | {'est/xla/rss MiB (baseline)':>26} | rel.err")


def print_step_row(rec, flush=False):
    s, b = rec["structured"], rec["baseline"]
    comp = f"{s['compile_s']:.2f}" if s.get("status") == "ok" else "-"
    mn = f"{s['min_s']:.4f}" if s.get("status") == "ok" else "-"
    ratio = f"{rec['speedup']:.1f}x" if "speedup" in rec else "-"
    ms = f"{_mb(s['estimate_bytes'])}/{_mb(s.get('xla_bytes'))}/{_mb(s.get('measured_peak_bytes'))}"
    mb = f"{_mb(b['estimate_bytes'])}/{_mb(b.get('xla_bytes'))}/{_mb(b.get('measured_peak_bytes'))}"
    err = f"{rec['rel_error']:.1e}" if "rel_error" in rec else "-"
    print(f"{rec['N']:>5} {rec['M']:>6} {rec['method']:<18} {comp:>7} {_t(s):>8} {mn:>8} | {_t(b):>14} {ratio:>7} | "
          f"{ms:>26} | {mb:>26} | {err}", flush=flush)


def print_kernel_row(rec):
    if rec.get("status") != "ok":
        print(f"  grams N={rec['N']:>5} M={rec['M']:>6} {rec['path']:<6} {rec['status']}", flush=True)
        return
    extra = f" ({100 * rec['peak_fraction']:.1f}% of peak)" if "peak_fraction" in rec else ""
    err = f" rel.err vs params {rec['rel_error_vs_params']:.1e}" if "rel_error_vs_params" in rec else ""
    print(f"  grams N={rec['N']:>5} M={rec['M']:>6} {rec['path']:<6} devices={rec['devices']} {rec['median_s']:.4f} s "
          f"{rec['gflops_per_s']:.1f} GFLOP/s{extra} est {_mb(rec['estimate_bytes'])} MiB{err}", flush=True)


def print_analytic_row(rec):
    if rec.get("status") != "ok":
        print(f"  analytic N={rec['N']} {rec['impl']}: {rec['status']}", flush=True)
        return
    print(f"  analytic N={rec['N']:>6} L={rec['L']} {rec['impl']:<42} devices={rec['devices']} "
          f"{rec['median_s']:.2f} s (first call {rec['first_call_s']:.2f} s) {rec['gflops_per_s']:.1f} GFLOP/s",
          flush=True)


def evaluate_targets(res):
    out = []
    for name, section, sel, limit in TARGETS:
        hits = [r for r in res.get(section, []) if all(r.get(k) == v for k, v in sel.items())]
        if section == "steps":
            hits = [r for r in hits if r["structured"].get("status") == "ok" and r["dtype"] == "float64"
                    and r["L"] == 3 and r["M0"] == 784]
            vals = [(r["structured"]["median_s"], r["structured"]["min_s"]) for r in hits]
        else:
            hits = [r for r in hits if r.get("status") == "ok" and r["L"] == 3]
            vals = [(r["median_s"], r["min_s"]) for r in hits]
        if not vals:
            continue
        med, mn = vals[0]
        out.append({"target": name, "limit_s": limit, "median_s": med, "min_s": mn, "met": bool(med < limit),
                    "met_by_min": bool(mn < limit)})
    return out


def machine_info(a, devices):
    import jax
    import numpy as np
    info = {"python": platform.python_version(), "jax": jax.__version__, "numpy": np.__version__,
            "platform": platform.platform(), "cpu_count": os.cpu_count(),
            "devices": [str(d) for d in devices], "device_kind": devices[0].device_kind,
            "blas_threads": a.blas_threads, "argv": sys.argv}
    try:
        with open("/proc/cpuinfo") as f:
            info["cpu_model"] = next((l.split(":", 1)[1].strip() for l in f if l.startswith("model name")), None)
    except OSError:
        pass
    try:
        info["loadavg_start"] = os.getloadavg()
    except OSError:
        pass
    return info


def markdown(path):
    """Markdown tables (README) from a results JSON."""
    with open(path) as f:
        res = json.load(f)
    m = res["meta"]
    print(f"Machine: {m.get('cpu_model')} x {m.get('cpu_count')} cores, devices {m['devices']}, jax {m['jax']}; "
          f"load average {m.get('loadavg_start')} -> {m.get('loadavg_end')}; wall {m.get('wall_s', 0) / 60:.1f} min; "
          f"memory budget {res['memory_budget_bytes'] / 2 ** 30:.1f} GiB.\n")
    ms = lambda v: "-" if v is None else f"{v / 2 ** 20:.0f}"
    def cell(r):
        if r.get("status") == "ok":
            return f"{r['median_s']:.4f} ({r['min_s']:.4f})"
        st = r.get("status", "-")
        return "does not fit" if st.startswith("does not fit") else ("skipped" if st.startswith("skipped") else st[:40])
    if res.get("steps"):
        print("| N | M | method | compile s | structured step s, median (min) | baseline step s, median (min) | "
              "ratio | memory MiB struct. est / XLA / RSS | memory MiB baseline est / XLA / RSS | rel. diff |")
        print("|---|---|---|---|---|---|---|---|---|---|")
        for r in res["steps"]:
            s_, b_ = r["structured"], r["baseline"]
            comp = f"{s_['compile_s']:.2f}" if s_.get("status") == "ok" else "-"
            ratio = f"{r['speedup']:.{0 if r['speedup'] >= 10 else 1}f}x" if "speedup" in r else "-"
            mem = lambda x: f"{ms(x['estimate_bytes'])} / {ms(x.get('xla_bytes'))} / {ms(x.get('measured_peak_bytes'))}"
            err = f"{r['rel_error']:.1e}" if "rel_error" in r else "-"
            print(f"| {r['N']} | {r['M']} | {r['method']} | {comp} | {cell(s_)} | {cell(b_)} | {ratio} | "
                  f"{mem(s_)} | {mem(b_)} | {err} |")
    if res.get("kernels"):
        print("\n| N | M | Gram build path | devices | time s, median (min) | GFLOP/s | est. MiB | vs params path |")
        print("|---|---|---|---|---|---|---|---|")
        for r in res["kernels"]:
            gf = f"{r['gflops_per_s']:.1f}" + (f" ({100 * r['peak_fraction']:.0f}% of peak)" if "peak_fraction" in r else "")
            err = f"{r['rel_error_vs_params']:.1e}" if "rel_error_vs_params" in r else "-"
            print(f"| {r['N']} | {r['M']} | {r['path']} | {r['devices']} | {cell(r)} | "
                  f"{gf if r.get('status') == 'ok' else '-'} | {ms(r['estimate_bytes'])} | {err} |")
    if res.get("analytic"):
        print("\n| N | L | implementation | devices | time s (first call incl. compile) | est. MiB |")
        print("|---|---|---|---|---|---|")
        for r in res["analytic"]:
            t = f"{r['median_s']:.2f} ({r['first_call_s']:.2f})" if r.get("status") == "ok" else r.get("status")
            print(f"| {r['N']} | {r['L']} | {r['impl']} | {r['devices']} | {t} | {ms(r['estimate_bytes'])} |")
    if res.get("targets"):
        print("\n| target | limit s | median s | min s | met |")
        print("|---|---|---|---|---|")
        for t in res["targets"]:
            print(f"| {t['target']} | {t['limit_s']:g} | {t['median_s']:.3f} | {t['min_s']:.3f} | "
                  f"{'yes' if t['met'] else ('by min only' if t['met_by_min'] else 'no')} |")
    c = res.get("checks", {})
    if c.get("compared"):
        print(f"\nStructured vs dense baseline: {c['compared']} comparisons, max relative difference "
              f"{c['max_rel_error']:.2e} (tolerance {c['tolerance']:g}).")


def main(argv=None):
    if argv is None:
        argv = sys.argv[1:]
    if argv and argv[0] == "--markdown":
        markdown(argv[1])
        return 0
    env = parse_env_args(argv)
    configure_environment(env)
    if env.plugin or os.environ.get("NTK_NGD_PLUGINS"):
        from ntk_ngd.plugins import load_plugins
        load_plugins(env.plugin)
    a = parse_args(argv)
    import jax
    if a.dtype == "float64":
        jax.config.update("jax_enable_x64", True)
    try:
        devices = check_device(a)
    except NoGPU as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    if a.device == "gpu" and a.dtype == "float32" and not a.tf32:
        jax.config.update("jax_default_matmul_precision", "highest")  # true float32 matmuls, no TF32
    from ntk_ngd import memory, sharding, store

    dev = devices[0]
    if a.mem_budget_gb:
        budget = a.mem_budget_gb * 2 ** 30
    else:  # MemAvailable on CPU, the allocator's limit minus what is in use on GPU
        avail = memory.available_bytes(dev)
        cpu = dev.platform == "cpu"
        budget = (0.4 if cpu else 0.9) * (avail or (8 if cpu else 16) * 2 ** 30)
    peak = a.peak_gflops
    if peak is None and dev.platform != "cpu":
        for k, (p32, p64) in KNOWN_PEAK_GFLOPS.items():
            if k in dev.device_kind:
                peak = p64 if a.dtype == "float64" else p32
    ctx = {"device": dev, "mesh": sharding.local_mesh(devices), "budget": budget, "mem": PeakMemory(dev),
           "peak_gflops": peak,
           "assumed_gflops": a.assumed_gflops or (10.0 if dev.platform == "cpu" else 5000.0),
           "unit_chunk_budget": 16 * 2 ** 20 if dev.platform == "cpu" else budget / 4,
           "analytic_tile": 512 if dev.platform == "cpu" else 4096}
    res = {"meta": machine_info(a, devices), "config": {k: v for k, v in vars(a).items()},
           "memory_budget_bytes": budget, "memory_measurement": ctx["mem"].method, "peak_gflops": peak,
           "tolerance": TOL[a.dtype]}
    print(f"# ntk_ngd benchmark: {len(devices)} x {dev.device_kind} ({dev.platform}), {a.dtype}, L={a.depth}, "
          f"M0={a.m0}, C={a.outputs}, rho={a.rho:g}, budget {memory.fmt_bytes(budget)}, "
          f"load {res['meta'].get('loadavg_start')}", flush=True)
    print(f"# memory: estimate (ntk_ngd.memory) / XLA buffer assignment / measured ({ctx['mem'].method})", flush=True)
    t_all = time.perf_counter()
    if not a.skip_steps:
        print(STEP_HEADER, flush=True)
        res["steps"] = bench_steps(a, ctx)
    if not a.skip_kernels:
        print("# layer-Gram builds (empirical kernels) and analytic kernels", flush=True)
        res["kernels"] = bench_kernels(a, ctx)
        res["analytic"] = bench_analytic(a, ctx) if a.analytic_n else []
    errs = [r["rel_error"] for r in res.get("steps", []) if "rel_error" in r]
    res["checks"] = {"compared": len(errs), "max_rel_error": max(errs) if errs else None,
                     "all_agree": all(r.get("agree", True) for r in res.get("steps", [])), "tolerance": TOL[a.dtype]}
    res["targets"] = evaluate_targets(res)
    try:
        res["meta"]["loadavg_end"] = os.getloadavg()
    except OSError:
        pass
    res["meta"]["wall_s"] = time.perf_counter() - t_all
    if errs:
        print(f"# structured vs dense baseline: {len(errs)} comparisons, max relative difference "
              f"{max(errs):.2e} (tolerance {TOL[a.dtype]:g}): {'OK' if res['checks']['all_agree'] else 'MISMATCH'}")
    for t in res["targets"]:
        print(f"# target {t['target']}: median {t['median_s']:.3f} s, min {t['min_s']:.3f} s "
              f"(< {t['limit_s']:g} s: {'met' if t['met'] else 'missed'}{'' if t['met'] or not t['met_by_min'] else ', met by min'})")
    if a.out:
        os.makedirs(os.path.dirname(os.path.abspath(a.out)), exist_ok=True)
        with open(a.out, "w") as f:
            f.write(store.dumps(res, indent=1))
        print(f"# wrote {a.out}")
    return 0 if res["checks"]["all_agree"] else 1



if __name__ == "__main__":
    sys.exit(main())
