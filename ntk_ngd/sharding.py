"""Kernel builds over input tiles, weight tiles and all local devices (THEORY sections 2 and 5).

Three things that let the Gram / kernel builds scale beyond one array in memory and one device:

* Sample sharding. ``local_mesh()`` is a 1-D ``jax.sharding.Mesh`` over the local devices with
  the axis ``"data"``; inputs are padded to a multiple of the device count and placed with
  ``NamedSharding(mesh, P("data"))``. ``layer_grams`` computes the structured factors of each
  sample shard on its own device (``jax.shard_map``; params replicated), all-gathers the
  column side and returns the layer Grams with their rows sharded. With one device it is the
  same computation as ``layers.grams(layers.factors(...))``.
* Weight tiles (the large-width path). At M = 2^16 a hidden-to-hidden W_l has 4.3e9 entries.
  ``tiled_layer_grams`` never holds a whole W_l: the rows of W_l come in generation blocks of
  ``block`` rows, block r drawn as ``normal(fold_in(key_W_l, r), (block, M_{l-1}))``, so any
  compute tile that is a multiple of ``block`` regenerates exactly the same weights. The
  forward pass u_l = h~ W_l^T and the backward pass delta_{l-1} = phi' * (W_l^T delta_l) scan
  over row tiles of W_l, generating each tile twice (once per pass): memory O(N M + tile M)
  instead of O(M^2). ``init_tiled`` materializes the same parameters (block by block, written in
  place) for the structured NGD steps and for tests.
* Input tiles for the infinite-width kernels. ``analytic_layerwise_ntk`` computes Theta_l
  (L, N1, N2) in square blocks of pairs; each block's rows are sharded over the devices and each
  device evaluates ``ntk_ngd.analytic.analytic_kernels`` (public API) on its rows. Only the
  Theta_l output is kept (XLA drops the other outputs of a block), symmetric kernels compute the
  upper block triangle and mirror it, and blocks on the diagonal use the symmetric form for the
  identical-input pairs, so the result equals ``analytic.analytic_layerwise_ntk(model, x)``. The
  result is assembled on the host (``numpy.ndarray``): at N = 10,000 and L = 3 it is 2.4 GB in
  float64, and nothing else of that size is allocated.

Everything works on one device too (the mesh then has one device); results with several
devices equal the single-device results to rounding (tests/test_benchmarks.py runs it with
``XLA_FLAGS=--xla_force_host_platform_device_count=2``).
"""
from __future__ import annotations

import functools
from concurrent.futures import ThreadPoolExecutor

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from .analytic import _default_workers
from .layers import Factors, Grams, factors, grams

AXIS = "data"
DEFAULT_BLOCK = 256        # rows per weight generation block
DEFAULT_WEIGHT_TILE = 1024  # rows of W_l generated and applied at once on the tiled path
DEFAULT_ANALYTIC_TILE = 512     # CPU (cache-sized blocks; 4096 on accelerators)


def _shard_map(f, mesh, in_specs, out_specs):
    return jax.shard_map(f, mesh=mesh, in_specs=in_specs, out_specs=out_specs, check_vma=False)


def local_mesh(devices=None) -> Mesh:
    """1-D mesh over ``devices`` (default: all local devices of the default backend), axis "data"."""
    devices = jax.local_devices() if devices is None else list(devices)
    return Mesh(np.asarray(devices), (AXIS,))


def _pad_rows(x, multiple: int):
    n = x.shape[0]
    pad = (-n) % multiple
    if pad:
        x = jnp.concatenate([x, jnp.zeros((pad,) + x.shape[1:], x.dtype)], axis=0)
    return x


def shard_rows(x, mesh: Mesh):
    """x padded with zero rows to a multiple of the device count, sharded over "data" (rows)."""
    x = _pad_rows(jnp.asarray(x), mesh.size)
    return jax.device_put(x, NamedSharding(mesh, P(AXIS)))


def _replicate(tree, mesh: Mesh):
    return jax.device_put(tree, NamedSharding(mesh, P()))


# --- Grams from sample-sharded factors ------------------------------------------------------
def _gather_factors(f: Factors) -> Factors:
    g = lambda a: jax.lax.all_gather(a, AXIS, axis=0, tiled=True)
    return Factors([g(h) for h in f.H], [g(d) for d in f.D])


@functools.partial(jax.jit, static_argnames=("fac_fn", "mesh", "cross"))
def _sharded_grams(fac_args, x1, x2, fac_fn, mesh, cross):
    def local(args, a, b):
        f1 = fac_fn(args, a)
        f2 = fac_fn(args, b) if cross else f1
        return grams(f1, _gather_factors(f2))

    spec = P(AXIS, None)  # every Gram: rows sharded, columns whole
    return _shard_map(local, mesh, (P(), P(AXIS), P(AXIS)), Grams(spec, spec))(fac_args, x1, x2)


def _grams_driver(fac_fn, fac_args, model, x1, x2, mesh):
    mesh = local_mesh() if mesh is None else mesh
    x1 = jnp.asarray(x1)
    n1, C = x1.shape[0], model.n_outputs
    cross = x2 is not None
    n2 = x2.shape[0] if cross else n1
    a = shard_rows(x1, mesh)
    b = shard_rows(jnp.asarray(x2, x1.dtype), mesh) if cross else a
    g = _sharded_grams(_replicate(fac_args, mesh), a, b, fac_fn=fac_fn, mesh=mesh, cross=cross)
    if a.shape[0] == n1 and b.shape[0] == n2:  # no padding: keep the row sharding
        return g
    return Grams([kh[:n1, :n2] for kh in g.KH], [kd[:n1 * C, :n2 * C] for kd in g.KD])


class _ParamsFactors:
    """Hashable factor function (a jit static argument): layers.factors with given params."""

    def __init__(self, model):
        self.model = model

    def __call__(self, params, x):
        return factors(self.model, params, x)

    def __hash__(self):
        return hash(("params", self.model))

    def __eq__(self, other):
        return isinstance(other, _ParamsFactors) and other.model == self.model


def layer_grams(model, params, x1, x2=None, mesh: Mesh | None = None) -> Grams:
    """Empirical layer Grams (``layers.Grams``) with the samples sharded over ``mesh`` (default: all
    local devices). KH[l] (N1, N2), KD[l] (N1 C, N2 C), rows sharded over the devices."""
    return _grams_driver(_ParamsFactors(model), params, model, x1, x2, mesh)


def layer_kernels(model, params, x1, x2=None, mesh: Mesh | None = None):
    """Empirical layer-wise NTK Theta_l (L, N1 C, N2 C) from sample-sharded factors."""
    from .layers import layer_kernels as lk
    return lk(layer_grams(model, params, x1, x2, mesh))


# --- weights generated per tile ----------------------------------------------------------------
def _layer_keys(key, l):
    k = jax.random.fold_in(key, l)
    return jax.random.fold_in(k, 0), jax.random.fold_in(k, 1)


def _weight_rows(kw, first_block, n_blocks: int, block: int, m_in: int, dtype):
    """Rows first_block*block .. (first_block+n_blocks)*block - 1 of W (n_blocks*block, m_in)."""
    keys = jax.vmap(lambda r: jax.random.fold_in(kw, r))(first_block + jnp.arange(n_blocks))
    w = jax.vmap(lambda k: jax.random.normal(k, (block, m_in), dtype))(keys)
    return w.reshape(n_blocks * block, m_in)


def _bias(kb, m_out, dtype):
    return jax.random.normal(kb, (m_out,), dtype)


def _check_tiles(tile: int, block: int):
    if block < 1 or tile < 1 or tile % block:
        raise ValueError(f"tile ({tile}) must be a positive multiple of block ({block})")


@functools.partial(jax.jit, static_argnames=("rows", "block", "m_in", "dtype"), donate_argnums=(0,))
def _write_rows(W, kw, start, rows: int, block: int, m_in: int, dtype):
    n_blocks = -(-rows // block)
    w = _weight_rows(kw, start // block, n_blocks, block, m_in, dtype)[:rows]
    return jax.lax.dynamic_update_slice(W, w, (start, 0))


def init_tiled(model, key, block: int = DEFAULT_BLOCK, tile: int = DEFAULT_WEIGHT_TILE, dtype=None) -> list:
    """The parameters that ``tiled_layer_grams(model, key, ...)`` uses, materialized.

    N(0, 1) entries like ``MLP.init`` (a different stream). W_l is filled in place ``tile`` rows
    at a time, so the peak is the parameters plus one tile (never a second copy of W_l).
    """
    _check_tiles(tile, block)
    dtype = jnp.zeros(()).dtype if dtype is None else jnp.dtype(dtype)
    params = []
    for l, (m_in, m_out) in enumerate(zip(model.widths[:-1], model.widths[1:])):
        kw, kb = _layer_keys(key, l)
        W = jnp.zeros((m_out, m_in), dtype)
        for start in range(0, m_out, tile):
            W = _write_rows(W, kw, start, rows=min(tile, m_out - start), block=block, m_in=m_in, dtype=dtype)
        params.append({"W": W, "b": _bias(kb, m_out, dtype)})
    return params


class _TiledFactors:
    """Factors (h~, delta) of the network whose weights ``init_tiled(model, key, block)`` gives,
    without materializing any W_l: forward and backward scan over row tiles of W_l."""

    def __init__(self, model, block: int, tile: int, dtype):
        _check_tiles(tile, block)
        self.model, self.block, self.tile, self.dtype = model, block, tile, jnp.dtype(dtype)

    def _key(self):
        return (self.model, self.block, self.tile, str(self.dtype))

    def __hash__(self):
        return hash(("tiled",) + self._key())

    def __eq__(self, other):
        return isinstance(other, _TiledFactors) and other._key() == self._key()

    def _tiles(self, m_out):
        t = min(self.tile, -(-m_out // self.block) * self.block)  # no tile larger than the layer
        return t, -(-m_out // t)

    def __call__(self, key, x):
        model, dt = self.model, self.dtype
        L, C, N = model.depth, model.n_outputs, x.shape[0]
        widths = model.widths
        H, U = [], []
        h = x.astype(dt)
        for l in range(L):
            m_in, m_out = widths[l], widths[l + 1]
            kw, kb = _layer_keys(key, l)
            t, n_t = self._tiles(m_out)
            nb = t // self.block
            hs = (model.sigma_w / np.sqrt(m_in)) * h
            b = jnp.pad(_bias(kb, m_out, dt), (0, n_t * t - m_out))

            def fwd(_, i, hs=hs, kw=kw, m_in=m_in, nb=nb, b=b, t=t):
                w = _weight_rows(kw, i * nb, nb, self.block, m_in, dt)
                return None, hs @ w.T + model.sigma_b * jax.lax.dynamic_slice_in_dim(b, i * t, t)

            _, u = jax.lax.scan(fwd, None, jnp.arange(n_t))          # (n_t, N, t)
            u = u.transpose(1, 0, 2).reshape(N, n_t * t)[:, :m_out]
            H.append(jnp.concatenate([hs, jnp.full((N, 1), model.sigma_b, dt)], axis=1))
            U.append(u)
            h = model.phi(u)
        D = [None] * L
        D[L - 1] = jnp.broadcast_to(jnp.eye(C, dtype=dt), (N, C, C))
        for l in range(L - 2, -1, -1):
            m_in, m_out = widths[l + 1], widths[l + 2]         # W_{l+1}: (m_out, m_in)
            kw, _ = _layer_keys(key, l + 1)
            t, n_t = self._tiles(m_out)
            nb = t // self.block
            Dn = jnp.pad(D[l + 1], ((0, 0), (0, n_t * t - m_out), (0, 0)))

            def bwd(acc, i, kw=kw, m_in=m_in, nb=nb, Dn=Dn, t=t):
                w = _weight_rows(kw, i * nb, nb, self.block, m_in, dt)
                d = jax.lax.dynamic_slice_in_dim(Dn, i * t, t, axis=1)
                return acc + jnp.einsum("mi,nmc->nic", w, d), None

            back, _ = jax.lax.scan(bwd, jnp.zeros((N, m_in, C), dt), jnp.arange(n_t))
            back = back * (model.sigma_w / np.sqrt(m_in))
            D[l] = model.dphi(U[l])[:, :, None] * back
        return Factors(H, D)


def tiled_factors(model, key, x, block: int = DEFAULT_BLOCK, tile: int = DEFAULT_WEIGHT_TILE, dtype=None) -> Factors:
    """Structured factors of the ``init_tiled(model, key, block)`` network at x, weights generated
    per tile (single device, no sharding)."""
    dtype = jnp.asarray(x).dtype if dtype is None else dtype
    return jax.jit(_TiledFactors(model, block, tile, dtype))(key, jnp.asarray(x, dtype))


def tiled_layer_grams(model, key, x1, x2=None, block: int = DEFAULT_BLOCK, tile: int = DEFAULT_WEIGHT_TILE,
                      mesh: Mesh | None = None, dtype=None) -> Grams:
    """Layer Grams of the ``init_tiled(model, key, block)`` network, never holding a whole W_l.

    Samples sharded over ``mesh`` (default: all local devices); every device regenerates the
    weight tiles it needs (the generator is deterministic), so no weights are communicated.
    Memory per device: the factors of its samples, the gathered factors and one weight tile.
    """
    x1 = jnp.asarray(x1)
    dtype = x1.dtype if dtype is None else dtype
    return _grams_driver(_TiledFactors(model, block, tile, dtype), key, model, x1.astype(dtype),
                         None if x2 is None else jnp.asarray(x2, dtype), mesh)


# --- analytic kernels over input tiles and devices ------------------------------------------------
@functools.partial(jax.jit, static_argnames=("model", "mesh", "diag", "quad_order", "quad_rule"))
def _analytic_block(xr, xc, model, mesh, diag, quad_order, quad_rule):
    from .analytic import analytic_kernels
    kw = dict(quad_order=quad_order, quad_rule=quad_rule)

    def local(a, b):
        if diag and mesh.size == 1:
            return analytic_kernels(model, a, **kw).theta
        t = analytic_kernels(model, a, b, **kw).theta                    # (L, tr, B)
        if diag:  # this device's own square: identical inputs on its diagonal, symmetric form
            s = analytic_kernels(model, a, **kw).theta
            off = jax.lax.axis_index(AXIS) * a.shape[0]
            zero = jnp.zeros((), off.dtype)
            t = jax.lax.dynamic_update_slice(t, s, (zero, zero, off))
        return t

    return _shard_map(local, mesh, (P(AXIS), P()), P(None, AXIS, None))(xr, xc)


def analytic_layerwise_ntk(model, x1, x2=None, tile: int | None = None, mesh: Mesh | None = None,
                           quad_order: int | None = None, quad_rule: str | None = None,
                           workers: int | None = None) -> np.ndarray:
    """Analytic layer-wise NTK Theta_l(x1, x2) (L, N1, N2) over square input tiles, the rows of each
    tile sharded over the local devices; a host ``numpy`` array.

    Equals ``ntk_ngd.analytic.analytic_layerwise_ntk(model, x1, x2)`` (same formulas, same
    symmetric treatment of identical-input pairs when x2 is None). ``tile`` is the number of
    rows and columns of a block (default 512 on CPU, 4096 on accelerators, rounded up to a
    multiple of the device count); ``ntk_ngd.memory.choose_chunk("analytic", ...)`` picks one for
    a memory budget. ``workers`` threads compute blocks concurrently (default: on a single CPU
    device the available cores, at most 4, since XLA:CPU runs an elementwise computation on one
    thread; otherwise 1, the devices being the parallelism).
    """
    from . import analytic
    mesh = local_mesh() if mesh is None else mesh
    ndev = mesh.size
    sym = x2 is None or x2 is x1
    x1 = np.asarray(x1)
    dt = jnp.result_type(float) if not np.issubdtype(x1.dtype, np.floating) else \
        jnp.promote_types(x1.dtype, jnp.result_type(float))
    x1 = jnp.asarray(x1, dt)
    x2 = x1 if sym else jnp.asarray(np.asarray(x2), dt)
    for name, x in (("x1", x1), ("x2", x2)):
        if x.ndim != 2 or x.shape[1] != model.widths[0] or x.shape[0] == 0:
            raise ValueError(f"{name} must have shape (N >= 1, M_0={model.widths[0]}), got {tuple(x.shape)}")
    quad_order = analytic.DEFAULT_QUAD_ORDER if quad_order is None else int(quad_order)
    quad_rule = analytic.DEFAULT_QUAD_RULE if quad_rule is None else quad_rule
    n1, n2, L = x1.shape[0], x2.shape[0], model.depth
    if tile is None:
        tile = DEFAULT_ANALYTIC_TILE if mesh.devices.flat[0].platform == "cpu" else 4096
    tile = int(tile)
    if tile < 1:
        raise ValueError(f"tile must be a positive integer, got {tile}")
    B = -(-min(tile, max(n1, n2)) // ndev) * ndev
    x1p, x2p = _pad_rows(x1, B), (None if sym else _pad_rows(x2, B))
    out = np.empty((L, n1, n2), np.dtype(dt))
    rows_sh, rep = NamedSharding(mesh, P(AXIS)), NamedSharding(mesh, P())
    nbr, nbc = x1p.shape[0] // B, (x1p if sym else x2p).shape[0] // B
    def block(i, j):
        xr = jax.device_put(x1p[i * B:(i + 1) * B], rows_sh)
        xc = jax.device_put((x1p if sym else x2p)[j * B:(j + 1) * B], rep)
        blk = np.asarray(_analytic_block(xr, xc, model=model, mesh=mesh, diag=sym and i == j,
                                         quad_order=quad_order, quad_rule=quad_rule))
        r0, c0 = i * B, j * B
        r1, c1 = min(r0 + B, n1), min(c0 + B, n2)
        out[:, r0:r1, c0:c1] = blk[:, :r1 - r0, :c1 - c0]
        if sym and c0 != r0:
            out[:, c0:c1, r0:r1] = blk[:, :r1 - r0, :c1 - c0].transpose(0, 2, 1)

    jobs = [(i, j) for i in range(nbr) for j in range(i if sym else 0, nbc)]
    if workers is None:  # XLA:CPU runs one elementwise computation on one thread
        workers = _default_workers() if mesh.devices.flat[0].platform == "cpu" and ndev == 1 else 1
    if workers <= 1 or len(jobs) == 1:
        for i, j in jobs:
            block(i, j)
    else:  # blocks write disjoint parts of ``out``
        with ThreadPoolExecutor(max_workers=int(workers)) as pool:
            for f in [pool.submit(block, i, j) for i, j in jobs]:
                f.result()
    return out


def analytic_tile_for_budget(model, budget_bytes: int, dtype="float64", ndev: int = 1) -> int:
    """Square tile (rows = columns per block) whose working set fits ``budget_bytes``; see memory.choose_chunk."""
    from .memory import choose_chunk
    return choose_chunk("analytic", budget_bytes, L=model.depth, dtype=dtype, devices=ndev,
                        closed_form=isinstance(model.activation, str) and model.activation in ("relu", "erf", "linear"))


__all__ = ["AXIS", "local_mesh", "shard_rows", "layer_grams", "layer_kernels", "init_tiled", "tiled_factors",
           "tiled_layer_grams", "analytic_layerwise_ntk", "analytic_tile_for_budget"]
