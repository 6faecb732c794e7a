"""``mtl-report``: compare finished runs (group by configuration, mean ± std over seeds, table + plot).

    mtl-report outputs/multirun/2026-11-21/16-00-00_sweep_balancers
    mtl-report outputs/ --out reports/all --ignore 'optim.*'
    mtl-report outputs/study/imbalance --baseline loss.name=ce        # paired differences with 95 % intervals
    mtl-report outputs/study/single outputs/study/multi --baseline single_task   # the multi-task gain
    mtl-report outputs/study/tricks --baseline outputs/study/tricks/base_s42     # the group of that run
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from mtl.cli import common
from mtl.evaluation.report import IGNORED_KEYS, NoRunsFoundError, RunReadError, to_markdown, write_report

PROG = "mtl-report"
DESCRIPTION = (
    "Find run directories (config.yaml + metrics.json) under the given paths, group them by configuration (all "
    "resolved config keys except seed, name, paths, logging and how a run was carried out such as "
    "trainer.resume), aggregate dev macro-F1 over seeds and write "
    "report.md, report.json and report.png."
)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = common.parser(PROG, DESCRIPTION)
    p.add_argument("paths", nargs="+", help="run directories, multirun sweep folders or any folder above them")
    p.add_argument("--out", default=None, help="where to write the report (default: the first path)")
    p.add_argument(
        "--ignore", action="append", default=[], metavar="KEY",
        help="another config key (dotted, fnmatch pattern) to leave out of the grouping, e.g. 'optim.*'; "
        f"always ignored: {', '.join(IGNORED_KEYS)}",
    )
    p.add_argument("--sort-by", default="avg_macro_f1", help="avg_macro_f1 (default) or a task name")
    p.add_argument("--baseline", default=None, metavar="KEY=VALUE|RUN_DIR",
                   help="the configuration to compare every other against, e.g. loss.name=ce, or the directory of "
                   "one of its runs (when no single key singles it out): paired differences "
                   "over shared seeds with a 95%% Student-t interval and a verdict (better / worse / within noise); "
                   "single_task: every multi-task configuration against the single-task runs (one task each, "
                   "e.g. experiment=quickstart_single_task), per task and on the average")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        for path in args.paths:
            if not Path(path).expanduser().exists():
                raise NoRunsFoundError(f"{path} does not exist")
        out = Path(args.out if args.out is not None else args.paths[0]).expanduser()
        common.ensure_writable_dir(out.parent if out.is_file() else out, "report folder")
        report = write_report(args.paths, args.out, (*IGNORED_KEYS, *args.ignore), args.sort_by, args.baseline)
    except NoRunsFoundError as exc:
        return common.fail(PROG, exc, 2)
    except KeyError as exc:
        return common.fail(PROG, f"unknown --sort-by {args.sort_by!r} ({exc.args[0] if exc.args else exc})", 2)
    except (RunReadError, common.OutputDirError, ValueError) as exc:
        return common.fail(PROG, exc, 2)
    except OSError as exc:  # e.g. the folder became read-only or the disk is full while writing
        return common.fail(PROG, common.os_error_message(exc), 2)
    print(to_markdown(report, report["files"].get("plot")))
    print("written: " + ", ".join(report["files"].values()))
    if "plot_error" in report:
        print(f"warning: the plot failed: {report['plot_error']}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
