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
# # (a) The empirical NTK converges to the analytic one
#
# A network's neural tangent kernel `Theta(x, x') = J(x) J(x')^T` is a random matrix at a finite
# width `M`: it depends on the initial weights. As the hidden widths grow it concentrates on a
# deterministic limit, the *analytic* NTK, with a relative error of order `M^-1/2` (a central
# limit theorem over the units). This tutorial
#
# 1. explains the **layer-wise kernels** `Theta_l` the toolkit is built on,
# 2. checks that they add up to the NTK of automatic differentiation,
# 3. measures the distance between the empirical and the analytic `Theta_l` as `M` grows, and
#    fits the exponent: about `-1/2`.
#
# Everything is float64 (see [Gotchas](../gotchas.md)).

# %%
import os

os.environ.setdefault("NPROC", "8")  # jaxlib CPU thread-pool guard: before JAX starts
import jax

jax.config.update("jax_enable_x64", True)
import matplotlib.pyplot as plt
import numpy as np

import ntk_ngd as nn
from ntk_ngd.experiments import fit_power_law

# %% [markdown]
# ## Layer-wise kernels
#
# The network is `u_l = (sigma_w / sqrt(M_{l-1})) W_l h_{l-1} + sigma_b b_l`, `h_l = phi(u_l)`,
# `f = u_L` ([theory](../THEORY.md) section 1). The parameters of layer `l` enter only through
# `u_l`, so the Jacobian of layer `l` is an outer product of two vectors per input: the layer's
# (scaled) input `h~_{l-1}(x) = [sigma_w h_{l-1}(x) / sqrt(M_{l-1}), sigma_b]` and the backward
# signal `delta_l(x) = df(x)/du_l`. Its kernel is therefore a product of two small Gram matrices
# (section 2):
#
#     Theta_l(x, x') = [delta_l(x)^T delta_l(x')] * [h~_{l-1}(x) . h~_{l-1}(x')],   Theta = sum_l Theta_l.
#
# `ntk_ngd.empirical_layerwise_ntk` builds all `L` of them from one forward and one backward
# pass, in `O(N^2 M)` instead of the `O(N^2 M^2)` of a Jacobian. In the infinite-width limit
# both factors become deterministic: `h~ . h~'` tends to the covariance `Sigma_l(x, x')` and
# `delta^T delta'` to `B_l(x, x')`, so `Theta_l -> B_l * Sigma_l`, which
# `ntk_ngd.analytic_layerwise_ntk` computes in closed form for relu (section 5).
#
# The data: 16 training images of two digit classes (scikit-learn's bundled 8x8 digits,
# standardized, rows of unit norm, `M_0 = 64`); a relu network with `L = 3` weight layers.

# %%
ds = nn.digits(classes=(0, 1), n_train=16, n_test=16)
x = ds.x_train
L = 3


def network(width):
    return nn.MLP((64,) + (width,) * (L - 1) + (1,), activation="relu", sigma_w=2 ** 0.5, sigma_b=0.1)


model = network(256)
params = model.init(jax.random.PRNGKey(0))
theta_l = nn.empirical_layerwise_ntk(model, params, x)       # (L, N C, N C)
analytic_l = nn.analytic_layerwise_ntk(model, x)             # (L, N, N), per output
print("empirical layer kernels:", theta_l.shape, " analytic:", analytic_l.shape)

# %% [markdown]
# The sum of the layer kernels is the NTK of the whole network. Check it against the Jacobian
# that `jax.jacrev` computes for the same parameters (feasible at this size only):

# %%
from jax.flatten_util import ravel_pytree

flat, unravel = ravel_pytree(params)
J = jax.jacrev(lambda p: model.apply(unravel(p), x).reshape(-1))(flat)   # (N C, P)
theta_autodiff = np.asarray(J @ J.T)
gap = np.max(np.abs(np.asarray(theta_l.sum(0)) - theta_autodiff)) / np.max(np.abs(theta_autodiff))
print(f"P = {flat.size} parameters; max |sum_l Theta_l - J J^T| / max |J J^T| = {gap:.2e}")

# %% [markdown]
# Each layer contributes a different kernel: the last layer's `Theta_L = h~_{L-1} . h~_{L-1}'`
# is the random-features kernel, the first layer's carries the input geometry `x . x'` weighted
# by the backward signals. Empirical (width 256, one draw) next to analytic:

# %%
fig, axes = plt.subplots(2, L, figsize=(3.2 * L, 6.2))
for l in range(L):
    vmax = float(np.max(np.asarray(analytic_l[l])))
    for row, (name, K) in enumerate((("empirical, M = 256", theta_l[l]), ("analytic", analytic_l[l]))):
        ax = axes[row, l]
        im = ax.imshow(np.asarray(K), vmin=0, vmax=vmax, cmap="viridis")
        ax.set_title(f"Theta_{l + 1}: {name}", fontsize=9)
        ax.set_xticks([])
        ax.set_yticks([])
    fig.colorbar(im, ax=axes[:, l], shrink=0.7)
plt.show()

# %% [markdown]
# ## The error falls like `M^-1/2`
#
# For widths `M = 2^6 .. 2^12` and 6 initializations each, the relative Frobenius distance
# `||Theta_l^emp - Theta_l^ana||_F / ||Theta_l^ana||_F` per layer and for the total kernel. The
# analytic kernels do not depend on the width; they are computed once.

# %%
widths = [64, 128, 256, 512, 1024, 2048, 4096]
seeds = list(range(6))
ana = np.asarray(nn.analytic_layerwise_ntk(network(widths[0]), x))
rows = []
for width in widths:
    model = network(width)
    for seed in seeds:
        emp = np.asarray(nn.empirical_layerwise_ntk(model, model.init(jax.random.PRNGKey(seed)), x))
        row = {"width": width, "seed": seed,
               "total": np.linalg.norm(emp.sum(0) - ana.sum(0)) / np.linalg.norm(ana.sum(0))}
        for l in range(L):
            row[f"layer {l + 1}"] = np.linalg.norm(emp[l] - ana[l]) / np.linalg.norm(ana[l])
        rows.append(row)
for w in widths:
    errs = np.array([r["total"] for r in rows if r["width"] == w])
    print(f"M = {w:5d}: relative error of Theta: geometric mean {np.exp(np.mean(np.log(errs))):.4f} "
          f"(min {errs.min():.4f}, max {errs.max():.4f} over {len(errs)} seeds)")

# %% [markdown]
# `ntk_ngd.experiments.fit_power_law` fits `error = a M^b` on log-log axes: the pooled
# least-squares slope `b` and a 95% Student-t interval over the per-seed slopes.

# %%
fits = {k: fit_power_law(rows, k) for k in ["total"] + [f"layer {l + 1}" for l in range(L)]}
for k, f in fits.items():
    print(f"{k:8s}: b = {f['exponent']:+.3f}   95% interval over seeds [{f['ci'][0]:+.3f}, {f['ci'][1]:+.3f}]")

fig, ax = plt.subplots(figsize=(6.4, 4.6))
for k, f in fits.items():
    ws = np.array([r["width"] for r in rows], float)
    ax.plot(ws, [r[k] for r in rows], "o", alpha=0.5, label=f"{k}: b = {f['exponent']:.2f}")
    grid = np.geomspace(min(widths), max(widths), 50)
    ax.plot(grid, f["prefactor"] * grid ** f["exponent"], "-", color=ax.lines[-1].get_color())
start = np.mean([r["total"] for r in rows if r["width"] == widths[0]])
ax.plot(grid, 2 * start * (grid / widths[0]) ** -0.5, "k--", label="slope -1/2 (reference)")
ax.set_xscale("log", base=2)
ax.set_yscale("log")
ax.set_xlabel("hidden width M")
ax.set_ylabel("||Theta_emp - Theta_ana||_F / ||Theta_ana||_F")
ax.set_title("empirical vs analytic layer-wise NTK (digits, N = 16, L = 3, relu)", fontsize=9)
ax.grid(alpha=0.3, which="both")
ax.legend(fontsize=8)
plt.show()

# %% [markdown]
# Every slope is close to `-1/2`: the empirical kernels are the analytic ones plus fluctuations
# of relative size `M^-1/2`. That is the finite-width error the `ana` columns of `ntk-ngd train`
# add to the linearization error (see the [glossary](../glossary.md)), and the rate at which
# NGD's test-input predictions from the analytic kernels become exact (theory section 6).
# Tutorial [(b)](02_isotropy.md) builds the *preconditioned* kernels `Theta_G` of the NGD
# methods from these layer kernels.
