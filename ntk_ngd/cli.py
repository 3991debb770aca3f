"""The ``ntk-ngd`` command: train | sweep | reproduce | report.

  ntk-ngd train --method kfac --width 1024 --steps 5            one network vs its predictions
  ntk-ngd sweep --method exact kfac --width 256 512 1024 --seed 0 1 2 --store results/w
  ntk-ngd reproduce --quick                                      paper figures on bundled digits
  ntk-ngd report --store results/w --out results/w-figs              figures + markdown from a store
  ntk-ngd --plugin my_method.py train --method my_method         a user's registered method

Methods and their options come from the registry (``ntk_ngd.curvature.register_method``);
``--option KEY=VALUE`` sets a method option (typed by the method's fields).

Float64 by default (``--dtype float32`` to change); every result is saved with its typed
config and ``run_meta()`` (jax version, device, dtype, git revision, host).
"""
from __future__ import annotations

import argparse
import math
import os
import sys
import time
from pathlib import Path
from typing import Optional, Sequence

from . import experiments as ex
from .curvature import method_names
from .model import ACTIVATIONS
from .curvature.registry import describe
from .plugins import ENV, load_plugins

LR_HELP = "learning rate: a number, 'optimal' (1/alpha; 1/lambda_max(Theta_G) for gd/diagonal) or 'paper'"


def _lr(s: str):
    if s in ("optimal", "paper"):
        return s
    try:
        v = float(s)
    except ValueError:
        raise argparse.ArgumentTypeError(f"lr must be a number, 'optimal' or 'paper', got {s!r}")
    if not v > 0:
        raise argparse.ArgumentTypeError(f"lr must be positive, got {s}")
    return v


def _count(minimum: int):
    """argparse type: an integer >= minimum (a count: N, a width, a depth, steps)."""
    def parse(s: str) -> int:
        try:
            v = int(s)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected an integer >= {minimum}, got {s!r}")
        if v < minimum:
            raise argparse.ArgumentTypeError(f"expected an integer >= {minimum}, got {v}")
        return v
    parse.__name__ = f"integer >= {minimum}"
    return parse


def _real(minimum: float, strict: bool = False):
    """argparse type: a finite number >= minimum (> minimum with ``strict``)."""
    def parse(s: str) -> float:
        try:
            v = float(s)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a number, got {s!r}")
        if not math.isfinite(v) or (v <= minimum if strict else v < minimum):
            raise argparse.ArgumentTypeError(f"expected a finite number {'>' if strict else '>='} {minimum:g}, got {s}")
        return v
    parse.__name__ = "number"
    return parse


POSITIVE, NONNEGATIVE, DAMPING = _count(1), _count(0), _real(0.0)


def _option(s: str):
    """KEY=VALUE of ``--option`` (the value is typed later, against the method's fields)."""
    if "=" not in s:
        raise argparse.ArgumentTypeError(f"--option takes KEY=VALUE, got {s!r}")
    k, v = s.split("=", 1)
    return k.strip(), v.strip()


def _typed(value: str, default):
    """A command-line string as the type of an option's default (bool, int, float, None, str)."""
    low = value.lower()
    if isinstance(default, bool):
        if low not in ("true", "false", "1", "0", "yes", "no"):
            raise ValueError(f"expected true or false, got {value!r}")
        return low in ("true", "1", "yes")
    if low == "none":
        return None
    for cast in ((int,) if isinstance(default, int) or default is None else ()) + (float,):
        try:
            return cast(value)
        except ValueError:
            pass
    return value


def method_options_from_args(a, method: str) -> dict:
    """The options of ``method`` given by --option KEY=VALUE and --damping-mode."""
    from .curvature import method_class
    fields = method_class(method).options()
    out = {}
    for k, v in getattr(a, "option", None) or []:
        if k in fields:
            out[k] = _typed(v, fields[k])
    if getattr(a, "damping_mode", None) is not None and "damping_mode" in fields:
        out["damping_mode"] = a.damping_mode
    return out


def check_options_known(a, methods) -> None:
    from .curvature import method_class
    known = set().union(*(method_class(m).options() for m in methods))
    bad = sorted({k for k, _ in (getattr(a, "option", None) or []) if k not in known})
    if bad:
        raise SystemExit(f"ntk-ngd: error: --option {bad}: no option of the methods {list(methods)}")


def _log(msg: str) -> None:
    print(f"[ntk-ngd {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


# ----------------------------------------------------------------------------- options
def add_data_options(p, reproduce: bool = False) -> None:
    g = p.add_argument_group("data")
    choices = tuple(d for d in ex.DATASETS if d != "synthetic") if reproduce else ex.DATASETS
    g.add_argument("--dataset", choices=choices, default="digits",
                   help="digits: scikit-learn's bundled 8x8 digits (64 features); synthetic: Gaussian inputs with "
                        "a linear teacher; mnist / cifar10: local files given by --data-path (never downloaded); "
                        "npz / csv: your own data in the file --data-path (format: README, 'Your own data')")
    g.add_argument("--data-path", default=None,
                   help="MNIST / CIFAR-10 location (directory, archive or .npz), or your .npz / .csv file")
    g.add_argument("--n-train", type=POSITIVE, default=None, help="training samples N (default: 32 digits / 100 paper)")
    g.add_argument("--n-test", type=POSITIVE, default=None, help="test samples N' (default: 64 digits / 50 paper)")
    if reproduce:
        return
    g.add_argument("--classes", type=int, nargs="+", default=[0, 1],
                   help="class labels; two classes give +-0.5 scalar targets (C = 1), more give one-hot")
    g.add_argument("--data-seed", type=NONNEGATIVE, default=0, help="seed of the sample selection / synthetic data")
    g.add_argument("--dim", type=POSITIVE, default=64, help="input dimension of --dataset synthetic")
    g.add_argument("--forster", action="store_true",
                   help="Forster-transform the inputs (fitted on train; needed by K-FAC when N > M_0)")
    g.add_argument("--pca-dim", type=POSITIVE, default=None, help="project inputs on the top d principal directions")


def add_network_options(p, sweep: bool = False) -> None:
    g = p.add_argument_group("network")
    if sweep:
        g.add_argument("--width", type=POSITIVE, nargs="+", default=[256, 512, 1024],
                       help="hidden widths M to sweep (every hidden layer has width M)")
    else:
        g.add_argument("--width", type=POSITIVE, default=1024, help="hidden width M of every hidden layer")
        g.add_argument("--widths", type=POSITIVE, nargs="+", default=None,
                       help="all layer widths M_0 .. M_L (overrides --depth/--width; M_0, C must fit the data)")
    g.add_argument("--depth", type=POSITIVE, default=3, help="number of weight layers L")
    g.add_argument("--activation", choices=sorted(ACTIVATIONS), default="relu",
                   help="activation phi of the hidden layers")
    g.add_argument("--sigma-w", type=_real(0.0, strict=True), default=2 ** 0.5, help="weight scale sigma_w (paper: sigma_w^2 = 2)")
    g.add_argument("--sigma-b", type=DAMPING, default=0.0, help="bias scale sigma_b (paper: 0)")


def add_training_options(p, sweep: bool = False) -> None:
    g = p.add_argument_group("training")
    many = dict(nargs="+") if sweep else {}
    g.add_argument("--method", choices=method_names(), default=["exact"] if sweep else "exact", **many,
                   help="method(s), from the registry: " + describe())
    g.add_argument("--option", "-o", type=_option, action="append", default=None, metavar="KEY=VALUE",
                   help="a method option (repeatable), e.g. -o damping_mode=factored")
    g.add_argument("--lr", type=_lr, default="optimal", help=LR_HELP)
    g.add_argument("--damping", type=DAMPING, default=[0.0] if sweep else 0.0, **many,
                   help="damping rho >= 0 (see --damping-scale)")
    g.add_argument("--damping-scale", choices=ex.DAMPING_SCALES, default="absolute",
                   help="absolute: rho = --damping; per_width: rho = --damping / M (unit-wise needs rho << 1/M)")
    g.add_argument("--damping-mode", choices=("tikhonov", "factored"), default=None,
                   help="K-FAC damping (same as -o damping_mode=...): exact (B (x) A + rho I)^-1 or "
                        "factored (A + pi sqrt(rho)) (x) (B + ...); default tikhonov")
    g.add_argument("--force", action="store_true", help="run a method even where its stated conditions fail")
    g.add_argument("--steps", type=NONNEGATIVE, default=5, help="training steps T")
    g.add_argument("--seed", type=NONNEGATIVE, default=[0] if sweep else 0, **many,
                   help="network initialization seeds (one grid point each)" if sweep else "network initialization seed")
    g.add_argument("--no-analytic", action="store_true", help="skip the analytic (infinite-width) predictor")
    g.add_argument("--dtype", choices=ex.DTYPES, default="float64", help="floating point precision")


def run_config(a, **override) -> ex.RunConfig:
    """RunConfig from parsed train/sweep options (the sweep axes are overridden per point)."""
    kw = dict(dataset=a.dataset, data_path=a.data_path, classes=tuple(a.classes),
              n_train=a.n_train if a.n_train is not None else (32 if a.dataset in ("digits", "synthetic") else 100),
              n_test=a.n_test if a.n_test is not None else (64 if a.dataset in ("digits", "synthetic") else 50),
              data_seed=a.data_seed, dim=a.dim, forster=a.forster, pca_dim=a.pca_dim, depth=a.depth,
              width=a.width, widths=getattr(a, "widths", None), activation=a.activation, sigma_w=a.sigma_w,
              sigma_b=a.sigma_b, method=a.method, lr=a.lr, damping=a.damping, damping_scale=a.damping_scale,
              force=a.force, steps=a.steps, seed=a.seed,
              analytic=not a.no_analytic, dtype=a.dtype)
    kw.update(override)
    kw["options"] = method_options_from_args(a, kw["method"])
    return ex.RunConfig(**kw)


# ----------------------------------------------------------------------------- train
def _fmt(v) -> str:
    return "         -" if v is None else f"{v:10.3e}"


def step_table(s: dict) -> str:
    """The per-step table: network vs predictions from empirical and analytic kernels."""
    head = (f"{'step':>4} | {'train NN':>10} {'train emp':>10} {'train ana':>10} | "
            f"{'test NN':>10} {'test emp':>10} {'test ana':>10} | {'e_t emp':>10} {'e_t ana':>10}")
    lines = [head, "-" * len(head)]
    lt, lx, et = s["loss_train"], s["loss_test"], s["err_train"]
    col = lambda d, k, t: None if d.get(k) is None else d[k][t]
    for t in s["steps"]:
        lines.append(f"{t:>4} | {_fmt(lt['nn'][t])} {_fmt(col(lt, 'empirical', t))} {_fmt(col(lt, 'analytic', t))} | "
                     f"{_fmt(lx['nn'][t])} {_fmt(col(lx, 'empirical', t))} {_fmt(col(lx, 'analytic', t))} | "
                     f"{_fmt(col(et, 'empirical', t))} {_fmt(col(et, 'analytic', t))}")
    return "\n".join(lines)


def cmd_train(a) -> int:
    from .report import save_json
    from .store import run_meta
    check_options_known(a, [a.method])
    cfg = run_config(a)
    _log(f"training {cfg.method} on {cfg.dataset} (N={cfg.n_train}, width {cfg.width}, depth {cfg.depth}, "
         f"{cfg.steps} steps, {cfg.dtype})")
    s = ex.compare(cfg)
    print(f"method {cfg.method}: eta = {s['lr']:.6g}, rho = {s['rho']:.3g}, alpha = {s['alpha']}, "
          f"alpha (paper code) = {s['alpha_paper']}, widths = {s['widths']}")
    print(step_table(s))
    iso = "-" if s["iso_err"] is None else f"{s['iso_err']:.3e}"
    theory = "-" if s["ratio_theory"] is None else f"{s['ratio_theory']:.3e}"
    print(f"one-step ratio ||f_1-y||/||f_0-y||: NN {s['ratio_nn']}, linearized {s['ratio_pred']}, "
          f"|1 - eta alpha| {theory}; isotropy error {iso}; kernel drift {s['drift']:.3e}")
    for k, v in s["notes"].items():
        print(f"note ({k}): {v}")
    if a.json:
        save_json({"config": cfg.to_dict(), "meta": run_meta(), "result": s}, a.json)
        _log(f"wrote {a.json}")
    if a.plot:
        from .report import plot_dynamics
        path = plot_dynamics({cfg.method: s}, a.plot, f"{cfg.method} on {cfg.dataset}: N = {cfg.n_train}, "
                             f"widths {s['widths']}, {cfg.activation}, rho = {s['rho']:.3g}")
        _log(f"wrote {path}")
    return 0


# ----------------------------------------------------------------------------- sweep
def cmd_sweep(a) -> int:
    from .report import report_store
    from .sweep import run_sweep
    check_options_known(a, a.method)
    points = [p for m in a.method for p in
              ex.sweep_points(run_config(a, method=m, width=a.width[0], damping=a.damping[0], seed=a.seed[0]),
                              width=a.width, damping=a.damping, seed=a.seed)]
    _log(f"sweep of {len(points)} grid points into {a.store} (backend {a.backend})")
    client = None
    if a.backend == "dask" and a.scheduler:  # an existing cluster (several machines) instead of a LocalCluster
        from dask.distributed import Client
        client = Client(a.scheduler)
    try:
        summary = run_sweep(ex.sweep_point, points, a.store, backend=a.backend, progress=not a.no_progress,
                            retry_errors=a.retry_errors, client=client)
    finally:
        if client is not None:
            client.close()
    print(f"sweep: ran={summary.ran} skipped={summary.skipped} failed={summary.failed}")
    if a.report:
        report_store(a.store, a.report, name=a.name)
        _log(f"report in {a.report}/{a.name}_REPORT.md")
    if summary.ran and summary.failed == summary.ran:
        print(f"ntk-ngd: error: every one of the {summary.ran} grid points run failed (errors in {a.store}; "
              "ntk-ngd report lists them)", file=sys.stderr)
        return 1
    return 0


# ----------------------------------------------------------------------------- reproduce / report
def reproduce_config(a) -> ex.ReproduceConfig:
    t = lambda v: None if v is None else tuple(v)
    return ex.ReproduceConfig(dataset=a.dataset, data_path=a.data_path, quick=a.quick, n_train=a.n_train,
                              n_test=a.n_test, width=a.width, depth=a.depth, activation=a.activation,
                              sigma_b=a.sigma_b, steps=a.steps, seed=a.seed,
                              methods=t(a.methods), unit_wise_damping=a.unit_wise_damping,
                              forster_n_train=a.forster_n_train, sweep_widths=t(a.sweep_widths),
                              sweep_seeds=t(a.sweep_seeds), sweep_methods=t(a.sweep_methods),
                              damping_widths=t(a.damping_widths), damping_values=t(a.damping_values),
                              damping_methods=t(a.damping_methods), dtype=a.dtype)


def cmd_reproduce(a) -> int:
    from .report import write_reproduction
    rc = reproduce_config(a)
    if rc.dataset != "digits" and not rc.data_path:
        raise SystemExit(f"ntk-ngd: error: --dataset {rc.dataset} needs --data-path (local files; nothing is "
                         "downloaded)")
    run_dir = Path("results") / ("reproduce-quick" if rc.quick else f"reproduce-{rc.dataset}")
    store = Path(a.store or run_dir)
    res = run_reproduction(rc, a.skip, store, progress=not a.no_progress)
    if a.atlas:  # the isotropy atlas as one more entry (quick grid with --quick), its claims beside the paper's
        from . import atlas
        t0 = time.perf_counter()
        _log("entry atlas ...")
        claims, _ = atlas.run_atlas(atlas.AtlasConfig(quick=rc.quick), store / "atlas",
                                    Path(a.out or run_dir) / "atlas", progress=not a.no_progress)
        res["claims"] += claims
        res["timings"]["atlas"] = time.perf_counter() - t0
    path = write_reproduction(a.out or run_dir, rc, res)
    n_pass = sum(c.passed for c in res["claims"])
    for c in res["claims"]:
        print(c.line())
    print(f"{n_pass}/{len(res['claims'])} claims PASS; report: {path}")
    if res["claims"] and n_pass == 0:
        print("ntk-ngd: error: every claim failed", file=sys.stderr)
        return 1
    if a.strict and n_pass < len(res["claims"]):
        print(f"ntk-ngd: error: --strict and {len(res['claims']) - n_pass} claim(s) failed", file=sys.stderr)
        return 1
    return 0


ENTRIES = ("dynamics", "forster", "kfac_lr", "test", "width", "damping")


def run_reproduction(rc: ex.ReproduceConfig, skip: Sequence[str], store: Path, progress: bool = True) -> dict:
    """Run the reproduction's entries (each timed); sweeps go to resumable stores under ``store``."""
    from .report import store_rows
    from .sweep import run_sweep
    log = _log if progress else None
    res = {"claims": [], "timings": {}, "stores": {}}
    entries = {"dynamics": ex.paper_dynamics, "forster": ex.paper_forster, "kfac_lr": ex.paper_kfac_lr,
               "test": ex.paper_test_predictions}
    with ex.precision(rc.dtype):
        for name in ENTRIES:
            if name in skip:
                continue
            t0 = time.perf_counter()
            _log(f"entry {name} ...")
            if name in entries:
                res[name], claims = entries[name](rc, log)
                res["claims"] += claims
            else:
                sdir = store / name
                run_sweep(ex.sweep_point, ex.sweep_grid(rc, name), sdir, progress=progress)
                res["stores"][name] = str(sdir)
                res["claims"] += ex.sweep_claims(rc, name, store_rows(sdir))
            res["timings"][name] = time.perf_counter() - t0
            _log(f"entry {name} done in {res['timings'][name]:.1f} s")
    return res


def cmd_atlas(a) -> int:
    from . import atlas
    t = lambda v: None if v is None else tuple(v)
    settings = None
    if a.setting:
        settings = []
        for spec in a.setting:  # DATASET:ACTIVATION:DEPTH
            parts = spec.split(":")
            if len(parts) != 3 or parts[0] not in ("digits", "synthetic") or parts[1] not in ACTIVATIONS \
                    or not parts[2].isdigit() or int(parts[2]) < 1:
                raise SystemExit(f"ntk-ngd: error: --setting takes DATASET:ACTIVATION:DEPTH (digits|synthetic, "
                                 f"{'|'.join(sorted(ACTIVATIONS))}, an integer >= 1), got {spec!r}")
            settings.append({"dataset": parts[0], "activation": parts[1], "depth": int(parts[2])})
    ac = atlas.AtlasConfig(quick=a.quick, settings=t(settings), widths=t(a.widths), seeds=t(a.seeds),
                           n_train=a.n_train, n_test=a.n_test, steps=a.steps, methods=t(a.methods))
    run_dir = Path("results") / ("atlas-quick" if a.quick else "atlas")
    atlas.variants(ac.methods)  # unknown labels fail here, before anything runs
    out = Path(a.out or run_dir)
    store = Path(a.store or out / "store")
    _log(f"atlas: {len(ac.points())} points into {store}")
    claims, path = atlas.run_atlas(ac, store, out, progress=not a.no_progress)
    for c in claims:
        print(c.line())
    n_pass = sum(c.passed for c in claims)
    print(f"{n_pass}/{len(claims)} atlas claims PASS; report: {path}")
    if a.strict and n_pass < len(claims):
        return 1
    return 0


def cmd_report(a) -> int:
    from .report import report_store
    from .store import ResultsStore
    ResultsStore(a.store, create=False)  # a mistyped --store is an error, not an empty report
    out = a.out or str(Path("results") / f"{Path(a.store).name}-report")
    s = report_store(a.store, out, name=a.name)
    print(f"{s['n_ok']} finished and {s['n_error']} failed grid points; wrote {out}/{a.name}_REPORT.md "
          f"and {len(s['figures'])} figures")
    return 0


# ----------------------------------------------------------------------------- parser
class _Formatter(argparse.ArgumentDefaultsHelpFormatter):
    """Shows defaults, except None / False ones (their help says what happens)."""

    def _get_help_string(self, action):
        if action.default in (None, False) or action.default is argparse.SUPPRESS:
            return action.help
        return super()._get_help_string(action)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="ntk-ngd", description=__doc__.split("\n\n")[0].replace("``", ""),
                                formatter_class=_Formatter)
    p.add_argument("--version", action="version", version="%(prog)s " + sys.modules[__package__].__version__)
    p.add_argument("--plugin", action="append", default=[], metavar="MODULE_OR_FILE",
                   help="import a module (or .py file) that registers methods before the command runs "
                        f"(also ${ENV}); repeatable")
    p.add_argument("--debug", action="store_true", help="show the Python traceback of an error")
    sub = p.add_subparsers(dest="command", required=True)
    fmt = _Formatter

    t = sub.add_parser("train", formatter_class=fmt, help="train one network with one method vs its predictions",
                       description="Train one network with one method and print, per step, the train/test loss "
                                   "of the network and of its linearized predictions (empirical kernels at init "
                                   "and analytic infinite-width kernels), and the trajectory errors e_t.")
    add_data_options(t)
    add_network_options(t)
    add_training_options(t)
    t.add_argument("--json", default=None, metavar="PATH", help="also write config, meta and all numbers as JSON")
    t.add_argument("--plot", nargs="?", const="results/train/dynamics.png", default=None, metavar="PNG",
                   help="draw the run's train/test loss: network, empirical- and analytic-kernel predictions "
                        "(default path with no value: the ignored results/train/dynamics.png)")
    t.set_defaults(func=cmd_train)

    s = sub.add_parser("sweep", formatter_class=fmt, help="width x damping x method x seed grid into a store",
                       description="Run every grid point (one training run each, compared with its predictors) "
                                   "into a resumable results store: a rerun skips finished points, a failing point "
                                   "is recorded as an error and the others go on.")
    add_data_options(s)
    add_network_options(s, sweep=True)
    add_training_options(s, sweep=True)
    s.add_argument("--store", required=True, help="results store directory (records.jsonl)")
    s.add_argument("--backend", choices=("local", "dask"), default="local",
                   help="local: in this process; dask: a LocalCluster of worker processes, or the cluster "
                        "of --scheduler")
    s.add_argument("--scheduler", default=os.environ.get("DASK_SCHEDULER_ADDRESS"), metavar="ADDRESS",
                   help="with --backend dask: address of a running Dask scheduler (tcp://host:8786); the store "
                        "must be on a file system every worker sees (default: $DASK_SCHEDULER_ADDRESS)")
    s.add_argument("--retry-errors", action="store_true", help="rerun grid points stored as errors")
    s.add_argument("--no-progress", action="store_true", help="do not print the progress line")
    s.add_argument("--report", default=None, metavar="DIR", help="write figures + markdown for the store to DIR")
    s.add_argument("--name", default="sweep", help="file-name prefix of the report")
    s.set_defaults(func=cmd_sweep)

    r = sub.add_parser("reproduce", formatter_class=fmt, help="the paper's figures and claims (PASS/FAIL)",
                       description="Reproduce the paper's main experiments: training dynamics of every method, "
                                   "N > M_0 with and without Forster, K-FAC's learning-rate constant, test "
                                   "predictions, width and damping sweeps. Writes PNG figures, JSON/CSV and "
                                   "REPORT.md to --out. --quick: bundled digits, small widths (minutes on a CPU).")
    r.add_argument("--quick", action="store_true", help="small widths and grids (CI / a first look)")
    add_data_options(r, reproduce=True)
    r.add_argument("--width", type=POSITIVE, default=None, help="hidden width (default 1024 quick, 4096 otherwise)")
    r.add_argument("--depth", type=POSITIVE, default=3, help="number of weight layers L")
    r.add_argument("--steps", type=POSITIVE, default=None, help="training steps (default 4 quick, 6 otherwise)")
    r.add_argument("--activation", choices=sorted(ACTIVATIONS), default="relu",
                   help="activation of every entry's network (paper: relu)")
    r.add_argument("--sigma-b", type=DAMPING, default=0.0, help="bias scale sigma_b of every entry (paper: 0)")
    r.add_argument("--seed", type=NONNEGATIVE, default=0, help="network initialization seed of the single runs")
    r.add_argument("--methods", nargs="+", choices=method_names(), default=None,
                   help="methods of the single-run entries (dynamics, test predictions); default: the paper's "
                        + " ".join(ex.paper_methods()))
    r.add_argument("--unit-wise-damping", type=DAMPING, default=1e-6,
                   help="rho x M of the damped unit-wise run beside the paper's rho = 0")
    r.add_argument("--forster-n-train", type=POSITIVE, default=96, help="digits N > M_0 for the Forster entry")
    r.add_argument("--sweep-widths", type=POSITIVE, nargs="+", default=None, help="widths of the width sweep")
    r.add_argument("--sweep-seeds", type=NONNEGATIVE, nargs="+", default=None, help="seeds of the width sweep")
    r.add_argument("--sweep-methods", nargs="+", choices=method_names(), default=None,
                   help="methods of the width sweep (default: exact kfac quick, exact BD BTD kfac otherwise)")
    r.add_argument("--damping-widths", type=POSITIVE, nargs="+", default=None, help="widths of the damping sweep")
    r.add_argument("--damping-values", type=DAMPING, nargs="+", default=None,
                   help="damping values of the damping sweep: rho x M for unit_wise, rho for the others")
    r.add_argument("--damping-methods", nargs="+", choices=method_names(), default=None,
                   help="methods of the damping sweep (default: unit_wise quick, unit_wise kfac otherwise)")
    r.add_argument("--skip", nargs="+", choices=ENTRIES, default=[], help="entries to leave out")
    r.add_argument("--atlas", action="store_true",
                   help="also run the isotropy atlas (its quick grid with --quick; see ntk-ngd atlas) into OUT/atlas")
    r.add_argument("--out", default=None,
                   help="directory for figures, JSON/CSV and REPORT.md (default: the ignored results/reproduce-quick "
                        "or results/reproduce-DATASET; the committed reference figures are regenerated only by "
                        "naming figures/ or figures/full/ here)")
    r.add_argument("--store", default=None,
                   help="directory of the sweeps' resumable stores (default results/reproduce-quick or "
                        "results/reproduce-DATASET)")
    r.add_argument("--no-progress", action="store_true", help="quiet sweeps")
    r.add_argument("--strict", action="store_true", help="exit with status 1 when any claim fails (always when all do)")
    r.add_argument("--dtype", choices=ex.DTYPES, default="float64", help="floating point precision")
    r.set_defaults(func=cmd_reproduce)

    at = sub.add_parser("atlas", formatter_class=fmt, help="every method next to its function-space prediction",
                        description="The isotropy atlas: every registered method (and its statistics / side / hold "
                                    "variants) on wide networks at several widths and at infinite width: alpha, "
                                    "spread, isotropy or radiality error with its fitted width exponent, one-step "
                                    "ratio predicted vs measured, training vs the lazy-regime prediction; a table "
                                    "(CSV/JSON/markdown), figures and PASS/FAIL claims. Resumable through its store.")
    at.add_argument("--quick", action="store_true", help="small widths, one setting pair, one seed (minutes)")
    at.add_argument("--setting", nargs="+", default=None, metavar="DATASET:ACTIVATION:DEPTH",
                    help="settings, e.g. digits:relu:3 synthetic:erf:4 (default: quick or full list)")
    at.add_argument("--widths", type=POSITIVE, nargs="+", default=None, help="hidden widths (default 64..256 quick, "
                    "256..4096 otherwise)")
    at.add_argument("--seeds", type=NONNEGATIVE, nargs="+", default=None, help="network seeds (default 0 quick, 0 1)")
    at.add_argument("--methods", nargs="+", default=None, metavar="LABEL",
                    help="method names or variant labels such as ngplus[side=input] (default: every variant)")
    at.add_argument("--n-train", type=POSITIVE, default=32, help="training inputs N")
    at.add_argument("--n-test", type=POSITIVE, default=32, help="test inputs")
    at.add_argument("--steps", type=POSITIVE, default=3, help="training steps")
    at.add_argument("--out", default=None, help="output directory (default: the ignored results/atlas[-quick])")
    at.add_argument("--store", default=None, help="resumable store (default OUT/store)")
    at.add_argument("--no-progress", action="store_true", help="no progress line")
    at.add_argument("--strict", action="store_true", help="exit with status 1 when any claim fails")
    at.set_defaults(func=cmd_atlas)

    q = sub.add_parser("report", formatter_class=fmt, help="figures + markdown summary from a results store",
                       description="Turn a sweep store into figures (error vs width with fitted exponents, error "
                                   "vs damping, width x damping heat maps), CSV/JSON and NAME_REPORT.md.")
    q.add_argument("--store", required=True, help="results store directory")
    q.add_argument("--out", default=None, help="output directory (default: the ignored results/STORENAME-report)")
    q.add_argument("--name", default="sweep", help="file-name prefix")
    q.set_defaults(func=cmd_report)
    return p


def _plugins_in(argv) -> list:
    """--plugin values, read before the parser is built (its method choices depend on them)."""
    pre = argparse.ArgumentParser(add_help=False)
    pre.add_argument("--plugin", action="append", default=[])
    return pre.parse_known_args(argv)[0].plugin


def main(argv: Optional[Sequence[str]] = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    try:
        load_plugins(_plugins_in(argv))
    except ValueError as e:
        raise SystemExit(f"ntk-ngd: error: {e}")
    args = build_parser().parse_args(argv)
    import jax
    old = bool(jax.config.read("jax_enable_x64"))
    jax.config.update("jax_enable_x64", getattr(args, "dtype", "float64") == "float64")
    try:
        return args.func(args)
    except Exception as e:  # one line, exit 2; --debug shows the traceback
        if args.debug:
            raise
        kind = "" if type(e) is ValueError else f"{type(e).__name__}: "
        print(f"ntk-ngd: error: {kind}{e} (--debug shows the traceback)", file=sys.stderr)
        return 2
    finally:
        jax.config.update("jax_enable_x64", old)


if __name__ == "__main__":
    sys.exit(main())
