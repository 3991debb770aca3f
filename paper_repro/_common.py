"""Shared plumbing of the paper_repro entries.

Each entry states the paper's claim, runs it on the paper's setting (MNIST / CIFAR-10 two-class
tasks, N = 100 train / 50 test, L = 3, M = 4096, relu, sigma_w^2 = 2, sigma_b = 0, rho = 0,
eta = eta* per method) when --data-path points to local files, and on scikit-learn's bundled
digits otherwise (64 features: N = 32 train / 64 test, classes 0 vs 1), then prints
PASS/FAIL with the measured numbers against a stated tolerance. --quick uses M = 1024.
"""
from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

from ntk_ngd import experiments as ex

import jax  # noqa: E402  (import ntk_ngd above has set the CPU thread-pool guard)
from ntk_ngd.report import claims_table, save_json, write_markdown
from ntk_ngd.store import run_meta


def parse(doc: str, name: str, argv=None):
    p = argparse.ArgumentParser(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--dataset", choices=("mnist", "cifar10", "digits"), default="digits",
                   help="mnist / cifar10 need --data-path; without the files the entry runs on digits")
    p.add_argument("--data-path", default=None, help="local MNIST or CIFAR-10 files (never downloaded)")
    p.add_argument("--quick", action="store_true", help="width 1024 instead of 4096")
    p.add_argument("--width", type=int, default=None)
    p.add_argument("--steps", type=int, default=None)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default="results/paper_repro",
                   help="parent directory (default under the ignored results/); this entry writes to OUT/" + name)
    p.add_argument("--strict", action="store_true", help="exit with status 1 if a claim fails")
    a = p.parse_args(argv)
    a.out = str(Path(a.out) / name)
    if a.dataset != "digits" and not (a.data_path and os.path.exists(a.data_path)):
        print(f"note: {a.dataset} files not found (--data-path {a.data_path!r}); running on bundled digits",
              file=sys.stderr)
        a.dataset, a.data_path = "digits", None
    jax.config.update("jax_enable_x64", True)
    rc = ex.ReproduceConfig(dataset=a.dataset, data_path=a.data_path, quick=a.quick, width=a.width,
                            steps=a.steps, seed=a.seed)
    return a, rc


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def finish(a, rc, name: str, claim_text: str, numbers, claims, figure: str | None = None) -> int:
    """Print the claims, write NAME.json + REPORT.md under --out; exit status for --strict."""
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    save_json({"config": rc.to_dict(), "meta": run_meta(), "claims": [c.to_dict() for c in claims],
               "result": numbers}, out / f"{name}.json")
    body = claim_text.strip() + "\n\n" + (f"![{name}]({figure})\n\n" if figure else "") + claims_table(claims)
    write_markdown(out / "REPORT.md", name, [("Claim and result", body), ("Setting", f"`{rc.to_dict()}`")])
    print(claim_text.strip())
    for c in claims:
        print(c.line())
    return 1 if a.strict and not all(c.passed for c in claims) else 0
