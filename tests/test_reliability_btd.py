"""Block tri-diagonal NGD against 50-digit references (issue 13: "Block tri-diagonal numerics").

The reference is built from the network's Jacobian J (float64, ``oracle.jacobian``) in mpmath at
mp.dps = 50: G = Jb^T (T (x) I) Jb / N with Jb = blockdiag_l J_l. Jb^T = Q R (mpmath QR, P x L N C),
so G = Q [R (T (x) I) R^T / N] Q^T exactly and grad = J^T g / N = Q R (1 (x) g) / N lies in range(Q):
(G + rho I)^{-1} grad = Q (H + rho)^{-1} Q^T grad and G^+ grad = Q H^+ Q^T grad with the small
symmetric H = R (T (x) I) R^T / N, eigendecomposed once (mp.eigsy; the pseudo-inverse drops
|eigenvalues| below 1e-30 max). ``test_reduced_reference_equals_the_literal_dense_solve`` checks
this against the literal P x P solve of (G + rho I) d = grad with mpmath's lu_solve.

Bound (float64, the tests' tiny problems): with nu the non-zero eigenvalues of G (the spectrum
of the kernel-space operator, divided by N) and kappa(rho) = max |nu + rho| / min |nu + rho|,
the structured step and Theta_G have relative error <= 10 n eps kappa(rho) (n = L N C), and
<= 1e-8 wherever kappa(rho) <= 1e5 (measured worst: about 1e-13). Where -rho is within a
relative sqrt(eps) of a negative eigenvalue of G the step is refused (ValueError); where rho is
in [rho_lo / 2, 2 rho_hi] (rho_lo, rho_hi: the smallest and largest |nu^-|) it is computed but an
IndefiniteDampingWarning is raised.
"""
import warnings

import jax
import jax.numpy as jnp
import mpmath as mp
import numpy as np
import pytest

import ntk_ngd as nn
from ntk_ngd.curvature import BlockTridiagonal, tridiagonal_ones
from ntk_ngd.curvature.block_tridiagonal import IndefiniteDampingWarning, coupling, eigen_coupling
from ntk_ngd.layers import Factors, factors
import oracle

DPS = 50
RHOS = (0.0, 1e-20, 1e-16, 1e-12, 1e-8, 1e-4, 1.0)
WIDTHS = {2: (5, 8), 3: (4, 6, 6), 4: (4, 5, 5, 5), 5: (3, 5, 5, 5, 5), 8: (3,) + (4,) * 7}  # P = 57..141
EPS = {"float64": np.finfo(np.float64).eps, "float32": np.finfo(np.float32).eps}


def tiny(L, dup=False, C=1, n=4, seed=0, act="tanh", sb=0.2):
    """A tiny network (P = 57..141) and unit-norm inputs; dup: x_1 = x_0 (other targets)."""
    model = nn.MLP(WIDTHS[L] + (C,), act, sigma_b=sb)
    k1, k2, k3 = jax.random.split(jax.random.PRNGKey(seed + 31 * L), 3)
    params = model.init(k1)
    x = jax.random.normal(k2, (n, WIDTHS[L][0]))
    x = x / jnp.linalg.norm(x, axis=1, keepdims=True)
    if dup:
        x = x.at[1].set(x[0])
    return model, params, x, 0.5 * jax.random.normal(k3, (n, C))


def cast(tree, dtype):
    return jax.tree_util.tree_map(lambda a: jnp.asarray(a, dtype), tree)


class Reference:
    """The 50-digit step d(rho) = (G + rho I)^+ grad and Theta_G(rho) = J (G + rho I)^+ J^T / N of
    G = Jb^T (T (x) I) Jb / N, from J (N C, P), the layer of every column and g (N C,)."""

    def __init__(self, J, layer, g, n, L):
        mp.mp.dps = DPS
        nc, P = J.shape
        self.n, self.L, self.nc, self.P = n, L, nc, P
        JbT = mp.matrix(P, L * nc)
        for p in range(P):
            l = int(layer[p])
            for i in range(nc):
                if J[i, p] != 0:
                    JbT[p, l * nc + i] = mp.mpf(float(J[i, p]))
        self.JbT = JbT
        self.Q, R = mp.qr(JbT, mode="skinny")
        T = tridiagonal_ones(L)
        A = mp.matrix(L * nc, L * nc)
        ones = mp.matrix(L * nc, nc)  # 1_L (x) I
        for l in range(L):
            for i in range(nc):
                ones[l * nc + i, i] = 1
                for k in range(L):
                    if T[l, k]:
                        A[l * nc + i, k * nc + i] = 1
        H = R * A * R.T / n
        self.ev, self.U = mp.eigsy((H + H.T) / 2)
        self.g = mp.matrix([mp.mpf(float(v)) for v in g])
        self.RS = R * ones                  # Q^T J^T
        self.Qg = self.RS * self.g / n      # Q^T grad
        self.eigs = np.array([float(e) for e in self.ev])  # the non-zero ones: the spectrum of G
        top = np.abs(self.eigs).max()
        self.nonzero = self.eigs[np.abs(self.eigs) > 1e-30 * top]
        self.negative = -self.nonzero[self.nonzero < 0]

    @classmethod
    def of(cls, model, params, x, y, dtype="float64"):
        """The reference of the network as ``dtype`` sees it (params and x rounded to dtype)."""
        params, x = cast(cast(params, dtype), jnp.float64), jnp.asarray(jnp.asarray(x, dtype), jnp.float64)
        J = oracle.jacobian(model, params, x)
        g = np.asarray(model.apply(params, x) - jnp.asarray(y, jnp.float64)).reshape(-1)
        return cls(J, oracle.labels(model)[0], g, x.shape[0], model.depth)

    def _apply(self, rho, X):
        top = max(abs(e) for e in self.ev)
        if rho == 0:
            f = [0 if abs(e) <= mp.mpf(10) ** -30 * top else 1 / e for e in self.ev]
        else:
            f = [1 / (e + mp.mpf(rho)) for e in self.ev]
        Y = self.U.T * X
        for i in range(Y.rows):
            for j in range(Y.cols):
                Y[i, j] *= f[i]
        return self.U * Y

    def direction(self, rho):
        """Flat W~ d = (G + rho I)^+ grad, rounded to float64."""
        return np.array([float(v) for v in self.Q * self._apply(rho, self.Qg)])

    def kernel(self, rho):
        """Theta_G = J (G + rho I)^+ J^T / N, rounded to float64."""
        K = self.RS.T * self._apply(rho, self.RS) / self.n
        return np.array([[float(K[i, j]) for j in range(K.cols)] for i in range(K.rows)])

    def dense_direction(self, rho):
        """The literal P x P solve (G + rho I) d = grad with mpmath's lu_solve (rho > 0)."""
        nc, T = self.nc, tridiagonal_ones(self.L)
        Jl = [self.JbT[:, l * nc:(l + 1) * nc] for l in range(self.L)]
        G = mp.matrix(self.P, self.P)
        for l in range(self.L):
            for k in range(self.L):
                if T[l, k]:
                    G += Jl[l] * Jl[k].T
        G = G / self.n
        for i in range(self.P):
            G[i, i] += mp.mpf(rho)
        grad = mp.matrix(self.P, 1)
        for l in range(self.L):
            grad += Jl[l] * self.g
        return np.array([float(v) for v in mp.lu_solve(G, grad / self.n)])

    # --- what the bound and the damping rule say ----------------------------------------
    def kappa(self, rho):
        a = np.abs(self.nonzero + rho)
        return a.max() / a.min()

    def unsafe_range(self):
        """(rho_lo, rho_hi): the smallest and largest |negative eigenvalue| of G (None without)."""
        return (self.negative.min(), self.negative.max()) if self.negative.size else None

    def gap(self, rho):
        """min_j |nu_j + rho| / |nu_j| over the negative eigenvalues nu_j (inf without)."""
        return np.min(np.abs(rho - self.negative) / self.negative) if self.negative.size else np.inf


def rel(a, b):
    return float(np.linalg.norm(np.asarray(a, np.float64) - b) / np.linalg.norm(b))


def structured(model, params, x, y, rho):
    """(flat d, Theta_G, warnings) from the method itself, outside jit (the kernels are concrete)."""
    m = BlockTridiagonal()
    with warnings.catch_warnings(record=True) as w:
        warnings.simplefilter("always")
        g = model.apply(params, x) - y
        d = oracle.flat_direction(nn.layers.to_params(m.direction(factors(model, params, x), g, rho)))
        tg, _ = m.kernel(nn.empirical_source(model, params, x), rho)
    return d, np.asarray(tg, np.float64), [x for x in w if issubclass(x.category, IndefiniteDampingWarning)]


def expected_warning(ref, rho):
    """True / False where the rule says warn / not, None within 2% of the range's ends."""
    r = ref.unsafe_range()
    if rho == 0 or r is None:
        return False
    lo, hi = r[0] / 2, 2 * r[1]
    if min(abs(rho / lo - 1), abs(rho / hi - 1)) < 0.02:
        return None
    return lo <= rho <= hi


# ----------------------------------------------------------------------------- the closed forms
@pytest.mark.parametrize("L", range(1, 13))
def test_closed_form_eigenpairs_of_T(L):
    lam, V = eigen_coupling(L)
    T = tridiagonal_ones(L)
    assert np.abs(V @ np.diag(lam) @ V.T - T).max() < 1e-14
    assert np.abs(V.T @ V - np.eye(L)).max() < 1e-14
    assert np.array_equal(lam == 0, np.arange(1, L + 1) * 3 == 2 * (L + 1))  # singular exactly at L = 3s + 2
    assert (np.count_nonzero(lam == 0) == 1) == (L % 3 == 2)
    assert (np.count_nonzero(lam < 0) > 0) == (L >= 3)  # T indefinite for L >= 3
    _, c, Z = coupling(L)
    assert np.abs(c - np.linalg.pinv(T) @ np.ones(L)).max() < 1e-13
    assert np.sum(c) == pytest.approx(-(-L // 3), abs=1e-13)
    assert np.abs(Z.T @ np.ones(L)).max() < 1e-14 if Z.size else True  # 1 is orthogonal to null(T)


# ----------------------------------------------------------------------------- the reference itself
def test_reduced_reference_equals_the_literal_dense_solve():
    """The reference's exact range reduction against mpmath's lu_solve of the P x P system."""
    for L, rho in ((2, 1e-12), (3, 1e-8)):
        model, params, x, y = tiny(L, dup=L == 2)
        ref = Reference.of(model, params, x, y)
        assert rel(ref.dense_direction(rho), ref.direction(rho)) < 1e-30


# ----------------------------------------------------------------------------- accuracy
@pytest.mark.parametrize("L", [2, 3, 4, 5, 8])
def test_accuracy_against_50_digit_references(L, record_property):
    """Every damping of RHOS, distinct and duplicate inputs, float64: the step and Theta_G."""
    worst, rows = {}, []
    for dup in (False, True):
        model, params, x, y = tiny(L, dup=dup)
        ref = Reference.of(model, params, x, y)
        n = L * x.shape[0] * model.n_outputs
        for rho in RHOS:
            d, tg, w = structured(model, params, x, y, rho)
            ed, ek = rel(d, ref.direction(rho)), rel(tg, ref.kernel(rho))
            kappa = ref.kappa(rho)
            bound = 10 * n * EPS["float64"] * kappa
            assert max(ed, ek) <= bound, (L, dup, rho, ed, ek, kappa)
            if kappa <= 1e5:
                assert max(ed, ek) < 1e-8, (L, dup, rho, ed, ek)
            want = expected_warning(ref, rho)
            if want is not None:
                assert bool(w) == want, (L, dup, rho, ref.unsafe_range(), [str(x.message) for x in w])
            key = ("dup" if dup else "distinct", "0" if rho == 0 else ("<=1e-12" if rho <= 1e-12 else f"{rho:g}"))
            worst[key] = max(worst.get(key, 0.0), ed, ek)
            rows.append((dup, rho, ed, ek, kappa))
        # the public jit path agrees with the eager one
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            dj = oracle.flat_direction(nn.ngd_direction(model, params, x, y, "block_tridiagonal", 1e-16))
        assert rel(dj, ref.direction(1e-16)) < 1e-12
    record_property("worst", {f"{k[0]} rho {k[1]}": f"{v:.1e}" for k, v in worst.items()})
    print(f"L={L}", {f"{k[0]} rho {k[1]}": f"{v:.1e}" for k, v in worst.items()})


@pytest.mark.parametrize("L", [2, 5, 8])
def test_accuracy_float32(L):
    """float32 against the reference of the float32-rounded network: 10 n eps32 kappa, and 1e-4
    wherever kappa <= 1e2 (before: 0.15 at L = 5, rho = 1e-16, and 1e-3 at rho = 1e-8 with
    duplicate inputs)."""
    worst = {}
    for dup in (False, True):
        model, params, x, y = tiny(L, dup=dup)
        ref = Reference.of(model, params, x, y, "float32")
        p32, x32, y32 = cast(params, jnp.float32), jnp.asarray(x, jnp.float32), jnp.asarray(y, jnp.float32)
        n = L * x.shape[0]
        for rho in (0.0, 1e-16, 1e-8, 1e-4):
            d, tg, _ = structured(model, p32, x32, y32, rho)
            ed, ek = rel(d, ref.direction(rho)), rel(tg, ref.kernel(rho))
            kappa = ref.kappa(rho)
            assert max(ed, ek) <= max(10 * n * EPS["float32"] * kappa, 1e-6), (L, dup, rho, ed, ek, kappa)
            if kappa <= 1e2:
                assert max(ed, ek) < 1e-4, (L, dup, rho, ed, ek)
            key = f"{'dup' if dup else 'distinct'} rho {rho:g}"
            worst[key] = max(ed, ek)
    print(f"float32 L={L}", {k: f"{v:.1e}" for k, v in worst.items()})


def test_rho_zero_is_the_minimum_norm_step_and_the_small_damping_limit():
    """At rho = 0 the step is G^+ grad (minimum norm: orthogonal to null(G)) and equals the damped
    step at rho -> 0+; Theta_G = alpha I to round-off at singular T (L = 5, 8)."""
    for L in (5, 8):
        model, params, x, y = tiny(L)
        ref = Reference.of(model, params, x, y)
        d0, tg0, _ = structured(model, params, x, y, 0.0)
        d1, _, _ = structured(model, params, x, y, 1e-20)
        assert rel(d0, ref.direction(0.0)) < 1e-12 and rel(d1, d0) < 1e-12
        alpha = nn.isotropy_constant("block_tridiagonal", model, x.shape[0])
        assert np.abs(tg0 - alpha * np.eye(len(tg0))).max() < 1e-12
        # minimum norm: d has no component in null(G) = null(Jb^T (T (x) I) Jb)
        J = oracle.jacobian(model, params, x)
        lay = oracle.labels(model)[0]
        Jb = np.zeros((L * J.shape[0], J.shape[1]))
        for l in range(L):
            Jb[l * J.shape[0]:(l + 1) * J.shape[0], lay == l] = J[:, lay == l]
        G = Jb.T @ np.kron(tridiagonal_ones(L), np.eye(J.shape[0])) @ Jb / x.shape[0]
        w, V = np.linalg.eigh(G)
        null = V[:, np.abs(w) < 1e-12 * np.abs(w).max()]
        assert np.linalg.norm(null.T @ d0) < 1e-12 * np.linalg.norm(d0)


def test_pseudo_inverse_where_the_deflated_system_itself_is_singular():
    """Theta_3 = 0 (no output-layer signal) at L = 3: the kernel-space operator is singular beyond
    the layer kernels' null spaces (M = P^T E P singular); rho = 0 gives G^+ grad."""
    rng = np.random.default_rng(0)
    n, L = 3, 3
    H = [rng.normal(size=(n, k)) for k in (4, 5, 4)]
    D = [rng.normal(size=(n, m, 1)) for m in (5, 4)] + [np.zeros((n, 1, 1))]
    fac = Factors([jnp.asarray(h) for h in H], [jnp.asarray(d) for d in D])
    g = rng.normal(size=(n, 1))
    J = np.concatenate([np.einsum("nm,nk->nmk", d[:, :, 0], h).reshape(n, -1) for h, d in zip(H, D)], 1)
    layer = np.concatenate([np.full(d.shape[1] * h.shape[1], l) for l, (h, d) in enumerate(zip(H, D))])
    ref = Reference(J, layer, g.ravel(), n, L)
    d = np.concatenate([np.asarray(b).ravel() for b in BlockTridiagonal().direction(fac, jnp.asarray(g), 0.0)])
    assert rel(d, ref.direction(0.0)) < 1e-12


# ----------------------------------------------------------------------------- indefinite dampings
def test_dampings_at_negative_eigenvalues_are_refused():
    """-rho an eigenvalue of G_BTD (L = 3, 8): ValueError naming rho and the range, eagerly
    (kernel face, direction on concrete kernels); inside jit a warning naming them, then
    ngd_direction's ValueError and train's FloatingPointError. Never a silent (huge) step: before,
    these dampings (and those of L = 4) gave steps of norm 1e8..1e15 and one-step losses
    (eta = 1/alpha) of 1e13..1e29 from losses 0.2..0.6, without an error (one of nine raised)."""
    for L in (3, 8):
        model, params, x, y = tiny(L)
        ref = Reference.of(model, params, x, y)
        lo, hi = ref.unsafe_range()
        src = nn.empirical_source(model, params, x)
        fac, g = factors(model, params, x), model.apply(params, x) - y
        for rho in (float(lo), float(hi), float(hi) * (1 + 1e-10)):
            with pytest.raises(ValueError, match="singular to working precision") as e:
                nn.preconditioned_kernel("block_tridiagonal", src, rho)
            msg = str(e.value)
            assert f"rho = {rho:.6g}" in msg and f"[{lo:.3g}, {hi:.3g}]" in msg, msg
            assert f"rho < {lo / 2:.3g} or rho > {2 * hi:.3g}" in msg
            with pytest.raises(ValueError, match="singular to working precision"):
                BlockTridiagonal().direction(fac, g, rho)
        rho = float(hi) * (1 + 1e-10)  # inside jit: NaN, reported by ngd_direction, with the warning
        with pytest.warns(IndefiniteDampingWarning, match=r"singular to working precision.*returned as NaN"):
            with pytest.raises(ValueError, match=f"singular at damping={rho}"):
                nn.ngd_direction(model, params, x, y, "block_tridiagonal", rho)
    with pytest.warns(IndefiniteDampingWarning, match=f"rho = {lo:.6g}"):
        with pytest.raises(FloatingPointError, match="singular system"):
            nn.train(model, params, (x, y), "block_tridiagonal", steps=1, damping=float(lo))


def test_dampings_in_the_unsafe_range_warn_and_stay_accurate():
    """rho between negative eigenvalues: a warning naming the range; the step itself is accurate
    to 10 n eps kappa(rho) (it is well defined)."""
    model, params, x, y = tiny(3)
    ref = Reference.of(model, params, x, y)
    lo, hi = ref.unsafe_range()
    neg = np.sort(ref.negative)
    for rho in (float(np.sqrt(neg[0] * neg[1])), float(0.5 * (neg[-2] + neg[-1])), 0.6 * lo, 1.8 * hi):
        d, tg, w = structured(model, params, x, y, rho)
        assert len(w) == 2, rho  # direction and kernel
        assert f"unsafe range [{lo / 2:.3g}, {2 * hi:.3g}]" in str(w[0].message)
        bound = 10 * 12 * EPS["float64"] * ref.kappa(rho)
        assert max(rel(d, ref.direction(rho)), rel(tg, ref.kernel(rho))) <= bound
    for rho in (0.4 * lo, 2.5 * hi):  # outside: no warning
        assert not structured(model, params, x, y, rho)[2]


def test_depths_below_three_never_warn():
    """L <= 2: T is positive semi-definite, G + rho I is positive definite for every rho > 0."""
    for L in (1, 2):
        model = nn.MLP((5,) * L + (1,), "tanh")
        params = model.init(jax.random.PRNGKey(L))
        x = jax.random.normal(jax.random.PRNGKey(0), (4, 5))
        for rho in (1e-16, 1e-4, 1e-2, 1.0, 100.0):
            assert not structured(model, params, x, jnp.zeros((4, 1)), rho)[2]


def test_check_still_warns_pseudo_inverse_at_singular_T():
    model = nn.MLP((4, 8, 1))
    with pytest.warns(UserWarning, match="pseudo-inverse"):
        BlockTridiagonal().check(model, 3, 0.0)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        BlockTridiagonal().check(nn.MLP((4, 8, 8, 1)), 3, 0.0)
        BlockTridiagonal().check(model, 3, 1e-3)
