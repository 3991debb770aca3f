import os

# jaxlib's CPU backend can deadlock on 2 cores when two batched LAPACK solves run at once
# (seen with unit-wise NGD); a larger thread pool, set before jax starts, avoids it.
os.environ.setdefault("NPROC", "8")

import jax  # noqa: E402

jax.config.update("jax_enable_x64", True)

import two_blocks  # noqa: E402,F401  a user's method in one file: registered, so the registry suite runs it
