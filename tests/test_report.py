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
