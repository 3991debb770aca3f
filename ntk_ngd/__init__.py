"""ntk-ngd: natural gradient descent in wide networks, checked against NTK theory.

"THEORY section N" in the docstrings refers to docs/THEORY.md of the repository."""


def _package_version() -> str:
    """The installed distribution's version; in a source tree that is not installed, pyproject.toml's."""
    from importlib.metadata import PackageNotFoundError, version
    try:
        return version("ntk-ngd")
    except PackageNotFoundError:
        import pathlib
        import re
        pyproject = pathlib.Path(__file__).resolve().parent.parent / "pyproject.toml"
        m = re.search(r'^version\s*=\s*"([^"]+)"', pyproject.read_text(), re.M) if pyproject.is_file() else None
        return m.group(1) if m else "0+unknown"


__version__ = _package_version()

from .runtime import guard_cpu_thread_pool

guard_cpu_thread_pool()  # before JAX starts its CPU backend: a default NPROC only (see its docstring)

from .model import MLP  # noqa: E402
from .layers import Factors, Grams, factors, grams, layer_kernels, empirical_layerwise_ntk, autodiff_layer_kernels
from .curvature import (METHODS, AbstractMethod, KernelSource, ResidualMap, get_method, method_names,
                        register_method, unregister_method, dense_problem)
from .ngd import ngd_direction
from .losses import mse, cross_entropy, softmax_hessian
from .store import ResultsStore, config_key, run_meta
from .sweep import grid, run_sweep
from .data import (Dataset, synthetic, digits, load_mnist, load_cifar10, load_arrays, preprocess, forster_fit,
                   forster_apply, make_dataset)
from .dynamics import (empirical_source, analytic_source, preconditioned_kernel, residual_map, isotropy_constant,
                       optimal_lr, linearized, iterated, residual_predictor, method_predictor, loss_curve,
                       spectrum, isotropy_error, predict, predict_limit, predict_gd_continuous, Prediction,
                       trajectory_error, one_step_ratio, kernel_drift)
from .train import train, TrainResult
from .analytic import analytic_kernels, analytic_layerwise_ntk, analytic_grams
