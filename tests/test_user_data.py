"""A user's own data: Dataset.from_arrays, .npz and .csv files (load_arrays, --dataset npz|csv), the
errors that name the file and the problem, and a run from the CLI whose config names the file."""
import json

import numpy as np
import pytest

from ntk_ngd import cli
from ntk_ngd import data as D
from ntk_ngd import experiments as ex


def _paper_preprocess(xtr, xte):
    """The paper's preprocessing written out: train mean/std standardization, rows to unit norm."""
    mu, sd = xtr.mean(0), xtr.std(0)
    z = lambda x: (x - mu) / sd
    unit = lambda x: x / np.linalg.norm(x, axis=1, keepdims=True)
    return unit(z(xtr)), unit(z(xte))


def _num(v) -> str:
    return repr(float(v))  # round-trips exactly


def _table(n=40, d=5, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((n, d))
    labels = np.arange(n) % 2 + 3          # classes 3 and 4
    values = x @ rng.standard_normal(d)    # a real-valued target
    return x, labels, values


# ----------------------------------------------------------------------------- from_arrays
def test_from_arrays_keeps_the_arrays_and_documents_info():
    x, _, v = _table()
    ds = D.Dataset.from_arrays(x[:30], v[:30], x[30:], v[30:], name="mine", note="hello")
    np.testing.assert_array_equal(ds.x_train, x[:30])
    np.testing.assert_array_equal(ds.y_train, v[:30, None])
    assert ds.info["name"] == "mine" and ds.info["n_train"] == 30 and ds.info["n_test"] == 10
    assert ds.info["dim"] == 5 and ds.info["n_outputs"] == 1 and ds.info["note"] == "hello"
    pre = D.Dataset.from_arrays(x[:30], v[:30], x[30:], v[30:], preprocessing=True)
    for got, ref in zip((pre.x_train, pre.x_test), _paper_preprocess(x[:30], x[30:])):
        np.testing.assert_allclose(got, ref, rtol=0, atol=1e-14)
    nothing = D.Dataset.from_arrays(x, v)
    assert nothing.x_test is None and nothing.info["n_test"] == 0


@pytest.mark.parametrize("args,match", [
    (lambda x, v: (x, v[:-1]), r"y_train must have shape \(40,\) or \(40, C\)"),
    (lambda x, v: (x + 1j, v), "x_train must be a real numeric array, got dtype complex128"),
    (lambda x, v: (np.where(x > 2, np.nan, x), v), "x_train contains .* NaN"),
    (lambda x, v: (x, v, x[:, :3], v), "x_test, y_test have 3 features"),
    (lambda x, v: (x, v, x), "give both x_test and y_test, or neither"),
    (lambda x, v: (x[:0], v[:0]), "x_train must be a non-empty array"),
])
def test_from_arrays_refuses_bad_arrays_with_the_argument_named(args, match):
    x, _, v = _table()
    with pytest.raises(ValueError, match=match):
        D.Dataset.from_arrays(*args(x, v))


# ----------------------------------------------------------------------------- files
def test_npz_single_table_of_labels_is_split_balanced_and_disjoint(tmp_path):
    x, labels, _ = _table()
    path = tmp_path / "mine.npz"
    np.savez(path, x=x, y=labels)
    ds = D.load_arrays(path, classes=(3, 4), n_train=10, n_test=6, seed=1)
    itr, ite = ds.info["indices_train"], ds.info["indices_test"]
    assert not set(itr) & set(ite) and ds.info["source"] == str(path) and ds.info["name"] == "npz:mine.npz"
    np.testing.assert_array_equal(ds.y_train[:, 0], np.where(labels[itr] == 4, 0.5, -0.5))
    assert sorted(np.bincount(labels[itr])[3:]) == [5, 5]
    for got, ref in zip((ds.x_train, ds.x_test), _paper_preprocess(x[itr], x[ite])):
        np.testing.assert_allclose(got, ref, rtol=0, atol=1e-14)


def test_npz_splits_with_real_targets_are_regression(tmp_path):
    x, _, v = _table()
    path = tmp_path / "reg.npz"
    y2 = np.stack([v, -2 * v], 1)
    np.savez(path, x_train=x[:30], y_train=y2[:30], x_test=x[30:], y_test=y2[30:])
    ds = D.load_arrays(path, n_train=8, n_test=4, seed=0, preprocessing=False)
    assert ds.info["targets"] == "values" and ds.info["classes"] is None and ds.y_train.shape == (8, 2)
    np.testing.assert_array_equal(ds.y_train, y2[:30][ds.info["indices_train"]])
    np.testing.assert_array_equal(ds.x_test, x[30:][ds.info["indices_test"]])


def test_csv_with_header_labels_and_real_targets(tmp_path):
    x, labels, v = _table()
    lab = tmp_path / "lab.csv"
    lab.write_text("f1,f2,f3,f4,f5,label\n" + "\n".join(",".join([*map(_num, r), str(int(c))]) for r, c in zip(x, labels)))
    ds = D.make_dataset("csv", path=str(lab), classes=(3, 4), n_train=12, n_test=8, seed=2)
    itr = ds.info["indices_train"]
    np.testing.assert_array_equal(ds.y_train[:, 0], np.where(labels[itr] == 4, 0.5, -0.5))
    reg = tmp_path / "reg.csv"
    reg.write_text("\n".join(",".join(map(_num, [*r, t])) for r, t in zip(x, v)))
    ds = D.make_dataset("csv", path=str(reg), n_train=12, n_test=8, seed=2)
    np.testing.assert_array_equal(ds.y_train[:, 0], v[ds.info["indices_train"]])
    assert not set(ds.info["indices_train"]) & set(ds.info["indices_test"])


def test_file_errors_name_the_file_and_the_problem(tmp_path):
    x, labels, _ = _table()
    with pytest.raises(FileNotFoundError, match="npz data file not found at .*nothere.npz"):
        D.load_arrays(tmp_path / "nothere.npz")
    good = tmp_path / "good.npz"
    np.savez(good, x=x, y=labels)
    cut = tmp_path / "cut.npz"
    cut.write_bytes(good.read_bytes()[:200])
    with pytest.raises(ValueError, match="cut.npz"):
        D.load_arrays(cut, classes=(3, 4), n_train=4, n_test=4)
    wrong = tmp_path / "wrong.npz"
    np.savez(wrong, a=x)
    with pytest.raises(ValueError, match=r"wrong.npz' has arrays \['a'\]; expected"):
        D.load_arrays(wrong)
    ragged = tmp_path / "ragged.csv"
    ragged.write_text("1,2,0\n3,4\n")
    with pytest.raises(ValueError, match="ragged.csv' line 2: 2 columns"):
        D.load_arrays(ragged)
    word = tmp_path / "word.csv"
    word.write_text("a,b,y\n1,2,0\n3,x,1\n")
    with pytest.raises(ValueError, match="word.csv' line 3: 'x' is not a number"):
        D.load_arrays(word)
    with pytest.raises(ValueError, match="class 3 has only 20 available samples, asked for 30"):
        D.load_arrays(good, classes=(3, 4), n_train=60, n_test=4)
    with pytest.raises(ValueError, match="classes .0, 1. do not occur"):
        D.load_arrays(good, n_train=4, n_test=4)
    with pytest.raises(ValueError, match="format must be one of"):
        D.load_arrays(tmp_path / "data.txt")
    with pytest.raises(ValueError, match="dataset 'npz' reads local files: give data_path"):
        ex.RunConfig(dataset="npz")


# ----------------------------------------------------------------------------- the CLI
def test_cli_trains_on_a_users_npz_and_names_it(tmp_path, capsys):
    x, labels, _ = _table(n=24, d=6)
    path = tmp_path / "mine.npz"
    np.savez(path, x=x, y=labels)
    out, png = tmp_path / "run.json", tmp_path / "dyn.png"
    argv = ["train", "--dataset", "npz", "--data-path", str(path), "--classes", "3", "4", "--n-train", "6",
            "--n-test", "4", "--width", "16", "--steps", "2", "--method", "exact", "--json", str(out),
            "--plot", str(png)]
    assert cli.main(argv) == 0
    rec = json.loads(out.read_text())
    assert rec["config"]["dataset"] == "npz" and rec["config"]["data_path"] == str(path)
    assert rec["config"]["classes"] == [3, 4] and rec["result"]["widths"][0] == 6
    assert png.stat().st_size > 10_000
    capsys.readouterr()
    bad = argv[:4] + [str(tmp_path / "typo.npz")] + argv[5:]
    assert cli.main(bad) == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert err.startswith("ntk-ngd: error: FileNotFoundError: npz data file not found at") and "typo.npz" in err
    assert "Traceback" not in err
