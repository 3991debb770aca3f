"""One suite over the method registry: every registered method, on tiny float64 networks, against
its own dense reference (``to_dense``: (G + rho I)^+ built from the dense Jacobian without the
structured layers), plus its residual map, its linear face and its analytic face.

A method registered by a user (or by a test) is picked up here like a built-in one.
"""
import dataclasses
import warnings

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import ntk_ngd as nn
from ntk_ngd.curvature import METHODS, AbstractMethod, PerLayer, dense_problem, get_method, method_names, register_method
import oracle

N = 4
HIDDEN = (20, 18, 21, 19)
# (L, activation, sigma_b): depths 1..5; each activation with and without bias, with C = 1 and C = 3
# (C = 1 when L + [sigma_b > 0] is odd)
CONFIGS = [(1, "relu", 0.0), (2, "erf", 0.5), (2, "erf", 0.0), (3, "tanh", 0.0), (3, "relu", 0.5),
           (4, "tanh", 0.5), (5, "erf", 0.5)]
RHOS = (0.0, 1e-3)
VARIANT_CONFIGS = [(3, "tanh", 0.0), (5, "erf", 0.5)]  # C = 1 without bias, C = 3 with bias


def options_grid(cls):
    """Option variants the suite runs for a method: defaults, plus each Literal option's values."""
    import typing
    hints = typing.get_type_hints(cls)
    out = [{}]
    for f in dataclasses.fields(cls):
        if typing.get_origin(hints[f.name]) is typing.Literal and f.name != "convention":
            out += [{f.name: v} for v in typing.get_args(hints[f.name]) if v != f.default]
    # random statistics need samples >= C (C = 3 in half of the configurations)
    return [dict(o, samples=8) if o.get("statistics") in ("sampled", "rademacher") else o for o in out]


def network(L, act, sb, seed=0, hidden=HIDDEN, n=N):
    C = 1 if (L + int(sb > 0)) % 2 else 3
    model = nn.MLP((7,) + hidden[:L - 1] + (C,), act, sigma_b=sb)
    k1, k2, k3, k4 = jax.random.split(jax.random.PRNGKey(seed + 17 * L), 4)
    params = model.init(k1)
    x = jax.random.normal(k2, (n, 7))
    x = x / jnp.linalg.norm(x, axis=1, keepdims=True)  # the paper's unit-norm rows
    xt = jax.random.normal(k4, (3, 7))
    y = 0.5 * jax.random.normal(k3, (n, C))
    return model, params, x, xt, y


@pytest.fixture(scope="module")
def problems():
    """The dense problem of every configuration, computed once."""
    out = {}
    for cfg in CONFIGS:
        for seed in range(10):  # the first seed whose rho = 0 problems are well posed
            model, params, x, xt, y = network(*cfg, seed=seed)
            if well_posed(model, params, x):
                break
        else:
            raise AssertionError(f"no well-posed network for {cfg}")
        out[cfg] = (model, params, x, xt, y, dense_problem(model, params, x, y), oracle.jacobian(model, params, xt))
    return out


def well_posed(model, params, x, layer_cond=1e6, unit_cond=1e8):
    """rho = 0 is well posed: every layer kernel and every unit's Jacobian J_i (rows
    delta_{n,c,i} h~_n, rank <= N) is well conditioned (a unit with delta ~ 1e-8, as erf' gives
    for a saturated unit, makes (F_ii)^+ a 1e13-conditioned solve that no two codes agree on)."""
    if max(np.linalg.cond(t) for t in np.asarray(nn.empirical_layerwise_ntk(model, params, x))) > layer_cond:
        return False
    fac = nn.empirical_source(model, params, x).fac_train
    for H, D in zip(fac.H, fac.D):
        H, D = np.asarray(H), np.asarray(D)  # (N, k), (N, units, C)
        J = D.transpose(1, 0, 2)[:, :, :, None] * H[None, :, None, :]  # (units, N, C, k)
        s = np.linalg.svd(J.reshape(J.shape[0], -1, H.shape[1]), compute_uv=False)
        r = min(H.shape)
        if np.max(s[:, 0] / s[:, r - 1]) > np.sqrt(unit_cond):  # cond(F_ii) = cond(J_i)^2
            return False
    return True


def rel(a, b):
    return float(np.linalg.norm(np.asarray(a) - np.asarray(b)) / np.linalg.norm(np.asarray(b)))


def check_method(name, problems, tol_dir=1e-9, tol_map=1e-10):
    """Worst relative errors of one method over configurations, dampings and option variants."""
    cls = METHODS[name]
    worst = {"direction": 0.0, "residual_map": 0.0, "residual_map_test": 0.0, "kernel": 0.0, "kernel_test": 0.0}
    for cfg, (model, params, x, xt, y, dense, Jx) in problems.items():
        r = np.asarray(model.apply(params, x) - y)
        src = nn.empirical_source(model, params, x, xt)
        for i, opts in enumerate(options_grid(cls)):
            if i and cfg not in VARIANT_CONFIGS:
                continue  # the defaults run on every configuration, other option values on a spread subset
            m = get_method(name, force=True, **opts)
            for rho in RHOS:
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore")
                    d = oracle.flat_direction(nn.ngd_direction(model, params, x, y, m, rho))
                    Pinv = m.to_dense(dense, rho)
                    ref = Pinv @ dense.grad
                    worst["direction"] = max(worst["direction"], rel(d, ref))
                    phi = nn.residual_map(m, src, rho)
                    worst["residual_map"] = max(worst["residual_map"], rel(np.asarray(phi(r)).ravel(), dense.J @ d))
                    worst["residual_map_test"] = max(worst["residual_map_test"],
                                                     rel(np.asarray(phi.test(r)).ravel(), Jx @ d))
                    if m.linear:  # Theta_G = J G^+ J^T / N and its test rows J(x') G^+ J^T / N
                        tg, tx = nn.preconditioned_kernel(m, src, rho)
                        worst["kernel"] = max(worst["kernel"], rel(tg, dense.J @ Pinv @ dense.J.T / N))
                        worst["kernel_test"] = max(worst["kernel_test"], rel(tx, Jx @ Pinv @ dense.J.T / N))
    assert worst["direction"] < tol_dir, (name, worst)
    assert max(v for k, v in worst.items() if k != "direction") < tol_dir, (name, worst)
    return worst


@pytest.mark.parametrize("name", method_names())
def test_method_against_its_dense_reference(name, problems, record_property):
    worst = check_method(name, problems)
    record_property("worst", worst)
    print(name, {k: f"{v:.1e}" for k, v in worst.items()})


ANALYTIC_WIDTHS = (128, 512, 2048)
# EKFAC's operator is built on the Grams' eigenvectors, which converge only once the kernels'
# fluctuation is below their eigenvalue gaps: its error plateaus (0.16, 0.15 at M = 128, 512) before
# it falls (0.11, 0.056 at 2048, 4096; 6 seeds), so its fit starts at 512
WIDTHS_FOR = {"ekfac": (512, 2048, 4096)}
# ... and its test rows, J(x') U_D s_D^-1 ... with weights 1 / (N (Q_D^T Q_H)_ij), amplify the
# fluctuation of the small-eigenvalue directions: relative errors 0.41, 0.27, 0.31 at M = 512, 2048,
# 4096 here (L = 3); with one hidden layer 0.48, 0.62, 0.43, 0.094 at M = 512..32768. Checked: train rows.
TRAIN_ROWS_ONLY = {"ekfac"}


@pytest.mark.parametrize("name", [n for n in method_names() if METHODS[n].analytic])
def test_analytic_face_approaches_empirical(name, record_property):
    """The infinite-width faces against the empirical ones of networks of growing width (3 seeds
    per width): the residual map Phi(r) on train and test rows for every method, and Theta_G
    (train and test rows) where the method is linear. The relative error falls with M: the
    exponent fitted by ``experiments.fit_power_law`` (per-seed fits, 95% t-interval) is below
    -1/4 (about -1/2 is the kernels' fluctuation), unless the face is exact at every width."""
    from ntk_ngd.experiments import fit_power_law
    m = get_method(name, force=True)
    x = jax.random.normal(jax.random.PRNGKey(5), (4, 7))
    x = x / jnp.linalg.norm(x, axis=1, keepdims=True)  # the paper's unit-norm rows
    if name == "ekfac":  # input norms 0.3..4 spread the Grams' spectra (see WIDTHS_FOR)
        x = x * jnp.array([0.3, 1.0, 2.0, 4.0])[:, None]
    xt = jax.random.normal(jax.random.PRNGKey(6), (2, 7))
    r = 0.5 * np.asarray(jax.random.normal(jax.random.PRNGKey(7), (4, 1)))
    rho = 0.0  # the analytic faces are rho -> 0 limits (a fixed rho > 0 is relatively larger as M grows)
    rows, widths = [], WIDTHS_FOR.get(name, ANALYTIC_WIDTHS)
    for M in widths:
        model = nn.MLP((7, M, M, 1), "erf", sigma_b=0.3)
        asrc = nn.analytic_source(model, x, xt)
        a = nn.residual_map(m, asrc, rho)
        ref = {"map": a(r), "map_test": None if a.test is None else a.test(r)}
        if m.linear:
            ref["kernel"], ref["kernel_test"] = nn.preconditioned_kernel(m, asrc, rho)
        # unit-wise has no infinite-width test rows
        ref = {k: v for k, v in ref.items() if v is not None and not (name in TRAIN_ROWS_ONLY and "test" in k)}
        for seed in range(3):
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                src = nn.empirical_source(model, model.init(jax.random.PRNGKey(seed)), x, xt)
                phi = nn.residual_map(m, src, rho)
                got = {"map": phi(r), "map_test": phi.test(r) if "map_test" in ref else None}
                if m.linear:
                    got["kernel"], got["kernel_test"] = nn.preconditioned_kernel(m, src, rho)
            rows.append({"width": M, "seed": seed, **{k: rel(got[k], ref[k]) for k in ref}})
    fits = {}
    for k in rows[0]:
        if k in ("width", "seed") or max(row[k] for row in rows) < 1e-9:
            continue  # exact at every width (exact NGD's Theta_G = I, unit-wise at rho = 0, ...)
        fit = fit_power_law(rows, k)
        fits[k] = (fit["exponent"], fit["ci"])
        mean = [np.mean([row[k] for row in rows if row["width"] == M]) for M in widths]
        assert mean[-1] < mean[0] and fit["exponent"] < -0.25, (name, k, mean, fit)
    record_property("exponents", fits)
    print(name, {k: f"M^{e:.2f} [{lo:.2f}, {hi:.2f}]" for k, (e, (lo, hi)) in fits.items()})


# ----------------------------------------------------------------------------- a user's method
def test_user_method_is_covered_by_the_suite(problems):
    """tests/two_blocks.py (one file, registered by conftest.py) is in the registry, so the
    parametrized tests above ran it; here its constant is checked as well."""
    assert "two_blocks" in method_names()
    model, params, x, xt, y, *_ = problems[(3, "relu", 0.5)]
    tg, _ = nn.preconditioned_kernel("two_blocks", nn.empirical_source(model, params, x), 1e-12)
    assert nn.isotropy_error(tg, nn.isotropy_constant("two_blocks", model, N)) < 1e-6


# ----------------------------------------------------------------------------- the abstract class
def test_abstract_and_typed_options():
    with pytest.raises(TypeError):
        AbstractMethod()  # abstract
    with pytest.raises(TypeError, match="abstract"):
        register_method(PerLayer)
    with pytest.raises(ValueError, match="damping_mode must be one of"):
        get_method("kfac", damping_mode="sqrt")
    with pytest.raises(ValueError, match="no option"):
        get_method("kfac", dampnig_mode="factored")
    with pytest.raises(ValueError, match="chunk must be int"):
        get_method("unit_wise", chunk=2.5)
    with pytest.raises(ValueError, match="force must be bool"):
        get_method("exact", force="yes")
    with pytest.raises(ValueError, match="unknown method"):
        get_method("newton")
    k = get_method("kfac", damping_mode="factored")
    assert k == nn.curvature.KFAC(damping_mode="factored") and hash(k) == hash(nn.curvature.KFAC(damping_mode="factored"))
    with pytest.raises(dataclasses.FrozenInstanceError):
        k.damping_mode = "tikhonov"
    with pytest.raises(ValueError, match="options go with a method name"):
        get_method(k, force=True)
    for name in method_names():
        cls = METHODS[name]
        assert not cls.__abstractmethods__
        assert isinstance(cls().linear, bool) and isinstance(cls.stateful, bool)
        assert cls.isotropy in (None, "finite", "wide")


def test_memory_terms_are_counts():
    for name in method_names():
        terms = get_method(name).memory_terms(100, 1, (784, 2048, 2048, 1))
        assert all(isinstance(v, (int, np.integer)) and v >= 0 for v in terms.values()), (name, terms)


def test_user_method_runs_through_cli_sweep_and_report(tmp_path, capsys):
    """The one-file toy method, loaded with --plugin, runs through train, sweep and report."""
    from pathlib import Path
    from ntk_ngd import cli
    plugin = str(Path(__file__).with_name("two_blocks.py"))
    small = ["--n-train", "6", "--n-test", "6", "--steps", "2", "--no-analytic"]
    assert cli.main(["--plugin", plugin, "train", "--method", "two_blocks", "--width", "64", *small]) == 0
    out = capsys.readouterr().out
    assert "method two_blocks" in out and "alpha = 2.0" in out
    store = tmp_path / "store"
    assert cli.main(["--plugin", plugin, "sweep", "--method", "two_blocks", "exact", "--width", "32", "64",
                     "--store", str(store), "--no-progress", *small]) == 0
    assert "ran=4 skipped=0 failed=0" in capsys.readouterr().out
    assert cli.main(["--plugin", plugin, "report", "--store", str(store), "--out", str(tmp_path / "fig")]) == 0
    assert "4 finished and 0 failed" in capsys.readouterr().out
