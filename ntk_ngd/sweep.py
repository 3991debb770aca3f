"""Run a grid of experiment points into a ``ResultsStore``, resumably.

``run_sweep`` skips points already stored (``ok``; also ``error`` unless ``retry_errors``),
runs the rest with ``fn(config) -> dict`` and appends one record per point as soon as that
point finishes. A point that raises is stored with status ``error`` and its traceback, and
the sweep goes on. Killing a sweep and running it again redoes only the points in flight.

Backends:

* ``"local"``: points run one after another in this process.
* ``"dask"``: points run as futures on a ``dask.distributed`` Client (the one passed, or a
  ``LocalCluster`` of worker processes made for the call). Workers run ``fn`` and return the
  record fields; the *driver* writes each record as its future completes. Workers thus need
  no access to the store (no shared filesystem), and a killed driver loses only the points
  still running (plus any result in transit). Several sweeps may share one store, since the
  store is safe for concurrent writers.

Why Dask rather than Ray: ``dask[distributed]`` is pure-Python wheels, needs no separate
runtime or daemon, ``LocalCluster(processes=True)`` gives real multi-process tests in a few
seconds, and ``dask-jobqueue`` starts workers through SLURM/PBS on HPC machines. Ray would
also work, but brings a large binary runtime (object store, raylet, dashboard) that these
independent, small-result tasks do not need.
"""
from __future__ import annotations

import itertools
import os
import sys
import time
import traceback
from contextlib import closing
from datetime import datetime, timezone
from typing import Any, Callable, Iterable, Iterator, NamedTuple, Optional

import numpy as np

from .store import ResultsStore, config_key, run_meta, to_jsonable

PointFn = Callable[[dict], dict]


class SweepSummary(NamedTuple):
    """Counts of one ``run_sweep`` call; ``ran`` includes the ``failed`` points."""
    ran: int
    skipped: int
    failed: int


def grid(**axes: Any) -> list[dict]:
    """Cartesian product of the axes in argument order, last axis fastest.

    A list, tuple, range or ndarray value is an axis; any other value (a str, a number) is a
    constant shared by every point. Wrap a tuple-valued constant in a list.
    """
    values = [v if isinstance(v, (list, tuple, range, np.ndarray)) else [v]
              for v in axes.values()]
    return [dict(zip(axes, combo)) for combo in itertools.product(*values)]


def _utc(t: float) -> str:
    return datetime.fromtimestamp(t, timezone.utc).isoformat()


def run_point(fn: PointFn, config: dict) -> dict:
    """Run ``fn(config)`` and return the record fields ``{"result", "error", "meta"}``.

    Exceptions, including a non-dict or non-JSON-serializable result, become ``error``
    (the traceback text); ``meta`` is ``run_meta()`` plus start, end and duration (s).
    """
    start = time.time()
    try:
        result, error = to_jsonable(fn(config)), None
        if not isinstance(result, dict):
            raise TypeError(f"point function returned {type(result).__name__}, expected dict")
    except Exception:
        result, error = None, traceback.format_exc()
    end = time.time()
    meta = {**run_meta(), "start": _utc(start), "end": _utc(end), "duration": end - start}
    return {"result": result, "error": error, "meta": meta}


def _pending(points: list[dict], store: ResultsStore, retry_errors: bool) -> list[dict]:
    """Points not yet stored (ok, or error unless retrying), deduplicated, in order."""
    skip_status = ("ok",) if retry_errors else ("ok", "error")
    seen = {r["key"] for r in store.records() if r["status"] in skip_status}
    todo = []
    for config in points:
        key = config_key(config)
        if key not in seen:
            seen.add(key)
            todo.append(config)
    return todo


def _import_distributed():
    try:
        import dask.distributed
    except ImportError as e:
        raise ImportError("backend='dask' needs dask.distributed: "
                          "pip install 'ntk-ngd[distributed]'") from e
    return dask.distributed


def _run_dask(fn: PointFn, todo: list[dict], client) -> Iterator[tuple[dict, dict]]:
    """Yield ``(config, record fields)`` as the points finish on ``client`` (or a LocalCluster)."""
    if not todo:
        return
    dd = _import_distributed()
    if client is None:
        with dd.LocalCluster(processes=True) as cluster, dd.Client(cluster) as own:
            yield from _run_dask(fn, todo, own)
        return
    futures = {client.submit(run_point, fn, config, pure=False): config for config in todo}
    try:
        for fut in dd.as_completed(list(futures)):
            config = futures.pop(fut)
            try:
                fields = fut.result()
            except Exception:  # the task itself failed: worker died, unpicklable result, ...
                fields = {"result": None, "error": traceback.format_exc(), "meta": {}}
            yield config, fields
    finally:
        client.cancel(list(futures))


def _hms(seconds: float) -> str:
    s = int(seconds)
    return f"{s // 3600}:{s // 60 % 60:02d}:{s % 60:02d}"


class _Progress:
    """Counts finished points; optionally one text line on stderr with elapsed time and ETA."""

    def __init__(self, total: int, skipped: int, enabled: bool):
        self.total, self.skipped, self.enabled = total, skipped, enabled
        self.done = self.failed = 0
        self.t0 = time.monotonic()
        self.tty = sys.stderr.isatty()
        self._show()

    def update(self, failed: bool) -> None:
        self.done += 1
        self.failed += failed
        self._show()

    def _show(self) -> None:
        if not self.enabled:
            return
        elapsed = time.monotonic() - self.t0
        eta = _hms(elapsed / self.done * (self.total - self.done)) if self.done else "?"
        line = (f"[sweep] {self.done}/{self.total} done, {self.failed} failed, "
                f"{self.skipped} skipped | elapsed {_hms(elapsed)} eta {eta}")
        sys.stderr.write(f"\r{line}" if self.tty else f"{line}\n")
        sys.stderr.flush()

    def close(self) -> None:
        if self.enabled and self.tty:
            sys.stderr.write("\n")


def run_sweep(fn: PointFn, points: Iterable[dict], store: ResultsStore | str | os.PathLike,
              backend: str = "local", progress: bool = True, retry_errors: bool = False,
              client: Optional[Any] = None) -> SweepSummary:
    """Run every point of ``points`` not yet in ``store``, writing each record as it finishes.

    ``backend`` is ``"local"`` or ``"dask"`` (``client``: a ``dask.distributed.Client``; None
    makes a LocalCluster for the call). Returns ``SweepSummary(ran, skipped, failed)``;
    ``skipped`` counts stored points and repeats within ``points``.
    """
    if backend not in ("local", "dask"):
        raise ValueError(f"backend must be 'local' or 'dask', got {backend!r}")
    if client is not None and backend != "dask":
        raise ValueError("a client was given but backend is not 'dask'")
    store = store if isinstance(store, ResultsStore) else ResultsStore(store)
    points = list(points)
    bad = [i for i, c in enumerate(points) if not isinstance(c, dict)]
    if bad:
        raise ValueError(f"every point must be a config dict; point {bad[0]} is {type(points[bad[0]]).__name__}")
    store.check_writable()  # before the first point is computed (and lost)
    todo = _pending(points, store, retry_errors)
    finished = (((config, run_point(fn, config)) for config in todo) if backend == "local"
                else _run_dask(fn, todo, client))
    bar = _Progress(len(todo), len(points) - len(todo), progress)
    try:
        with closing(finished):  # on error, stop the dask run (and its own cluster) now
            for config, fields in finished:
                store.put(config, **fields)
                bar.update(fields["error"] is not None)
    finally:
        bar.close()
    return SweepSummary(ran=bar.done, skipped=bar.skipped, failed=bar.failed)
