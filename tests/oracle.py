"""Dense float64 references: the full Jacobian by jax.jacrev of the flat parameter vector, and the
generic dense solve d = (G + rho I)^+ grad with each method's own dense (G + rho I)^+
(``AbstractMethod.to_dense`` on a ``DenseProblem``, built without the structured layers).

Parameters are the flat concatenation of the W~_l = [W_l, b_l] blocks (row-major).
"""
import jax
import numpy as np

from ntk_ngd.curvature import dense_problem, get_method
from ntk_ngd.layers import from_params, to_params


def unflatten(model, t):
    blocks, i = [], 0
    for k, m in zip(model.widths[:-1], model.widths[1:]):
        blocks.append(t[i:i + m * (k + 1)].reshape(m, k + 1))
        i += m * (k + 1)
    return blocks


def flat(blocks):
    return np.concatenate([np.asarray(b).reshape(-1) for b in blocks])


def flat_direction(d):
    """A direction in the params layout as a flat W~ vector."""
    return flat(from_params(d))


def jacobian(model, params, x):
    """J (N C, P), rows (sample, output)."""
    import jax.numpy as jnp
    t0 = jnp.asarray(flat(from_params(params)))
    f = lambda t: model.apply(to_params(unflatten(model, t)), x).reshape(-1)
    return np.asarray(jax.jit(jax.jacrev(f))(t0))


def labels(model):
    """(layer, unit) label of every flat parameter."""
    lay, unit = [], []
    for l, (k, m) in enumerate(zip(model.widths[:-1], model.widths[1:])):
        lay.append(np.full(m * (k + 1), l))
        unit.append(np.repeat(np.arange(m), k + 1))
    return np.concatenate(lay), np.concatenate(unit)


def inverse_preconditioner(model, params, x, method, rho, J=None, y=None, **options):
    """Dense (G + rho I)^+ (P, P) of ``method``, from its own ``to_dense``; checks J if given."""
    y = np.zeros((x.shape[0], model.n_outputs)) if y is None else y
    dense = dense_problem(model, params, x, y)
    if J is not None:
        assert np.abs(dense.J - J).max() <= 1e-12 * np.abs(J).max()
    return get_method(method, **options).to_dense(dense, rho)


def direction(model, params, x, y, method, rho, J=None, **options):
    """Dense d = (G + rho I)^+ J^T g / N as a flat W~ vector."""
    dense = dense_problem(model, params, x, y)
    if J is not None:
        assert np.abs(dense.J - J).max() <= 1e-12 * np.abs(J).max()
    return get_method(method, **options).to_dense(dense, rho) @ dense.grad
