"""Experiment logic: fits against independent references, comparisons against theory, figure scripts."""
import json
import runpy
import sys
from pathlib import Path

import numpy as np
import pytest
from scipy import stats

from ntk_ngd import experiments as ex
from ntk_ngd.report import store_rows
from ntk_ngd.store import ResultsStore

ROOT = Path(__file__).resolve().parents[1]
TINY = dict(dataset="synthetic", n_train=6, n_test=4, dim=8, width=16, steps=2)


# ----------------------------------------------------------------------------- fits
def test_fit_power_law_recovers_exponent_and_prefactor():
    rows = [{"width": w, "seed": s, "e": 3.0 * w ** -0.5} for w in (64, 128, 256, 512) for s in (0, 1, 2)]
    f = ex.fit_power_law(rows, "e")
    assert f["exponent"] == pytest.approx(-0.5, abs=1e-12)
    assert f["prefactor"] == pytest.approx(3.0, rel=1e-10)
    assert f["ci_halfwidth"] == pytest.approx(0.0, abs=1e-10)
    assert f["widths"] == [64, 128, 256, 512] and f["n_runs"] == 12


def test_fit_power_law_interval_matches_polyfit_and_t_quantile():
    rng = np.random.default_rng(1)
    widths = np.array([2 ** k for k in range(8, 14)])
    rows = [{"width": int(w), "seed": s, "e": 0.7 * w ** (-0.5 + 0.05 * s) * np.exp(0.1 * rng.standard_normal())}
            for s in range(4) for w in widths]
    f = ex.fit_power_law(rows, "e")
    per_seed = [np.polyfit(np.log(widths), np.log([r["e"] for r in rows if r["seed"] == s]), 1)[0] for s in range(4)]
    assert [f["exponent_per_seed"][s] for s in range(4)] == pytest.approx(per_seed, abs=1e-10)
    pooled = np.polyfit(np.log([r["width"] for r in rows]), np.log([r["e"] for r in rows]), 1)[0]
    assert f["exponent"] == pytest.approx(pooled, abs=1e-10)
    half = stats.t.ppf(0.975, 3) * np.std(per_seed, ddof=1) / 2.0
    assert f["ci"] == pytest.approx([np.mean(per_seed) - half, np.mean(per_seed) + half], abs=1e-10)
    lo, hi = f["bootstrap_ci"]
    assert min(per_seed) - 1e-9 <= lo <= hi <= max(per_seed) + 1e-9


def test_fit_power_law_drops_missing_and_needs_two_widths():
    rows = [{"width": 8, "seed": 0, "e": 1.0}, {"width": 16, "seed": 0, "e": None}, {"width": 16, "seed": 1, "e": 0.0}]
    assert ex.fit_power_law(rows, "e") is None
    rows.append({"width": 32, "seed": 0, "e": 0.5})
    f = ex.fit_power_law(rows, "e")
    assert f["exponent"] == pytest.approx(-0.5) and f["n_dropped"] == 2


def test_claim_exponent_two_sided_and_bound():
    """Rows with e = M^b exactly: the pooled fit recovers b, and the claims compare it with -1/2."""
    def summary(b):
        rows = [{"method": "exact", "damping": 0.0, "damping_scale": "absolute", "width": w, "seed": s,
                 "err_emp_max": (1 + 0.1 * s) * w ** b} for w in (256, 512, 1024, 2048) for s in (0, 1, 2)]
        return ex.width_summary(rows, ["err_emp_max"])
    for b, near, bounded in ((-0.5, True, True), (-0.66, False, True), (-1.0, False, True), (-0.3, False, False)):
        ws = summary(b)
        c = ex.claim_exponent(ws, "exact")
        assert c.passed == near and c.measured["exponent"] == pytest.approx(b, abs=1e-10)
        assert ex.claim_exponent(ws, "exact", bound=True).passed == bounded
    assert not ex.claim_exponent(summary(-0.5), "kfac").passed  # no fit for that method


def test_damping_summary_matrix_and_interior_optimum():
    err = {0.0: 5.0, 1e-6: 0.1, 1e-2: 0.9}
    rows = [{"method": "unit_wise", "width": w, "damping": d, "seed": s, "err_emp_max": e * (256 / w) + 0.01 * s}
            for w in (256, 1024) for d, e in err.items() for s in (0, 1)]
    assert ex.damping_summary(rows)["groups"] == []  # default metric err_ideal_max absent
    g = ex.damping_summary(rows, "err_emp_max")["groups"][0]
    assert g["widths"] == [256, 1024] and g["dampings"] == [0.0, 1e-6, 1e-2]
    assert g["matrix"][0] == pytest.approx([5.005, 0.105, 0.905])
    assert g["best"][1024] == {"damping": 1e-6, "err_emp_max": pytest.approx(0.03), "u_shaped": True}
    c = ex.claim_damping_tradeoff({"groups": [g]}, "unit_wise")
    assert c.passed and c.measured["best_damping"] == {256: 1e-6, 1024: 1e-6}
    two = [r for r in rows if r["damping"] != 1e-2]  # two dampings make no curve
    assert ex.damping_summary(two, "err_emp_max")["groups"] == []


# ----------------------------------------------------------------------------- configs
def test_run_config_validates_and_round_trips():
    cfg = ex.RunConfig(method="kfac", lr="0.5", classes=[3, 8], widths=[64, 32, 1])
    assert cfg.lr == 0.5 and cfg.classes == (3, 8) and cfg.widths == (64, 32, 1)
    assert ex.RunConfig.from_dict(json.loads(json.dumps(cfg.to_dict()))) == cfg
    assert ex.RunConfig(damping=2.0, width=256, damping_scale="per_width").rho == pytest.approx(2.0 / 256)
    for bad in (dict(method="adam"), dict(lr=-1.0), dict(steps=1.5), dict(damping=-1.0), dict(dtype="f16")):
        with pytest.raises(ValueError):
            ex.RunConfig(**bad)
    with pytest.raises(ValueError, match="unknown RunConfig fields"):
        ex.RunConfig.from_dict({"widht": 3})


def test_method_options_only_what_the_method_accepts():
    assert ex.method_options(ex.RunConfig(method="kfac", forster=True)) == {"forster": True}
    assert ex.method_options(ex.RunConfig(method="kfac", options={"damping_mode": "factored"})) == {
        "damping_mode": "factored"}
    assert ex.method_options(ex.RunConfig(method="exact", forster=True, force=True)) == {"force": True}


# ----------------------------------------------------------------------------- compare
def test_compare_exact_ngd_against_theory_and_independent_loss():
    import jax
    cfg = ex.RunConfig(method="exact", **TINY)
    c = ex.run_comparison(cfg)
    s = c.summary()
    data = ex.load_data(cfg)
    f0 = np.asarray(c.model.apply(c.model.init(jax.random.PRNGKey(0)), data.x_train))
    assert s["loss_train"]["nn"][0] == pytest.approx(0.5 * np.mean(np.sum((f0 - data.y_train) ** 2, 1)), rel=1e-12)
    # exact NGD at eta = 1/alpha = 1: the linearized model fits the training set in one step
    assert s["alpha"] == 1.0 and s["lr"] == 1.0 and s["ratio_theory"] == 0.0
    assert s["iso_err"] < 1e-8 and s["ratio_pred"] < 1e-8 and s["loss_train"]["empirical"][1] < 1e-16
    assert s["err_train"]["empirical"][0] < 1e-12 and s["err_train"]["analytic"][0] < 1e-12
    # e_1 of the empirical predictor is then the network's own one-step residual
    assert s["err_emp_1"] == pytest.approx(s["ratio_nn"], rel=1e-6)
    assert s["n_params"] == c.model.n_params and len(s["loss_test"]["nn"]) == cfg.steps + 1
    assert s["drift"] > 0


def test_compare_gd_and_diagonal_have_no_alpha_and_diagonal_no_analytic():
    s = ex.compare(ex.RunConfig(method="diagonal", **TINY))
    assert s["alpha"] is None and s["iso_err"] is None and s["err_an_max"] is None
    assert "analytic" in s["notes"] and s["loss_train"]["analytic"] is None
    g = ex.compare(ex.RunConfig(method="gd", analytic=False, **TINY))
    # GD at eta = 1/lambda_max: 0 <= eta lambda <= 1, so the linearized one-step ratio is <= 1 - eta lambda_min
    assert 0 < g["ratio_pred"] <= 1 - g["lr"] * g["spec_min"] + 1e-12 and g["lr"] == pytest.approx(1 / g["spec_max"])


def test_sweep_point_records_an_invalid_width_as_an_error(tmp_path):
    from ntk_ngd.sweep import run_sweep
    pts = ex.sweep_points(ex.RunConfig(method="exact", analytic=False, **TINY), width=[16, 0])
    summary = run_sweep(ex.sweep_point, pts, tmp_path, progress=False)
    assert summary.ran == 2 and summary.failed == 1
    recs = {r["config"]["width"]: r for r in ResultsStore(tmp_path).records()}
    assert recs[16]["status"] == "ok" and recs[0]["status"] == "error"
    assert "width must be an integer >= 1, got 0" in recs[0]["error"]
    assert recs[16]["meta"]["dtype"] == "float64" and "jax_version" in recs[16]["meta"]


def test_sweep_point_that_cannot_fit_is_refused_before_allocating(tmp_path):
    """A width whose parameters alone exceed the machine's memory (2^21: 3 x 2^42 entries) is recorded
    as a MemoryError naming the estimate, instead of the OOM killer ending the sweep."""
    from ntk_ngd.memory import available_bytes, check_fits
    from ntk_ngd.sweep import run_sweep
    pts = ex.sweep_points(ex.RunConfig(method="exact", analytic=False, **TINY), width=[16, 2 ** 21])
    summary = run_sweep(ex.sweep_point, pts, tmp_path, progress=False)
    assert summary.ran == 2 and summary.failed == 1
    recs = {r["config"]["width"]: r for r in ResultsStore(tmp_path).records()}
    assert recs[16]["status"] == "ok" and "MemoryError" in recs[2 ** 21]["error"]
    assert "needs about" in recs[2 ** 21]["error"] and "available" in recs[2 ** 21]["error"]
    # the estimate counts at least the parameters, the update and the direction: 3 P words
    est = check_fits("gd", (8, 16, 16, 1), 6, 4)
    assert est.total >= 3 * 8 * (16 * 9 + 16 * 17 + 17) and available_bytes() > 0


# ----------------------------------------------------------------------------- figure scripts
def _script(name, argv, monkeypatch):
    monkeypatch.syspath_prepend(str(ROOT / "experiments"))
    monkeypatch.setattr(sys, "argv", [name] + argv)
    runpy.run_path(str(ROOT / "experiments" / name), run_name="__main__")


def test_width_sweep_script_outputs_match_the_store(tmp_path, monkeypatch):
    out, store = tmp_path / "fig", tmp_path / "store"
    _script("b_width_sweep.py", ["--quick", "--dataset", "synthetic", "--n-train", "6", "--widths", "8", "16", "32",
                                 "--seeds", "0", "--methods", "exact", "--steps", "1", "--out", str(out),
                                 "--store", str(store), "--no-progress"], monkeypatch)
    for f in ("width_sweep_runs.csv", "width_sweep_summary.json", "width_sweep_REPORT.md",
              "width_sweep_width_err_emp_max.png"):
        assert (out / f).stat().st_size > 0, f
    rows = [r for r in store_rows(store) if r["status"] == "ok"]
    assert len(rows) == 3
    summary = json.loads((out / "width_sweep_summary.json").read_text())
    fit = summary["width"]["groups"][0]["metrics"]["err_emp_max"]["fit"]
    ref = np.polyfit(np.log([r["width"] for r in rows]), np.log([r["err_emp_max"] for r in rows]), 1)[0]
    assert fit["exponent"] == pytest.approx(ref, abs=1e-10)
    import csv
    with open(out / "width_sweep_runs.csv") as f:
        table = list(csv.DictReader(f))
    assert {"method", "width", "seed", "err_emp_max", "iso_err", "ratio_nn", "drift"} <= set(table[0])
    by_key = {r["key"]: r for r in rows}
    for t in table:
        assert float(t["err_emp_max"]) == pytest.approx(by_key[t["key"]]["err_emp_max"], rel=1e-12)


def test_kfac_lr_script_outputs(tmp_path, monkeypatch):
    out = tmp_path / "kf"
    _script("f_kfac_lr.py", ["--dataset", "synthetic", "--n-train", "6", "--width", "16", "--steps", "3",
                             "--out", str(out)], monkeypatch)
    assert (out / "kfac_lr.png").stat().st_size > 0
    res = json.loads((out / "kfac_lr.json").read_text())
    assert {"config", "meta", "result"} <= set(res) and res["meta"]["dtype"] == "float64"
    theory, paper = res["result"]["runs"]["theory"], res["result"]["runs"]["paper"]
    L, N = 3, 6
    assert theory["alpha"] == (L - 1) * N + 1 and theory["alpha_paper"] == N * L
    assert theory["lr"] == pytest.approx(1 / ((L - 1) * N + 1)) and paper["lr"] == pytest.approx(1 / (N * L))
    assert paper["ratio_theory_alpha"] == pytest.approx(1 - ((L - 1) * N + 1) / (N * L))
    assert paper["curve_theory"][1] == pytest.approx(paper["loss_nn"][0] * paper["ratio_theory_alpha"] ** 2)
    with open(out / "kfac_lr.csv") as f:
        assert f.readline().strip().split(",")[:3] == ["eta_from", "lr", "alpha"]
