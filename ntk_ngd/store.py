"""Append-only, resumable results store: one JSON line per finished grid point.

A store is a directory holding ``records.jsonl``. Each line is one record::

    {"key": config_key(config), "config": {...}, "status": "ok" | "error",
     "result": {...} | null, "error": "traceback text" | null, "meta": {...}}

Concurrent writers (threads, processes, machines on a shared filesystem) are safe:
each ``put`` opens the file with ``O_APPEND``, takes an exclusive ``flock`` (Linux NFS
clients map it to a server-side lock), writes the whole line with one ``write`` and
``fsync``s before unlocking. A writer killed mid-line leaves a torn line; readers skip
any line that is not a complete JSON object, and the next writer starts a fresh line.

A key may have several records (a retried error, or two sweeps racing on one point).
``get``/``records``/``done_keys`` use the *current* record of each key: its last ``ok``
record if it has one, else its last record. ``history`` returns every line.

Keys hash the canonical JSON of the config, so ``1`` and ``1.0`` are different points.
NaN/Inf are written as the literals Python's ``json`` reads back.
"""
from __future__ import annotations

import fcntl
import functools
import hashlib
import json
import os
import platform
import socket
import subprocess
import threading
from pathlib import Path
from typing import Any, Optional

import numpy as np

RECORDS_FILE = "records.jsonl"
STATUSES = ("ok", "error")

_THREAD_LOCK = threading.Lock()  # flock over NFS is a per-process POSIX lock: serialize threads too


def _json_default(x: Any) -> Any:
    """``json.dumps`` hook: numpy/jax scalars -> Python scalars, arrays -> nested lists."""
    if isinstance(x, np.generic):
        return x.item()
    if hasattr(x, "__array__"):
        return np.asarray(x).tolist()
    raise TypeError(f"not JSON serializable: {type(x).__name__}")


def dumps(obj: Any, **kwargs) -> str:
    """JSON text of ``obj``, converting numpy/jax scalars and arrays."""
    return json.dumps(obj, default=_json_default, **kwargs)


def to_jsonable(obj: Any) -> Any:
    """``obj`` as plain JSON values (what reading it back from the store gives)."""
    return json.loads(dumps(obj))


def canonical_json(config: dict) -> str:
    """Canonical JSON of a config: sorted keys, no whitespace."""
    return dumps(config, sort_keys=True, separators=(",", ":"))


def config_key(config: dict) -> str:
    """Stable 32-hex-digit key of a config (independent of dict order, tuple vs list)."""
    return hashlib.sha256(canonical_json(config).encode()).hexdigest()[:32]


@functools.lru_cache(maxsize=None)
def source_revision() -> dict:
    """``{"git_rev", "git_dirty"}`` of ntk-ngd's own source tree: the git checkout this package was
    imported from (an editable install), found from the package's location, never the current
    directory; ``git_rev`` is "unknown" for an installed copy or without git."""
    pkg = Path(__file__).resolve().parent

    def git(*args):
        return subprocess.run(("git", *args), cwd=pkg, capture_output=True, text=True,
                              timeout=10, check=True).stdout.strip()
    try:
        top = Path(git("rev-parse", "--show-toplevel")).resolve()
        if top / "ntk_ngd" == pkg:  # the package is this repository's ntk_ngd/, not a file inside another one
            return {"git_rev": git("rev-parse", "HEAD"),
                    "git_dirty": bool(git("status", "--porcelain", "--untracked-files=no"))}
    except (OSError, subprocess.SubprocessError):
        pass
    return {"git_rev": "unknown", "git_dirty": None}


def run_meta() -> dict:
    """Facts about this process for reproducibility: the ntk-ngd version and source revision
    (``source_revision``), jax version, device, dtype, host, pid."""
    import jax

    from . import __version__

    x64 = bool(jax.config.read("jax_enable_x64"))
    device = jax.devices()[0]
    return {
        "jax_version": jax.__version__,
        "platform": device.platform,
        "device": device.device_kind,
        "x64": x64,
        "dtype": "float64" if x64 else "float32",
        "ntk_ngd_version": __version__,
        **source_revision(),
        "hostname": socket.gethostname(),
        "pid": os.getpid(),
        "python": platform.python_version(),
    }


def valid_record(rec) -> bool:
    """A record as ``put`` writes it: str key, dict config, status ok (dict result) or error (str
    error), dict or missing meta."""
    if not (isinstance(rec, dict) and isinstance(rec.get("key"), str) and isinstance(rec.get("config"), dict)):
        return False
    if rec.get("status") == "ok":
        ok = isinstance(rec.get("result"), dict)
    else:
        ok = rec.get("status") == "error" and isinstance(rec.get("error"), str)
    return ok and isinstance(rec.get("meta", {}), dict)


def _parse_lines(data: bytes) -> tuple[list[dict], int]:
    """(valid records in ``data``, number of invalid non-empty lines skipped: torn lines, lines that
    are not JSON, JSON that is not a record)."""
    records, invalid = [], 0
    for line in data.split(b"\n"):
        if not line.strip():
            continue
        try:
            rec = json.loads(line)
        except ValueError:  # includes UnicodeDecodeError
            invalid += 1
            continue
        if valid_record(rec):
            rec.setdefault("meta", {})
            records.append(rec)
        else:
            invalid += 1
    return records, invalid


def _current(records: list[dict]) -> dict[str, dict]:
    """Current record per key (last ok, else last), in order of the chosen record."""
    chosen: dict[str, tuple[int, dict]] = {}
    for i, rec in enumerate(records):
        prev = chosen.get(rec["key"])
        if prev is None or rec["status"] == "ok" or prev[1]["status"] != "ok":
            chosen[rec["key"]] = (i, rec)
    return {rec["key"]: rec for _, rec in sorted(chosen.values(), key=lambda t: t[0])}


def _flatten(d: Optional[dict], prefix: str = "") -> dict:
    """Nested dict -> flat dict with dot-joined keys."""
    out = {}
    for k, v in (d or {}).items():
        name = f"{prefix}{k}"
        out.update(_flatten(v, name + ".") if isinstance(v, dict) else {name: v})
    return out


class ResultsStore:
    """Append-only JSON-lines store of per-point results under directory ``path``.

    ``create=False`` opens an existing store only (a missing one is a FileNotFoundError, so a
    mistyped path is never read as an empty store). ``invalid_lines`` counts the lines the last
    read skipped."""

    def __init__(self, path: str | os.PathLike, create: bool = True):
        self.path = Path(path)
        self.file = self.path / RECORDS_FILE
        self.invalid_lines = 0
        if not create:
            if not self.file.is_file():
                raise FileNotFoundError(f"no results store at {str(self.path)!r} (no {RECORDS_FILE} there)")
            return
        if self.path.exists() and not self.path.is_dir():
            raise NotADirectoryError(f"results store {str(self.path)!r} is a file, not a directory")
        self.path.mkdir(parents=True, exist_ok=True)

    def check_writable(self) -> None:
        """Raise PermissionError now (before any computation) if records cannot be appended."""
        try:
            os.close(os.open(self.file, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644))
        except OSError as e:
            raise PermissionError(f"results store {str(self.path)!r} is not writable: {e.strerror}") from None

    def __repr__(self) -> str:
        return f"ResultsStore({str(self.path)!r})"

    def put(self, config: dict, result: Optional[dict] = None, error: Optional[str] = None,
            meta: Optional[dict] = None) -> dict:
        """Append one record (status "error" iff ``error`` is given) and return it."""
        if not isinstance(config, dict):
            raise ValueError(f"config must be a dict, got {type(config).__name__}")
        if error is not None and result is not None:
            raise ValueError("give either result or error, not both")
        if error is None and not isinstance(result, dict):
            raise ValueError(f"result must be a dict (or give error), got {type(result).__name__}")
        if error is not None and not isinstance(error, str):
            raise ValueError(f"error must be a str (the traceback text), got {type(error).__name__}")
        rec = {"key": config_key(config), "config": config,
               "status": "ok" if error is None else "error",
               "result": result, "error": error, "meta": meta or {}}
        line = dumps(rec)
        self._append((line + "\n").encode())
        return json.loads(line)

    def _append(self, line: bytes) -> None:
        with _THREAD_LOCK:
            fd = os.open(self.file, os.O_RDWR | os.O_APPEND | os.O_CREAT, 0o644)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX)
                size = os.fstat(fd).st_size
                if size and os.pread(fd, 1, size - 1) != b"\n":
                    line = b"\n" + line  # previous writer died mid-line
                view = memoryview(line)
                while view:
                    view = view[os.write(fd, view):]
                os.fsync(fd)
            finally:
                os.close(fd)  # releases the flock

    def history(self) -> list[dict]:
        """Every valid record in file order (including superseded ones)."""
        try:
            records, self.invalid_lines = _parse_lines(self.file.read_bytes())
        except FileNotFoundError:
            records, self.invalid_lines = [], 0
        return records

    def records(self, status: Optional[str] = None) -> list[dict]:
        """Current record of each key, optionally only those with ``status``."""
        current = _current(self.history()).values()
        return [r for r in current if status is None or r["status"] == status]

    def get(self, config: dict) -> Optional[dict]:
        """Current record of ``config``, or None."""
        return _current(self.history()).get(config_key(config))

    def done_keys(self) -> set[str]:
        """Keys whose current record has status ok."""
        return {r["key"] for r in self.records("ok")}

    def to_rows(self, status: Optional[str] = None) -> list[dict]:
        """Flat dicts for CSV/plots: key, status, config fields, result fields, error, meta.*.

        Nested dicts are dot-joined; a result field named like a config field gets "result.".
        ``error`` is the last traceback line (the exception message).
        """
        rows = []
        for rec in self.records(status):
            config = _flatten(rec["config"])
            result = {(f"result.{k}" if k in config else k): v
                      for k, v in _flatten(rec["result"]).items()}
            error = rec["error"].strip().splitlines()[-1] if rec["error"] else None
            rows.append({"key": rec["key"], "status": rec["status"], **config, **result,
                         "error": error, **_flatten(rec["meta"], "meta.")})
        return rows
