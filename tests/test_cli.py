"""The ntk-ngd command: every subcommand on a tiny config, --help, and a sweep killed and resumed."""
import argparse
import json
import shutil
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import pytest

from ntk_ngd import cli
from ntk_ngd import experiments as ex
from ntk_ngd.store import ResultsStore, config_key

TINY = ["--dataset", "synthetic", "--n-train", "6", "--n-test", "4", "--dim", "8", "--steps", "2"]


def _exe():
    found = shutil.which("ntk-ngd") or str(Path(sys.executable).with_name("ntk-ngd"))
    assert Path(found).exists(), "console script ntk-ngd not installed (pip install -e .)"
    return found


def test_help_subprocess_lists_subcommands():
    out = subprocess.run([_exe(), "--help"], capture_output=True, text=True, timeout=120, check=True).stdout
    for sub in ("train", "sweep", "reproduce", "report"):
        assert sub in out


def test_every_option_has_help_text():
    parser = cli.build_parser()
    subs = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    for name, sp in subs.choices.items():
        for action in sp._actions:
            if action.option_strings and action.dest != "help":
                assert action.help or action.choices, f"{name} {action.option_strings} has no help"
        sp.format_help()  # formats without error (defaults interpolated)


def test_train_prints_table_and_writes_json(tmp_path, capsys):
    path = tmp_path / "run.json"
    assert cli.main(["train", *TINY, "--width", "16", "--method", "block_diagonal", "--json", str(path)]) == 0
    out = capsys.readouterr().out
    assert "train NN" in out and "train emp" in out and "test ana" in out
    assert len([l for l in out.splitlines() if l.strip()[:1].isdigit()]) == 3  # steps 0, 1, 2
    rec = json.loads(path.read_text())
    assert rec["config"]["method"] == "block_diagonal" and rec["config"]["width"] == 16
    assert {"jax_version", "dtype", "device"} <= set(rec["meta"]) and rec["meta"]["dtype"] == "float64"
    r = rec["result"]
    assert r["alpha"] == 3.0 and r["lr"] == pytest.approx(1 / 3)
    assert len(r["loss_train"]["nn"]) == 3 and len(r["err_train"]["analytic"]) == 3
    assert r["loss_train"]["empirical"][1] < 1e-16  # linearized BD NGD at eta = 1/L: one step


def test_train_float32_and_lr_number(tmp_path, capsys):
    path = tmp_path / "f32.json"
    assert cli.main(["train", *TINY, "--width", "16", "--method", "gd", "--lr", "0.5", "--no-analytic",
                     "--dtype", "float32", "--json", str(path)]) == 0
    rec = json.loads(path.read_text())
    assert rec["meta"]["dtype"] == "float32" and rec["config"]["dtype"] == "float32"
    assert rec["result"]["lr"] == 0.5 and rec["result"]["loss_train"]["analytic"] is None
    import jax
    assert jax.config.read("jax_enable_x64")  # restored after main()


def test_sweep_records_failures_and_report(tmp_path, capsys):
    store, rep = tmp_path / "store", tmp_path / "rep"
    # K-FAC's stated condition N <= M_0 fails on 4 input features with N = 6: one point errs, one runs
    argv = ["sweep", *TINY, "--dim", "4", "--method", "exact", "kfac", "--width", "16", "--seed", "0",
            "--no-analytic", "--store", str(store), "--no-progress", "--report", str(rep)]
    assert cli.main(argv) == 0
    assert "ran=2 skipped=0 failed=1" in capsys.readouterr().out
    recs = {r["config"]["method"]: r for r in ResultsStore(store).records()}
    assert recs["exact"]["status"] == "ok" and recs["kfac"]["status"] == "error"
    assert "kfac" in recs["kfac"]["error"] and "M_0" in recs["kfac"]["error"]
    text = (rep / "sweep_REPORT.md").read_text()
    assert "Failed grid points" in text and (rep / "sweep_runs.csv").exists()
    assert cli.main(argv) == 0  # rerun: both points skipped (the error is kept, not retried)
    assert "ran=0 skipped=2" in capsys.readouterr().out
    assert cli.main(["report", "--store", str(store), "--out", str(rep), "--name", "again"]) == 0
    assert (rep / "again_summary.json").exists()


def test_sweep_resumes_after_kill(tmp_path):
    store = tmp_path / "store"
    widths, seeds = ["8", "12"], ["0", "1"]
    cmd = [_exe(), "sweep", *TINY, "--method", "exact", "--width", *widths, "--seed", *seeds, "--steps", "1",
           "--no-analytic", "--store", str(store), "--no-progress"]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    rs = ResultsStore(store)
    deadline = time.monotonic() + 120
    while len(rs.done_keys()) < 1 and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.02)
    proc.kill()
    proc.wait()
    first = rs.done_keys()
    assert 1 <= len(first) < 4, "the sweep was not killed half-way"
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=300, check=True).stdout
    assert f"skipped={len(first)}" in out and "failed=0" in out
    base = cli.run_config(cli.build_parser().parse_args(cmd[1:]), method="exact", width=8, damping=0.0, seed=0)
    points = ex.sweep_points(base, method=["exact"], width=[int(w) for w in widths], damping=[0.0],
                             seed=[int(s) for s in seeds])
    keys = Counter(r["key"] for r in rs.history())
    assert keys == Counter(config_key(p) for p in points)  # every grid point exactly once
    assert all(r["status"] == "ok" for r in rs.records())


def test_sweep_on_a_running_dask_cluster(tmp_path, capsys):
    """`sweep --backend dask --scheduler ADDRESS`: the points run in the worker processes of an existing
    (here local, 2-process) cluster and land in the store once each."""
    dd = pytest.importorskip("dask.distributed", reason="dask[distributed] not installed")
    store = tmp_path / "store"
    with dd.LocalCluster(n_workers=2, processes=True, threads_per_worker=1, dashboard_address=None) as cluster:
        argv = ["sweep", *TINY, "--method", "exact", "gd", "--width", "8", "16", "--seed", "0",
                "--no-analytic", "--store", str(store), "--backend", "dask", "--scheduler",
                cluster.scheduler_address, "--no-progress"]
        assert cli.main(argv) == 0
    assert "ran=4 skipped=0 failed=0" in capsys.readouterr().out
    recs = ResultsStore(store).records()
    assert sorted((r["config"]["method"], r["config"]["width"]) for r in recs) == [
        ("exact", 8), ("exact", 16), ("gd", 8), ("gd", 16)]
    assert all(r["status"] == "ok" and r["result"]["alpha"] in (1.0, None) for r in recs)


REPO = Path(__file__).resolve().parents[1]


def _readme_main_job() -> list:
    """The arguments of the README's first command (``... ntk-ngd reproduce ARGS``)."""
    text = (REPO / "README.md").read_text()
    line = next(l for l in text.splitlines() if "ntk-ngd reproduce" in l and "pip install" in l)
    return line.split("ntk-ngd reproduce", 1)[1].split()


def test_reproduce_tiny(tmp_path, capsys, monkeypatch):
    """The tiny reproduction prints one line per claim and a "k/n claims PASS" summary that counts them.
    With --methods exact kfac and the forster/test entries skipped, the claims are dynamics' one_step,
    curves_coincide, follows_linearization, isotropy and kfac_lr's constant (3 sweep widths < 4 and
    no unit-wise damping sweep: no sweep claims), n = 5. At M = 24, N = 8 the robust ones pass:
    exact NGD is isotropic at any width (Theta_G = I up to rounding), K-FAC's Theta_G stays within
    10% of alpha I (spectrum 15.5..16.4 vs alpha = 17: the first layer's leverage scores, the
    standardized inputs have rank N - 1) and its loss curve within 6% of exact NGD's, and the
    trajectory at eta = 1/(NL) follows alpha = (L-1)N+1. The two that need width fail there:
    L_1/L_0 = 0.28 (exact), 0.26 (kfac) > 0.1 and max_t e_t = 0.53, 0.45 > 0.2 (a network of
    width 24 is far from its linearization): 3/5."""
    import re
    # run as the README's main job does (its own arguments, default output folders) inside a fresh
    # clone of the repository, which git status must leave clean (outputs go to the ignored results/)
    if not (REPO / ".git").exists() or shutil.which("git") is None:
        pytest.skip("not a git checkout")
    clone = tmp_path / "clone"
    subprocess.run(["git", "clone", "-q", "--no-hardlinks", str(REPO), str(clone)], check=True, timeout=120)
    monkeypatch.chdir(clone)
    main_job = _readme_main_job()
    assert main_job == ["--quick"], main_job
    out = store = clone / "results" / "reproduce-quick"
    argv = ["reproduce", *main_job, "--width", "24", "--n-train", "8", "--n-test", "8", "--steps", "2",
            "--methods", "exact", "kfac", "--skip", "forster", "test",
            "--sweep-widths", "12", "16", "24", "--sweep-seeds", "0", "--sweep-methods", "exact",
            "--damping-widths", "16", "--damping-values", "0", "1e-3", "1", "--damping-methods", "exact",
            "--no-progress", "--strict"]
    assert cli.main(argv) == 1   # --strict: 2 of the 5 claims fail at this width (below), so exit status 1
    status = subprocess.run(["git", "status", "--porcelain"], cwd=clone, capture_output=True, text=True,
                            check=True).stdout
    assert status == "", status
    assert (store / "width" / "records.jsonl").exists()
    text = capsys.readouterr().out
    lines = [re.match(r"^\[(PASS|FAIL)\] (\w+): ", l) for l in text.splitlines()]
    claims = {m.group(2): m.group(1) == "PASS" for m in lines if m}
    assert len(claims) == len([m for m in lines if m])           # one line per claim, ids unique
    summary = re.findall(r"^(\d+)/(\d+) claims PASS; report: ", text, re.M)
    assert len(summary) == 1, text
    k, n = map(int, summary[0])
    assert n == len(claims) and k == sum(claims.values()), (summary, claims)
    assert list(claims) == ["one_step", "curves_coincide", "follows_linearization", "isotropy",
                            "kfac_lr_constant"], claims
    must_pass = ("curves_coincide", "isotropy", "kfac_lr_constant")
    assert all(claims[c] for c in must_pass), claims
    assert not claims["one_step"] and not claims["follows_linearization"], claims   # width 24: finite-width effects
    assert (k, n) == (3, 5)
    report = (out / "REPORT.md").read_text()
    for png in ("dynamics.png", "kfac_lr.png", "width_width_err_emp_max.png", "damping_heatmap_err_ideal_max.png"):
        assert (out / png).stat().st_size > 0 and png in report + (out / "width_REPORT.md").read_text() + (
            out / "damping_REPORT.md").read_text()
    numbers = json.loads((out / "reproduce.json").read_text())
    assert {"config", "meta", "timings_s", "claims", "dynamics", "kfac_lr", "width_sweep"} <= set(numbers)
    # the JSON claims are the printed ones, with the same verdicts
    assert {c["id"]: c["passed"] for c in numbers["claims"]} == claims
    iso = next(c for c in numbers["claims"] if c["id"] == "isotropy")["measured"]
    assert iso["exact"] < 1e-12 and 0 < iso["kfac"] <= 0.1
    assert numbers["dynamics"]["exact"]["alpha"] == 1.0 and numbers["dynamics"]["kfac"]["alpha"] == 2 * 8 + 1
    assert set(numbers["dynamics"]) == {"exact", "kfac"}
    assert numbers["dynamics"]["kfac"]["config"]["method"] == "kfac"
    fit = numbers["width_sweep"]["width"]["groups"][0]["metrics"]["err_emp_max"]["fit"]
    assert fit["widths"] == [12, 16, 24] and list(fit["exponent_per_seed"]) == ["0"]


def _idx(arr):
    """IDX bytes (the MNIST file format): magic 0x0000 08 ndim, big-endian dims, uint8 data."""
    import numpy as np
    head = bytes([0, 0, 8, arr.ndim]) + b"".join(int(n).to_bytes(4, "big") for n in arr.shape)
    return head + np.ascontiguousarray(arr, dtype=np.uint8).tobytes()


def _mnist_like(directory):
    """Gzipped IDX files in the MNIST layout (28 x 28 uint8, digits 0-9) made from the bundled 8 x 8
    digits (each pixel a 3 x 3 block, 2-pixel border), so the pipeline sees the real format and M_0 = 784."""
    import gzip
    import numpy as np
    from sklearn.datasets import load_digits
    d = load_digits()
    img = np.kron(d.images, np.ones((3, 3)))                                   # (n, 24, 24), values 0..16
    img = np.pad(img, ((0, 0), (2, 2), (2, 2))) * (255 / 16)
    img, lab = img.round().astype(np.uint8), d.target.astype(np.uint8)
    directory.mkdir()
    for name, arr in (("train-images-idx3-ubyte", img[:1200]), ("train-labels-idx1-ubyte", lab[:1200]),
                      ("t10k-images-idx3-ubyte", img[1200:]), ("t10k-labels-idx1-ubyte", lab[1200:])):
        (directory / (name + ".gz")).write_bytes(gzip.compress(_idx(arr)))


def _cifar_like(directory):
    """CIFAR-10 python batches (pickled dicts, (n, 3072) uint8 rows, labels 0-9) of random images."""
    import pickle
    import numpy as np
    rng = np.random.default_rng(0)
    directory.mkdir()
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        lab = rng.integers(0, 10, 60)
        with open(directory / name, "wb") as f:
            pickle.dump({b"labels": lab.tolist(), b"data": rng.integers(0, 256, (60, 3072), dtype=np.uint8)}, f)


@pytest.mark.parametrize("dataset, make, m0, ratio", [("mnist", _mnist_like, 784, 0.1), ("cifar10", _cifar_like, 3072, 0.8)])
def test_reproduce_on_local_files_in_the_paper_formats(tmp_path, capsys, dataset, make, m0, ratio):
    """`reproduce --dataset mnist|cifar10 --data-path` reads files in the real formats (no download) and
    runs the paper's setting on them (M_0 = 784 / 3072, N = 16 here instead of 100 for time)."""
    make(tmp_path / "data")
    out = tmp_path / "figs"
    argv = ["reproduce", "--dataset", dataset, "--data-path", str(tmp_path / "data"), "--width", "64",
            "--n-train", "16", "--n-test", "8", "--steps", "2", "--methods", "exact", "block_diagonal",
            "--skip", "forster", "kfac_lr", "test", "width", "damping",
            "--out", str(out), "--store", str(tmp_path / "store"), "--no-progress"]
    assert cli.main(argv) == 0
    numbers = json.loads((out / "reproduce.json").read_text())
    run = numbers["dynamics"]["exact"]
    assert run["config"]["dataset"] == dataset and run["widths"] == [m0, 64, 64, 1]
    assert run["n_train"] == 16 and run["n_test"] == 8
    # exact NGD at eta = 1, width 64: one step takes the loss down to the linearization error (large for
    # random CIFAR-like images, whose unit-norm rows are nearly orthogonal)
    assert run["alpha"] == 1.0 and run["loss_ratio_nn"] < ratio
    assert run["loss_train"]["empirical"][1] < 1e-20  # the linearized model converges in one step
    assert (out / "dynamics.png").stat().st_size > 0 and "one_step" in capsys.readouterr().out


def test_reproduce_activation_and_sigma_b_reach_every_entry():
    """reproduce --activation erf --sigma-b 0.3: the entries' networks (single runs and sweeps)
    are erf networks with sigma_b = 0.3, and the defaults stay the paper's."""
    a = cli.build_parser().parse_args(["reproduce", "--quick", "--activation", "erf", "--sigma-b", "0.3"])
    rc = cli.reproduce_config(a)
    assert (rc.base().activation, rc.base().sigma_b) == ("erf", 0.3)
    for kind in ("width", "damping"):
        pts = ex.sweep_grid(rc, kind)
        assert pts and all((p["activation"], p["sigma_b"]) == ("erf", 0.3) for p in pts), pts[:1]
    default = cli.reproduce_config(cli.build_parser().parse_args(["reproduce", "--quick"])).base()
    assert (default.activation, default.sigma_b) == (ex.PAPER["activation"], ex.PAPER["sigma_b"]) == ("relu", 0.0)
