"""benchmarks/bench.py (quick run, JSON fields, structured-vs-dense agreement), its dense baseline
(benchmarks/baseline.py: against the test oracle, and for every registered method, a user's one
included, against the structured step), the GPU guard, and ntk_ngd.sharding (tiled weights, sample
sharding over two host devices). No timed assertions."""
import dataclasses
import json
import os
import subprocess
import sys
import textwrap
import warnings
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from ntk_ngd import MLP, layers, ngd_direction, sharding
from ntk_ngd.curvature import PerLayer, get_method, method_class, method_names, register_method, unregister_method
from ntk_ngd.layers import from_params

ROOT = Path(__file__).resolve().parents[1]
BENCH = ROOT / "benchmarks" / "bench.py"
sys.path.insert(0, str(ROOT / "benchmarks"))
import baseline  # noqa: E402
import bench  # noqa: E402  (no numpy/jax at import time)
import oracle  # noqa: E402

METHODS = list(method_names())


def _env(**extra):
    env = dict(os.environ)
    env.pop("XLA_FLAGS", None)
    env.update(extra)
    return env


@pytest.fixture(scope="module")
def quick(tmp_path_factory):
    out = tmp_path_factory.mktemp("bench") / "quick.json"
    r = subprocess.run([sys.executable, str(BENCH), "--quick", "--out", str(out)], capture_output=True, text=True,
                       cwd=ROOT, env=_env(), timeout=600)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    return json.loads(out.read_text()), r.stdout


def test_quick_json_fields_and_agreement(quick):
    res, stdout = quick
    for key in ("meta", "config", "steps", "kernels", "analytic", "checks", "targets", "memory_budget_bytes",
                "memory_measurement", "tolerance"):
        assert key in res, key
    assert res["meta"]["jax"] and res["meta"]["cpu_count"] >= 1 and res["meta"]["devices"]
    steps = res["steps"]
    assert {r["method"] for r in steps} == set(method_names(builtin_only=True))  # bench.py runs in its own process: built-ins
    for r in steps:
        for k in ("N", "M", "L", "M0", "C", "P", "rho", "dtype", "structured", "baseline", "rel_error", "agree", "speedup"):
            assert k in r, (r["method"], k)
        for kind in ("structured", "baseline"):
            s = r[kind]
            assert s["status"] == "ok", (r["method"], kind, s["status"])
            for k in ("compile_s", "median_s", "min_s", "repeats", "times_s", "estimate_bytes", "estimate_terms",
                      "xla_bytes", "measured_peak_bytes", "flops", "gflops_per_s"):
                assert k in s, (r["method"], kind, k)
            assert s["median_s"] > 0 and s["min_s"] <= s["median_s"] and s["estimate_bytes"] > 0
        assert r["rel_error"] < 1e-10, (r["method"], r["rel_error"])
        assert r["agree"]
    assert res["checks"]["all_agree"] and res["checks"]["compared"] == len(steps)
    assert res["checks"]["max_rel_error"] < 1e-10
    assert "structured vs dense baseline" in stdout and "OK" in stdout
    # the tiled (large-width) Gram path ran on tiny sizes and equals the params path
    paths = {r["path"]: r for r in res["kernels"]}
    assert set(paths) == {"params", "tiled"}
    assert all(r["status"] == "ok" and r["flops"] > 0 and r["gflops_per_s"] > 0 for r in paths.values())
    assert paths["tiled"]["rel_error_vs_params"] < 1e-12
    # the sharded analytic path equals analytic.py's
    impls = {r["impl"]: r for r in res["analytic"]}
    assert set(impls) == {"ntk_ngd.sharding.analytic_layerwise_ntk", "ntk_ngd.analytic.analytic_layerwise_ntk"}
    assert res["analytic"][-1]["rel_error_vs_analytic"] < 1e-12


def test_quick_float32_as_the_gpu_run(tmp_path):
    """The GPU command's float32 run, on CPU with tiny sizes: every method's structured step agrees
    with the float32 dense baseline to the float32 tolerance, and the run is recorded as float32."""
    out = tmp_path / "f32.json"
    r = subprocess.run([sys.executable, str(BENCH), "--quick", "--dtype", "float32", "--analytic-n", "--out", str(out)],
                       capture_output=True, text=True, cwd=ROOT, env=_env(), timeout=600)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    res = json.loads(out.read_text())
    assert res["tolerance"] == 1e-3 and {s["dtype"] for s in res["steps"]} == {"float32"}
    assert {s["method"] for s in res["steps"]} == set(method_names(builtin_only=True))
    assert all(s["rel_error"] < 1e-3 and s["agree"] for s in res["steps"])
    assert res["checks"]["all_agree"] and res["analytic"] == []


def test_gpu_flag_fails_clearly_without_gpu():
    r = subprocess.run([sys.executable, str(BENCH), "--quick", "--device", "gpu"], capture_output=True, text=True,
                       cwd=ROOT, env=_env(), timeout=300)
    if r.returncode == 0:
        pytest.skip("a CUDA GPU is visible: --device gpu ran")
    assert r.returncode == 2, r.stdout[-2000:] + r.stderr[-2000:]
    assert "--device gpu: no CUDA GPU" in r.stderr and "--device cpu" in r.stderr
    assert "Traceback" not in r.stderr


@pytest.mark.parametrize("method", METHODS)
def test_dense_baseline_matches_oracle(method):
    """The benchmark's dense baseline is itself checked against the independent parameter-space oracle."""
    for C, sb, act in ((1, 0.0, "relu"), (2, 0.3, "erf")):
        model = MLP((7, 11, 9, C), act, sigma_b=sb)
        k1, k2, k3 = jax.random.split(jax.random.PRNGKey(5), 3)
        params = model.init(k1)
        x = jax.random.normal(k2, (4, 7))
        x = x / jnp.linalg.norm(x, axis=1, keepdims=True)
        y = 0.5 * jax.random.normal(k3, (4, C))
        theta = jnp.concatenate([b.reshape(-1) for b in from_params(params)])
        for rho in (0.0, 1e-3):
            if method == "block_tridiagonal" and rho == 0.0:
                continue  # the baseline uses lstsq on the non-symmetric coupled system at rho = 0
            step = baseline.baseline_step(model, method, rho, 4, 0.1)
            _, d = step(theta, x, y)
            ref = oracle.direction(model, params, x, y, method, rho)
            err = np.linalg.norm(np.asarray(d) - ref) / np.linalg.norm(ref)
            assert err < 1e-9, (method, C, rho, err)


@pytest.mark.parametrize("N", [5, 16])
def test_structured_step_matches_baseline_in_process(N):
    """N = 16 > M_0, M: the conditions of K-FAC, unit-wise, FOOF, TNT, ... fail (run with
    force=True, as bench.py does) and the layer kernels are rank-deficient. rho = 1e-4 (N = 5) and
    1e-3 keep the damped systems well conditioned: the dense fallbacks invert G + rho I with G of
    rank N << P, whose round-off grows like lambda_max / rho (at rho = 1e-6 TNT's dense reference is
    off by 5e-9, block_tridiagonal's system has cond ~1e6)."""
    rho = 1e-4 if N == 5 else 1e-3
    model = MLP((9, 13, 12, 1), "relu")
    params = sharding.init_tiled(model, jax.random.PRNGKey(1), block=4, tile=8)
    x, y = bench.synthetic(N, 9, 1, "float64", 0)
    theta = jnp.concatenate([b.reshape(-1) for b in from_params(params)])
    for method in METHODS:
        opts = {"force": True} if N > 9 else {}
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            new_s, d_s = bench.structured_step(model, method, rho, N, 0.1, opts)(params, x, y)
        new_b, d_b = baseline.baseline_step(model, method, rho, N, 0.1)(theta, x, y)
        ds = bench.flat_blocks(d_s)
        assert np.linalg.norm(ds - np.asarray(d_b)) / np.linalg.norm(np.asarray(d_b)) < 1e-9, method
        ns = np.concatenate([np.asarray(b).reshape(-1) for b in from_params(new_s)])
        assert np.linalg.norm(ns - np.asarray(new_b)) <= 1e-9 * np.linalg.norm(np.asarray(new_b)), method


@dataclasses.dataclass(frozen=True)
class LayerTrace(PerLayer):
    """A user's method for the registry tests: G_l = (tr F_ll / P_l) I, one scalar per layer."""
    name = "toy_layer_trace"

    def check(self, model, n, rho):
        """No stated conditions."""

    def alpha(self, model, n, convention=None):
        return None

    def layer_direction(self, H, D, g, rho):
        n = g.shape[0]
        grad = layers.jt_vec(layers.Factors([H], [D]), g / n)[0]
        trace = jnp.sum(jnp.sum(D ** 2, (1, 2)) * jnp.sum(H ** 2, 1)) / n
        return grad / (trace / grad.size + rho)

    def layer_dense(self, dense, l, rho):
        Jl = dense.layer(l)
        return np.eye(Jl.shape[1]) / (np.sum(Jl ** 2) / dense.n / Jl.shape[1] + rho)

    def memory_terms(self, N, C, widths):
        return {}


@pytest.fixture
def toy_method():
    register_method(LayerTrace)
    yield LayerTrace.name
    unregister_method(LayerTrace.name)


def test_every_registered_method_has_a_baseline_equal_to_the_structured_step(toy_method):
    """Every registered method (a user's one, registered here, included) has a dense baseline: its
    own dense kernels (the built-ins) or the to_dense fallback; each equals ngd_direction to 1e-9,
    and so does the fallback for every method. The memory and flop models cover them all."""
    names = method_names()
    assert toy_method in names and baseline.baseline_for(toy_method) is None
    for name, b in baseline.BASELINES.items():  # every dense-kernel entry is a registered method's
        assert name in names and isinstance(get_method(name), b.cls)
    assert {n for n in names if method_class(n).paper} <= set(baseline.BASELINES)  # the paper's seven
    rho, N = 1e-3, 4
    for C, sb, act in ((1, 0.0, "relu"), (2, 0.3, "erf")):
        model = MLP((7, 11, 9, C), act, sigma_b=sb)
        k1, k2, k3 = jax.random.split(jax.random.PRNGKey(7), 3)
        params = model.init(k1)
        x = jax.random.normal(k2, (N, 7))
        x = x / jnp.linalg.norm(x, axis=1, keepdims=True)
        y = 0.5 * jax.random.normal(k3, (N, C))
        theta = jnp.concatenate([b.reshape(-1) for b in from_params(params)])
        for name in names:
            m = get_method(name, force=C > 1)
            assert baseline.baseline_for(m) is baseline.BASELINES.get(name)
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                d_s = bench.flat_blocks(from_params(ngd_direction(model, params, x, y, m, rho)))
            new_b, d_b = baseline.baseline_step(model, m, rho, N, 0.1)(theta, x, y)
            _, d_f = baseline.dense_step(model, m, rho, 0.1)(theta, x, y)
            for d in (d_b, d_f):
                err = np.linalg.norm(np.asarray(d) - d_s) / np.linalg.norm(d_s)
                assert err < 1e-9, (name, C, err)
            np.testing.assert_allclose(np.asarray(new_b), np.asarray(theta) - 0.1 * np.asarray(d_b), rtol=1e-12)
            est = baseline.estimate(name, N, C, 11, 3, 7, widths=model.widths)
            assert est.total == sum(est.terms.values()) > 0
            assert baseline.flops(name, N, C, model.widths) > 0 and bench.step_flops(name, N, C, model.widths) > 0
    # the benchmark's --methods choices are the registry's, and the unjitted fallback step is timed
    a = bench.parse_args(["--quick", "--methods", toy_method])
    assert a.methods == [toy_method] and bench.parse_args(["--quick"]).methods == list(names)

    class NoMemory:
        def run(self, fn):
            return fn(), None
    rec, out = bench.run_case(baseline.baseline_step(model, toy_method, rho, N, 0.1), (theta, x, y),
                              bench.parse_args(["--quick"]), NoMemory())
    assert rec["status"] == "ok" and rec["compile_s"] is None and rec["xla_bytes"] is None
    assert rec["median_s"] > 0 and len(out) == 2


# --- ntk_ngd.sharding -----------------------------------------------------------------------------
def _rel(a, b):
    a, b = np.asarray(a), np.asarray(b)
    return float(np.max(np.abs(a - b)) / np.max(np.abs(a)))


@pytest.mark.parametrize("act,sb,C", [("relu", 0.0, 1), ("erf", 0.4, 3), ("tanh", 0.2, 2)])
def test_tiled_grams_equal_materialized(act, sb, C):
    """The large-width path (weights generated per tile, never a whole W_l) on tiny sizes."""
    model = MLP((6, 21, 13, C), act, sigma_b=sb)    # widths not multiples of the tiles
    key = jax.random.PRNGKey(2)
    x = jax.random.normal(jax.random.PRNGKey(3), (7, 6))
    x2 = jax.random.normal(jax.random.PRNGKey(4), (3, 6))
    params = sharding.init_tiled(model, key, block=4, tile=8)
    ref = layers.grams(layers.factors(model, params, x), layers.factors(model, params, x2))
    for tile in (4, 12):
        g = sharding.tiled_layer_grams(model, key, x, x2, block=4, tile=tile)
        for a, b in zip(ref.KH + ref.KD, g.KH + g.KD):
            assert a.shape == b.shape and _rel(a, b) < 1e-12, tile
    f = sharding.tiled_factors(model, key, x, block=4, tile=8)
    fr = layers.factors(model, params, x)
    for a, b in zip(fr.H + fr.D, f.H + f.D):
        assert _rel(a, b) < 1e-12
    # generation is independent of the compute tile
    p2 = sharding.init_tiled(model, key, block=4, tile=20)
    for a, b in zip(params, p2):
        np.testing.assert_array_equal(np.asarray(a["W"]), np.asarray(b["W"]))
    with pytest.raises(ValueError, match="multiple of block"):
        sharding.tiled_layer_grams(model, key, x, block=4, tile=6)


def test_sharded_analytic_and_grams_single_device_equal_reference():
    from ntk_ngd import analytic
    model = MLP((6, 30, 30, 1), "relu")
    x = jax.random.normal(jax.random.PRNGKey(0), (11, 6))
    x2 = jax.random.normal(jax.random.PRNGKey(1), (4, 6))
    for tile in (3, 5, 64):
        assert _rel(analytic.analytic_layerwise_ntk(model, x), sharding.analytic_layerwise_ntk(model, x, tile=tile)) < 1e-12
        assert _rel(analytic.analytic_layerwise_ntk(model, x, x2),
                    sharding.analytic_layerwise_ntk(model, x, x2, tile=tile)) < 1e-12
    params = model.init(jax.random.PRNGKey(2))
    g = sharding.layer_grams(model, params, x, x2)
    ref = layers.grams(layers.factors(model, params, x), layers.factors(model, params, x2))
    for a, b in zip(ref.KH + ref.KD, g.KH + g.KD):
        assert _rel(a, b) < 1e-12
    assert _rel(layers.layer_kernels(ref), sharding.layer_kernels(model, params, x, x2)) < 1e-12


SHARDED_SCRIPT = textwrap.dedent("""
    import json, sys
    import jax, jax.numpy as jnp, numpy as np
    jax.config.update("jax_enable_x64", True)
    from ntk_ngd import MLP, layers, sharding, analytic
    assert len(jax.devices()) == 2, jax.devices()
    one, two = sharding.local_mesh(jax.devices()[:1]), sharding.local_mesh()
    rel = lambda a, b: float(np.max(np.abs(np.asarray(a) - np.asarray(b))) / np.max(np.abs(np.asarray(a))))
    out = {}
    for act, sb, C, n in (("relu", 0.0, 1, 10), ("erf", 0.3, 2, 9)):
        model = MLP((7, 24, 17, C), act, sigma_b=sb)
        key = jax.random.PRNGKey(3)
        x = jax.random.normal(jax.random.PRNGKey(1), (n, 7))
        x2 = jax.random.normal(jax.random.PRNGKey(2), (5, 7))
        p = sharding.init_tiled(model, key, block=4, tile=8)
        ref = layers.grams(layers.factors(model, p, x), layers.factors(model, p, x2))
        g1 = sharding.layer_grams(model, p, x, x2, mesh=one)
        g2 = sharding.layer_grams(model, p, x, x2, mesh=two)
        t1 = sharding.tiled_layer_grams(model, key, x, mesh=one, block=4, tile=8)
        t2 = sharding.tiled_layer_grams(model, key, x, mesh=two, block=4, tile=8)
        refs = layers.grams(layers.factors(model, p, x))
        out[act] = {
            "grams_1v2": max(rel(a, b) for a, b in zip(g1.KH + g1.KD, g2.KH + g2.KD)),
            "grams_2vref": max(rel(a, b) for a, b in zip(ref.KH + ref.KD, g2.KH + g2.KD)),
            "tiled_1v2": max(rel(a, b) for a, b in zip(t1.KH + t1.KD, t2.KH + t2.KD)),
            "tiled_2vref": max(rel(a, b) for a, b in zip(refs.KH + refs.KD, t2.KH + t2.KD)),
        }
        if n % 2 == 0:  # no padding: the Grams stay sharded over both devices
            out[act]["gram_devices"] = len(g2.KH[0].sharding.device_set)
        for tile in (4, 64):
            a1 = sharding.analytic_layerwise_ntk(model, x, tile=tile, mesh=one)
            a2 = sharding.analytic_layerwise_ntk(model, x, tile=tile, mesh=two)
            c2 = sharding.analytic_layerwise_ntk(model, x, x2, tile=tile, mesh=two)
            out[act][f"analytic_1v2_{tile}"] = rel(a1, a2)
            out[act][f"analytic_2vref_{tile}"] = rel(analytic.analytic_layerwise_ntk(model, x), a2)
            out[act][f"analytic_cross_{tile}"] = rel(analytic.analytic_layerwise_ntk(model, x, x2), c2)
    print(json.dumps(out))
""")


def test_two_host_devices_equal_single_device():
    r = subprocess.run([sys.executable, "-c", SHARDED_SCRIPT], capture_output=True, text=True, cwd=ROOT, timeout=600,
                       env=_env(XLA_FLAGS="--xla_force_host_platform_device_count=2 "
                                          "--xla_cpu_enable_concurrency_optimized_scheduler=false"))
    assert r.returncode == 0, r.stderr[-3000:]
    out = json.loads(r.stdout.strip().splitlines()[-1])
    for act, vals in out.items():
        if "gram_devices" in vals:
            assert vals.pop("gram_devices") == 2
        bad = {k: v for k, v in vals.items() if not v < 1e-12}
        assert not bad, (act, bad)
