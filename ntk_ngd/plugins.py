"""User methods for the command line: modules that call ``register_method`` when imported.

``ntk-ngd --plugin MODULE_OR_FILE ...`` (or ``NTK_NGD_PLUGINS``, paths or module names separated by
``os.pathsep``) imports them before the command runs; the variable is inherited by sweep worker
processes, so a registered method runs through ``train``, ``sweep`` and ``report`` like a built-in.
"""
from __future__ import annotations

import importlib
import importlib.util
import os
from pathlib import Path

ENV = "NTK_NGD_PLUGINS"
_loaded: set = set()


def load_plugin(spec: str) -> None:
    """Import a module by dotted name, or a ``.py`` file by path (once per process)."""
    if spec in _loaded:
        return
    path = Path(spec)
    if spec.endswith(".py"):
        if not path.is_file():
            raise ValueError(f"plugin file {spec!r} does not exist")
        mod_spec = importlib.util.spec_from_file_location(f"ntk_ngd_plugin_{path.stem}", path)
        module = importlib.util.module_from_spec(mod_spec)
        mod_spec.loader.exec_module(module)
    else:
        try:
            importlib.import_module(spec)
        except ImportError as e:
            raise ValueError(f"cannot import plugin module {spec!r}: {e}") from e
    _loaded.add(spec)


def load_plugins(specs=()) -> list:
    """Load ``specs`` and those of $NTK_NGD_PLUGINS; record all of them in $NTK_NGD_PLUGINS."""
    env = [s for s in os.environ.get(ENV, "").split(os.pathsep) if s]
    specs = [str(Path(s).resolve()) if s.endswith(".py") else s for s in specs]
    every = list(dict.fromkeys(env + specs))
    for s in every:
        load_plugin(s)
    if every:
        os.environ[ENV] = os.pathsep.join(every)
    return every
