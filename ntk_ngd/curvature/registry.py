"""The method registry: the one place that knows which methods exist.

``register_method`` adds a method class under its ``name`` (built-ins register themselves in their
own module); the CLI choices and help, ``RunConfig`` validation, memory estimates, the benchmark
baseline and the registry-driven test suite all read it. Strings are parsed here, once:
``get_method(name, **options)`` builds the method object everything else takes.
"""
from __future__ import annotations

from .base import AbstractMethod

METHODS: dict = {}          # name -> method class, in registration order
BUILTIN: list = []          # names registered by ntk_ngd itself


def register_method(cls=None, *, builtin: bool = False):
    """Register an ``AbstractMethod`` subclass under ``cls.name`` (usable as a decorator).

    After registration the method runs through ``train``, ``ntk-ngd train``/``sweep``/``report``
    and the registry-driven tests like a built-in one. Re-registering a name replaces it."""
    def add(c):
        if not (isinstance(c, type) and issubclass(c, AbstractMethod)):
            raise TypeError(f"register_method needs an AbstractMethod subclass, got {c!r}")
        if getattr(c, "__abstractmethods__", None):
            raise TypeError(f"{c.__name__} is abstract: it does not implement {sorted(c.__abstractmethods__)}")
        name = c.name
        if not isinstance(name, str) or not name.isidentifier() or name == AbstractMethod.name:
            raise ValueError(f"a method needs a class attribute name that is an identifier, got {name!r}")
        METHODS[name] = c
        if builtin and name not in BUILTIN:
            BUILTIN.append(name)
        return c
    return add if cls is None else add(cls)


def unregister_method(name: str) -> None:
    """Remove a user-registered method (built-ins stay)."""
    if name in BUILTIN:
        raise ValueError(f"{name!r} is a built-in method and cannot be unregistered")
    METHODS.pop(name, None)


def method_names(builtin_only: bool = False) -> tuple:
    """Names of the registered methods (registration order)."""
    return tuple(BUILTIN) if builtin_only else tuple(METHODS)


def method_class(name: str):
    if not isinstance(name, str) or name not in METHODS:
        raise ValueError(f"unknown method {name!r}; choose one of {list(METHODS)}")
    return METHODS[name]


def get_method(method, **options) -> AbstractMethod:
    """A method object from its registered name and options, or the object itself."""
    if isinstance(method, AbstractMethod):
        if options:
            raise ValueError("options go with a method name, not with a method object")
        return method
    return method_class(method).create(**options)


def describe() -> str:
    """One line per registered method with its options and defaults (CLI help)."""
    lines = []
    for name, cls in METHODS.items():
        opts = ", ".join(f"{k}={v!r}" for k, v in cls.options().items() if k != "force")
        lines.append(f"{name}" + (f" ({opts})" if opts else ""))
    return "; ".join(lines)
