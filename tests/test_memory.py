"""ntk_ngd.memory: each estimate term against a direct count of the arrays the code makes, the totals
against XLA's buffer assignment of the compiled step (compile only, nothing timed), and choose_chunk."""
import sys
import warnings
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from ntk_ngd import MLP, layers, memory, ngd_direction, sharding
from ntk_ngd.curvature import method_names
from ntk_ngd.curvature.unit_wise import unit_system
from ntk_ngd.layers import from_params

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
import baseline  # noqa: E402
import bench  # noqa: E402

METHODS = method_names()
CASES = [(5, 1, 12, 3, 7), (4, 3, 16, 2, 9), (6, 2, 10, 4, 5)]  # (N, C, M, L, M0)


def _setup(N, C, M, L, M0, seed=0):
    model = MLP(memory.widths_of(M, L, M0, C), "relu", sigma_b=0.1)
    k1, k2, k3 = jax.random.split(jax.random.PRNGKey(seed), 3)
    params = model.init(k1)
    x = jax.random.normal(k2, (N, M0))
    y = jax.random.normal(k3, (N, C))
    return model, params, x, y


def nbytes(tree):
    return sum(int(np.asarray(a).nbytes) for a in jax.tree_util.tree_leaves(tree))


@pytest.mark.parametrize("N,C,M,L,M0", CASES)
def test_terms_equal_direct_counts(N, C, M, L, M0):
    model, params, x, y = _setup(N, C, M, L, M0)
    s = 8
    assert memory.n_params(model.widths) == model.n_params
    assert memory.max_block(model.widths) == max(int(np.prod(b.shape)) for b in from_params(params))
    fac = layers.factors(model, params, x)
    hidden_u = sum(N * m for m in model.widths[1:-1])
    direct_act = nbytes(fac.H) + nbytes(fac.D) + 2 * hidden_u * s
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        d = ngd_direction(model, params, x, y, "gd", 0.0)
    for method in METHODS:
        e = memory.step_estimate(method, N, C, M, L, M0, "float64", chunk=4)
        t = e.terms
        assert e.total == sum(t.values())
        assert t["params"] == nbytes(params)
        assert t["inputs"] == nbytes(x) + nbytes(y)
        assert t["updated params"] == t["direction"] == nbytes(d)
        assert t["activations"] == direct_act
        if method in ("exact", "block_diagonal", "block_tridiagonal"):
            g = layers.grams(fac)
            assert t["grams + kernels"] == nbytes(g.KH) + nbytes(g.KD) + nbytes(layers.layer_kernels(g))
        if method == "block_tridiagonal":
            assert t["solve"] == 2 * (L * N * C) ** 2 * s
        if method == "kfac":
            direct, qh = 0, 0
            for H, D in zip(fac.H, fac.D):
                Dm = D.transpose(0, 2, 1).reshape(N * C, -1)
                KD, KH = Dm @ Dm.T, H @ H.T
                (_, Ud), (_, Uh) = jnp.linalg.eigh(KD), jnp.linalg.eigh(KH)
                core = Ud.T @ jnp.ones((N * C, N)) @ Uh
                direct += nbytes([KD, KH, Ud, Uh, core, Ud @ core @ Uh.T])
                qh = max(qh, nbytes(Ud @ core @ Uh.T @ H))
            assert t["factor Grams + eigenvectors"] == direct
            assert t["core products"] == qh
        if method == "unit_wise":
            n = N * C
            dvec = jnp.ones(n)
            theta, A = unit_system(dvec, jnp.ones((n, n)), 0.1)
            per_unit = nbytes(theta) + nbytes(A) + nbytes(jnp.linalg.cholesky(A)) + 2 * n * s
            assert t["unit chunk"] == min(4, M) * per_unit
            assert t["unit Grams"] == n * n * s
        if method == "diagonal":
            assert t["inverse diagonal + gradient"] == 2 * memory.max_block(model.widths) * s
    # the baseline's dense Jacobian (N C, P): four J-sized buffers (none for gd and kfac)
    theta = jnp.concatenate([b.reshape(-1) for b in from_params(params)])
    J = jax.vmap(jax.jacrev(lambda t, x1: model.apply(
        [{"W": b[:, :-1], "b": b[:, -1]} for b in _unflatten(model, t)], x1[None])[0]), (None, 0))(theta, x)
    for method in METHODS:
        tb = baseline.estimate(method, N, C, M, L, M0).terms
        if baseline.baseline_for(method) is None:  # the to_dense fallback: J and the dense (P, P) matrices
            assert tb["jacobian"] == nbytes(J) and tb["dense (P, P)"] == 2 * nbytes(theta) ** 2 // s
        else:
            assert tb["jacobian"] == (0 if method in ("gd", "kfac") else 4 * nbytes(J))
        assert tb["params"] == tb["direction"] == nbytes(theta)
    assert baseline.estimate("diagonal", N, C, M, L, M0).terms["diag F"] == nbytes(theta)
    ku = baseline.estimate("unit_wise", N, C, M, L, M0).terms["unit kernels"]
    assert ku == 2 * M * (N * C) ** 2 * s
    # float32 halves everything
    assert 2 * memory.step_estimate("exact", N, C, M, L, M0, "float32").total == memory.step_estimate(
        "exact", N, C, M, L, M0, "float64").total


def _unflatten(model, t):
    out, i = [], 0
    for k, m in zip(model.widths[:-1], model.widths[1:]):
        out.append(t[i:i + m * (k + 1)].reshape(m, k + 1))
        i += m * (k + 1)
    return out


@pytest.mark.parametrize("N,C,M,L,M0", [(20, 1, 64, 3, 50), (12, 2, 48, 3, 30)])
def test_estimates_bound_xla_buffer_assignment(N, C, M, L, M0):
    """The estimate is an upper-bound-style count: within [1, 4] x XLA's buffer assignment of the
    compiled step for the structured path (XLA fuses and reuses buffers, so it needs less)."""
    model, params, x, y = _setup(N, C, M, L, M0)
    theta = jnp.concatenate([b.reshape(-1) for b in from_params(params)])
    for method in METHODS:
        opts = {"chunk": 8, "force": C > 1} if method == "unit_wise" else {}
        if method == "kfac" and C > 1:
            opts = {"force": True}
        fs = bench.structured_step(model, method, 1e-6, N, 0.1, opts).lower(params, x, y).compile()
        est = memory.step_estimate(method, N, C, M, L, M0, chunk=8).total
        xla = bench.xla_bytes(fs)
        assert xla is not None
        assert 1.0 <= est / xla <= 4.0, (method, est, xla)
        if baseline.baseline_for(method) is None:
            continue  # the to_dense fallback runs in numpy: no compiled step
        fb = baseline.baseline_step(model, method, 1e-6, N, 0.1).lower(theta, x, y).compile()
        estb = baseline.estimate(method, N, C, M, L, M0).total
        xlab = bench.xla_bytes(fb)
        assert 0.5 <= estb / xlab <= 4.0, (method, estb, xlab)


def test_gram_and_analytic_estimates():
    N, C, M, L, M0 = 9, 2, 20, 3, 6
    model, params, x, _ = _setup(N, C, M, L, M0)
    e = memory.gram_build_estimate(N, C, M, L, M0)
    g = layers.grams(layers.factors(model, params, x))
    assert e.terms["params"] == nbytes(params)
    assert e.terms["grams"] == nbytes(g.KH) + nbytes(g.KD)
    et = memory.gram_build_estimate(N, C, M, L, M0, tiled=True, tile=8)
    assert "params" not in et.terms and et.terms["weight tile"] == 3 * 8 * max(M, M0) * 8
    a = memory.analytic_estimate(100, 80, 3, "float64", tile=16)
    assert a.terms["output"] == 3 * 100 * 80 * 8
    assert a.terms["blocks in flight"] == 2 * 16 * 16 * (4 * 3 + 3) * 8
    assert memory.analytic_pair_words(3, closed_form=False, quad_order=10) == 15 + 30


def test_choose_chunk():
    s = 8
    # unit-wise: per unit 3 (N C)^2 + 2 N C elements; largest power of two that fits
    per = (3 * 100 ** 2 + 200) * s
    c = memory.choose_chunk("unit_wise", 16 * 2 ** 20, N=100)
    assert c == 64 and c * per <= 16 * 2 ** 20 < 2 * c * per
    assert memory.choose_chunk("unit_wise", 16 * 2 ** 20, N=100, power_of_two=False) == (16 * 2 ** 20) // per
    assert memory.choose_chunk("unit_wise", 1e12, N=10, n_units=300) == 300
    assert memory.choose_chunk("unit_wise", 10, N=100) == 1             # below the minimum: 1
    assert memory.choose_chunk("unit_wise", 1e9, N=50, C=2, n_test=30) >= 1
    perk = (5 * 100 ** 2 + 2 * 30 * 100) * s
    ck = memory.choose_chunk("unit_wise", 2 ** 24, N=100, n_test=30)
    assert ck * perk <= 2 ** 24 < 2 * ck * perk
    # diagonal kernel chunk
    cd = memory.choose_chunk("diagonal", 2 ** 22, N=64, C=2)
    assert cd * 64 * 64 * 5 * s <= 2 ** 22 < 2 * cd * 64 * 64 * 5 * s
    # analytic tile: two blocks of tile^2 pairs at (4 L + 3) words
    t = memory.choose_chunk("analytic", 2 ** 30, L=3)
    assert 2 * t * t * 15 * s <= 2 ** 30 < 2 * (2 * t) ** 2 * 15 * s
    t2 = memory.choose_chunk("analytic", 2 ** 30, L=3, devices=4)
    assert t2 >= t
    assert memory.choose_chunk("analytic", 2 ** 30, L=3, closed_form=False) < t
    # weight tile rows
    w = memory.choose_chunk("weights", 2 ** 28, M_in=4096)
    assert w * 3 * 4096 * s <= 2 ** 28 < 2 * w * 3 * 4096 * s
    assert memory.choose_chunk("weights", 2 ** 28, M_in=4096, dtype="float32") == 2 * w
    with pytest.raises(ValueError, match="unknown kind"):
        memory.choose_chunk("nope", 1e9)
    with pytest.raises(ValueError, match="needs N"):
        memory.choose_chunk("unit_wise", 1e9)
    with pytest.raises(ValueError, match="needs L"):
        memory.choose_chunk("analytic", 1e9)
    with pytest.raises(ValueError, match="unknown method"):
        memory.step_estimate("newton", 1, 1, 1, 2, 1)


def test_chosen_chunks_give_the_same_results():
    """Wiring: a chunk from choose_chunk passed as the methods' ``chunk`` / the analytic ``tile``."""
    model, params, x, y = _setup(8, 1, 24, 3, 10)
    ref = ngd_direction(model, params, x, y, "unit_wise", 1e-6)
    c = memory.choose_chunk("unit_wise", 3 * 8 * 8 * 3 * 8, N=8, n_units=24)
    assert c < 24
    got = ngd_direction(model, params, x, y, "unit_wise", 1e-6, chunk=c)
    for a, b in zip(ref, got):
        np.testing.assert_allclose(np.asarray(a["W"]), np.asarray(b["W"]), rtol=1e-12, atol=1e-14)
    from ntk_ngd import analytic
    xx = jax.random.normal(jax.random.PRNGKey(1), (30, 10))
    tile = memory.choose_chunk("analytic", 2 * 10 * 10 * 15 * 8, L=3)
    assert tile == 8
    np.testing.assert_allclose(sharding.analytic_layerwise_ntk(model, xx, tile=tile),
                               np.asarray(analytic.analytic_layerwise_ntk(model, xx)), rtol=1e-12, atol=1e-14)
