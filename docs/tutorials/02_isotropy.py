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
# # (b) Why NGD's function-space step is isotropic, method by method
#
# A step `theta <- theta - eta G^{-1} grad` with a preconditioner `G` moves the linearized
# training outputs by
#
#     f_{t+1}(X) - y = (I - eta Theta_G) (f_t(X) - y),     Theta_G = J G^{-1} J^T / N
#
# ([theory](../THEORY.md) section 3). Gradient descent (`G = I`) has `Theta_G = Theta / N`, the
# NTK with its spread spectrum: large eigen-directions converge fast, small ones slowly, and the
# step is limited by the largest. A method is **isotropic** when `Theta_G = alpha I` on the
# training set: then `f_t - y = (1 - eta alpha)^t (f_0 - y)` whatever the NTK looks like, and
# `eta = 1/alpha` reaches the targets in one step. This tutorial computes `Theta_G` for every
# method with `ntk_ngd.preconditioned_kernel`, looks at its spectrum, explains each constant
# `alpha`, and checks `(1 - eta alpha)^t` against trained networks.

# %%
import os

os.environ.setdefault("NPROC", "8")  # jaxlib CPU thread-pool guard: before JAX starts
import jax

jax.config.update("jax_enable_x64", True)
import matplotlib.pyplot as plt
import numpy as np

import ntk_ngd as nn

# %% [markdown]
# The setting of the paper at a small size: two digit classes, `N = 32` training inputs
# (`M_0 = 64`), a relu network with `L = 3` weight layers of hidden width `M = 512`,
# `sigma_w^2 = 2`, `sigma_b = 0`, scalar targets `+-0.5`.

# %%
N, M, L = 32, 512, 3
ds = nn.digits(classes=(0, 1), n_train=N, n_test=32)
model = nn.MLP((64, M, M, 1), activation="relu", sigma_w=2 ** 0.5, sigma_b=0.0)
params = model.init(jax.random.PRNGKey(0))
src = nn.empirical_source(model, params, ds.x_train, ds.x_test)   # the network's kernels at init

# unit-wise NGD needs a damping rho << 1/M (see Gotchas); every other method runs at rho = 0
damping = {"unit_wise": 1e-6 / M}
methods = ["gd", "exact", "block_diagonal", "block_tridiagonal", "kfac", "unit_wise", "diagonal"]
spectra, alphas = {}, {}
for m in methods:
    theta_g, _ = nn.preconditioned_kernel(m, src, damping.get(m, 0.0))
    spectra[m] = np.asarray(nn.spectrum(theta_g))
    alphas[m] = nn.isotropy_constant(m, model, N)
    a = alphas[m]
    print(f"{m:18s} alpha = {str(a):6s}  eigenvalues in [{spectra[m][0]:10.4g}, {spectra[m][-1]:10.4g}]"
          + ("" if a is None else f"   isotropy error ||Theta_G/alpha - I|| = {nn.isotropy_error(theta_g, a):.2e}"))

# %%
fig, (ax, zoom) = plt.subplots(1, 2, figsize=(12, 4.6))
for m in methods:
    s = spectra[m][::-1]
    scale = alphas[m] if alphas[m] is not None else np.median(s)
    label = m + (f" (/ alpha = {alphas[m]:g})" if alphas[m] else " (/ median)")
    ax.plot(np.arange(1, N + 1), s / scale, "o-", ms=3, label=label)
    if alphas[m] is not None:
        zoom.plot(np.arange(1, N + 1), s / scale, "o-", ms=3, label=label)
    else:
        zoom.plot([], [])  # keep the colours of the left panel
ax.set_yscale("log")
ax.set_title(f"spectra of Theta_G at init (digits, N = {N}, L = {L}, M = {M}, relu)", fontsize=9)
zoom.set_title("the isotropic methods, linear scale", fontsize=9)
for a in (ax, zoom):
    a.set_xlabel("eigenvalue index (descending)")
    a.set_ylabel("eigenvalue of Theta_G / alpha")
    a.grid(alpha=0.3, which="both")
    a.legend(fontsize=7)
plt.show()

# %% [markdown]
# Reading the spectra, method by method (`g = f(X) - y`; all at `rho -> 0`; section 4):
#
# * **gd**: `Theta_G = Theta / N`, eigenvalues over two orders of magnitude. The stable step is
#   `eta < 2 / lambda_max`, and the smallest directions then shrink by `1 - lambda_min / lambda_max`
#   per step: slow.
# * **exact** NGD (`G = F = J^T J / N`): by the push-through identity
#   `J (J^T J)^+ J^T = Theta Theta^+ = I` when the NTK is positive definite, so `Theta_G = I`
#   exactly, at any width: `alpha = 1`.
# * **block_diagonal** (`G = blockdiag_l F_ll`): the same identity layer by layer gives
#   `Theta_l Theta_l^+ = I` for each of the `L` layers, and the layers add up: `alpha = L`.
# * **block_tridiagonal**: the coupled solve `[(T (x) I) blockdiag(Theta_l)] v = 1 (x) g`, with
#   `T` the tri-diagonal matrix of ones, gives `alpha = 1^T T^+ 1 = ceil(L/3)`, here 1.
# * **kfac**: per layer `G_l = B_l (x) A_{l-1}` with `A = H^T H / N` (layer inputs) and
#   `B = D^T D / N` (backward signals). Its kernel is `N P_D o P_H`, a Hadamard product of the
#   `N x N` hat matrices of `D` and `H`. A hidden layer with `N <= M_l` has both of full rank:
#   `P_D = P_H = I` and the layer gives `N I`. The last layer has no backward factor to invert
#   (`delta_L = 1`, `P_D = 1 1^T / N`) and gives `P_H = I`. So `alpha = (L - 1) N + 1`, which grows
#   with `N` (here 65), not the `N L` the paper's code uses. The cell below shows the three layers.
# * **unit_wise**: one `N x N` solve per hidden unit; each relu unit contributes the projector on
#   the inputs where it is active, about `gamma = 1/2` of them, so the sum over the
#   `sum_{l<L} M_l = 1024` hidden units is about `gamma 1024 I`, plus `1 I` from the output unit:
#   `alpha = 513`, up to fluctuations of relative size `M^-1/2` (visible as the spread).
# * **diagonal** (`G = diag(F)`): a reweighted NTK, as spread as gd's: not isotropic (the paper's
#   negative example).
#
# K-FAC's spectrum above sits slightly *below* 65. The first layer is the one to blame: the
# digits are standardized with the training mean, so the `N` input rows sum to zero and span
# only `N - 1 = 31` dimensions; `P_H` of the first layer is then a rank-31 projector, not `I`.
# The per-layer contributions (`KFAC.layer_kernel`) make it visible, next to Gaussian inputs
# (`ntk_ngd.synthetic`, rank `N`) for which every layer is exact:

# %%
kfac = nn.get_method("kfac")
gauss = nn.synthetic(n_train=N, n_test=8, dim=64, seed=0)
print("rank of the inputs: digits", np.linalg.matrix_rank(ds.x_train), "  Gaussian", np.linalg.matrix_rank(gauss.x_train))
for name, data in (("digits", ds), ("Gaussian", gauss)):
    s = nn.empirical_source(model, params, data.x_train)
    for l in range(L):
        w = np.linalg.eigvalsh(np.asarray(kfac.layer_kernel(s, l, 0.0)[0]))
        print(f"  {name:8s} layer {l + 1}: eigenvalues in [{w[0]:8.4f}, {w[-1]:8.4f}]   (theory: {N if l < L - 1 else 1})")
    w = np.asarray(nn.spectrum(nn.preconditioned_kernel("kfac", s, 0.0)[0]))
    print(f"  {name:8s} total  : eigenvalues in [{w[0]:8.4f}, {w[-1]:8.4f}]   (alpha = {alphas['kfac']:g})")

# %% [markdown]
# ## `(1 - eta alpha)^t` against real networks
#
# If `Theta_G = alpha I`, the training residual shrinks by exactly `|1 - eta alpha|` per step.
# Train the network (the real, nonlinear one) with `ntk_ngd.train` at `eta = 0.5 / alpha` (so the
# prediction `0.5^t` is visible for several steps) and at `eta = 1 / alpha` (`lr="optimal"`: one
# step), and compare `||f_t - y|| / ||f_0 - y||` with `|1 - eta alpha|^t`. Gradient descent runs at
# its optimal `eta = 1 / lambda_max`; its prediction is the linearized dynamics with the spread
# `Theta / N` (`ntk_ngd.predict`).

# %%
steps = 6
y = ds.y_train


def residual(f):
    return np.linalg.norm(np.asarray(f - y).reshape(f.shape[0], -1), axis=1) / np.linalg.norm(np.asarray(f[0] - y))


curves = {}
for m in ["exact", "block_diagonal", "kfac", "unit_wise"]:
    a = alphas[m]
    for label, lr in (("eta = 0.5/alpha", 0.5 / a), ("eta = 1/alpha", "optimal")):
        run = nn.train(model, params, ds, m, lr=lr, steps=steps, damping=damping.get(m, 0.0))
        curves[(m, label)] = (residual(run.f_train), abs(1 - run.lr * a))
theta_gd, cross_gd = nn.preconditioned_kernel("gd", src)
run_gd = nn.train(model, params, ds, "gd", lr="optimal", steps=steps)
pred_gd = nn.predict(theta_gd, cross_gd, run_gd.f_train[0], run_gd.f_test[0], y, run_gd.lr, steps)

t = np.arange(steps + 1)
fig, axes = plt.subplots(1, 2, figsize=(11, 4.3), sharey=True)
for ax, label in zip(axes, ("eta = 0.5/alpha", "eta = 1/alpha")):
    for (m, lab), (r, q) in curves.items():
        if lab == label:
            ax.plot(t, np.maximum(r, 1e-16), "o-", ms=4, label=f"{m} (network)")
    q = 0.5 if label.startswith("eta = 0.5") else 0.0
    ax.plot(t, np.maximum(q ** t, 1e-16), "k--", lw=2, label=f"|1 - eta alpha|^t = {q:g}^t")
    ax.plot(t, residual(run_gd.f_train), "s-", color="gray", ms=4, label="gd, eta = 1/lambda_max (network)")
    ax.plot(t, residual(pred_gd.train), ":", color="gray", label="gd, linearized prediction")
    ax.set_yscale("log")
    ax.set_xlabel("step t")
    ax.set_title(label, fontsize=10)
    ax.grid(alpha=0.3, which="both")
axes[0].set_ylabel("||f_t - y|| / ||f_0 - y||")
axes[1].legend(fontsize=7, loc="lower left")
plt.show()

for (m, lab), (r, q) in curves.items():
    print(f"{m:15s} {lab:16s} |1 - eta alpha| = {q:.3g}   measured one-step ratio = {r[1]:.3g}, "
          f"after {steps} steps = {r[-1]:.2e}")
slowest = 1 - spectra["gd"][0] / spectra["gd"][-1]
print(f"gd              eta = 1/lambda_max  after {steps} steps = {residual(run_gd.f_train)[-1]:.3f}; its slowest "
      f"direction shrinks by 1 - lambda_min/lambda_max = {slowest:.3f} per step")

# %% [markdown]
# The isotropic methods follow `0.5^t` step for step, and at `eta = 1/alpha` they drop by orders
# of magnitude in the first step. Gradient descent at its best step stalls instead: its
# linearized prediction (dotted, on top of the network's curve) is exact, and its directions
# with small eigenvalues of `Theta / N` shrink by only `1 - lambda_min / lambda_max` per step.
# The trained networks miss the isotropic prediction by the finite-width error: mostly the
# linearization error (the network leaves its tangent model during a large step; K-FAC's are
# the largest) and, for K-FAC and unit-wise NGD, the distance of their finite-width `Theta_G`
# from `alpha I` (the centered digits in K-FAC's first layer, the `M^-1/2` unit fluctuations for
# unit-wise). They fall as `M` grows; tutorial [(c)](03_your_method.md) measures such a rate for
# a method of your own.
