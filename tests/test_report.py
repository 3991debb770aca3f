"""Report tables: a fit over one seed has no interval, and says so instead of printing [nan, nan]."""
import numpy as np

from ntk_ngd import experiments as ex
from ntk_ngd.report import fmt_interval, width_table


def _rows(seeds, b=-0.5):
    rng = np.random.default_rng(0)
    return [{"method": "exact", "damping": 0.0, "damping_scale": "absolute", "width": w, "seed": s,
             "err_emp_max": 3.0 * w ** b * np.exp(0.05 * rng.standard_normal())}
            for s in seeds for w in (64, 128, 256, 512)]


def test_one_seed_interval_is_na_and_several_seeds_give_the_t_interval():
    one = width_table(ex.width_summary(_rows([0]), ["err_emp_max"]), "err_emp_max")
    assert "n/a (1 seed)" in one and "nan" not in one
    summary = ex.width_summary(_rows([0, 1, 2]), ["err_emp_max"])
    fit = summary["groups"][0]["metrics"]["err_emp_max"]["fit"]
    per_seed = np.array(list(fit["exponent_per_seed"].values()))
    # the interval is mean +- t_{0.975, 2} s / sqrt(3), t = 4.302652729911275 (scipy.stats.t.ppf)
    half = 4.302652729911275 * per_seed.std(ddof=1) / np.sqrt(3)
    expected = f"[{per_seed.mean() - half:.3f}, {per_seed.mean() + half:.3f}]"
    assert expected in width_table(summary, "err_emp_max")
    assert abs(fit["exponent"] + 0.5) < 0.1
    assert fmt_interval([float("nan"), float("nan")], 0) == "n/a (0 seeds)"


def _two_activation_store(path):
    """A store of relu and erf runs (the same method, widths and seeds) with known power laws:
    err_emp_max = 2 M^-0.5 (relu) and 3 M^-1 (erf), times a seed-dependent factor."""
    from ntk_ngd import ResultsStore
    store = ResultsStore(path)
    rng = np.random.default_rng(1)
    for act, a, b in (("relu", 2.0, -0.5), ("erf", 3.0, -1.0)):
        for s in (0, 1, 2):
            for w in (64, 128, 256, 512):
                cfg = ex.RunConfig(method="exact", activation=act, width=w, seed=s, n_train=8).to_dict()
                store.put(cfg, {"err_emp_max": a * w ** b * np.exp(0.05 * rng.standard_normal()), "lr": 0.5})
    return store


def test_report_never_pools_activations(tmp_path):
    """relu and erf runs in one store are two series (fits, labels, CSV column), not six 'seeds'."""
    import csv
    from ntk_ngd.report import report_store, store_rows
    store = _two_activation_store(tmp_path / "store")
    s = report_store(store, tmp_path / "out", metrics=["err_emp_max"], kinds=("width",))
    groups = s["width"]["groups"]
    assert [g["activation"] for g in groups] == ["relu", "erf"] and s["width"]["by"] == ["method", "activation"]
    rows = store_rows(store)
    for g in groups:  # the pooled exponent of each series against numpy's own log-log fit of its rows
        mine = [r for r in rows if r["activation"] == g["activation"]]
        b_ref = np.polyfit(np.log([r["width"] for r in mine]), np.log([r["err_emp_max"] for r in mine]), 1)[0]
        assert abs(g["metrics"]["err_emp_max"]["fit"]["exponent"] - b_ref) < 1e-12
        assert len(g["metrics"]["err_emp_max"]["fit"]["exponent_per_seed"]) == 3
    with open(tmp_path / "out" / "sweep_runs.csv") as f:
        table = list(csv.DictReader(f))
    assert {r["activation"] for r in table} == {"relu", "erf"} and len(table) == 24
    report = (tmp_path / "out" / "sweep_REPORT.md").read_text()
    assert "exact (activation=relu)" in report and "exact (activation=erf)" in report
    assert "settings that vary: width, activation" in report


def test_report_says_why_there_is_no_width_fit(tmp_path):
    from ntk_ngd import ResultsStore
    from ntk_ngd.report import report_store
    store = ResultsStore(tmp_path / "store")
    for w in (64, 128):
        store.put(ex.RunConfig(method="exact", width=w).to_dict(), {"err_emp_max": w ** -0.5})
    s = report_store(store, tmp_path / "out", metrics=["err_emp_max"], kinds=("width",))
    assert "width" not in s and "no group has 3 or more widths" in s["width_missing"]
    assert "No width fits" in (tmp_path / "out" / "sweep_REPORT.md").read_text()
    one = ex.width_summary([{"method": "exact", "width": 64, "seed": 0, "err_emp_max": 0.1}], ["err_emp_max"])
    assert "one width (M = 64)" in width_table(one, "err_emp_max")
