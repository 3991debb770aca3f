"""The jaxlib CPU thread-pool guard applies on ``import ntk_ngd``: a plain user script (no NPROC,
no guard of its own) runs unit-wise NGD training, whose vmapped Cholesky solves inside a scan
deadlocked jaxlib 0.10 with a 2-thread pool, to the end."""
import os
import subprocess
import sys
import textwrap

SCRIPT = textwrap.dedent("""
    import os
    import ntk_ngd as nn
    import jax
    assert int(os.environ["NPROC"]) >= 8, os.environ["NPROC"]
    jax.config.update("jax_enable_x64", True)
    ds = nn.synthetic(24, 4, 32, seed=0)
    model = nn.MLP((32, 512, 512, 1))
    run = nn.train(model, model.init(jax.random.PRNGKey(0)), ds, "unit_wise", lr=1e-3, steps=6,
                   damping=1e-8, chunk=16)
    print("loss", float(run.loss_train[-1]))
""")


def test_plain_script_runs_unit_wise_without_nproc():
    env = {k: v for k, v in os.environ.items() if k != "NPROC"}
    for _ in range(3):  # the deadlock is a race: repeat
        r = subprocess.run([sys.executable, "-c", SCRIPT], env=env, capture_output=True, text=True, timeout=300)
        assert r.returncode == 0, r.stderr[-2000:]
        assert r.stdout.startswith("loss ")


def test_an_nproc_set_by_the_user_is_kept():
    env = dict(os.environ, NPROC="3")
    r = subprocess.run([sys.executable, "-c", "import os, ntk_ngd; print(os.environ['NPROC'])"], env=env,
                       capture_output=True, text=True, timeout=120)
    assert r.stdout.strip() == "3", r.stderr[-2000:]
