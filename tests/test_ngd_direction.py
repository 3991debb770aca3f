"""Structured layer kernels against autodiff and the dense Jacobian (the methods' directions against their
dense references are in tests/test_methods.py, one suite over the registry)."""

import jax
import jax.numpy as jnp
import numpy as np

import ntk_ngd
from ntk_ngd import MLP
import oracle

N = 4
HIDDEN = (20, 18, 21, 19)

# every depth 1..5 with each activation; bias and C = 1 / C = 3 alternate so each depth sees both
CONFIGS = [(L, act, 0.5 * ((L + i) % 2)) for L in range(1, 6) for i, act in enumerate(("relu", "erf", "tanh"))]


def network(L, act, sb, seed=0):
    C = 1 if (L + int(sb > 0)) % 2 else 3
    model = MLP((7,) + HIDDEN[:L - 1] + (C,), act, sigma_b=sb)
    k1, k2, k3 = jax.random.split(jax.random.PRNGKey(seed + 17 * L), 3)
    params = model.init(k1)
    x = jax.random.normal(k2, (N, 7))
    x = x / jnp.linalg.norm(x, axis=1, keepdims=True)  # the paper's unit-norm rows
    y = 0.5 * jax.random.normal(k3, (N, C))
    return model, params, x, y


def test_structured_kernels_match_jacobian_kernels():
    for L, act, sb in CONFIGS[::3]:
        model, params, x, _ = network(L, act, sb)
        x2 = jax.random.normal(jax.random.PRNGKey(99), (3, 7))
        a = ntk_ngd.empirical_layerwise_ntk(model, params, x, x2)
        b = ntk_ngd.autodiff_layer_kernels(model.apply, params, x, x2)
        assert float(jnp.max(jnp.abs(a - b)) / jnp.max(jnp.abs(b))) < 1e-10
        # and against the dense oracle Jacobian, layer by layer
        J = oracle.jacobian(model, params, x)
        lay, _ = oracle.labels(model)
        dense = np.stack([J[:, lay == l] @ J[:, lay == l].T for l in range(L)])
        own = np.asarray(ntk_ngd.empirical_layerwise_ntk(model, params, x))
        assert np.max(np.abs(own - dense)) / np.max(np.abs(dense)) < 1e-10
