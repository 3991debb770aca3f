"""A compatibility shim that lets kfac-jax 0.0.8 trace its layer tags on current JAX (test-only).

What it patches: ``kfac_jax._src.tag_graph_matcher.eval_jaxpr_eqn``, the one-equation jaxpr
interpreter that kfac-jax's tracer (``tracer.py``: the layer-tag VJP/JVP and the loss evaluation
behind ``BlockDiagonalCurvature`` and ``Optimizer``) and its automatic graph matcher use to
re-evaluate the model function equation by equation.

Why: kfac-jax 0.0.8 unpacks ``subfuns, bind_params = eqn.primitive.get_bind_params(eqn.params)``.
Newer JAX (the change landed around jax 0.9.2; jax 0.10.2 here) returns only the bind-params dict
from ``Primitive.get_bind_params`` (call-like primitives put their sub-functions into
``params["subfuns"]``), so every trace fails with "ValueError: not enough values to unpack
(expected 2, got 1)", even with manual layer registration and ``auto_register_tags=False``.
The replacement accepts both protocols: a dict (new JAX: no positional sub-functions) or a
``(subfuns, params)`` pair (old JAX), then binds exactly as the original does.

For which versions: written for kfac-jax 0.0.8; ``patched()`` changes nothing where JAX still
returns the pair (``needs_shim()`` is False there), so it is a no-op on old JAX and safe to keep
if kfac-jax fixes the unpacking upstream (the replacement is then equivalent). Only kfac-jax's
module attribute is replaced, for the duration of the context, and restored afterwards; JAX and
ntk-ngd are untouched.
"""
from __future__ import annotations

import contextlib

import jax
import jax.extend as jex

from kfac_jax._src import tag_graph_matcher


def needs_shim() -> bool:
    """True where ``Primitive.get_bind_params`` returns a dict (not a ``(subfuns, params)`` pair)."""
    return isinstance(jax.lax.add_p.get_bind_params({}), dict)


def eval_jaxpr_eqn(eqn, in_values):
    """kfac-jax 0.0.8's ``eval_jaxpr_eqn`` for both ``get_bind_params`` protocols."""
    bind = eqn.primitive.get_bind_params(eqn.params)
    subfuns, bind_params = ((), bind) if isinstance(bind, dict) else bind
    with jex.source_info_util.user_context(eqn.source_info.traceback):
        output = eqn.primitive.bind(*subfuns, *in_values, **bind_params)
    return output if isinstance(output, list) else [output]


@contextlib.contextmanager
def patched():
    """Within the context, kfac-jax's tracer uses ``eval_jaxpr_eqn`` above (if ``needs_shim()``)."""
    if not needs_shim():
        yield
        return
    original = tag_graph_matcher.eval_jaxpr_eqn
    tag_graph_matcher.eval_jaxpr_eqn = eval_jaxpr_eqn
    try:
        yield
    finally:
        tag_graph_matcher.eval_jaxpr_eqn = original
