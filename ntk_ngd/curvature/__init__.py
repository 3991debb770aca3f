"""Methods (one module each) behind one registry; ``get_method(name, **options)`` builds one.

Importing this package imports every module in it, and each method module registers its method
(``@register_method(builtin=True)``): a new built-in method is one file. ``register_method``
adds a user's method from anywhere."""
import importlib
import pkgutil

from .base import AbstractMethod, KernelSource, LayerDual, PerLayer, ResidualMap
from .registry import METHODS, get_method, method_class, method_names, register_method, unregister_method
from .dense import DenseProblem, dense_problem
from .kronecker import Kronecker
from .statistics import STATISTICS, Statistics

from .gd import GD  # noqa: E402  (the paper's seven first: registration order is display order)
from .exact import Exact  # noqa: E402
from .block_diagonal import BlockDiagonal  # noqa: E402
from .block_tridiagonal import BlockTridiagonal, coupling, tridiagonal_ones  # noqa: E402
from .kfac import KFAC  # noqa: E402
from .unit_wise import UnitWise  # noqa: E402
from .diagonal import Diagonal  # noqa: E402

for _m in sorted(pkgutil.iter_modules(__path__), key=lambda m: m.name):  # every other method module
    importlib.import_module(f"{__name__}.{_m.name}")

Preconditioner = AbstractMethod  # the name of the first version
