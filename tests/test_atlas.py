"""The isotropy atlas: its diagnostics against closed forms, the step schedule of nonlinear maps
against hand-written loops, one atlas point against the dense float64 oracle, the classification
and claims rules, and the command on a tiny grid."""
import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy.optimize import minimize_scalar

import ntk_ngd as nn
from ntk_ngd import atlas, cli
from ntk_ngd import diagnostics as dg
from ntk_ngd.layers import from_params

import oracle

jax.config.update("jax_enable_x64", True)


# ----------------------------------------------------------------------------- diagnostics
def test_operator_summary_against_the_spectrum():
    rng = np.random.default_rng(0)
    Q, _ = np.linalg.qr(rng.standard_normal((6, 6)))
    lam = np.array([0.5, 1.0, 2.0, 2.0, 3.0, 3.5])
    s = dg.operator_summary(Q @ np.diag(lam) @ Q.T, alpha=2.0)
    assert abs(s.alpha_hat - lam.mean()) < 1e-14 and s.alpha == 2.0
    assert abs(s.spread - 1.5) < 1e-14 and abs(s.iso_err - 0.75) < 1e-14
    iso = dg.operator_summary(4.0 * np.eye(5))
    assert iso.alpha == 4.0 and iso.iso_err < 1e-15 and iso.spread < 1e-15
    with pytest.raises(ValueError, match="not a descent operator"):
        dg.operator_summary(-np.eye(3))


def test_radiality_and_line_search_are_the_best_one_step_ratio():
    rng = np.random.default_rng(1)
    r, p = rng.standard_normal(7), rng.standard_normal(7) + 0.5 * rng.standard_normal(7)
    p = p if r @ p > 0 else -p
    best = minimize_scalar(lambda eta: np.linalg.norm(r - eta * p), bracket=(0, 1), tol=1e-12)
    assert abs(dg.radiality(r, p) - best.fun / np.linalg.norm(r)) < 1e-8
    assert abs(dg.line_search_lr(r, p) - best.x) < 1e-6
    assert dg.radiality(r, 3 * r) < 1e-8 and dg.radiality(r, -r) == 1.0
    with pytest.raises(ValueError, match="does not descend"):
        dg.line_search_lr(r, -r)


def test_homogeneity_degree_of_closed_form_maps():
    r = jnp.array([0.3, -1.2, 2.0, 0.7])
    h = dg.homogeneity(lambda v: 1.0 / v, r)                 # the empirical-Fisher map r^+: degree -1
    assert abs(h.degree + 1) < 1e-12 and h.deviation < 1e-12
    h = dg.homogeneity(lambda v: v / jnp.linalg.norm(v), r)  # degree 0 (Shampoo's polar factor)
    assert abs(h.degree) < 1e-12 and h.deviation < 1e-12
    h = dg.homogeneity(lambda v: v + v ** 3, r)              # not homogeneous: the deviation says so
    assert h.deviation > 0.1
    assert dg.schedule_power(-1.0) == 2.0 and dg.schedule_power(1.0) == 0.0


# ----------------------------------------------------------------------------- the step schedule
def _tiny():
    ds = nn.synthetic(6, 3, 8, seed=2)
    model = nn.MLP((8, 24, 24, 1))
    return ds, model, model.init(jax.random.PRNGKey(3))


def test_train_lr_power_equals_a_hand_written_schedule():
    ds, model, params = _tiny()
    # a well-conditioned map (exact NGD) so that 1e-12 measures the schedule, not the conditioning of
    # NG+'s r^+ (1 / r_n of a small residual entry amplifies rounding differences between jit and eager)
    eta, q, T = 0.3, 0.5, 3
    run = nn.train(model, params, ds, "exact", lr=eta, steps=T, lr_power=q)
    p, r0 = params, None
    for t in range(T):
        r = model.apply(p, ds.x_train) - ds.y_train
        r0 = np.linalg.norm(r) if r0 is None else r0
        d = nn.ngd_direction(model, p, ds.x_train, ds.y_train, "exact")
        eta_t = eta * (np.linalg.norm(r) / r0) ** q
        p = jax.tree.map(lambda a, b: a - eta_t * b, p, d)
        np.testing.assert_allclose(run.f_train[t + 1], model.apply(p, ds.x_train), rtol=1e-12, atol=1e-14)


def test_method_predictor_lr_power_iterates_the_residual_map():
    ds, model, params = _tiny()
    src = nn.empirical_source(model, params, ds.x_train, ds.x_test)
    f0 = model.apply(params, ds.x_train)
    eta, q = 0.05, 2.0
    pred = nn.method_predictor("ngplus", src, ds.y_train, eta, lr_power=q)(3, f0)
    phi = nn.residual_map("ngplus", src)
    r = f0 - ds.y_train
    n0 = np.linalg.norm(r)
    for t in range(1, 4):
        r = r - eta * (np.linalg.norm(r) / n0) ** q * phi(r)
        np.testing.assert_allclose(pred.train[t] - ds.y_train, r, rtol=1e-12, atol=1e-14)


# ----------------------------------------------------------------------------- one point vs the oracle
def _point(method, options=None, width=16, **kw):
    cfg = nn.experiments.RunConfig(dataset="synthetic", dim=8, n_train=4, n_test=3, depth=2, width=width, steps=2,
                                   method=method, options=options or {}, **kw)
    return cfg, atlas.atlas_point(cfg.to_dict())


def _dense(cfg):
    ex = nn.experiments
    data = ex.load_data(cfg)
    model = ex.build_model(cfg, data)
    params = model.init(jax.random.PRNGKey(cfg.seed))
    x, y = jnp.asarray(data.x_train), jnp.asarray(data.y_train)
    return model, params, x, y, oracle.jacobian(model, params, x)


@pytest.mark.parametrize("method,options", [("kfac", {}), ("foof", {}), ("gd", {})])
def test_linear_point_against_the_dense_theta_g(method, options):
    cfg, res = _point(method, options)
    model, params, x, y, J = _dense(cfg)
    Ginv = oracle.inverse_preconditioner(model, params, x, method, 0.0, J=J, **options)
    tg = J @ Ginv @ J.T / x.shape[0]
    lam = np.linalg.eigvalsh(0.5 * (tg + tg.T))
    alpha = res["alpha"] if res["alpha"] is not None else lam.mean()
    assert abs(res["alpha_hat"] - lam.mean()) < 1e-10 * lam.mean()
    assert abs(res["err"] - np.max(np.abs(lam / alpha - 1))) < 1e-9
    np.testing.assert_allclose(res["eigenvalues"], lam / alpha, rtol=1e-9, atol=1e-12)
    r0 = np.asarray(model.apply(params, x) - y).reshape(-1)
    eta = 1 / alpha if res["alpha"] is not None else 1 / lam[-1]
    assert abs(res["ratio_pred"] - np.linalg.norm(r0 - eta * tg @ r0) / np.linalg.norm(r0)) < 1e-10
    assert res["general_position"] and res["input_rank"] == 4


def test_nonlinear_point_against_the_dense_step():
    cfg, res = _point("ngplus")
    model, params, x, y, J = _dense(cfg)
    r0 = np.asarray(model.apply(params, x) - y)
    d = oracle.flat_direction(nn.ngd_direction(model, params, x, y, "ngplus"))
    phi = J @ d                                         # Phi(r_0) = J d(r_0), J dense
    cos = r0.reshape(-1) @ phi / (np.linalg.norm(r0) * np.linalg.norm(phi))
    assert abs(res["radiality"] - np.sqrt(1 - cos ** 2)) < 1e-9
    assert abs(res["lr"] - r0.reshape(-1) @ phi / (phi @ phi)) < 1e-9 * res["lr"]
    assert abs(res["degree"] + 1) < 1e-8 and abs(res["lr_power"] - 2) < 1e-8   # NG+ empirical: degree -1
    assert not res["linear"] and res["declared"] is None


def test_exact_ngd_is_isotropic_at_finite_and_infinite_width():
    _, res = _point("exact")
    assert res["err"] < 1e-10 and res["err_inf"] < 1e-10 and abs(res["alpha_hat"] - 1) < 1e-12


# ----------------------------------------------------------------------------- classes and claims
def _entry(errs, err_inf, seeds=2, b=-0.5):
    rows = [{"width": w, "seed": s, "err": e * (1 + 0.01 * s)} for w, e in zip((64, 128, 256), errs) for s in
            range(seeds)]
    from ntk_ngd.experiments import fit_power_law, mean_by
    return {"by_width": mean_by(rows, ["width"], "err"), "err_inf": err_inf,
            "fit": None if max(errs) < 1e-8 else fit_power_law(rows, "err")}


def test_classification_rules():
    assert atlas.classify(_entry([1e-13, 1e-12, 1e-14], 0.0)) == "finite"
    assert atlas.classify(_entry([0.4, 0.2, 0.1], 1e-9)) == "wide"
    assert atlas.classify(_entry([0.4, 0.2, 0.1], 0.05)) == "none"       # falls, but not to zero
    assert atlas.classify(_entry([0.3, 0.31, 0.3], None)) == "none"


def test_atlas_command_on_a_tiny_grid(tmp_path, capsys):
    argv = ["atlas", "--setting", "synthetic:relu:2", "--widths", "8", "16", "32", "--seeds", "0", "1",
            "--methods", "exact", "kfac", "gd", "shampoo[accumulate=True]", "--n-train", "4", "--n-test", "3",
            "--steps", "2", "--out", str(tmp_path / "a"), "--no-progress"]
    assert cli.main(argv) == 0
    out = capsys.readouterr().out
    assert "atlas claims PASS" in out and "[PASS] atlas_finite" in out and "[PASS] atlas_input_norms" in out
    data = json.loads((tmp_path / "a" / "atlas.json").read_text())
    rows = {r["label"]: r for r in data["table"]}
    assert set(rows) == {"exact", "kfac", "gd", "shampoo[accumulate=True]"}
    assert rows["exact"]["class"] == "finite" and rows["kfac"]["class"] == "finite" and rows["gd"]["class"] == "none"
    assert abs(rows["shampoo[accumulate=True]"]["degree"]) < 1e-6     # p = 1/4: degree 1 - 4p = 0
    for f in ("atlas.csv", "REPORT.md", "atlas_errors.png", "atlas_spectra.png", "atlas_training_synthetic_relu_L2.png"):
        assert (tmp_path / "a" / f).stat().st_size > 0
    assert cli.main(argv) == 0   # resumes: every point from the store
    with pytest.raises(SystemExit):
        cli.main(["atlas", "--setting", "mnist:relu:3"])


def test_reproduce_atlas_entry(tmp_path, monkeypatch, capsys):
    """reproduce --atlas runs the atlas as one more entry (here on a tiny grid) and lists its claims."""
    import functools
    tiny = functools.partial(atlas.AtlasConfig, settings=({"dataset": "synthetic", "activation": "erf", "depth": 2},),
                             widths=(8, 16, 32), seeds=(0,), methods=("exact", "block_diagonal"), n_train=4,
                             n_test=3, steps=1)
    monkeypatch.setattr(atlas, "AtlasConfig", tiny)
    out = tmp_path / "r"
    argv = ["reproduce", "--quick", "--skip", "dynamics", "forster", "kfac_lr", "test", "width", "damping", "--atlas",
            "--out", str(out), "--store", str(tmp_path / "s"), "--no-progress"]
    assert cli.main(argv) == 0
    text = capsys.readouterr().out
    assert "[PASS] atlas_finite" in text and "claims PASS" in text
    assert "atlas/REPORT.md" in (out / "REPORT.md").read_text() and (out / "atlas" / "REPORT.md").exists()
    claims = {c["id"]: c["passed"] for c in json.loads((out / "reproduce.json").read_text())["claims"]}
    assert claims["atlas_finite"] and claims["atlas_alpha"]
