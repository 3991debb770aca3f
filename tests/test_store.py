import json
import multiprocessing as mp

import jax.numpy as jnp
import numpy as np

from ntk_ngd.store import ResultsStore, config_key, run_meta


def test_put_get_round_trip(tmp_path):
    store = ResultsStore(tmp_path / "s")
    config = {"width": np.int64(64), "damping": 1e-3, "method": "ngd", "seed": 0}
    result = {"loss": np.float32(0.5), "curve": jnp.arange(3.0), "w": np.eye(2),
              "nan": float("nan")}
    store.put(config, result=result, meta={"duration": 1.5})
    reordered = {"seed": 0, "method": "ngd", "damping": 1e-3, "width": 64}
    rec = ResultsStore(tmp_path / "s").get(reordered)
    assert rec["status"] == "ok" and rec["error"] is None and rec["meta"] == {"duration": 1.5}
    assert rec["config"] == {"width": 64, "damping": 1e-3, "method": "ngd", "seed": 0}
    assert rec["result"]["loss"] == 0.5 and rec["result"]["curve"] == [0.0, 1.0, 2.0]
    assert rec["result"]["w"] == [[1.0, 0.0], [0.0, 1.0]] and np.isnan(rec["result"]["nan"])
    assert store.get({"width": 128}) is None
    assert store.done_keys() == {config_key(config)}
    row, = store.to_rows()
    assert row["width"] == 64 and row["loss"] == 0.5 and row["meta.duration"] == 1.5


def test_key_stable_across_order_and_types():
    a = {"width": 64, "opt": {"lr": 0.1, "mom": 0.9}, "widths": (8, 8)}
    b = {"widths": [8, 8], "opt": {"mom": 0.9, "lr": 0.1}, "width": np.int32(64)}
    assert config_key(a) == config_key(b)
    assert config_key(a) != config_key({**a, "width": 65})
    assert config_key(a) == "553301f28bd154f8c8ff063952a3f72a"  # same in every process/run


def test_current_record_prefers_ok(tmp_path):
    store = ResultsStore(tmp_path)
    store.put({"p": 1}, error="Traceback ...\nValueError: boom")
    assert store.records("error")[0]["key"] == config_key({"p": 1}) and not store.done_keys()
    assert store.to_rows()[0]["error"] == "ValueError: boom"
    store.put({"p": 1}, result={"y": 1})
    store.put({"p": 1}, error="late duplicate")
    assert store.get({"p": 1})["result"] == {"y": 1} and len(store.history()) == 3
    assert [r["status"] for r in store.records()] == ["ok"]


def test_torn_last_line_ignored_and_next_write_starts_fresh(tmp_path):
    store = ResultsStore(tmp_path)
    store.put({"p": 0}, result={"y": 0})
    with open(store.file, "ab") as f:
        f.write(b'{"key": "abc", "config": {"p": 1}, "sta')
    assert [r["config"] for r in store.records()] == [{"p": 0}]
    store.put({"p": 2}, result={"y": 2})
    assert [r["config"] for r in store.records()] == [{"p": 0}, {"p": 2}]


def _writer(path, worker, n, barrier):
    store = ResultsStore(path)
    barrier.wait()
    for i in range(n):
        pad = "x" * (6000 if i % 10 == 0 else 10)  # some lines exceed PIPE_BUF
        store.put({"worker": worker, "i": i}, result={"pad": pad})


def test_concurrent_writers(tmp_path):
    n_proc, n_rec = 4, 150
    ctx = mp.get_context("spawn")
    barrier = ctx.Barrier(n_proc)
    procs = [ctx.Process(target=_writer, args=(str(tmp_path), w, n_rec, barrier))
             for w in range(n_proc)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(60)
        assert p.exitcode == 0
    lines = (tmp_path / "records.jsonl").read_text().splitlines()
    assert len(lines) == n_proc * n_rec
    configs = [json.loads(line)["config"] for line in lines]  # every line valid JSON
    assert sorted((c["worker"], c["i"]) for c in configs) == [
        (w, i) for w in range(n_proc) for i in range(n_rec)]


def test_run_meta():
    meta = run_meta()
    assert {"jax_version", "platform", "device", "x64", "dtype", "hostname", "pid",
            "python"} <= set(meta)
    json.dumps(meta)


def test_run_meta_records_the_package_not_the_current_directory(tmp_path, monkeypatch):
    """Provenance is ntk-ngd's version and its own source revision: run from inside another git
    repository, run_meta still reports this checkout's HEAD (or "unknown" for an installed copy)."""
    import shutil
    import subprocess
    from pathlib import Path

    import ntk_ngd
    pkg = Path(ntk_ngd.__file__).resolve().parent
    ours = subprocess.run(["git", "rev-parse", "HEAD"], cwd=pkg, capture_output=True, text=True)
    expected = ours.stdout.strip() if ours.returncode == 0 and (pkg.parent / ".git").exists() else "unknown"
    if shutil.which("git"):  # a user's own repository as the current directory
        subprocess.run(["git", "init", "-q", str(tmp_path)], check=True)
        subprocess.run(["git", "-c", "user.name=u", "-c", "user.email=u@x", "commit", "-q", "--allow-empty",
                        "-m", "user"], cwd=tmp_path, check=True)
    monkeypatch.chdir(tmp_path)
    meta = run_meta()
    assert meta["ntk_ngd_version"] == ntk_ngd.__version__
    assert meta["git_rev"] == expected
