"""The optax face (ntk_ngd/optax_face.py): for every registered method an optax loop with
precondition(...) then scale(-eta) takes train's steps; it composes with momentum and schedules;
stateful methods carry their state (lazily, or allocated with batch_size under a lax.scan)."""
import functools
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

optax = pytest.importorskip("optax")

import ntk_ngd as nn  # noqa: E402
from ntk_ngd.optax_face import PreconditionState, precondition  # noqa: E402

T, ETA, RHO = 3, 0.2, 1e-3
# every registered method with its defaults, plus the stateful variants (held GFIM, accumulated Shampoo)
STATEFUL = [("ngplus", {"hold": 2}), ("shampoo", {"accumulate": True})]
CASES = [(name, {}) for name in nn.method_names()] + STATEFUL


@functools.lru_cache(maxsize=None)
def net():
    """(model, params, x (6, 8) unit-norm rows, y (6, 1)): M_0 >= N, N C <= M_l (K-FAC's,
    unit-wise's conditions), C = 1 (unit-wise)."""
    model = nn.MLP((8, 16, 16, 1), "erf", sigma_b=0.1)
    k1, k2, k3 = jax.random.split(jax.random.PRNGKey(0), 3)
    x = jax.random.normal(k2, (6, 8))
    return model, model.init(k1), x / jnp.linalg.norm(x, axis=1, keepdims=True), 0.5 * jax.random.normal(k3, (6, 1))


@functools.lru_cache(maxsize=None)
def grad_fn():
    model, _, x, y = net()
    return jax.jit(jax.grad(lambda p: nn.mse(model.apply(p, x), y)))


@functools.lru_cache(maxsize=None)
def reference(name, options):
    model, params, x, y = net()
    return nn.train(model, params, (x, y), name, lr=ETA, steps=T, damping=RHO, **dict(options))


def rel(a, b):
    flat = lambda t: np.concatenate([np.ravel(l) for l in jax.tree_util.tree_leaves(t)])
    return float(np.linalg.norm(flat(a) - flat(b)) / np.linalg.norm(flat(b)))


def case_id(case):
    name, options = case
    return name + "".join(f"-{k}={v}" for k, v in options.items())


@pytest.mark.parametrize("name, options", CASES, ids=[case_id(c) for c in CASES])
def test_optax_loop_equals_train(name, options):
    """params_{t+1} = params_t + updates from chain(precondition, scale(-eta)) under jax.jit, with
    real gradients as the incoming updates: outputs at every step and final params as train's."""
    model, params, x, y = net()
    ref = reference(name, tuple(options.items()))
    opt = optax.chain(precondition(model, name, damping=RHO, **options), optax.scale(-ETA))
    state, update, p, fs = opt.init(params), jax.jit(opt.update), params, []
    for _ in range(T):
        fs.append(model.apply(p, x))
        updates, state = update(grad_fn()(p), state, p, x=x, y=y)
        p = optax.apply_updates(p, updates)
    fs.append(model.apply(p, x))
    err = max(rel(fs, ref.f_train), rel(p, ref.params))
    print(f"{case_id((name, options))}: {err:.1e}")
    assert err < 1e-12, (name, options, err)
    assert int(state[0].count) == T


@pytest.mark.parametrize("name, options", STATEFUL, ids=[case_id(c) for c in STATEFUL])
def test_stateful_with_batch_size_runs_in_a_scan(name, options):
    """batch_size = N: init allocates the method state, its structure is fixed, the whole loop is one
    lax.scan from opt.init, and the trajectory is train's."""
    model, params, x, y = net()
    ref = reference(name, tuple(options.items()))
    opt = optax.chain(precondition(model, name, damping=RHO, batch_size=6, **options), optax.scale(-ETA))
    state0 = opt.init(params)
    assert jax.tree_util.tree_leaves(state0[0].method)  # allocated, not lazy

    def step(carry, _):
        p, s = carry
        updates, s = opt.update(jax.grad(lambda q: nn.mse(model.apply(q, x), y))(p), s, p, x=x, y=y)
        return (optax.apply_updates(p, updates), s), model.apply(p, x)

    (p, state), fs = jax.jit(lambda p, s: jax.lax.scan(step, (p, s), None, length=T))(params, state0)
    assert rel([fs, model.apply(p, x)], [ref.f_train[:T], ref.f_train[T]]) < 1e-12
    assert rel(p, ref.params) < 1e-12


def test_composes_with_momentum_and_schedule():
    """chain(precondition, trace(0.9), scale_by_schedule(eta0 0.5^t), scale(-1)) equals the hand-written
    m_t = 0.9 m_{t-1} + d_t, theta <- theta - eta0 0.5^t m_t with d_t = ngd_direction."""
    model, params, x, y = net()
    # a float64 init_value: with a Python float optax's schedule is float32 (the int32 count's division)
    schedule = optax.exponential_decay(init_value=np.float64(0.3), transition_steps=1, decay_rate=0.5)
    opt = optax.chain(precondition(model, "kfac", damping=RHO), optax.trace(decay=0.9),
                      optax.scale_by_schedule(schedule), optax.scale(-1.0))
    state, update, p = opt.init(params), jax.jit(opt.update), params
    q, mom = params, jax.tree_util.tree_map(jnp.zeros_like, params)
    for t in range(4):
        updates, state = update(grad_fn()(p), state, p, x=x, y=y)
        p = optax.apply_updates(p, updates)
        d = nn.ngd_direction(model, q, x, y, "kfac", RHO)
        mom = jax.tree_util.tree_map(lambda m, dl: 0.9 * m + dl, mom, d)
        q = jax.tree_util.tree_map(lambda a, m: a - 0.3 * 0.5 ** t * m, q, mom)
        assert rel(model.apply(p, x), model.apply(q, x)) < 1e-12
    assert rel(p, q) < 1e-12


def test_state_and_lazy_initialisation():
    """Stateless: count and (); stateful without batch_size: None until the first update; the
    incoming updates are not used (zeros give the same direction as the gradient)."""
    model, params, x, y = net()
    s = precondition(model, "exact", damping=RHO).init(params)
    assert isinstance(s, PreconditionState) and int(s.count) == 0 and s.method == ()
    tx = precondition(model, "ngplus", damping=RHO, hold=2)
    s = tx.init(params)
    assert s.method is None
    d, s1 = tx.update(grad_fn()(params), s, params, x=x, y=y)
    assert int(s1.count) == 1 and jax.tree_util.tree_leaves(s1.method)
    d0, _ = tx.update(jax.tree_util.tree_map(jnp.zeros_like, params), s, params, x=x, y=y)
    assert rel(d0, d) == 0.0
    # y as (N,) for C = 1, like train; params as a tuple of layers: updates as a tuple
    d1, _ = tx.update(grad_fn()(params), s, params, x=x, y=y[:, 0])
    assert rel(d1, d) == 0.0
    d2, _ = tx.update(tuple(grad_fn()(params)), s, tuple(params), x=x, y=y)
    assert isinstance(d2, tuple) and rel(d2, d) == 0.0


def test_clear_errors():
    model, params, x, y = net()
    g = grad_fn()(params)
    with pytest.raises(ValueError, match="unknown method 'adam'"):
        precondition(model, "adam")
    with pytest.raises(ValueError, match="has no option"):
        precondition(model, "kfac", damping_style="x")
    with pytest.raises(ValueError, match="options go with a method name"):
        precondition(model, nn.get_method("kfac"), force=True)
    with pytest.raises(ValueError, match="damping"):
        precondition(model, "exact", damping=-1.0)
    with pytest.raises(ValueError, match="batch_size"):
        precondition(model, "exact", batch_size=0)
    tx = precondition(model, "exact", damping=RHO)
    state = tx.init(params)
    with pytest.raises(ValueError, match="params must be a list of 3"):
        tx.init(params[:2])
    bad = [{"W": jnp.ones((16, 7)), "b": jnp.ones(16)}] + params[1:]
    for update in (tx.update, jax.jit(tx.update)):
        with pytest.raises(ValueError, match="layer 1: expected W"):
            update(g, state, bad, x=x, y=y)
        with pytest.raises(ValueError, match="updates .* must have the structure and shapes of params"):
            update(g[:2], state, params, x=x, y=y)
        with pytest.raises(ValueError, match="x missing"):
            update(g, state, params, y=y)
        with pytest.raises(ValueError, match="y missing"):
            update(g, state, params, x=x)
        with pytest.raises(ValueError, match="x must have shape"):
            update(g, state, params, x=x[:, :5], y=y)
        with pytest.raises(ValueError, match="y must have shape"):
            update(g, state, params, x=x, y=y[:4])
    with pytest.raises(ValueError, match="needs params"):
        tx.update(g, state, x=x, y=y)
    with pytest.raises(ValueError, match="NaN"):  # values known (no jit): check_data's finiteness check
        tx.update(g, state, params, x=x.at[0, 0].set(jnp.nan), y=y)
    # the method's conditions, where the batch size is first known: K-FAC needs M_0 >= N
    big_x, big_y = jnp.ones((10, 8)) / 3, jnp.zeros((10, 1))
    kfac = precondition(model, "kfac", damping=RHO)
    with pytest.raises(ValueError, match="M_0 >= N"):
        jax.jit(kfac.update)(g, kfac.init(params), params, x=big_x, y=big_y)
    with pytest.raises(ValueError, match="M_0 >= N"):
        precondition(model, "kfac", damping=RHO, batch_size=10)
    held = precondition(model, "ngplus", damping=RHO, hold=2, batch_size=6)
    with pytest.raises(ValueError, match="batch_size=6, got a batch of 10"):
        held.update(g, held.init(params), params, x=big_x, y=big_y)


def test_core_does_not_import_optax():
    """optax is the face's dependency only: import ntk_ngd leaves it unimported."""
    code = "import sys, ntk_ngd; assert 'optax' not in sys.modules; import ntk_ngd.optax_face; assert 'optax' in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True)
