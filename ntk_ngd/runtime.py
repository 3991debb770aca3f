"""Process-level settings that must precede JAX's start (applied on ``import ntk_ngd``)."""
import os


def guard_cpu_thread_pool(min_threads: int = 8) -> None:
    """Work around a jaxlib (0.10) CPU deadlock: batched LAPACK kernels (``ParallelBatchMap``, e.g.
    unit-wise NGD's vmapped Cholesky solves inside a scan) block pool threads while waiting for
    tasks queued to the same intra-op pool; with 2 cores the pool has 2 threads and two such
    kernels running at once never finish. A larger pool avoids it: XLA sizes it from ``NPROC``
    when the CPU backend starts (call this before the first computation; it changes nothing
    afterwards, and an ``NPROC`` already set is kept)."""
    os.environ.setdefault("NPROC", str(max(min_threads, os.cpu_count() or 1)))
