# ---
# jupyter:
#   jupytext:
#     text_representation:
#       extension: .py
#       format_name: percent
#   kernelspec:
#     display_name: Python 3
#     language: python
#     name: python3
# ---

# %% [markdown]
# # (c) Checking a convergence claim of your own method
#
# The toolkit is not limited to the paper's seven methods: a new preconditioner is **one class
# and one `register_method` call**, after which `train`, `ngd_direction`,
# `preconditioned_kernel`, `RunConfig`/`compare`, sweeps and the `ntk-ngd` command run it like a
# built-in one. This tutorial
#
# 1. defines a method, *input-side NGD*: each layer is preconditioned by the second moment of its
#    inputs only, `G_l = I (x) A_{l-1}`, `A_{l-1} = H^T H / N` (K-FAC without its backward factor;
#    FOOF in the literature, [theory](../THEORY.md) section 9);
# 2. derives a claim for it: isotropic as `M -> infinity`, with a finite-width error `O(M^-1/2)`;
# 3. checks the implementation against a dense reference;
# 4. sweeps widths and reads the fitted exponent.

# %%
import dataclasses
import os
from typing import final

os.environ.setdefault("NPROC", "8")  # jaxlib CPU thread-pool guard: before JAX starts
import jax

jax.config.update("jax_enable_x64", True)
import jax.numpy as jnp
import matplotlib.pyplot as plt
import numpy as np

import ntk_ngd as nn
from ntk_ngd.curvature import PerLayer, dense_problem, register_method
from ntk_ngd.curvature.base import kernel_grams
from ntk_ngd.experiments import RunConfig, compare, fit_power_law
from ntk_ngd.layers import expand
from ntk_ngd.linalg import psd_solve

# %% [markdown]
# ## 1. The method and its claim
#
# Layer `l`'s parameters `W~_l = [W_l, b_l]` (shape `(M_l, M_{l-1}+1)`) have the gradient
# `G_l = E^T H / N`, where `H` (`N x (M_{l-1}+1)`) has the layer inputs `h~_n` as rows and `E`
# (`N x M_l`) the rows `delta_n g_n` (backward signal times residual `g = f(X) - y`). The step is
# `dW~_l = G_l (A + rho I)^{-1}`, and by the push-through identity
#
#     dW~_l = E^T (K_H + N rho I)^{-1} H,        K_H = H H^T  (N x N),
#
# so nothing larger than `N x N` is ever inverted. In function space the layer contributes
# (section 9's Kronecker rule with `P = I`, `Q = (A + rho I)^{-1}`)
#
#     Theta_G,l = K_D o [K_H (K_H + N rho I)^{-1}],    K_D = D D^T.
#
# **Claim.** At `rho = 0`, if every layer input has rank `N` (`M_{l-1} >= N`, inputs in general
# position), `K_H K_H^+ = I` and each layer gives `diag(||delta_l(x_n)||^2)`: the last layer
# (`delta_L = 1`) gives exactly `I`, a hidden layer gives the squared norms of its backward
# signals. As `M -> infinity` these tend to `B_l(x_n, x_n)`, which for relu is
# `(sigma_w^2 / 2)^(L-l)` for *every* input (half the units are active whatever the input's norm).
# So
#
#     Theta_G -> alpha I,   alpha = 1 + sum_{k=1}^{L-1} (sigma_w^2 / 2)^k   (= L at sigma_w^2 = 2),
#
# and at width `M` the squared norms fluctuate around their limits by `O(M^-1/2)` (a sum over
# `M` units), so the isotropy error `||Theta_G / alpha - I||` should fall like `M^-1/2`.
#
# The class: a final frozen dataclass with a `name`, subclassing `PerLayer` (one rule applied
# to each layer independently; `AbstractMethod` is the general base). Its faces: the layer's
# step, its kernel, its dense reference, its conditions, its `alpha` and a memory estimate
# (see `ntk_ngd/curvature/base.py` and, for a complete built-in example,
# `ntk_ngd/curvature/block_diagonal.py`).

# %%
@register_method
@final
@dataclasses.dataclass(frozen=True)
class InputSideNGD(PerLayer):
    """Input-side NGD (FOOF): G_l = I (x) A_{l-1}, A_{l-1} = H^T H / N, for every layer."""
    name = "input_side"
    isotropy = "wide"  # what the theory claims: isotropic only as the width grows

    def check(self, model, n, rho):
        if not self.force and min(model.widths[:-1]) < n:
            raise ValueError(f"input_side needs M_l >= N for every layer input (widths {model.widths}, N = {n})")

    def alpha(self, model, n, convention=None):
        if model.activation != "relu":
            return None  # B_l(x, x) depends on the input's norm: no single constant
        q = model.sigma_w ** 2 / 2
        return 1.0 + sum(q ** k for k in range(1, model.depth))

    def layer_direction(self, H, D, g, rho):
        n = g.shape[0]
        E = jnp.einsum("nmc,nc->nm", D, g)            # rows delta_n g_n, D is (N, M_l, C)
        return E.T @ psd_solve(H @ H.T, H, n * rho)   # E^T (K_H + N rho)^+ H: (M_l, M_{l-1}+1)

    def layer_kernel(self, src, l, rho):
        n, C = src.n, src.C
        KH, KD = src.train.KH[l], src.train.KD[l]
        train = KD * expand(psd_solve(KH, KH, n * rho), C)
        if src.cross is None:
            return train, None
        cross_h = psd_solve(KH, src.cross.KH[l].T, n * rho).T   # K_H(x', X) (K_H + N rho)^+
        return train, src.cross.KD[l] * expand(cross_h, C)

    def layer_dense(self, dense, l, rho):
        H = dense.H[l]
        A = H.T @ H / dense.n
        inv = np.linalg.inv(A + rho * np.eye(len(A))) if rho > 0 else np.linalg.pinv(A, hermitian=True)
        return np.kron(np.eye(dense.widths[l + 1]), inv)   # rows of W~_l, each times (A + rho)^+

    def memory_terms(self, N, C, widths):
        return {"grams + kernels": kernel_grams(N, C, widths)}


method = nn.get_method("input_side")
print(method, "alpha at sigma_w^2 = 2, L = 3:", method.alpha(nn.MLP((64, 512, 512, 1)), 32))

# %% [markdown]
# ## 2. Check it against a dense reference
#
# On a network small enough for a full Jacobian, `dense_problem` computes `J` and the layer
# factors by plain autodiff; `to_dense` (assembled by `PerLayer` from `layer_dense`) is the
# method's own dense `(G + rho I)^+`. The structured step must equal `(G + rho I)^+ J^T g / N`, and
# the structured `Theta_G` must equal `J (G + rho I)^+ J^T / N`, with and without damping.

# %%
data = nn.synthetic(n_train=16, n_test=8, dim=64, seed=1)
small = nn.MLP((64, 24, 24, 1), activation="relu", sigma_w=2 ** 0.5, sigma_b=0.1)
p = small.init(jax.random.PRNGKey(3))
x, y = jnp.asarray(data.x_train), jnp.asarray(data.y_train)
dense = dense_problem(small, p, x, y)
fac = nn.factors(small, p, x)
g = small.apply(p, x) - y
src_small = nn.empirical_source(small, p, x)
for rho in (0.0, 1e-3):
    G_inv = method.to_dense(dense, rho)
    d_dense = G_inv @ dense.grad
    d = jnp.concatenate([b.reshape(-1) for b in method.direction(fac, g, rho)])
    theta_dense = dense.J @ G_inv @ dense.J.T / dense.n
    theta_g, _ = nn.preconditioned_kernel(method, src_small, rho)
    print(f"rho = {rho:g}: step error {np.linalg.norm(d - d_dense) / np.linalg.norm(d_dense):.1e}, "
          f"Theta_G error {np.linalg.norm(theta_g - theta_dense) / np.linalg.norm(theta_dense):.1e}")

# `ngd_direction` takes the registered name like a built-in one (params-shaped result):
d_params = nn.ngd_direction(small, p, x, y, "input_side", damping=0.0)
print("ngd_direction:", [{k: v.shape for k, v in layer.items()} for layer in d_params])

# %% [markdown]
# ## 3. Sweep widths and read the exponent
#
# `RunConfig` describes one run (data, network, method, learning rate, steps, seed);
# `compare(cfg)` trains it at `eta = 1/alpha` and measures it against its predictors (the numbers
# of `ntk-ngd train`, see the [glossary](../glossary.md)). Inputs: Gaussian, `N = 32 <= M_0 = 64`,
# so every layer input has rank `N`. Widths `2^8 .. 2^11`, 3 seeds each (about 4 s a run on 2 cores,
# most of it compiling).

# %%
widths, seeds = [256, 512, 1024, 2048], [0, 1, 2]
base = RunConfig(dataset="synthetic", dim=64, n_train=32, n_test=32, method="input_side", steps=3,
                 lr="optimal", analytic=False)   # analytic=True adds the infinite-width predictor
rows = []
for width in widths:
    for seed in seeds:
        s = compare(base.replace(width=width, seed=seed))
        rows.append({"width": width, "seed": seed, **{k: s[k] for k in ("iso_err", "ratio_nn", "err_emp_max")}})
    r = [row for row in rows if row["width"] == width]
    print(f"M = {width:5d}: isotropy error " + ", ".join(f"{row['iso_err']:.3f}" for row in r)
          + "; one-step ratio " + ", ".join(f"{row['ratio_nn']:.3f}" for row in r))

# %% [markdown]
# `fit_power_law` fits `metric = a M^b` (pooled slope, 95% Student-t interval over the per-seed
# slopes). The claim predicts `b = -1/2` for the isotropy error; the one-step residual ratio
# `||f_1 - y|| / ||f_0 - y||` (0 for an exactly isotropic linear model at `eta = 1/alpha`) adds the
# linearization error.

# %%
fits = {k: fit_power_law(rows, k) for k in ("iso_err", "ratio_nn", "err_emp_max")}
labels = {"iso_err": "isotropy error ||Theta_G/alpha - I||", "ratio_nn": "one-step ratio ||f_1-y||/||f_0-y||",
          "err_emp_max": "max_t e_t (empirical predictor)"}
for k, f in fits.items():
    print(f"{labels[k]:40s} b = {f['exponent']:+.3f}  95% interval [{f['ci'][0]:+.3f}, {f['ci'][1]:+.3f}]")

fig, ax = plt.subplots(figsize=(6.4, 4.6))
grid = np.geomspace(widths[0], widths[-1], 50)
for k, f in fits.items():
    ax.plot([r["width"] for r in rows], [r[k] for r in rows], "o", alpha=0.6,
            label=f"{labels[k]}: b = {f['exponent']:.2f}")
    ax.plot(grid, f["prefactor"] * grid ** f["exponent"], "-", color=ax.lines[-1].get_color())
ax.set_xscale("log", base=2)
ax.set_yscale("log")
ax.set_xlabel("hidden width M")
ax.set_title("input-side NGD (Gaussian inputs, N = 32, L = 3, relu)", fontsize=9)
ax.grid(alpha=0.3, which="both")
ax.legend(fontsize=7)
plt.show()

# %% [markdown]
# Read the interval, not only the slope: with 3 seeds and 4 widths the 95% interval of the
# isotropy error's exponent is wide, and the claim passes when it contains `-1/2` (more seeds,
# `seeds = list(range(6))`, narrow it at twice the cost). The one-step ratio and the trajectory
# error measure the trained network and add the linearization error.

# %% [markdown]
# ## 4. The condition matters
#
# The claim needed every layer input to have rank `N`. With `M_0 = 16 < N = 32` Gaussian inputs
# the first layer's `K_H K_H^+` is a rank-16 projector, not `I`, whatever the width. `check`
# refuses such a network (the `ValueError` below); `force=True` runs the method anyway, and its
# isotropy error then stops at a floor instead of following `M^-1/2`. Only the kernels at
# initialization are needed for this, no training:

# %%
narrow = nn.synthetic(n_train=32, n_test=8, dim=16, seed=0)
try:
    nn.ngd_direction(nn.MLP((16, 256, 256, 1)), nn.MLP((16, 256, 256, 1)).init(jax.random.PRNGKey(0)),
                     narrow.x_train, narrow.y_train, "input_side")
except ValueError as e:
    print("check:", e)

forced = nn.get_method("input_side", force=True)
narrow_rows = []
for width in widths:
    net = nn.MLP((16, width, width, 1), activation="relu", sigma_w=2 ** 0.5, sigma_b=0.0)
    for seed in seeds:
        src = nn.empirical_source(net, net.init(jax.random.PRNGKey(seed)), narrow.x_train)
        theta_g, _ = nn.preconditioned_kernel(forced, src)
        narrow_rows.append({"width": width, "seed": seed,
                            "iso_err": nn.isotropy_error(theta_g, forced.alpha(net, 32))})
f_narrow = fit_power_law(narrow_rows, "iso_err")
print(f"M_0 = 16 < N: isotropy error b = {f_narrow['exponent']:+.3f} (M_0 = 64 >= N: {fits['iso_err']['exponent']:+.3f}); "
      "seed 0 per width: " + ", ".join(f"{r['iso_err']:.3f}" for r in narrow_rows if r["seed"] == 0))

fig, ax = plt.subplots(figsize=(6.4, 4.2))
ax.plot([r["width"] for r in rows], [r["iso_err"] for r in rows], "o", label="M_0 = 64 >= N (claim holds)")
ax.plot([r["width"] for r in narrow_rows], [r["iso_err"] for r in narrow_rows], "s",
        label="M_0 = 16 < N (force=True)")
ax.plot(grid, fits["iso_err"]["prefactor"] * grid ** -0.5, "k--", alpha=0.5, label="slope -1/2")
ax.set_xscale("log", base=2)
ax.set_yscale("log")
ax.set_xlabel("hidden width M")
ax.set_ylabel("||Theta_G/alpha - I||")
ax.grid(alpha=0.3, which="both")
ax.legend(fontsize=8)
plt.show()

# %% [markdown]
# The registered method also runs from the command line. Put the class (with its imports) in a
# file, say `input_side.py`, and load it with `--plugin` (or the `NTK_NGD_PLUGINS` environment
# variable, which sweep workers read too):
#
#     ntk-ngd --plugin input_side.py train --method input_side --dataset synthetic --width 1024
#     ntk-ngd --plugin input_side.py sweep --method input_side exact --width 256 512 1024 2048 \
#             --seed 0 1 2 --dataset synthetic --store results/input-side --report figures/input-side
#
# The sweep is resumable and its report fits the same exponents (`ntk-ngd report`).
