"""The Tianchi submission: predictions for the unlabelled test files, zipped, and its validation.

One JSON-lines file per task, ``{"id": "<id>", "label": "<label>"}`` per line in the test file's order
(OCNLI ``"0"/"1"/"2"``, OCEMOTION label names, TNEWS codes such as ``"108"``), named by each task's
``submission_file`` (``ocnli_predict.json``, ``ocemotion_predict.json``, ``tnews_predict.json``) and zipped,
at the root of the archive, into ``result.zip``. The test texts are normalised exactly as the training data
were (:func:`mtl.data.loading.load_test_sets`).
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import tempfile
import zipfile
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from mtl.data.loading import load_test_sets
from mtl.inference.checkpoint import LoadedCheckpoint
from mtl.inference.predict import predict

log = logging.getLogger(__name__)

__all__ = ["EXPECTED_TASKS", "SUBMISSION_ZIP", "Submission", "validate_submission", "write_submission"]

SUBMISSION_ZIP = "result.zip"
EXPECTED_TASKS = ("ocnli", "ocemotion", "tnews")


@dataclass
class Submission:
    split: str
    out_dir: Path
    zip_path: Path
    files: dict[str, Path] = field(default_factory=dict)  # task -> json file
    ids: dict[str, list[str]] = field(default_factory=dict)
    predictions: dict[str, list[str]] = field(default_factory=dict)
    missing_tasks: list[str] = field(default_factory=list)

    def summary(self) -> str:
        lines = [f"test {self.split} submission: {self.zip_path}"]
        for task, path in self.files.items():
            counts = Counter(self.predictions[task])
            dist = ", ".join(f"{lab}:{n}" for lab, n in counts.most_common())
            lines.append(f"  {path.name}: {len(self.ids[task])} rows; predicted labels {dist}")
        if self.missing_tasks:
            lines.append(f"  WARNING: no predictions for {', '.join(self.missing_tasks)} (not in the checkpoint)")
        return "\n".join(lines)


def write_submission(
    ckpt: LoadedCheckpoint,
    split: str,
    out_dir: str | Path,
    root: str | Path | None = None,
    batch_size: int = 128,
    rule: str | None = None,
) -> Submission:
    """Predict test ``split`` (``a``/``b``) of every task in the checkpoint; write the files and ``result.zip``.

    ``root``: the folder the test files are relative to (beats ``MTL_DATA_DIR`` and the run's ``data.root``).
    ``rule``: the decision rule (default: the checkpoint's, e.g. the per-class biases tuned on dev;
    ``mtl.inference.predict.apply_rule``).

    All or nothing: the files are written and validated in a temporary folder beside ``out_dir`` and moved
    into place only when complete (:func:`_move_into_place`). A failure leaves ``out_dir`` as it was (an
    earlier submission there stays whole, never mixed with new files); a success replaces the earlier
    ``result.zip`` and removes per-task files of it that the new submission does not have.
    """
    out_dir = Path(out_dir)
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.partial-", dir=out_dir.parent))
    try:
        sub = _write_into(ckpt, split, staging, root, batch_size, rule)
        _move_into_place(sub, staging, out_dir)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return sub


def _write_into(
    ckpt: LoadedCheckpoint, split: str, out_dir: Path, root: str | Path | None, batch_size: int,
    rule: str | None = None,
) -> Submission:
    """Write and validate the whole submission in ``out_dir`` (the staging folder)."""
    sub = Submission(split=split, out_dir=out_dir, zip_path=out_dir / SUBMISSION_ZIP)
    for task in ckpt.tasks:
        task_cfg = ckpt.task_config(task)
        test_files = task_cfg.get("test_files") or {}
        if split not in test_files:
            raise ValueError(
                f"task {task!r} has no test file for split {split!r} in its config "
                f"(test_files: {dict(test_files) or 'none'})"
            )
        task_cfg["test_files"] = {split: test_files[split]}
        # every test row must get a prediction: a bad row stops here even if training skipped bad rows
        # (the reader already refuses duplicate ids, naming file and line)
        data_cfg = {**ckpt.data_config, "on_bad_row": "error"}
        examples = load_test_sets(task, task_cfg, data_cfg, root=root)[split]
        ids = [e.id for e in examples]
        pred = predict(ckpt, task, examples, batch_size, rule)
        labels = [ckpt.labels[task][p] for p in pred]
        name = str(task_cfg.get("submission_file") or f"{task}_predict.json")
        if name == SUBMISSION_ZIP or Path(name).name != name:
            raise ValueError(f"task {task!r}: submission_file {name!r} must be a plain file name other than "
                             f"{SUBMISSION_ZIP}")
        if name in {p.name for p in sub.files.values()}:
            raise ValueError(f"task {task!r}: submission_file {name!r} is already used by another task")
        path = out_dir / name
        with path.open("w", encoding="utf-8", newline="\n") as fh:
            for i, lab in zip(ids, labels, strict=True):
                fh.write(json.dumps({"id": str(i), "label": str(lab)}, ensure_ascii=False) + "\n")
        sub.files[task], sub.ids[task], sub.predictions[task] = path, ids, labels
        log.info("%s: %d test-%s rows predicted (decision rule %s)", task, len(ids), split, rule or ckpt.decision_rule)
    sub.missing_tasks = [t for t in EXPECTED_TASKS if t not in ckpt.tasks]
    with zipfile.ZipFile(sub.zip_path, "w", compression=zipfile.ZIP_DEFLATED) as zf:
        for path in sub.files.values():
            zf.write(path, arcname=path.name)
    problems = validate_submission(
        sub.zip_path,
        {p.name: sub.ids[t] for t, p in sub.files.items()},
        {p.name: ckpt.labels[t] for t, p in sub.files.items()},
    )
    if problems:
        raise RuntimeError("the written submission is invalid:\n  " + "\n  ".join(problems))
    return sub


def _earlier_files(out_dir: Path) -> list[Path]:
    """The per-task files an earlier submission left in ``out_dir``: the members of its ``result.zip``
    (else the ``*_predict.json`` files)."""
    old_zip = out_dir / SUBMISSION_ZIP
    names: set[str] = set()
    if old_zip.is_file():
        try:
            with zipfile.ZipFile(old_zip) as zf:
                names = {n for n in zf.namelist() if Path(n).name == n}
        except (zipfile.BadZipFile, OSError):
            names = set()
    names |= {p.name for p in out_dir.glob("*_predict.json")}
    return [out_dir / n for n in sorted(names) if (out_dir / n).is_file()]


def _move_into_place(sub: Submission, staging: Path, out_dir: Path) -> None:
    """Move the complete submission from ``staging`` into ``out_dir`` and point ``sub`` at it.

    A new ``out_dir`` is the renamed staging folder (one atomic step). Into an existing one: the earlier
    ``result.zip`` is removed first, then each task file replaces its namesake, stale task files of the
    earlier submission are removed, and the new ``result.zip`` comes last, so a ``result.zip`` there is
    always the complete new one or (after an interruption) none at all.
    """
    final_files = {task: out_dir / path.name for task, path in sub.files.items()}
    if not out_dir.exists():
        os.replace(staging, out_dir)
    else:
        if not out_dir.is_dir():
            raise NotADirectoryError(f"output {out_dir} exists and is not a directory")
        stale = [p for p in _earlier_files(out_dir) if p.name not in {f.name for f in final_files.values()}]
        (out_dir / SUBMISSION_ZIP).unlink(missing_ok=True)
        for task, path in sub.files.items():
            os.replace(path, final_files[task])
        for path in stale:
            path.unlink(missing_ok=True)
            log.info("removed %s of an earlier submission (not part of this one)", path)
        os.replace(sub.zip_path, out_dir / SUBMISSION_ZIP)
    sub.out_dir, sub.zip_path, sub.files = out_dir, out_dir / SUBMISSION_ZIP, final_files
    for task, path in sub.files.items():
        log.info("%s -> %s", task, path)


def validate_submission(
    zip_path: str | Path, expected_ids: Mapping[str, Sequence[str]], label_sets: Mapping[str, Sequence[str]]
) -> list[str]:
    """Problems with a submission zip (empty list: valid): files at the root, exactly the expected ones,
    valid JSON lines with exactly ``id`` and ``label`` (strings), every id once and in the test file's order,
    labels from the task's label set."""
    problems: list[str] = []
    with zipfile.ZipFile(zip_path) as zf:
        names = zf.namelist()
        if sorted(names) != sorted(expected_ids):
            problems.append(f"zip holds {sorted(names)}, expected {sorted(expected_ids)} at its root")
        for name in names:
            if name not in expected_ids:
                continue
            allowed = {str(x) for x in label_sets[name]}
            ids: list[str] = []
            for n, raw in enumerate(zf.read(name).decode("utf-8").splitlines(), start=1):
                try:
                    row = json.loads(raw)
                except json.JSONDecodeError as exc:
                    problems.append(f"{name}:{n}: not JSON ({exc.msg})")
                    continue
                if not isinstance(row, dict) or set(row) != {"id", "label"}:
                    problems.append(f"{name}:{n}: expected an object with keys id and label, got {raw[:80]}")
                    continue
                if not isinstance(row["id"], str) or not isinstance(row["label"], str):
                    problems.append(f"{name}:{n}: id and label must be strings: {raw[:80]}")
                if str(row["label"]) not in allowed:
                    problems.append(f"{name}:{n}: label {row['label']!r} not in {sorted(allowed)}")
                ids.append(str(row["id"]))
            want = [str(i) for i in expected_ids[name]]
            if ids != want:
                missing = set(want) - set(ids)
                extra = set(ids) - set(want)
                problems.append(
                    f"{name}: ids differ from the test file's ({len(ids)} rows vs {len(want)}; "
                    f"{len(missing)} missing, {len(extra)} unexpected"
                    + ("; same ids, other order" if not missing and not extra else "") + ")"
                )
    return problems
