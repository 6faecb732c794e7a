"""``mtl-predict``: the Tianchi submission (or labelled scores) from a trained run.

    mtl-predict outputs/2026-11-21/15-29-19_quickstart --split a       # -> .../submission/a/result.zip
    mtl-predict outputs/.../checkpoints/best.pt --split b --out sub_b --data-root /data/raw
    mtl-predict <run> --split dev                                      # re-create the dev split, score it
    mtl-predict <run> --labelled ocnli=my_ocnli.tsv --labelled tnews=my_tnews.tsv
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from mtl.cli import common
from mtl.data.readers import BadRowError
from mtl.evaluation.metrics import TaskScores, format_table

PROG = "mtl-predict"
DESCRIPTION = (
    "Load a run's best checkpoint and predict the unlabelled Tianchi test A/B files of all its tasks into the "
    "submission zip (result.zip with ocnli_predict.json, ocemotion_predict.json, tnews_predict.json), or score "
    "it on labelled data."
)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = common.parser(PROG, DESCRIPTION)
    p.add_argument("checkpoint", help="a run directory (its checkpoints/best.pt, else checkpoints/last.pt), "
                   "its checkpoints/ folder or a .pt checkpoint file")
    p.add_argument("--split", choices=["a", "b", "dev"], default=None,
                   help="a / b: the unlabelled test set for the submission; dev: re-create and score the dev split")
    p.add_argument("--labelled", action="append", default=[], metavar="TASK=FILE",
                   help="score a labelled file in the task's training format (repeatable)")
    p.add_argument("--data-root", default=None,
                   help="folder the task files are relative to (default: MTL_DATA_DIR, else the run's data.root)")
    p.add_argument("--out", default=None,
                   help="output folder (default: <run>/submission/<split>, <run>/predictions/<dev|labelled>)")
    p.add_argument("--on-bad-row", choices=["error", "skip"], default=None,
                   help="--split dev / --labelled only: skip (and count) rows that cannot be used instead of "
                   "stopping (default: the run's data.on_bad_row). A submission (--split a/b) never skips: "
                   "every test row needs a prediction")
    p.add_argument("--decision", choices=["argmax", "logit_adjusted", "tuned_biases"], default=None,
                   help="the decision rule applied to the logits (default: the run's decision rule, saved in the "
                   "checkpoint: e.g. with decision=tuned_biases the per-class biases fitted on dev)")
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--device", default="auto", help="auto (cuda if available) | cpu | cuda | cuda:N")
    args = p.parse_args(argv)
    if not args.split and not args.labelled:
        p.error("give --split a|b|dev or at least one --labelled TASK=FILE")
    if args.split in ("a", "b") and args.labelled:
        p.error("--split a/b writes a submission; score --labelled files in a separate call")
    if args.split in ("a", "b") and args.on_bad_row == "skip":
        p.error("--on-bad-row skip applies to --split dev and --labelled only: a submission needs a prediction "
                "for every test row")
    return args


def _print_scores(result: dict) -> None:
    scores = {t: TaskScores(**s) for t, s in result["tasks"].items()}
    print(format_table(scores))


def _bad_row_message(exc: BadRowError, args: argparse.Namespace) -> str:
    """The reader's error with the advice that fits mtl-predict (not mtl-train's data.on_bad_row)."""
    if args.split in ("a", "b"):
        hint = ("every test row needs a prediction, so a submission cannot skip it: fix or remove the row "
                "in the file")
    else:
        hint = "pass --on-bad-row skip to skip such rows; they are counted in the log"
    return f"{exc.where} ({hint})"


def _labelled_files(items: list[str]) -> dict[str, str]:
    files = {}
    for item in items:
        task, sep, path = item.partition("=")
        if not sep or not task.strip() or not path.strip():
            raise ValueError(f"--labelled expects TASK=FILE, got {item!r}")
        files[task.strip()] = path.strip()
    return files


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="[%(levelname)s] %(message)s")
    from mtl.inference import load_checkpoint, score_dev, score_labelled, write_scores, write_submission

    try:
        files = _labelled_files(args.labelled)
        ckpt = load_checkpoint(args.checkpoint, device=args.device)
        print(f"checkpoint {ckpt.path} (step {ckpt.step}, dev avg macro-F1 {ckpt.avg_macro_f1:.4f}); "
              f"tasks: {', '.join(ckpt.tasks)}; decision rule: {args.decision or ckpt.decision_rule}")
        if args.split in ("a", "b"):
            out = Path(args.out) if args.out else ckpt.run_dir / "submission" / args.split
            common.ensure_writable_dir(out)
            sub = write_submission(ckpt, args.split, out, args.data_root, args.batch_size, args.decision)
            print(sub.summary())
            print(f"valid submission: {sub.zip_path}")
            return 0
        name = "dev" if args.split == "dev" else "labelled"
        out = Path(args.out) if args.out else ckpt.run_dir / "predictions" / name
        common.ensure_writable_dir(out)
        if args.split == "dev":
            result = score_dev(ckpt, args.data_root, args.batch_size, on_bad_row=args.on_bad_row, rule=args.decision)
        else:
            result = score_labelled(ckpt, files, args.batch_size, on_bad_row=args.on_bad_row, rule=args.decision)
        out = write_scores(result, out)
        _print_scores(result)
        print(f"predictions and scores.json in {out}")
        return 0
    except BadRowError as exc:
        return common.fail(PROG, _bad_row_message(exc, args), 1)
    except KeyError as exc:
        return common.fail(PROG, exc.args[0] if exc.args else exc, 1)
    except (FileNotFoundError, ValueError, RuntimeError, common.OutputDirError) as exc:
        return common.fail(PROG, exc, 1)
    except OSError as exc:  # e.g. the output folder became read-only or the disk is full while writing
        return common.fail(PROG, common.os_error_message(exc), 1)


if __name__ == "__main__":
    sys.exit(main())
