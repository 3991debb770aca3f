"""ntk-ngd's K-FAC and TNT against the field's library, kfac-jax 0.0.8 (docs/kfac_jax.md).

kfac-jax is a test-only extra (``pip install -e ".[kfac]"``); without it this module is skipped.
Setting: full batch, float64, one curvature update from a fresh state (``ema_old=0, ema_new=1``),
``estimation_mode="ggn_exact"`` (the exact GGN factors, no sampling), the loss registered as
``register_squared_error_loss(f, y, weight=0.5)``: kfac-jax's loss is ``weight * sum ||f - y||^2 / N``,
so weight 0.5 is ntk-ngd's 1/(2N) sum ||f - y||^2, whose GGN is F = J^T J / N (THEORY section 2).

Registration ("augmented", ntk-ngd's own parameterization): each layer is one dense tag
``register_dense(u, h~, W~^T)`` with the layer input h~ = [sigma_w h / sqrt(M_{l-1}), sigma_b]
(the NTK scalars inside the input, as in ``layers.factors``) and the single weight W~ = [W, b]
(M_l, M_{l-1}+1), so kfac-jax's factors are ntk-ngd's A_{l-1} = H^T H / N and B_l = Dm^T Dm / N.
"native": kfac-jax's usual dense layer y = x W^T + b with x = sigma_w h / sqrt(M_{l-1}): its bias
input is a column of ones, which is ntk-ngd's only for sigma_b = 1; for sigma_b = 0 the layer is
registered without bias (A is M_{l-1} x M_{l-1}, where ntk-ngd keeps the zero bias column).

What must agree (relative Frobenius errors, printed: ``pytest -rP`` shows the figures):
  * the Kronecker factors (K-FAC: A, B; TNT: R, L, the input and output factors) and the gradient;
  * damping_mode="tikhonov" and ``multiply_inverse(..., exact_power=True)`` on every layer;
  * damping_mode="factored" and ``exact_power=False`` (pi-adjusted damping) on every layer whose
    factors are both larger than 1 x 1, in the augmented registration;
  * the documented differences, asserted as such: a 1 x 1 factor (the C = 1 output layer's B, TNT's
    L) gets no damping in kfac-jax, so that layer's kfac-jax "factored" step is the exact
    (B (x) A + rho I)^{-1}, ntk-ngd's "tikhonov" one; and in the native registration at sigma_b = 0
    kfac-jax's pi counts dim A = M_{l-1}, ntk-ngd's M_{l-1} + 1 (the zero bias coordinate).
  * one ``kfac_jax.Optimizer`` step (fixed learning rate eta, momentum 0, fixed damping, exact
    inverses, inverse_update_period 1) is theta - eta d with ntk-ngd's direction d.

kfac-jax 0.0.8 needs a small shim on this JAX (``kfac_jax_compat``: its jaxpr interpreter unpacks
``get_bind_params`` as a pair); the automatic graph matcher is not used (manual registration).
"""
import numpy as np
import pytest

kfac_jax = pytest.importorskip("kfac_jax")

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402

import kfac_jax_compat  # noqa: E402
import ntk_ngd as nn  # noqa: E402
from ntk_ngd.curvature import get_method  # noqa: E402
from ntk_ngd.curvature.tnt import tnt_row_scales  # noqa: E402
from ntk_ngd.layers import factors, from_params  # noqa: E402
from ntk_ngd.ngd import direction_fn  # noqa: E402

# kfac-jax 0.0.8 itself uses JAX aliases that warn (jax.core.no_effects, jax.core.DropVar)
pytestmark = pytest.mark.filterwarnings(r"ignore:jax\.core\.\w+ is deprecated:DeprecationWarning")

RTOL = 1e-10
RHOS = (1e-2, 1.0)
N = 4
MODES = ("tikhonov", "factored")
# widths x activation x sigma_b: every pair of levels appears once (C = 1 and C = 3, with and without bias)
NETS = [((5, 8, 7, 1), "relu", 0.0), ((5, 8, 7, 1), "erf", 0.5),
        ((5, 8, 7, 3), "relu", 0.5), ((5, 8, 7, 3), "erf", 0.0)]
# the module's programs are tiny and run once: compiling them without XLA's backend optimizations
# halves the compile time that dominates this module (no fast-math either way: float64 results agree)
FAST_COMPILE = {"xla_backend_optimization_level": 0, "xla_llvm_disable_expensive_passes": True}


@pytest.fixture(autouse=True, scope="module")
def _kfac_jax_on_this_jax():
    with kfac_jax_compat.patched():
        yield


def rel(a, b):
    a, b = np.asarray(a), np.asarray(b)
    return float(np.linalg.norm(a - b) / np.linalg.norm(b))


def problem(widths, act, sb, seed=0):
    """The model, i.i.d. N(0, 1) params (ntk-ngd's layout) and data, drawn with numpy: no eager JAX
    random calls to compile."""
    model = nn.MLP(widths, act, sigma_b=sb)
    rng = np.random.default_rng(seed)
    params = [{"W": rng.standard_normal((m, k)), "b": rng.standard_normal(m)} for k, m in zip(widths[:-1], widths[1:])]
    return model, params, rng.standard_normal((N, widths[0])), rng.standard_normal((N, widths[-1]))


# ----------------------------------------------------------------------------- the kfac-jax side
def to_kfac(params, registration):
    """ntk-ngd params -> the registered parameters: W~^T (augmented) or {"w": W^T[, "b": b]} (native)."""
    if registration == "augmented":
        return [np.concatenate([np.asarray(p["W"]), np.asarray(p["b"])[:, None]], 1).T for p in params]
    return [{"w": np.asarray(p["W"]).T, "b": np.asarray(p["b"])} if registration == "native_bias"
            else {"w": np.asarray(p["W"]).T} for p in params]


def from_kfac(blocks, registration):
    """Registered-parameter vectors -> W~ blocks (M_l, M_{l-1}+1) as numpy arrays; a missing bias is 0."""
    if registration == "augmented":
        return [np.asarray(b).T for b in blocks]
    return [np.concatenate([np.asarray(b["w"]).T,
                            np.asarray(b["b"] if "b" in b else np.zeros(b["w"].shape[1]))[:, None]], 1)
            for b in blocks]


def tagged_loss(model, registration):
    """ntk-ngd's network and MSE loss with kfac-jax's layer and loss tags."""
    L = model.depth

    def loss(kp, batch):
        x, y = batch
        h = x
        for l, p in enumerate(kp):
            m_in = model.widths[l]
            hs = (model.sigma_w / np.sqrt(m_in)) * h
            if registration == "augmented":
                ht = jnp.concatenate([hs, jnp.full((h.shape[0], 1), model.sigma_b, h.dtype)], 1)
                u = kfac_jax.register_dense(ht @ p, ht, p)
            elif registration == "native_bias":
                u = kfac_jax.register_dense(hs @ p["w"] + p["b"], hs, p["w"], p["b"])
            else:
                u = kfac_jax.register_dense(hs @ p["w"], hs, p["w"])
            h = model.phi(u) if l < L - 1 else u
        kfac_jax.register_squared_error_loss(h, y, weight=0.5)
        return 0.5 * jnp.mean(jnp.sum((h - y) ** 2, axis=-1))
    return loss


def kfac_jax_run(model, params, x, y, block="kfac", registration="augmented"):
    """kfac-jax's factors (input, output) per layer, gradient and (F^ + rho I)^{-1} grad for
    exact_power in (True, False) and rho in RHOS, as W~ blocks; one jit of the whole computation."""
    loss = tagged_loss(model, registration)
    ctor = {"dense": kfac_jax.DenseTNT} if block == "tnt" else None
    est = kfac_jax.BlockDiagonalCurvature(loss, default_estimation_mode="ggn_exact", auto_register_tags=False,
                                          layer_tag_to_block_ctor=ctor)
    kp = to_kfac(params, registration)
    state = est.init(jax.random.PRNGKey(1), (kp, (x, y)), exact_powers_to_cache=None, approx_powers_to_cache=None)
    expected = kfac_jax.DenseTNT if block == "tnt" else kfac_jax.DenseTwoKroneckerFactored
    assert all(type(b) is expected for b in est.blocks) and len(est.blocks) == model.depth

    def run(state, kp, x, y, rho):
        state = est.update_curvature_matrix_estimate(state, ema_old=0.0, ema_new=1.0, identity_weight=0.0,
                                                     batch_size=x.shape[0], rng=jax.random.PRNGKey(2),
                                                     func_args=(kp, (x, y)))
        value, grad = jax.value_and_grad(loss)(kp, (x, y))
        dirs = [est.multiply_inverse(state, grad, identity_weight=rho, exact_power=exact, use_cached=False,
                                     pmap_axis_name=None) for exact in (True, False)]
        facs = [(b.factors[0].value, b.factors[1].value) for b in state.blocks_states]
        return facs, (value, nn.losses.mse(model.apply(params, x), y)), grad, dirs

    run = jax.jit(run).lower(state, kp, x, y, RHOS[0]).compile(FAST_COMPILE)  # rho traced: one compilation
    dirs = {}
    for rho in RHOS:
        facs, (value, mse), grad, (exact, factored) = run(state, kp, x, y, rho)
        dirs[True, rho], dirs[False, rho] = exact, factored
    assert abs(float(value) - float(mse)) <= 1e-13 * float(mse)  # the tagged network is ntk-ngd's MLP
    return facs, from_kfac(grad, registration), {k: from_kfac(v, registration) for k, v in dirs.items()}


# ----------------------------------------------------------------------------- the ntk-ngd side
def ntk_run(model, params, x, y, block="kfac"):
    """ntk-ngd's (input, output) factors per layer from its structured factors (K-FAC's (A, B), or
    TNT's (R, L) with the row scales of ``tnt.py``: a = ||h~_n||, b_n^2 = sum_c ||delta_{n,c}||^2),
    its gradient and its directions {(damping_mode, rho): W~ blocks}, all in one jit: each direction
    is ``ntk_ngd.ngd.direction_fn``, the function that ``ngd_direction`` compiles."""
    fns = {(m, rho): direction_fn(model, get_method(block, damping_mode=m, force=True), rho)
           for m in MODES for rho in RHOS}

    def run(params, x, y):
        facs = []
        for H, D in zip(*factors(model, params, x)):
            n, m, C = D.shape
            Dm = D.transpose(0, 2, 1).reshape(n * C, m)
            if block == "tnt":
                a, b = tnt_row_scales(Dm @ Dm.T, H @ H.T)
                Dm, H = a[:, None] * Dm, b[:, None] * H
            facs.append((H.T @ H / n, Dm.T @ Dm / n))
        grad = jax.grad(lambda p: nn.losses.mse(model.apply(p, x), y))(params)
        return facs, from_params(grad), {k: f(params, x, y) for k, f in fns.items()}
    return jax.jit(run).lower(params, x, y).compile(FAST_COMPILE)(params, x, y)


def factored_reference(A, B, G, rho, dim_a):
    """kfac-jax's pi-adjusted factored inverse of one layer from factors A (input), B (output) on the
    W~ gradient block G (M_l, M_{l-1}+1): pi^2 = (tr A / dim_a) / (tr B / dim B); a 1 x 1 factor is not
    damped, which makes the layer's inverse the exact (B (x) A + rho I)^{-1}."""
    A, B, G = np.asarray(A), np.asarray(B), np.asarray(G)
    if B.shape == (1, 1):
        return G @ np.linalg.inv(B[0, 0] * A + rho * np.eye(len(A)))
    pi = np.sqrt((np.trace(A) / dim_a) / (np.trace(B) / len(B)))
    sr = np.sqrt(rho)
    return np.linalg.solve(B + sr / pi * np.eye(len(B)), G) @ np.linalg.inv(A + pi * sr * np.eye(len(A)))


def report(label, errs, differences=()):
    """Print the worst relative error per quantity (and the smallest documented difference)."""
    worst = {k: max(v) for k, v in errs.items()}
    line = f"kfac-jax agreement, {label}: " + ", ".join(f"{k} {v:.1e}" for k, v in worst.items())
    if differences:
        line += f"; documented difference >= {min(differences):.1e}"
    print(line)
    return worst


# ----------------------------------------------------------------------------- tests
@pytest.mark.parametrize("block", ["kfac", "tnt"])
@pytest.mark.parametrize("widths,act,sb", NETS)
def test_factors_and_directions_equal_kfac_jax(widths, act, sb, block):
    """Augmented registration: factors, gradient and both damping modes to float64 precision; the
    C = 1 output layer under "factored" equals ntk-ngd's "tikhonov" layer (kfac-jax does not damp
    the 1 x 1 factor: the documented difference)."""
    model, params, x, y = problem(widths, act, sb)
    facs, grad, dirs = kfac_jax_run(model, params, x, y, block)
    nfacs, ngrad, ndirs = ntk_run(model, params, x, y, block)
    errs = {"factors": [], "gradient": [], "tikhonov": [], "factored": []}
    for (ka, kb), (na, nb) in zip(facs, nfacs):
        errs["factors"] += [rel(ka, na), rel(kb, nb)]
    errs["gradient"] = [rel(a, b) for a, b in zip(grad, ngrad)]
    scalar_out, differences = widths[-1] == 1, []
    for rho in RHOS:
        ref = {m: ndirs[m, rho] for m in MODES}
        errs["tikhonov"] += [rel(a, b) for a, b in zip(dirs[True, rho], ref["tikhonov"])]
        for l, a in enumerate(dirs[False, rho]):
            last = l == model.depth - 1
            errs["factored"].append(rel(a, ref["tikhonov" if last and scalar_out else "factored"][l]))
        if scalar_out:  # the difference is real: ntk-ngd damps the 1 x 1 factor
            differences.append(rel(dirs[False, rho][-1], ref["factored"][-1]))
            assert differences[-1] > 1e-4
    worst = report(f"{block} widths={widths} {act} sigma_b={sb}", errs, differences)
    assert all(v < RTOL for v in worst.values()), worst


@pytest.mark.parametrize("sb", [0.0, 1.0])
def test_native_dense_registration(sb):
    """kfac-jax's own dense layer y = x W^T + b (ones bias column): sigma_b = 1 is ntk-ngd's layer
    exactly; sigma_b = 0 without a bias: the W part of every step agrees and ntk-ngd's bias step is
    0, but "factored" differs by pi (kfac-jax dim A = M_{l-1}, ntk-ngd M_{l-1}+1), asserted against
    the pi-adjusted reference built from ntk-ngd's factors with each convention."""
    model, params, x, y = problem((5, 8, 7, 3), "erf", sb, seed=1)
    registration = "native_bias" if sb else "native"
    facs, grad, dirs = kfac_jax_run(model, params, x, y, "kfac", registration)
    nf, g, ndirs = ntk_run(model, params, x, y)
    k = slice(None) if sb else slice(None, -1)  # without a bias kfac-jax has no bias coordinate
    errs = {"factors": [], "gradient": [], "tikhonov": [], "factored": [], "factored reference": []}
    differences = []
    for (ka, kb), (na, nb) in zip(facs, nf):
        errs["factors"] += [rel(ka, na[k, k]), rel(kb, nb)]
    errs["gradient"] = [rel(a, b) for a, b in zip(grad, g)]
    for rho in RHOS:
        ref = {m: ndirs[m, rho] for m in MODES}
        if not sb:
            assert all(np.all(np.asarray(d)[:, -1] == 0.0) for m in MODES for d in ref[m])
        errs["tikhonov"] += [rel(a, b) for a, b in zip(dirs[True, rho], ref["tikhonov"])]
        for l, ((A, B), G) in enumerate(zip(nf, g)):
            # the reference formula reproduces ntk-ngd's factored step (dim A = M_{l-1} + 1) ...
            errs["factored reference"].append(rel(factored_reference(A, B, G, rho, len(A)), ref["factored"][l]))
            # ... and kfac-jax's with its own dim A (M_{l-1} + 1 with bias, M_{l-1} without)
            kj = factored_reference(A, B, G, rho, len(A) if sb else len(A) - 1)
            errs["factored"].append(rel(dirs[False, rho][l], kj))
            if sb:
                errs["factored"].append(rel(dirs[False, rho][l], ref["factored"][l]))
            else:  # the pi convention is a real difference
                differences.append(rel(dirs[False, rho][l], ref["factored"][l]))
                assert differences[-1] > 1e-6
    worst = report(f"native registration sigma_b={sb}", errs, differences)
    assert all(v < RTOL for v in worst.values()), worst


def test_one_optimizer_step():
    """kfac_jax.Optimizer with a fixed learning rate eta, momentum 0, a fixed damping rho, no burn-in,
    exact inverses recomputed every step (inverse_update_period=1, use_exact_inverses=True): its
    first full-batch step is theta - eta d, d ntk-ngd's K-FAC direction (damping_mode="tikhonov",
    through ``ngd_direction``). (The pi-adjusted inverses, use_exact_inverses=False, are the
    estimator's exact_power=False, checked above.)"""
    mode = "tikhonov"
    model, params, x, y = problem((5, 8, 7, 3), "relu", 0.5, seed=2)
    eta, rho = 0.3, 0.05
    loss = tagged_loss(model, "augmented")
    opt = kfac_jax.Optimizer(value_and_grad_func=jax.value_and_grad(loss), l2_reg=0.0,
                             use_automatic_registration=False, estimation_mode="ggn_exact",
                             use_exact_inverses=True, inverse_update_period=1,
                             num_burnin_steps=0, curvature_ema=0.95, multi_device=False)
    kp, batch = to_kfac(params, "augmented"), (x, y)
    w0 = from_kfac(kp, "augmented")  # before the step: Optimizer.step donates its params and state
    state = opt.init(kp, jax.random.PRNGKey(3), batch)
    new_kp, _, _ = opt.step(kp, state, jax.random.PRNGKey(4), batch=batch, learning_rate=jnp.asarray(eta),
                            momentum=jnp.asarray(0.0), damping=jnp.asarray(rho))
    d = to_kfac(nn.ngd_direction(model, params, x, y, "kfac", damping=rho, damping_mode=mode, force=True),
                "augmented")
    errs = {"step": [rel(w - w0[l], -eta * d[l].T) for l, w in enumerate(from_kfac(new_kp, "augmented"))]}
    worst = report("Optimizer step (exact inverses) vs ngd_direction tikhonov", errs)
    assert all(v < RTOL for v in worst.values()), worst
