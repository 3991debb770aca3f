"""NG+ (ntk_ngd/curvature/ngplus.py) beyond the registry suite: the held GFIM (hold > 1) in training
and in the lazy-regime predictor against hand-written loops, bad options, and the constants and
closed forms derived in the module docstring, measured on the operators."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import ntk_ngd as nn
from ntk_ngd.curvature import dense_problem, get_method
from ntk_ngd.layers import from_params, to_params


def net(widths, act="relu", sb=0.3, n=4, seed=0):
    model = nn.MLP(widths, act, sigma_b=sb)
    k1, k2, k3 = jax.random.split(jax.random.PRNGKey(seed), 3)
    params = model.init(k1)
    x = jax.random.normal(k2, (n, widths[0]))
    x = x / jnp.linalg.norm(x, axis=1, keepdims=True)
    y = 0.5 * jax.random.normal(k3, (n, widths[-1]))
    return model, params, x, y


def rel(a, b):
    a, b = np.asarray(a), np.asarray(b)
    return float(np.linalg.norm(a - b) / np.linalg.norm(b))


# ----------------------------------------------------------------------------- the dense reference loop
def per_sample_gfims(J, r, widths, n, side):
    """Output/input-side GFIM of every layer straight from the per-sample gradients of the true-label
    loss, g_n = sum_c r_nc J_l[(n, c)] reshaped to (M_l, M_{l-1}+1) (empirical statistics)."""
    C = widths[-1]
    offs = np.cumsum([0] + [m * (k + 1) for k, m in zip(widths[:-1], widths[1:])])
    out = []
    for l, (k, m) in enumerate(zip(widths[:-1], widths[1:])):
        Jl = J[:, offs[l]:offs[l + 1]].reshape(n, C, m, k + 1)
        g = np.einsum("nc,ncij->nij", r.reshape(n, C), Jl)
        out.append(np.einsum("nij,nkj->ik", g, g) / n if side == "output" else np.einsum("nji,njk->ik", g, g) / n)
    return out


def gfim_step(J, r, gfims, widths, n, rho, side):
    """Flat W~ direction: per layer (GFIM + rho)^+ G or G (GFIM + rho)^+, G = J_l^T r / N."""
    offs = np.cumsum([0] + [m * (k + 1) for k, m in zip(widths[:-1], widths[1:])])
    grad = J.T @ r.reshape(-1) / n
    d = []
    for l, (k, m) in enumerate(zip(widths[:-1], widths[1:])):
        G = grad[offs[l]:offs[l + 1]].reshape(m, k + 1)
        P = np.linalg.pinv(gfims[l], rcond=1e-13, hermitian=True) if rho == 0 else \
            np.linalg.inv(gfims[l] + rho * np.eye(len(gfims[l])))
        d.append((P @ G if side == "output" else G @ P).reshape(-1))
    return np.concatenate(d)


def unflat(model, theta):
    w = model.widths
    offs = np.cumsum([0] + [m * (k + 1) for k, m in zip(w[:-1], w[1:])])
    return to_params([jnp.asarray(theta[offs[l]:offs[l + 1]].reshape(m, k + 1))
                      for l, (k, m) in enumerate(zip(w[:-1], w[1:]))])


def flat(params):
    return np.concatenate([np.asarray(b).reshape(-1) for b in from_params(params)])


def held_net(widths):
    """A net whose residuals start in [0.5, 0.8] (the empirical-statistics step is ~ eta / r_n: keep
    r away from 0 so that three steps stay well conditioned)."""
    model, params, x, _ = net(widths)
    u = jax.random.uniform(jax.random.PRNGKey(3), (x.shape[0], widths[-1]))
    return model, params, x, model.apply(params, x) - 0.5 - 0.3 * u


HOLD_CASES = [((7, 20, 18, 1), "output", 0.0), ((7, 20, 18, 1), "output", 1e-3),
              ((7, 20, 18, 2), "input", 1e-3), ((3, 16, 12, 1), "auto", 0.0)]


@pytest.mark.parametrize("widths,side,rho", HOLD_CASES)
def test_hold_train_matches_reference_loop(widths, side, rho):
    """train(..., hold=2), 3 steps: the GFIM (empirical statistics) is recomputed at steps 0 and 2
    only and held at step 1; a numpy loop on the dense Jacobian does the same."""
    model, params, x, y = held_net(widths)
    n, lr = x.shape[0], 0.02
    res = nn.train(model, params, (x, y), "ngplus", lr=lr, steps=3, damping=rho, side=side, hold=2)
    theta, ref, gfims = flat(params), [], None
    for t in range(4):
        p = unflat(model, theta)
        dense = dense_problem(model, p, x, y)
        ref.append(np.asarray(model.apply(p, x)))
        if t == 3:
            break
        if t % 2 == 0:
            gfims = per_sample_gfims(dense.J, dense.g, model.widths, n, side)
        theta = theta - lr * gfim_step(dense.J, dense.g, gfims, model.widths, n, rho, side)
    assert rel(res.f_train, np.stack(ref)) < 1e-12
    # held at step 1: hold = 1 agrees on f_1 and differs from f_2 on
    fresh = nn.train(model, params, (x, y), "ngplus", lr=lr, steps=3, damping=rho, side=side)
    assert rel(fresh.f_train[:2], res.f_train[:2]) < 1e-12
    assert rel(fresh.f_train[2:], res.f_train[2:]) > 1e-8


@pytest.mark.parametrize("widths,side,rho", HOLD_CASES[1:3])
def test_hold_method_predictor_matches_reference_loop(widths, side, rho):
    """method_predictor carries the held state: kernels fixed at init, r_{t+1} = r_t - eta J_0 d_t,
    GFIM from r_0 and r_2 (and the factors at init)."""
    model, params, x, y = held_net(widths)
    n, lr, T = x.shape[0], 0.02, 4
    pred = nn.method_predictor("ngplus", nn.empirical_source(model, params, x), y, lr, rho, side=side, hold=2)
    f0 = model.apply(params, x)
    got = pred(T, f0)
    dense = dense_problem(model, params, x, y)
    r, rs = np.asarray(f0 - y), []
    for t in range(T + 1):
        rs.append(r)
        if t % 2 == 0:
            gfims = per_sample_gfims(dense.J, r, model.widths, n, side)
        r = r - lr * (dense.J @ gfim_step(dense.J, r, gfims, model.widths, n, rho, side)).reshape(r.shape)
    assert rel(got.train, np.asarray(y)[None] + np.stack(rs)) < 1e-12


def test_stateful_declaration():
    assert nn.METHODS["ngplus"].stateful is False and nn.METHODS["ngplus"].isotropy is None
    assert get_method("ngplus").stateful is False and get_method("ngplus", hold=3).stateful is True
    model, params, x, y = net((7, 20, 18, 1))
    m = get_method("ngplus")
    fac = nn.factors(model, params, x)
    assert m.init(fac, model.apply(params, x) - y, 0.0) == ()


# ----------------------------------------------------------------------------- bad input
def test_bad_options_give_clear_errors():
    with pytest.raises(ValueError, match="hold must be an integer >= 1"):
        get_method("ngplus", hold=0)
    with pytest.raises(ValueError, match="hold must be int"):
        get_method("ngplus", hold=1.5)
    with pytest.raises(ValueError, match="side must be one of"):
        get_method("ngplus", side="left")
    with pytest.raises(ValueError, match="statistics must be one of"):
        get_method("ngplus", statistics="x")
    model, params, x, y = net((7, 20, 18, 3))
    with pytest.raises(ValueError, match="hold must be"):
        nn.train(model, params, (x, y), "ngplus", lr=0.1, steps=1, hold=0)
    with pytest.raises(ValueError, match="samples >= C"):
        nn.ngd_direction(model, params, x, y, "ngplus", statistics="sampled", samples=2)
    src = nn.empirical_source(model, params, x)
    with pytest.raises(ValueError, match="depends on the residual"):
        nn.preconditioned_kernel("ngplus", src)  # empirical statistics: no linear Theta_G


# ----------------------------------------------------------------------------- derived constants
ISO_NETS = [((7, 20, 18, 1), "relu"), ((7, 24, 1), "erf"), ((7, 20, 18, 19, 1), "tanh"), ((3, 16, 12, 1), "relu")]


@pytest.mark.parametrize("widths,act", ISO_NETS)
@pytest.mark.parametrize("side", ["input", "auto"])
def test_alpha_against_measured_operator(widths, act, side):
    """C = 1, expected statistics: each input-side layer with H of rank N and each output-side hidden
    layer with D of rank N gives exactly I, so alpha = L (computed from N and the widths)."""
    model, params, x, y = net(widths, act)
    n = x.shape[0]
    alpha = nn.isotropy_constant("ngplus", model, n, side=side, statistics="expected")
    if side == "input" and widths[0] + 1 < n:  # the first layer's H has rank M_0 + 1 < N
        assert alpha is None
        return
    assert alpha == pytest.approx(model.depth)
    tg, _ = nn.preconditioned_kernel("ngplus", nn.empirical_source(model, params, x), 0.0,
                                     side=side, statistics="expected")
    assert nn.isotropy_error(tg, alpha) < 1e-8
    # rademacher with C = 1 has V_n V_n^T = 1: the same operator
    tr, _ = nn.preconditioned_kernel("ngplus", nn.empirical_source(model, params, x), 0.0,
                                     side=side, statistics="rademacher", samples=3)
    assert rel(tr, tg) < 1e-9


def test_auto_side_first_layer_and_alpha_conditions():
    """M_0 + 1 < N C: auto puts the first layer on the output side (exact when M_1 >= N C)."""
    model = nn.MLP((3, 16, 12, 1), "relu", sigma_b=0.3)
    assert get_method("ngplus", side="auto").model_sides(model.widths, 6) == ("output", "input", "input")
    assert nn.isotropy_constant("ngplus", model, 6, side="auto", statistics="expected") == 3
    assert nn.isotropy_constant("ngplus", model, 20, side="auto", statistics="expected") is None  # M_1 < N
    assert nn.isotropy_constant("ngplus", model, 6, side="output", statistics="expected") is None
    assert nn.isotropy_constant("ngplus", model, 6, statistics="sampled") is None
    assert nn.isotropy_constant("ngplus", model, 6) is None  # empirical


def test_output_side_closed_form():
    """Expected statistics, output side: Theta_G = (L - 1) I + KH_L (x) I_C / tr KH_L (the last layer
    has D_L = 1 (x) I_C of rank C), on empirical and analytic sources."""
    for widths in ((7, 20, 18, 1), (7, 22, 19, 2)):
        model, params, x, y = net(widths, "erf")
        C = widths[-1]
        for src in (nn.empirical_source(model, params, x), nn.analytic_source(model, x)):
            tg, _ = nn.preconditioned_kernel("ngplus", src, 0.0, side="output", statistics="expected")
            KH = np.asarray(src.train.KH[-1])
            closed = (model.depth - 1) * np.eye(len(tg)) + np.kron(KH / np.trace(KH), np.eye(C))
            assert rel(tg, closed) < 1e-9, widths


def test_input_side_many_outputs():
    """C > 1, input side: Theta_G,l = blockdiag_n D_n^T D_n / tr(D_n^T D_n): exactly I_C / C for the last
    layer, and tending to I_C / C for hidden layers as M grows (alpha = L / C)."""
    errs = []
    for M in (64, 256, 1024):
        model, params, x, y = net((7, M, M, 2), "erf", n=3, seed=1)
        alpha = nn.isotropy_constant("ngplus", model, 3, side="input", statistics="expected")
        assert alpha == pytest.approx(1.5)
        tg, _ = nn.preconditioned_kernel("ngplus", nn.empirical_source(model, params, x), 0.0,
                                         side="input", statistics="expected")
        errs.append(nn.isotropy_error(tg, alpha))
        tan, _ = nn.preconditioned_kernel("ngplus", nn.analytic_source(model, x), 0.0, side="input", statistics="expected")
        assert nn.isotropy_error(tan, alpha) < 1e-9  # infinite width: exactly isotropic
    slope = np.polyfit(np.log([64, 256, 1024]), np.log(errs), 1)[0]
    assert errs[-1] < errs[0] and slope < -0.25, (errs, slope)


@pytest.mark.parametrize("side", ["output", "input"])
def test_empirical_statistics_closed_form(side):
    """The authors' statistics (c_n = r_n), C = 1, rho = 0: every hidden output-side layer and every
    input-side layer maps r to r^+ = 1 / r; the output-side last layer to KH_L r / (r^T diag(KH_L) r):
    Phi(r) = (L - 1) / r + KH_L r / (r^T diag KH_L r) (output) or L / r (input), degree -1.
    Both the empirical (J d) and the analytic (Gram form) residual maps follow it."""
    model, params, x, y = net((7, 20, 18, 1), "tanh")
    r = np.asarray(model.apply(params, x) - y)
    L = model.depth
    for src in (nn.empirical_source(model, params, x), nn.analytic_source(model, x)):
        phi = nn.residual_map("ngplus", src, 0.0, side=side)
        KH = np.asarray(src.train.KH[-1])
        rv = r.ravel()
        closed = (L - 1) / rv + KH @ rv / (rv @ (np.diag(KH) * rv)) if side == "output" else L / rv
        assert rel(np.asarray(phi(r)).ravel(), closed) < 1e-9
        assert rel(np.asarray(phi(2 * r)).ravel(), closed / 2) < 1e-9  # homogeneous of degree -1


def test_analytic_state_is_refused():
    model, params, x, y = net((7, 20, 18, 1))
    m = get_method("ngplus", hold=2)
    state = m.init(nn.factors(model, params, x), model.apply(params, x) - y, 0.0)
    with pytest.raises(ValueError, match="empirical source"):
        m.residual_map(nn.analytic_source(model, x), 0.0, state)
