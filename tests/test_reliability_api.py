"""No silent wrong result (issue 13): one test per class of bad input the stress battery found, each
asserting the message or the number checked against the dense float64 oracle; and the battery's
quick subset (``scripts/stress.py --quick``) itself, which must end with no silent-wrong and no
unclear case."""
import pathlib
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import ntk_ngd as nn
from ntk_ngd.curvature import get_method
import oracle

ROOT = pathlib.Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def net():
    model = nn.MLP((3, 5, 4, 1))
    params = model.init(jax.random.PRNGKey(0))
    rng = np.random.default_rng(0)
    x = rng.standard_normal((4, 3))
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    y = np.array([[0.5], [-0.5], [0.5], [-0.5]])
    return model, params, x, y


def rel(a, b):
    return float(np.linalg.norm(np.asarray(a) - np.asarray(b)) / np.linalg.norm(np.asarray(b)))


# ----------------------------------------------------------------------------- (1) dtypes
def test_uint8_inputs_give_the_float64_result_with_exact_targets(net):
    """Raw uint8 pixels: cast to the params' float64 with their exact values, and the +-0.5 targets stay
    +-0.5 (they were cast to uint8, i.e. 0): the direction is the dense oracle's for the float inputs."""
    model, params, x, y = net
    pix = np.round(np.abs(x) * 200).astype(np.uint8)
    xf = pix.astype(np.float64)
    _, ys = nn.ngd.check_data(model, pix, y, jnp.float64)
    assert ys.dtype == jnp.float64 and np.array_equal(np.asarray(ys), y)
    J = oracle.jacobian(model, params, jnp.asarray(xf))
    for method in ("exact", "gd"):
        d = oracle.flat_direction(nn.ngd_direction(model, params, pix, y, method, 1e-3))
        np.testing.assert_array_equal(d, oracle.flat_direction(nn.ngd_direction(model, params, xf, y, method, 1e-3)))
        ref = oracle.direction(model, params, jnp.asarray(xf), y, method, 1e-3, J=J)
        # pixel-sized inputs (|x| ~ 100) with M_0 < N: the damped system's conditioning allows ~1e-8
        assert rel(d, ref) < 1e-6, method
    run = nn.train(model, params, (pix, y), "exact", 0.5, 2, 1e-3)
    ref = nn.train(model, params, (xf, y), "exact", 0.5, 2, 1e-3)
    assert run.f_train.dtype == jnp.float64
    np.testing.assert_array_equal(np.asarray(run.f_train), np.asarray(ref.f_train))
    assert float(run.loss_train[0]) == pytest.approx(float(nn.mse(model.apply(params, xf), y)), rel=1e-14)
    # MLP.apply itself casts integer input to the params' dtype
    np.testing.assert_array_equal(np.asarray(model.apply(params, pix)), np.asarray(model.apply(params, xf)))


def test_complex_and_non_numeric_input_refused(net):
    model, params, x, y = net
    with pytest.raises(ValueError, match=r"x is complex \(complex128\)"):
        nn.ngd_direction(model, params, x + 1j, y, "exact", 1e-3)
    with pytest.raises(ValueError, match="x is complex"):
        model.apply(params, x + 1j)
    with pytest.raises(ValueError, match="y is complex"):
        nn.train(model, params, (x, y + 1j), "exact", 0.5, 2, 1e-3)
    with pytest.raises(ValueError, match="x_train must be a real numeric array, got dtype <U"):
        nn.empirical_source(model, params, x.astype(str))
    with pytest.raises(ValueError, match="params layer 1 W must be a real floating array, got complex128"):
        nn.ngd_direction(model, [dict(p, W=p["W"] + 0j) if i == 0 else p for i, p in enumerate(params)], x, y, "gd")


def test_float32_params_stay_float32(net):
    """A numpy float64 scale promoted float32 params to float64: the training scan then failed with a
    raw jax carry-type error; now float32 params compute (and train) in float32, close to float64."""
    model, params, x, y = net
    p32 = jax.tree_util.tree_map(lambda a: a.astype(jnp.float32), params)
    assert model.apply(p32, x.astype(np.float32)).dtype == jnp.float32
    d = nn.ngd_direction(model, p32, x, y, "exact", 1e-3)
    assert d[0]["W"].dtype == jnp.float32
    ref = oracle.direction(model, jax.tree_util.tree_map(lambda a: a.astype(jnp.float64), p32),
                           jnp.asarray(x.astype(np.float32), jnp.float64), y, "exact", 1e-3)
    assert rel(oracle.flat_direction(d), ref) < 1e-3
    run = nn.train(model, p32, (x, y), "exact", 0.5, 2, 1e-3)
    assert run.f_train.dtype == jnp.float32 and np.all(np.isfinite(np.asarray(run.f_train)))
    # float32 inputs with float64 params are still computed in float64
    assert model.apply(params, x.astype(np.float32)).dtype == jnp.float64


# ----------------------------------------------------------------------------- (4) lower-level API
def test_lower_level_api_validates_its_arguments(net):
    model, params, x, y = net
    src = nn.empirical_source(model, params, x)
    theta, _ = nn.preconditioned_kernel("exact", src, 1e-3)
    f0 = model.apply(params, x)
    with pytest.raises(ValueError, match="theta_g contains 16 NaN or inf entries"):
        nn.linearized(theta * np.nan, y, 0.5)
    with pytest.raises(ValueError, match="lr must be a finite number"):
        nn.predict(theta, None, f0, None, y, float("nan"), 3)
    with pytest.raises(ValueError, match="steps must be an integer >= 0, got 2.5"):
        nn.predict(theta, None, f0, None, y, 0.5, 2.5)
    with pytest.raises(ValueError, match="steps must be an integer >= 0, got -1"):
        nn.train(model, params, (x, y), "exact", 0.5, -1, 1e-3)
    with pytest.raises(ValueError, match="steps must be an integer >= 0 .* got None"):
        nn.predict(theta, None, f0, None, y, 0.5, None)
    with pytest.raises(ValueError, match=r"theta_g must have shape \(N C, N C\) = \(3, 3\) for y of shape \(3, 1\)"):
        nn.linearized(theta, y[:3], 0.5)
    with pytest.raises(ValueError, match=r"y must have shape \(N, C\) = \(4, 1\)"):
        nn.method_predictor("exact", src, y[:3], 0.5)
    with pytest.raises(ValueError, match="f0_train must have y's shape"):
        nn.iterated(lambda r: theta @ r, y, 0.5)(3, f0[:2])
    with pytest.raises(TypeError, match="phi must be a callable"):
        nn.iterated(theta, y, 0.5)
    with pytest.raises(ValueError, match="r contains 4 NaN"):
        nn.residual_map("exact", src, 1e-3)(np.full((4, 1), np.nan))
    with pytest.raises(FloatingPointError, match="lr = 50 is unstable"):
        nn.predict(theta, None, f0, None, y, 50.0, 400)
    with pytest.raises(FloatingPointError, match="lr = 50 is unstable"):
        nn.method_predictor("exact", src, y, 50.0, 1e-3)(400, f0)
    for n, msg in [(-1, "n_train must be an integer >= 1, got -1"), (2.5, "n_train must be an integer >= 1, got 2.5")]:
        with pytest.raises(ValueError, match=msg):
            nn.isotropy_constant("kfac", model, n)
    with pytest.raises(ValueError, match="x_test has no rows: N must be >= 1 \\(pass None for no test set\\)"):
        nn.train(model, params, (x, y, x[:0], y[:0]), "exact", 0.5, 2, 1e-3)
    with pytest.raises(ValueError, match="theta_g has no positive eigenvalue"):
        nn.optimal_lr("gd", model, 4, np.zeros((4, 4)))
    with pytest.raises(ValueError, match="unit_wise: its isotropy constant is alpha = 0.0"):
        nn.optimal_lr("unit_wise", nn.MLP((3, 1)), 4, convention="paper")
    for method, opt, msg in [("kfac", {"samples": 0}, "kfac: option samples must be an integer >= 1, got 0"),
                             ("diagonal", {"chunk": -1}, "diagonal: option chunk must be an integer >= 1, got -1"),
                             ("unit_wise", {"chunk": 0}, "unit_wise: option chunk must be an integer >= 1, got 0")]:
        with pytest.raises(ValueError, match=msg):
            get_method(method, **opt)
    with pytest.raises(ValueError, match="unknown loss 'l2'"):
        nn.ngd_direction(model, params, x, y, "exact", 1e-3, loss="l2")


def test_overflowing_kernels_are_not_a_singular_system(net):
    model, params, x, y = net
    with pytest.raises(FloatingPointError, match="the kernels of x overflow to inf/NaN although x is finite"):
        nn.ngd_direction(model, params, x * 1e160, y, "exact", 1e-3)
    with pytest.raises(FloatingPointError, match="the kernels of x_train overflow"):
        nn.empirical_source(model, params, x * 1e160)


# ----------------------------------------------------------------------------- (5) misdiagnosis
def test_bad_arguments_are_named(net):
    model, params, x, y = net
    nan_params = [dict(p, W=p["W"].at[0, 0].set(jnp.nan)) if i == 1 else p for i, p in enumerate(params)]
    with pytest.raises(ValueError, match=r"params layer 2 W contains NaN or inf \(a diverged run\?\)"):
        nn.ngd_direction(model, nan_params, x, y, "exact", 0.0)
    with pytest.raises(ValueError, match="params layer 2 W contains NaN"):
        model.apply(nan_params, x)
    with pytest.raises(ValueError, match="n_train must be an integer >= 1, got 0"):
        nn.isotropy_constant("kfac", model, 0)
    with pytest.raises(ValueError, match="n_train must be an integer >= 1, got 0"):
        nn.optimal_lr("unit_wise", model, 0)
    for widths in [(3, "5", 1), (3, 2.5, 1), (3, 0, 1), (3, None, 1)]:
        with pytest.raises(ValueError, match="every width must be an integer >= 1"):
            nn.MLP(widths)
    with pytest.raises(ValueError, match="sigma_w must be a finite number, got 'x'"):
        nn.MLP((3, 1), sigma_w="x")
    with pytest.raises(ValueError, match="sigma_b must be >= 0"):
        nn.MLP((3, 1), sigma_b=-0.1)
    with pytest.raises(ValueError, match=r"params layer 1: expected W \(5, 3\) and b \(5,\), got W \(3, 5\)"):
        nn.ngd_direction(model, [dict(params[0], W=params[0]["W"].T)] + params[1:], x, y, "exact", 1e-3)
    with pytest.raises(ValueError, match="params layer 1: expected a dict with keys 'W' and 'b', got \\['W'\\]"):
        model.apply([{"W": p["W"]} for p in params], x)
    with pytest.raises(ValueError, match="params must be a list of 3 layer dicts"):
        nn.train(model, params[:2], (x, y), "exact", 0.5, 2, 1e-3)
    with pytest.raises(ValueError, match="params layer 1 W is float16: use float32 or float64"):
        nn.ngd_direction(model, jax.tree_util.tree_map(lambda a: a.astype(jnp.float16), params), x, y, "gd")
    with pytest.raises(ValueError, match="params layer 1 W must be a real floating array, got int32"):
        nn.empirical_source(model, [dict(params[0], W=params[0]["W"].astype(jnp.int32))] + params[1:], x)
    with pytest.raises(TypeError, match="model must be an ntk_ngd.MLP"):
        nn.ngd_direction(None, params, x, y, "exact", 1e-3)
    with pytest.raises(TypeError, match="model must be an ntk_ngd.MLP"):
        nn.isotropy_constant("exact", (3, 5, 1), 4)
    with pytest.raises(ValueError, match="key must be a jax PRNG key"):
        model.init(0)
    with pytest.raises(ValueError, match=r"x must have shape \(N, M_0=3\), got \(4, 2\)"):
        model.apply(params, x[:, :2])
    with pytest.raises(ValueError, match="data must be a Dataset"):
        nn.train(model, params, None, "exact", 0.5, 2, 1e-3)


# ----------------------------------------------------------------------------- the battery
def test_stress_quick_has_no_silent_wrong_or_unclear_case(tmp_path):
    out = tmp_path / "stress.json"
    proc = subprocess.run([sys.executable, str(ROOT / "scripts" / "stress.py"), "--quick", "--no-progress",
                           "--out", str(out)], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-2000:]
    assert out.is_file() and "verified result" in proc.stdout
