"""(e) Test predictions: how far each method's test outputs are from exact NGD's, measured on the
trained networks and predicted by predict_limit (empirical and analytic kernels).

    python experiments/e_test_predictions.py --quick
"""
from _common import base_config, log, parser, save, setup

from ntk_ngd import experiments as ex
from ntk_ngd import report


def main(argv=None):
    p = parser(__doc__.splitlines()[0], "e_test_predictions")
    p.add_argument("--width", type=int, default=None)
    p.add_argument("--steps", type=int, default=None)
    args = p.parse_args(argv)
    setup(args)
    base = base_config(args, args.width or (512 if args.quick else 4096), args.steps or (4 if args.quick else 8))
    methods = [m for m in ex.paper_methods() if m != "unit_wise"] + ["unit_wise"]
    tp = ex.test_predictions(base.replace(damping=0.0), [m for m in methods if m != "unit_wise"], progress=log)
    report.plot_test_predictions(tp, f"{args.out}/test_predictions.png")
    report.save_csv([{"method": m, **e} for m, e in tp["methods"].items()], f"{args.out}/test_predictions.csv")
    save(args, "test_predictions", tp, base)
    report.write_markdown(f"{args.out}/REPORT.md", "Test predictions relative to exact NGD",
                          [("Result", "![test](test_predictions.png)\n\n" + report.test_predictions_table(tp))])
    print(report.test_predictions_table(tp))


if __name__ == "__main__":
    main()
