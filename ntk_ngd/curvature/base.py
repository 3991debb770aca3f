"""The method abstraction (THEORY sections 3 and 9).

A method is a preconditioner G. Every method (an ``AbstractMethod``) provides
  * ``direction(fac, g, rho, state)``: d = (G + rho I)^+ grad, grad = J^T g / N, as W~ blocks
    (M_l, M_{l-1}+1), from the structured factors (J is never formed);
  * ``check(model, n, rho)``: raises where its stated conditions fail (``force=True`` skips);
  * ``alpha(model, n, convention)``: its isotropy constant (THEORY section 4), None if none;
  * ``to_dense(dense, rho)``: its own dense (G + rho I)^+ (P, P) on a small ``DenseProblem``;
  * ``memory_terms(N, C, widths)``: element counts alive at the peak of one structured step;
  * ``residual_map(src, rho)``: the function-space step Phi(r) (train and test rows).
Declared capabilities (never discovered): ``linear`` (Phi(r) = Theta_G r with a ``kernel(src, rho)``
face; a property, since statistics="empirical" makes a method nonlinear), ``analytic`` (an infinite-width face), ``stateful`` (``init`` /
``update`` carry statistics across steps; empty by default), ``isotropy`` (what theory claims:
"finite", "wide" or None) and ``paper`` (one of the paper's seven methods).

Concrete methods are final, frozen dataclasses; their options are typed fields validated at
construction (``KFAC(damping_mode="factored")``). Two intermediate estimators compose them:
``LayerDual`` (layer-coupled: d_l = J_l^T v_l with v linear in g) and ``PerLayer`` (one block rule
applied to every layer independently).
"""
from __future__ import annotations

import abc
import dataclasses
import typing
from typing import Any, Callable, ClassVar, NamedTuple, Optional

import jax.numpy as jnp
import numpy as np
from scipy.linalg import block_diag

from ..layers import Factors, Grams, grams, j_vec, jt_vec, layer_kernels
from .dense import statistic_problem
from .statistics import block_diag_rows, coordinates, statistic_factors, statistic_grams


class KernelSource(NamedTuple):
    """What function-space operators are built from: train Grams, test-train Grams and,
    for empirical sources, the factors themselves (unit-wise and diagonal need them)."""
    model: object
    train: Grams
    cross: Optional[Grams] = None
    fac_train: Optional[Factors] = None
    fac_test: Optional[Factors] = None

    @property
    def n(self) -> int:
        return self.train.KH[0].shape[0]

    @property
    def C(self) -> int:
        return self.train.KD[0].shape[0] // self.train.KH[0].shape[0]

    @property
    def empirical(self) -> bool:
        return self.fac_train is not None


class ResidualMap(NamedTuple):
    """Phi: the function-space step. ``train(r)`` maps r (N, C) or (N C,) to Phi(r) of the same
    shape (f_{t+1}(X) - y = r - eta Phi(r)); ``test(r)`` gives the test rows (N', C) or None."""
    train: Callable
    test: Optional[Callable] = None

    def __call__(self, r):
        return self.train(r)


def _shaped(fn, n, c):
    """Wrap fn: (N, C) -> (N', C) so that it also takes and returns flat (N C,) vectors."""
    from .. import checks

    def wrapped(r):
        r = checks.array(r, "r")
        if r.shape not in ((n, c), (n * c,)):
            raise ValueError(f"r (the residual) must have shape (N, C) = {(n, c)} or (N C,) = ({n * c},), got {r.shape}")
        flat = r.ndim == 1
        out = fn(r.reshape(n, c))
        return out.reshape(-1) if flat else out
    return wrapped


# ----------------------------------------------------------------------------- option validation
# lower bounds of integer options, by name, wherever a method has them (None stays allowed where typed Optional)
OPTION_MINIMUM = {"samples": 1, "chunk": 1, "hold": 1}


def _check_option(method: str, name: str, hint, value):
    """Raise a ValueError naming the option when ``value`` does not have the field's type."""
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin is typing.Union:
        if value is None and type(None) in args:
            return
        inner = [a for a in args if a is not type(None)]
        return _check_option(method, name, inner[0], value)
    if origin is typing.Literal:
        if value not in args:
            raise ValueError(f"{method}: option {name} must be one of {args}, got {value!r}")
        return
    ok = {bool: lambda v: isinstance(v, (bool, np.bool_)),
          int: lambda v: isinstance(v, (int, np.integer)) and not isinstance(v, bool),
          float: lambda v: isinstance(v, (int, float, np.number)) and not isinstance(v, bool)
          and np.isfinite(float(v)),
          str: lambda v: isinstance(v, str)}.get(hint)
    if ok is not None and not ok(value):
        raise ValueError(f"{method}: option {name} must be {hint.__name__}, got {value!r}")
    if hint is int and name in OPTION_MINIMUM and value < OPTION_MINIMUM[name]:
        raise ValueError(f"{method}: option {name} must be an integer >= {OPTION_MINIMUM[name]}, got {value!r}")


@dataclasses.dataclass(frozen=True)
class AbstractMethod(abc.ABC):
    """A preconditioner; see the module docstring. ``force`` skips the stated conditions."""
    name: ClassVar[str] = "abstract"
    analytic: ClassVar[bool] = True
    stateful: ClassVar[bool] = False
    isotropy: ClassVar[Optional[str]] = None
    paper: ClassVar[bool] = False
    force: bool = False

    def __post_init__(self):
        hints = typing.get_type_hints(type(self))
        for f in dataclasses.fields(self):
            _check_option(self.name, f.name, hints[f.name], getattr(self, f.name))

    @classmethod
    def options(cls) -> dict:
        """{option name: default} of the method's typed fields."""
        return {f.name: f.default for f in dataclasses.fields(cls)}

    @classmethod
    def create(cls, **options) -> "AbstractMethod":
        """The method with ``options``; unknown options raise a ValueError that lists the known ones."""
        unknown = set(options) - set(cls.options())
        if unknown:
            raise ValueError(f"method {cls.name!r} has no option(s) {sorted(unknown)}; "
                             f"its options are {sorted(cls.options())}")
        return cls(**options)

    @property
    def linear(self) -> bool:
        """Phi(r) = Theta_G r is linear in the residual (statistics that do not depend on r)."""
        return True

    def statistic_vectors(self, g):
        """V (N, C, k) of the method's statistics estimator (``statistics.py``); None: expected."""
        return None

    def statistic_inputs(self, fac: Factors, g):
        """(factors, residual coordinates) the Fisher statistics are built from: (D V, V^+ g)."""
        V = self.statistic_vectors(g)
        if V is None:
            return fac, g
        return statistic_factors(fac, V), coordinates(V, g)

    def statistic_dense(self, dense):
        """The dense problem of the statistic Jacobian J_S = V^T J (``to_dense`` builds G from it)."""
        V = self.statistic_vectors(jnp.asarray(dense.g.reshape(dense.n, -1)))
        return dense if V is None else statistic_problem(dense, np.asarray(V))

    def statistic_source(self, src: KernelSource):
        """(source, finish) for a linear method's kernel face under its statistics: the train Grams
        become V^T KD V and the cross Grams, train rows then test rows, KD V; ``finish(train,
        cross)`` turns the operators on that source into Theta_G (train, test) with V^+."""
        V = self.statistic_vectors(jnp.zeros((src.n, src.C)))
        if V is None:
            return src, lambda train, cross: (train, cross)
        if not self.linear:
            raise ValueError(f"{self.name}: no linear face")
        left = [src.train] + ([] if src.cross is None else [src.cross])
        cross = Grams([jnp.concatenate([g.KH[l] for g in left]) for l in range(len(src.train.KH))],
                      [jnp.concatenate([g.KD[l] for g in left]) @ block_diag_rows(V) for l in range(len(src.train.KD))])
        fac_left = None
        if src.empirical:
            facs = [src.fac_train] + ([] if src.fac_test is None else [src.fac_test])
            fac_left = Factors([jnp.concatenate([f.H[l] for f in facs]) for l in range(len(src.fac_train.H))],
                               [jnp.concatenate([f.D[l] for f in facs]) for l in range(len(src.fac_train.D))])
        src_s = KernelSource(src.model, statistic_grams(src.train, V, V), cross,
                             None if fac_left is None else statistic_factors(src.fac_train, V), fac_left)
        Vp = jnp.linalg.pinv(block_diag_rows(V))
        nc = src.n * src.C

        def finish(train, cross):
            return cross[:nc] @ Vp, (None if src.cross is None else cross[nc:] @ Vp)
        return src_s, finish

    # --- mandatory faces ---------------------------------------------------------------
    @abc.abstractmethod
    def direction(self, fac: Factors, g, rho: float, state=()) -> list:
        """W~ blocks of d = (G + rho I)^+ J^T g / N for residuals g (N, C)."""

    @abc.abstractmethod
    def check(self, model, n: int, rho: float) -> None:
        """Raise ValueError where the method's stated conditions fail (unless force=True)."""

    def isotropy_for(self, model) -> Optional[str]:
        """What theory claims for this model: "finite", "wide" or None (the class's ``isotropy`` by
        default; a method whose claim depends on the network, e.g. on the activation, overrides it)."""
        return type(self).isotropy

    @abc.abstractmethod
    def alpha(self, model, n: int, convention: Optional[str] = None) -> Optional[float]:
        """Isotropy constant alpha (Theta_G -> alpha I), None where the method is not isotropic;
        convention="paper" gives the paper code's constant where it differs."""

    @abc.abstractmethod
    def to_dense(self, dense, rho: float) -> np.ndarray:
        """(G + rho I)^+ as a dense (P, P) float64 matrix (flat W~ layout) of a ``DenseProblem``."""

    @abc.abstractmethod
    def memory_terms(self, N: int, C: int, widths) -> dict:
        """{term: elements} alive at the peak of one structured step, beyond params and activations."""

    # --- optional faces ----------------------------------------------------------------
    def kernel(self, src: KernelSource, rho: float):
        """(Theta_G (N C, N C), Theta_G(x', X) (N' C, N C) or None); only where ``linear``."""
        raise ValueError(f"{self.name}: its function-space step is not linear in the residual "
                         "(no Theta_G); use residual_map")

    def residual_map(self, src: KernelSource, rho: float, state=()) -> ResidualMap:
        """Phi(r): for empirical sources J d(r) through the structured layers (J never formed);
        for analytic sources Theta_G r from the method's kernel form."""
        n, c = src.n, src.C
        if src.empirical:
            d = lambda r: self.direction(src.fac_train, r, rho, state)
            test = None if src.fac_test is None else _shaped(lambda r: j_vec(src.fac_test, d(r)), n, c)
            return ResidualMap(_shaped(lambda r: j_vec(src.fac_train, d(r)), n, c), test)
        if not self.linear:
            raise ValueError(f"{self.name}: no analytic residual map")
        train, cross = self.kernel(src, rho)
        test = None if cross is None else _shaped(lambda r: (cross @ r.reshape(-1)).reshape(-1, c), n, c)
        return ResidualMap(_shaped(lambda r: (train @ r.reshape(-1)).reshape(n, c), n, c), test)

    def init(self, fac: Factors, g, rho: float):
        """Initial state (statistics kept across steps); () for stateless methods."""
        return ()

    def update(self, state, fac: Factors, g, rho: float, step):
        """State before the direction of training step ``step``; unchanged by default."""
        return state

    def __repr__(self):
        opts = ", ".join(f"{f.name}={getattr(self, f.name)!r}" for f in dataclasses.fields(self)
                         if getattr(self, f.name) != f.default)
        return f"{type(self).__name__}({opts})"


def kernel_grams(N: int, C: int, widths) -> int:
    """Layer Grams KH (N, N), KD and Theta_l (N C, N C) for every layer: elements."""
    L, nc = len(widths) - 1, N * C
    return L * N * N + 2 * L * nc * nc


# ----------------------------------------------------------------------------- layer-coupled
@dataclasses.dataclass(frozen=True)
class LayerDual(AbstractMethod):
    """Methods whose step is d_l = J_l^T v_l with v = V g linear in the residual (exact, BTD).

    Subclasses implement ``dual(thetas, shift, R)`` -> v (L, N C, k) for thetas (L, N C, N C),
    shift = N rho and right-hand sides R (N C, k). Then Theta_G = sum_l Theta_l V_l.
    """

    @abc.abstractmethod
    def dual(self, thetas, shift, R):
        """v (L, N C, k) for right-hand sides R (N C, k)."""

    def direction(self, fac, g, rho, state=()):
        fac, g = self.statistic_inputs(fac, g)
        n, c = g.shape
        thetas = layer_kernels(grams(fac))
        v = self.dual(thetas, n * rho, g.reshape(-1, 1))
        return jt_vec(fac, [vl.reshape(n, c) for vl in v])

    def kernel(self, src, rho):
        src, finish = self.statistic_source(src)
        thetas = layer_kernels(src.train)
        V = self.dual(thetas, src.n * rho, jnp.eye(thetas.shape[1], dtype=thetas.dtype))
        train = jnp.einsum("lab,lbc->ac", thetas, V)
        cross = None if src.cross is None else jnp.einsum("lab,lbc->ac", layer_kernels(src.cross), V)
        return finish(train, cross)


# ----------------------------------------------------------------------------- per layer
@dataclasses.dataclass(frozen=True)
class PerLayer(AbstractMethod):
    """One block rule applied to every layer independently: G = blockdiag_l G_l.

    Subclasses give the rule of one layer l: ``layer_direction(H, D, g, rho)`` (the W~ block),
    ``layer_kernel(src, l, rho)`` (its (train, cross) contribution to Theta_G, summed over layers)
    and ``layer_dense(dense, l, rho)`` (its dense (G_l + rho I)^+, composed block-diagonally).
    """

    @abc.abstractmethod
    def layer_direction(self, H, D, g, rho):
        """W~ block (M_l, M_{l-1}+1) of layer l from H (N, M_{l-1}+1), D (N, M_l, C), g (N, C)."""

    def layer_kernel(self, src: KernelSource, l: int, rho: float):
        """(train (N C, N C), cross (N' C, N C) or None) of layer l."""
        raise ValueError(f"{self.name}: no function-space kernel face")

    @abc.abstractmethod
    def layer_dense(self, dense, l: int, rho: float) -> np.ndarray:
        """Dense (G_l + rho I)^+ (P_l, P_l) of layer l."""

    def direction(self, fac, g, rho, state=()):
        fac, g = self.statistic_inputs(fac, g)
        return [self.layer_direction(H, D, g, rho) for H, D in zip(fac.H, fac.D)]

    def kernel(self, src, rho):
        src, finish = self.statistic_source(src)
        train, cross = 0.0, (None if src.cross is None else 0.0)
        for l in range(len(src.train.KH)):
            tr, cr = self.layer_kernel(src, l, rho)
            train = train + tr
            if cross is not None:
                cross = cross + cr
        return finish(train, cross)

    def to_dense(self, dense, rho):
        dense = self.statistic_dense(dense)
        return block_diag(*[self.layer_dense(dense, l, rho) for l in range(dense.depth)])


MethodLike = Any  # a registered name or an AbstractMethod instance
