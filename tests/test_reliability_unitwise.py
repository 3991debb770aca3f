"""Unit-wise NGD at rho = 0 with degenerate data (issue 13: "unit-wise pseudo-inverse").

Duplicate inputs and a zero input row make the layer's input Gram K~ = H H^T singular, so an
active unit's kernel Theta_{l,i} is singular too (E_i only covers inactive samples). Before, the
function-space operator (``preconditioned_kernel``) was all NaN there and ``ngd_direction``
refused the step. The module promises pseudo-inverse semantics: the step is G^+ grad with
G = blockdiag_{l,i} F_ii (per unit, J_{l,i}^+ g) and Theta_G = J G^+ J^T / N = sum_{l,i}
J_{l,i} J_{l,i}^+. The reference is dense, from the network's Jacobian (``oracle.jacobian``)
with the (layer, unit) parameter groups of ``oracle.labels`` and numpy's SVD pseudo-inverse per
group; every case checks that the groups' singular values separate clearly into zeros (< 1e-12
relative) and the rest (> 1e-6), so the reference's rank is unambiguous.
"""
import warnings

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import ntk_ngd as nn
import oracle

N = 5


def network(widths, act, sb, kind, seed=0, n=N):
    model = nn.MLP(widths, act, sigma_b=sb)
    k1, k2, k3, k4 = jax.random.split(jax.random.PRNGKey(seed), 4)
    params = model.init(k1)
    x = jax.random.normal(k2, (n, widths[0]))
    x = x / jnp.linalg.norm(x, axis=1, keepdims=True)
    if "dup" in kind:
        x = x.at[1].set(x[0])
    if "zero" in kind:
        x = x.at[n - 1].set(0.0)
    xt = jax.random.normal(k4, (3, widths[0]))
    xt = xt.at[0].set(x[0])  # a test input equal to a (duplicated) training input
    y = 0.5 * jax.random.normal(k3, (n, widths[-1]))
    return model, params, x, xt, y


def reference(model, params, x, xt, y):
    """Dense pseudo-inverse references: (Theta_G, Theta_G(x', X), flat d) at rho = 0."""
    J, Jx = oracle.jacobian(model, params, x), oracle.jacobian(model, params, xt)
    lay, unit = oracle.labels(model)
    g = np.asarray(model.apply(params, x) - y).reshape(-1)
    tg, tx, d = np.zeros((J.shape[0],) * 2), np.zeros((Jx.shape[0], J.shape[0])), np.zeros(J.shape[1])
    for l in np.unique(lay):
        for u in np.unique(unit[lay == l]):
            S = np.flatnonzero((lay == l) & (unit == u))
            s = np.linalg.svd(J[:, S], compute_uv=False)
            if s[0] > 0:  # the rank is unambiguous: zeros and the rest clearly apart
                assert not np.any((s > 1e-12 * s[0]) & (s < 1e-6 * s[0])), (l, u, s / s[0])
            Jp = np.linalg.pinv(J[:, S], rcond=1e-9)
            tg += J[:, S] @ Jp
            tx += Jx[:, S] @ Jp
            d[S] = Jp @ g
    return tg, tx, d


def rel(a, b):
    return float(np.linalg.norm(np.asarray(a) - b) / max(np.linalg.norm(b), 1e-300))


CASES = [  # (widths, activation, sigma_b, degeneracy, options)
    ((6, 9, 9, 1), "tanh", 0.0, "dup", {}),
    ((6, 9, 9, 1), "tanh", 0.0, "zero", {}),
    ((6, 9, 9, 1), "relu", 0.3, "dup", {}),
    ((6, 9, 9, 1), "relu", 0.0, "zero", {}),
    ((6, 10, 1), "erf", 0.2, "dup+zero", {}),
    ((6, 8, 8, 8, 1), "erf", 0.0, "dup", {}),
    ((3, 9, 9, 1), "tanh", 0.0, "narrow", {"force": True}),  # M_0 + 1 < N: K~_0 singular
    ((6, 9, 9, 2), "tanh", 0.0, "dup", {"force": True}),      # C = 2 (its own SVD path)
]


@pytest.mark.parametrize("widths,act,sb,kind,opts", CASES)
def test_rho_zero_is_the_pseudo_inverse(widths, act, sb, kind, opts):
    """preconditioned_kernel = J G^+ J^T / N (train and test rows), never NaN; the step, its residual
    map and ngd_direction (jit) = G^+ grad."""
    model, params, x, xt, y = network(widths, act, sb, kind)
    tg_ref, tx_ref, d_ref = reference(model, params, x, xt, y)
    src = nn.empirical_source(model, params, x, xt)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # rho << 1/M and force's conditions
        tg, tx = nn.preconditioned_kernel("unit_wise", src, 0.0, **opts)
        d = oracle.flat_direction(nn.ngd_direction(model, params, x, y, "unit_wise", 0.0, **opts))
        phi = nn.residual_map("unit_wise", src, 0.0, **opts)
    assert np.all(np.isfinite(tg)) and np.all(np.isfinite(tx))
    assert rel(tg, tg_ref) < 1e-10 and rel(tx, tx_ref) < 1e-10, (rel(tg, tg_ref), rel(tx, tx_ref))
    assert rel(d, d_ref) < 1e-9, rel(d, d_ref)
    r = np.asarray(model.apply(params, x) - y)
    J = oracle.jacobian(model, params, x)
    assert rel(np.asarray(phi(r)).ravel(), J @ d_ref) < 1e-9
    # a sum of projectors J_i J_i^+: symmetric PSD; its range misses x_0 - x_1 for duplicates
    w = np.linalg.eigvalsh(0.5 * (tg + tg.T))
    assert w.min() > -1e-10 * w.max()
    if "dup" in kind:
        C = widths[-1]
        e = np.zeros((N, C))
        e[0], e[1] = 1.0, -1.0
        assert np.linalg.norm(np.asarray(tg) @ e.ravel()) < 1e-10 * w.max()


def test_damped_steps_are_unchanged_by_degenerate_data():
    """rho > 0 keeps the Cholesky path: equal to the method's dense reference (to_dense)."""
    model, params, x, xt, y = network((6, 9, 9, 1), "tanh", 0.0, "dup+zero")
    for rho in (1e-8, 1e-4):
        d = oracle.flat_direction(nn.ngd_direction(model, params, x, y, "unit_wise", rho))
        assert rel(d, oracle.direction(model, params, x, y, "unit_wise", rho)) < 1e-8
        tg, _ = nn.preconditioned_kernel("unit_wise", nn.empirical_source(model, params, x), rho)
        J = oracle.jacobian(model, params, x)
        ref = J @ oracle.inverse_preconditioner(model, params, x, "unit_wise", rho) @ J.T / N
        assert rel(tg, ref) < 1e-8


def test_well_posed_data_keeps_the_regular_path():
    """Distinct inputs (K~ positive definite): the per-unit Cholesky path, as before, to 1e-10."""
    model, params, x, xt, y = network((6, 9, 9, 1), "tanh", 0.0, "")
    tg_ref, tx_ref, d_ref = reference(model, params, x, xt, y)
    tg, tx = nn.preconditioned_kernel("unit_wise", nn.empirical_source(model, params, x, xt), 0.0)
    assert rel(tg, tg_ref) < 1e-10 and rel(tx, tx_ref) < 1e-10
    d = oracle.flat_direction(nn.ngd_direction(model, params, x, y, "unit_wise", 0.0))
    assert rel(d, d_ref) < 1e-9


def test_refusals_keep_their_messages():
    """Where the step is refused (outside the method's stated conditions), the messages say why."""
    model, params, x, xt, y = network((3, 9, 9, 1), "tanh", 0.0, "dup")
    with pytest.raises(ValueError, match=r"unit_wise needs M_0 >= N \(M_0=3, N=5\)"):
        nn.ngd_direction(model, params, x, y, "unit_wise", 0.0)
    model, params, x, xt, y = network((6, 9, 9, 2), "tanh", 0.0, "dup")
    with pytest.raises(ValueError, match=r"unit_wise is stated for C = 1 output \(got C = 2\)"):
        nn.ngd_direction(model, params, x, y, "unit_wise", 0.0)
