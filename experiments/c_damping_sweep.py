"""(c) Damping sweep: error vs rho at several widths -- the damping-bias regime (large rho) and
the small-rho regime where the error grows again. Unit-wise damping is given as rho x M (its
per-unit kernels are O(1/M)); the other methods' as rho.

    python experiments/c_damping_sweep.py --quick
    python experiments/c_damping_sweep.py
"""
from _common import base_config, log, parser, setup

from ntk_ngd import experiments as ex
from ntk_ngd.curvature import method_names
from ntk_ngd.report import report_store
from ntk_ngd.sweep import run_sweep

RHO = {"absolute": [0.0, 1e-8, 1e-6, 1e-4, 1e-2, 1.0],
       "per_width": [0.0, 1e-8, 1e-7, 1e-6, 1e-5, 1e-4, 1e-3, 1e-2]}


def grid(args, widths, methods, rho=RHO):
    base = base_config(args, widths[0], args.steps)
    pts = []
    for m in methods:
        scale = "per_width" if m == "unit_wise" else "absolute"
        pts += ex.sweep_points(base.replace(method=m, damping_scale=scale), width=widths, damping=rho[scale],
                               seed=args.seeds)
    return pts


def main(argv=None, name="damping_sweep", defaults=None):
    p = parser(__doc__.splitlines()[0], name, store=name)
    p.add_argument("--widths", type=int, nargs="+", default=None)
    p.add_argument("--methods", nargs="+", default=None, choices=method_names())
    p.add_argument("--seeds", type=int, nargs="+", default=[0])
    p.add_argument("--steps", type=int, default=4)
    args = p.parse_args(argv)
    d = defaults or {"quick": ([256, 512], ["unit_wise", "kfac"]), "full": ([256, 1024, 4096],
                                                                           ["unit_wise", "kfac", "exact"])}
    widths, methods = d["quick" if args.quick else "full"]
    args.widths, args.methods = args.widths or widths, args.methods or methods
    setup(args)
    rho = {k: (v[::2] + [v[-1]] if args.quick and len(v) > 4 else v) for k, v in RHO.items()}
    pts = grid(args, args.widths, args.methods, rho)
    log(f"{len(pts)} grid points -> {args.store}")
    print(run_sweep(ex.sweep_point, pts, args.store, progress=not args.no_progress))
    s = report_store(args.store, args.out, name=name)
    for g in s.get("damping", {}).get("err_ideal_max", {}).get("groups", []):
        print(g["method"], {w: b["damping"] for w, b in g["best"].items()},
              "(damping closest to the isotropic theory, per width)")


if __name__ == "__main__":
    main()
