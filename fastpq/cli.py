"""The ``fastpq`` command (also ``python -m fastpq``).

    fastpq eval GT_JSON PRED_JSON [--gt-folder DIR] [--pred-folder DIR] [--workers N]
                [--scheduler ADDRESS] [--json OUT] [--per-class]
    fastpq demo [--images N] [--height H] [--width W] [--out DIR]
    fastpq report GT_JSON PRED_JSON --out DIR [--gt-folder DIR] [--pred-folder DIR] [--workers N]

Bad input exits with status 2 and one line on stderr.
"""

from __future__ import annotations

import argparse
import json
import sys

from fastpq.errors import InputError


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="fastpq", description="Panoptic Quality, fast, with "
                                     "the COCO panoptic reference's numbers.")
    sub = parser.add_subparsers(dest="command", required=True)

    ev = sub.add_parser("eval", help="evaluate a COCO panoptic prediction (JSON + PNG folder)")
    ev.add_argument("gt_json")
    ev.add_argument("pred_json")
    ev.add_argument("--gt-folder", default=None, help="default: GT_JSON without '.json'")
    ev.add_argument("--pred-folder", default=None, help="default: PRED_JSON without '.json'")
    ev.add_argument("--workers", type=int, default=None, help="threads (default: the cores)")
    ev.add_argument("--scheduler", default=None, metavar="ADDRESS",
                    help="evaluate on the Dask cluster of this scheduler (e.g. tcp://host:8786); "
                    "its workers must see the folders at the same paths (pip install fastpq[dask])")
    ev.add_argument("--json", dest="json_out", default=None, help="write the result dict here")
    ev.add_argument("--per-class", action="store_true", help="also print the per-class table")

    demo = sub.add_parser("demo", help="generate a small COCO-format dataset, evaluate it with "
                          "fastpq and with the reference, print the table and the times")
    demo.add_argument("--images", type=int, default=200)
    demo.add_argument("--height", type=int, default=480)
    demo.add_argument("--width", type=int, default=640)
    demo.add_argument("--out", default=None, help="where to write the dataset (default: a "
                      "temporary folder, removed afterwards)")
    demo.add_argument("--seed", type=int, default=0)

    report = sub.add_parser("report", help="evaluate with per-image records and write an HTML "
                            "report (tables, plots) into a folder (pip install fastpq[report])")
    report.add_argument("gt_json")
    report.add_argument("pred_json")
    report.add_argument("--out", required=True, help="folder for index.html, per_class.csv, "
                        "result.json")
    report.add_argument("--gt-folder", default=None, help="default: GT_JSON without '.json'")
    report.add_argument("--pred-folder", default=None, help="default: PRED_JSON without '.json'")
    report.add_argument("--workers", type=int, default=None, help="threads (default: the cores)")
    return parser


def main(argv=None) -> int:
    args = _parser().parse_args(argv)
    try:
        if args.command == "eval":
            return _eval(args)
        if args.command == "report":
            return _report(args)
        from fastpq.datasets.demo import run_demo

        return run_demo(n_images=args.images, height=args.height, width=args.width,
                        out=args.out, seed=args.seed)
    except (InputError, KeyError, FileNotFoundError, OSError, ImportError) as e:
        print(f"fastpq: error: {_one_line(e)}", file=sys.stderr)
        return 2
    except Exception as e:  # the reference's plain Exceptions (missing folder, no prediction)
        if type(e) is Exception:
            print(f"fastpq: error: {_one_line(e)}", file=sys.stderr)
            return 2
        raise


def _one_line(e: BaseException) -> str:
    text = e.args[0] if isinstance(e, KeyError) and e.args else str(e)
    return " ".join(str(text).split())


def _eval(args) -> int:
    from fastpq.api import pq_compute

    if args.scheduler is None:
        result = pq_compute(args.gt_json, args.pred_json, args.gt_folder, args.pred_folder,
                            workers=args.workers, return_result=True)
    else:
        from fastpq.scale.cluster import connect

        with connect(args.scheduler) as client:
            result = pq_compute(args.gt_json, args.pred_json, args.gt_folder, args.pred_folder,
                                return_result=True, client=client)
    if args.per_class:
        print()
        print(result.class_table())
    if args.json_out:
        with open(args.json_out, "w", encoding="utf-8") as f:
            json.dump(result.to_dict(), f, indent=1)
    return 0


def _report(args) -> int:
    from fastpq.api import pq_compute
    from fastpq.analysis.report import write_report

    result = pq_compute(args.gt_json, args.pred_json, args.gt_folder, args.pred_folder,
                        workers=args.workers, return_result=True, per_image=True)
    print(f"report: {write_report(result, args.out)}")
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
