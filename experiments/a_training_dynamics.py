"""(a) Training dynamics of all 7 methods vs their predictions (train and test loss per step).

    python experiments/a_training_dynamics.py --quick        # M = 512, 4 steps
    python experiments/a_training_dynamics.py                # M = 4096, 8 steps
"""
from _common import base_config, log, parser, save, setup

from ntk_ngd import experiments as ex
from ntk_ngd import report


def main(argv=None):
    p = parser(__doc__.splitlines()[0], "a_dynamics")
    p.add_argument("--width", type=int, default=None, help="hidden width (512 quick, 4096 otherwise)")
    p.add_argument("--steps", type=int, default=None, help="steps (4 quick, 8 otherwise)")
    p.add_argument("--unit-wise-damping", type=float, default=1e-6, help="rho x M of the damped unit-wise run")
    args = p.parse_args(argv)
    setup(args)
    base = base_config(args, args.width or (512 if args.quick else 4096), args.steps or (4 if args.quick else 8))
    extra = [(f"unit_wise (rho={args.unit_wise_damping:g}/M)",
              {"method": "unit_wise", "damping": args.unit_wise_damping, "damping_scale": "per_width"})]
    dyn = ex.training_dynamics(ex.method_runs(base, ex.paper_methods(), extra), log)
    report.plot_dynamics(dyn, f"{args.out}/dynamics.png", f"{args.dataset}, M = {base.width}")
    report.save_csv([{"method": k, **{f: s[f] for f in report.SCALAR_COLUMNS if f in s}} for k, s in dyn.items()],
                    f"{args.out}/dynamics.csv")
    save(args, "dynamics", dyn, base)
    report.write_markdown(f"{args.out}/REPORT.md", "Training dynamics vs predictions",
                          [("Setting", f"`{base.to_dict()}`"), ("Result", "![dynamics](dynamics.png)\n\n"
                                                                          + report.dynamics_table(dyn))])
    print(report.dynamics_table(dyn))


if __name__ == "__main__":
    main()
