"""(b) Width sweep: trajectory error, isotropy error, one-step ratio and kernel drift vs M,
log-log with fitted exponents and 95% intervals over seeds (t-interval and bootstrap), per method.

    python experiments/b_width_sweep.py --quick              # M = 128..512, 2 seeds, 3 methods
    python experiments/b_width_sweep.py                      # M = 2^8..2^13, 3 seeds, all methods
Resumable: rerunning skips the finished grid points of --store.
"""
from _common import base_config, log, parser, setup

from ntk_ngd import experiments as ex
from ntk_ngd.curvature import method_names
from ntk_ngd.report import report_store
from ntk_ngd.sweep import run_sweep


def points(args):
    base = base_config(args, 256, args.steps).replace(activation=args.activation)
    pts = ex.sweep_points(base, method=args.methods, width=args.widths, seed=args.seeds)
    if args.unit_wise_damping:  # unit-wise also at a small damping rho << 1/M (at rho = 0 its steps blow up)
        pts += ex.sweep_points(base.replace(method="unit_wise", damping=args.unit_wise_damping,
                                            damping_scale="per_width"), width=args.widths, seed=args.seeds)
    return sorted(pts, key=lambda p: p["width"])  # all methods at a width before the next (partial runs usable)


def main(argv=None):
    p = parser(__doc__.splitlines()[0], "width_sweep", store="width_sweep")
    p.add_argument("--widths", type=int, nargs="+", default=None)
    p.add_argument("--seeds", type=int, nargs="+", default=None)
    p.add_argument("--methods", nargs="+", default=None, choices=method_names())
    p.add_argument("--steps", type=int, default=4)
    p.add_argument("--activation", default="relu", choices=("relu", "erf", "tanh", "linear"),
                   help="phi of the hidden layers (erf/tanh: smooth, see README 'width exponents')")
    p.add_argument("--unit-wise-damping", type=float, default=None, help="rho x M of an extra unit-wise series")
    args = p.parse_args(argv)
    q = args.quick
    args.widths = args.widths or ([128, 256, 512] if q else [2 ** k for k in range(8, 14)])
    args.seeds = args.seeds or ([0, 1] if q else [0, 1, 2])
    args.methods = args.methods or (["exact", "block_diagonal", "kfac"] if q else list(ex.paper_methods()))
    if args.unit_wise_damping is None:
        args.unit_wise_damping = 0.0 if q else 1e-6
    setup(args)
    pts = points(args)
    log(f"{len(pts)} grid points -> {args.store}")
    print(run_sweep(ex.sweep_point, pts, args.store, progress=not args.no_progress))
    s = report_store(args.store, args.out, name="width_sweep")
    for g in s.get("width", {}).get("groups", []):
        f = g["metrics"].get("err_emp_max", {}).get("fit")
        if f:
            print(f"{g['method']:>18} damping={g['damping']:.2g} ({g['damping_scale']}): exponent {f['exponent']:+.3f}, 95% CI "
                  f"[{f['ci'][0]:+.3f}, {f['ci'][1]:+.3f}], bootstrap [{f['bootstrap_ci'][0]:+.3f}, "
                  f"{f['bootstrap_ci'][1]:+.3f}]")


if __name__ == "__main__":
    main()
