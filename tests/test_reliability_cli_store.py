"""No silent wrong result, outer floors: the CLI (argparse-level counts, one-line errors with exit 2,
the damping hint, nonzero exits when everything failed), the results store (records validated on
read, configs validated on write, writability checked before any computation) and data files whose
errors name the file."""
import gzip
import io
import json
import pickle
import tarfile

import jax
import numpy as np
import pytest

import ntk_ngd as nn
from ntk_ngd import cli
from ntk_ngd import data as D
from ntk_ngd.store import RECORDS_FILE, ResultsStore
from ntk_ngd.sweep import run_sweep

TINY = ["--dataset", "synthetic", "--n-train", "6", "--n-test", "4", "--dim", "8", "--steps", "1", "--no-analytic"]


# ----------------------------------------------------------------------------- CLI
@pytest.mark.parametrize("argv,match", [
    (["train", "--n-train", "0"], "--n-train: expected an integer >= 1, got 0"),
    (["train", "--n-test", "0"], "--n-test: expected an integer >= 1, got 0"),
    (["train", "--depth", "0"], "--depth: expected an integer >= 1, got 0"),
    (["train", "--depth=-2"], "--depth: expected an integer >= 1, got -2"),
    (["train", "--width", "2.5"], "--width: expected an integer >= 1, got '2.5'"),
    (["train", "--damping=-1e-3"], "--damping: expected a finite number >= 0, got -1e-3"),
    (["train", "--damping", "nan"], "--damping: expected a finite number >= 0, got nan"),
    (["train", "--sigma-w", "0"], "--sigma-w: expected a finite number > 0, got 0"),
    (["reproduce", "--width", "0"], "--width: expected an integer >= 1, got 0"),
    (["sweep", "--store", "s", "--width", "16", "0"], "--width: expected an integer >= 1, got 0"),
])
def test_counts_and_numbers_are_checked_by_argparse(argv, match, capsys):
    with pytest.raises(SystemExit) as e:
        cli.main(argv)
    assert e.value.code == 2 and match in capsys.readouterr().err


def _one_line_error(capsys, rc, expected):
    assert rc == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith("ntk-ngd: error: ") and expected in err[-1], err
    assert not any("Traceback" in line for line in err)
    return err[-1]


def test_expected_errors_are_one_line_and_debug_shows_the_traceback(tmp_path, capsys):
    # K-FAC needs N <= M_0 without Forster: its stated condition, as one line
    argv = ["train", *TINY, "--dim", "4", "--width", "8", "--method", "kfac"]
    _one_line_error(capsys, cli.main(argv), "kfac")
    with pytest.raises(ValueError, match="kfac"):
        cli.main(["--debug", *argv])
    _one_line_error(capsys, cli.main(["report", "--store", str(tmp_path / "typo")]), "no results store at")
    assert not (tmp_path / "typo").exists()  # the mistyped store was not created


def test_sweep_exits_nonzero_when_every_point_failed(tmp_path, capsys):
    argv = ["sweep", *TINY, "--dim", "4", "--width", "8", "16", "--method", "kfac", "--store", str(tmp_path / "s"),
            "--no-progress"]
    assert cli.main(argv) == 1
    assert "every one of the 2 grid points run failed" in capsys.readouterr().err
    ok = ["sweep", *TINY, "--width", "8", "--method", "exact", "--store", str(tmp_path / "t"), "--no-progress"]
    assert cli.main(ok) == 0


def test_unit_wise_divergence_at_rho_zero_hints_at_damping():
    jax.config.update("jax_enable_x64", True)
    ds = nn.synthetic(4, 2, 6, seed=0)
    model = nn.MLP((6, 16, 16, 1))
    params = model.init(jax.random.PRNGKey(0))
    with pytest.raises(FloatingPointError, match=r"unit-wise NGD at rho = 0 .* rho << 1/M"):
        nn.train(model, params, ds, "unit_wise", lr=1e200, steps=3)
    with pytest.raises(FloatingPointError, match="try damping > 0 or a smaller lr"):
        nn.train(model, params, ds, "exact", lr=1e200, steps=3)


# ----------------------------------------------------------------------------- store
def test_invalid_records_are_skipped_counted_and_reported(tmp_path):
    from ntk_ngd.report import report_store
    store = ResultsStore(tmp_path / "s")
    store.put({"method": "exact", "width": 8, "seed": 0}, {"err_emp_max": 0.1})
    lines = [{"key": "k1", "status": "ok", "result": {"a": 1}},                      # no config
             {"key": "k2", "status": "ok", "config": {"w": 1}, "result": [1, 2]},    # non-dict result
             {"key": "k3", "status": "error", "config": {"w": 1}, "error": None},    # error without text
             [1, 2, 3], "a string"]
    with open(store.file, "a") as f:
        f.write("\n".join(json.dumps(x) for x in lines) + "\n{torn line\n")
    assert len(store.records()) == 1 and store.invalid_lines == 6
    s = report_store(store, tmp_path / "out", kinds=())
    assert s["n_ok"] == 1 and s["n_invalid_lines"] == 6
    assert "(6 invalid lines skipped)" in (tmp_path / "out" / "sweep_REPORT.md").read_text()


def test_configs_and_results_are_validated_on_write(tmp_path):
    store = ResultsStore(tmp_path / "s")
    for bad, match in (([1, 2], "config must be a dict, got list"), ("w=1", "config must be a dict, got str")):
        with pytest.raises(ValueError, match=match):
            store.put(bad, {"y": 1})
    with pytest.raises(ValueError, match="result must be a dict"):
        store.put({"w": 1}, [1])
    calls = []
    with pytest.raises(ValueError, match="point 1 is list"):
        run_sweep(lambda c: calls.append(c) or {"y": 1}, [{"w": 1}, [2]], store, progress=False)
    assert calls == [] and store.records() == []


def test_an_unwritable_store_is_refused_before_any_point_is_computed(tmp_path):
    blocked = tmp_path / "s"
    (blocked / RECORDS_FILE).mkdir(parents=True)   # records.jsonl cannot be opened for appending (even as root)
    calls = []
    with pytest.raises(PermissionError, match="is not writable"):
        run_sweep(lambda c: calls.append(c) or {"y": 1}, [{"w": 1}], blocked, progress=False)
    assert calls == []
    afile = tmp_path / "file"
    afile.write_text("x")
    with pytest.raises(NotADirectoryError, match="is a file, not a directory"):
        ResultsStore(afile)


# ----------------------------------------------------------------------------- data files
def _idx(arr):
    import struct
    return struct.pack(">BBBB", 0, 0, 0x08, arr.ndim) + struct.pack(f">{arr.ndim}I", *arr.shape) + arr.tobytes()


def test_truncated_files_are_named(tmp_path):
    gz = tmp_path / "train-images-idx3-ubyte.gz"
    gz.write_bytes(gzip.compress(_idx(np.zeros((5, 2, 2), np.uint8)))[:-12])
    with pytest.raises(ValueError, match=f"{gz}'?: a gzip file that cannot be decompressed"):
        D.read_idx(str(gz))
    batch = pickle.dumps({b"data": np.zeros((3, 3072), np.uint8), b"labels": [0, 1, 0]})
    cdir = tmp_path / "cifar-10-batches-py"
    cdir.mkdir()
    for n in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        (cdir / n).write_bytes(batch if n != "data_batch_3" else batch[: len(batch) // 2])
    with pytest.raises(ValueError, match="data_batch_3: not a readable python pickle batch"):
        D.load_cifar10(str(cdir))
    tar = tmp_path / "cifar-10-python.tar.gz"
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as t:
        info = tarfile.TarInfo("cifar-10-batches-py/data_batch_1")
        info.size = len(batch)
        t.addfile(info, io.BytesIO(batch))
    tar.write_bytes(buf.getvalue()[:40])
    with pytest.raises(ValueError, match="cifar-10-python.tar.gz'?: not a readable tar archive"):
        D.load_cifar10(str(tar))
    npz = tmp_path / "mnist.npz"
    np.savez(npz, x_train=np.zeros((4, 784)), y_train=np.arange(4), x_test=np.zeros((4, 784)), y_test=np.arange(4))
    npz.write_bytes(npz.read_bytes()[:100])
    with pytest.raises(ValueError, match="MNIST npz file .*mnist.npz. cannot be read"):
        D.load_mnist(str(npz))
