"""Shared command-line plumbing of the experiment scripts: config -> run -> store -> plot.

Every script takes --quick (CI-sized), --out (figures directory), --store (results store for
sweeps), --dataset/--data-path, --seed and --dtype; float64 by default."""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from ntk_ngd import experiments as ex

import jax  # noqa: E402  (import ntk_ngd above has set the CPU thread-pool guard)
from ntk_ngd.report import save_json
from ntk_ngd.store import run_meta


def parser(description: str, out: str, store: str | None = None) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=description, formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--quick", action="store_true", help="small widths / grids (CI-sized, about a minute)")
    p.add_argument("--out", default=f"results/{out}-figures",
                   help="directory for PNG, JSON/CSV and markdown (default under the ignored results/)")
    if store is not None:
        p.add_argument("--store", default=f"results/{store}", help="resumable results store (sweeps)")
        p.add_argument("--no-progress", action="store_true", help="quiet sweep")
    p.add_argument("--dataset", choices=("digits", "mnist", "cifar10", "synthetic"), default="digits")
    p.add_argument("--data-path", default=None, help="local MNIST / CIFAR-10 files")
    p.add_argument("--n-train", type=int, default=None, help="default: 32 (digits) / 100 (paper datasets)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--dtype", choices=ex.DTYPES, default="float64")
    return p


def setup(args) -> None:
    jax.config.update("jax_enable_x64", args.dtype == "float64")
    Path(args.out).mkdir(parents=True, exist_ok=True)


def base_config(args, width: int, steps: int) -> ex.RunConfig:
    paper = args.dataset in ("mnist", "cifar10")
    return ex.RunConfig(dataset=args.dataset, data_path=args.data_path,
                        n_train=args.n_train or (100 if paper else 32), n_test=50 if paper else 64,
                        width=width, steps=steps, seed=args.seed, dtype=args.dtype)


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def save(args, name: str, numbers, config) -> Path:
    """numbers + config + run_meta() as OUT/name.json."""
    cfg = config.to_dict() if hasattr(config, "to_dict") else config
    return save_json({"config": cfg, "meta": run_meta(), "result": numbers}, Path(args.out) / f"{name}.json")
