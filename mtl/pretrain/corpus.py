"""The pretraining corpus: the texts of the chosen tasks, read and normalised exactly as training reads them.

Rules (``docs/pretraining.md``):

* every text of each task's training file, read by the task's own reader through
  :func:`mtl.data.loading.load_task` (same columns, same bad-row policy, same Tianchi normalisation under
  ``data.normalize``), and of its unlabelled test files (``test_files``, through ``load_test_sets``);
* each text column is one text: both sentences of an OCNLI pair become two texts;
* the dev rows are left out: ``load_task`` re-creates each task's dev split exactly as training does
  (``split:`` of the task, ``data.dev_fraction``, the seed), for each seed of ``dev_seeds``; and every text
  equal to a dev text is dropped wherever it occurs (a train row or a test row that repeats a dev sentence
  would otherwise put that dev text into pretraining). ``include_dev=True`` keeps them;
* de-duplicated (first occurrence kept, in task order, train file before test files); texts left empty
  by normalisation are dropped and counted.

``data.max_train_per_task`` / ``max_dev_per_task`` do not apply here: the split is made on all rows, and
the whole dev split is left out (a capped dev set is a subset of it).
"""

from __future__ import annotations

import hashlib
import logging
import random
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mtl.data.loading import data_settings, load_task, load_test_sets, resolve_data_root

__all__ = ["Corpus", "corpus_fingerprint", "gather_corpus", "select_texts"]

log = logging.getLogger(__name__)


@dataclass
class Corpus:
    """The unique texts (corpus order) and an account of where they came from and what was left out."""

    texts: list[str]
    sources: list[dict[str, Any]] = field(default_factory=list)
    texts_read: int = 0  # texts of the kept rows, before de-duplication (dev rows' texts only with include_dev)
    duplicates: int = 0  # repeats of an earlier text, removed
    dev_texts: int = 0  # distinct texts of dev rows
    dev_texts_left_out: int = 0  # distinct corpus texts removed because a dev row holds the same text
    empty_after_normalisation: int = 0
    include_dev: bool = False
    include_test: bool = True
    dev_seeds: list[int] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return {
            "sources": self.sources,
            "texts_read": self.texts_read,
            "duplicates_removed": self.duplicates,
            "dev_texts": self.dev_texts,
            "dev_texts_left_out": self.dev_texts_left_out,
            "empty_after_normalisation": self.empty_after_normalisation,
            "unique_texts": len(self.texts),
            "include_dev": self.include_dev,
            "include_test": self.include_test,
            "dev_seeds": self.dev_seeds,
        }


def gather_corpus(
    tasks: Mapping[str, Any],
    data_cfg: Any,
    *,
    dev_seeds: Sequence[int],
    include_dev: bool = False,
    include_test: bool = True,
    root: str | Path | None = None,
) -> Corpus:
    """The corpus of ``tasks`` (task name -> task config, as ``cfg.tasks``) under the ``data`` settings.

    ``dev_seeds``: the seeds whose dev splits are left out (the fine-tuning runs' seeds; only seeded splits,
    e.g. OCEMOTION's stratified 10 %, depend on them). Raises what :func:`load_task` raises (a missing file,
    a bad row under ``data.on_bad_row=error``).
    """
    if not dev_seeds:
        raise ValueError("dev_seeds is empty: give the seed(s) whose dev split is to be left out")
    data = {**data_settings(data_cfg), "max_train_per_task": None, "max_dev_per_task": None}
    data_root = resolve_data_root(data, root)
    corpus = Corpus(texts=[], include_dev=include_dev, include_test=include_test, dev_seeds=list(dev_seeds))
    kept: dict[str, None] = {}  # text -> None, in first-seen order
    dev_texts: set[str] = set()

    def add(texts: Sequence[str]) -> None:
        for text in texts:
            if not text:
                corpus.empty_after_normalisation += 1
                continue
            corpus.texts_read += 1
            if text in kept:
                corpus.duplicates += 1
            else:
                kept[text] = None

    for name, task_cfg in tasks.items():
        splits = [load_task(name, task_cfg, data, seed=int(s), root=root) for s in dev_seeds]
        rows = splits[0].train + splits[0].dev
        dev_ids = {e.id for task in splits for e in task.dev}
        dev_rows = [e for e in rows if e.id in dev_ids]
        train_rows = [e for e in rows if e.id not in dev_ids]
        for e in dev_rows:
            dev_texts.update(t for t in e.texts if t)
        used = train_rows + (dev_rows if include_dev else [])
        add([t for e in used for t in e.texts])
        reads = splits[0].report.reads
        corpus.sources.append({
            "task": name,
            "part": "train" if include_dev else "train (dev rows left out)",
            "files": [r.source for r in reads],
            "rows_read": sum(r.rows for r in reads),
            "rows_not_usable": sum(r.rows - r.kept for r in reads),  # unlabelled or skipped by the reader
            "dev_rows": len(dev_rows),
            "rows": len(used),
            "texts": sum(len(e.texts) for e in used),
        })
        if not include_test:
            continue
        for split, examples in load_test_sets(name, task_cfg, data, root=root).items():
            add([t for e in examples for t in e.texts])
            rel = (task_cfg.get("test_files") or {}).get(split, "")
            corpus.sources.append({
                "task": name, "part": f"test_{split}", "files": [str(data_root / str(rel))],
                "rows_read": len(examples), "rows": len(examples), "texts": sum(len(e.texts) for e in examples),
            })
    corpus.dev_texts = len(dev_texts)
    if include_dev:
        corpus.texts = list(kept)
    else:
        corpus.texts = [t for t in kept if t not in dev_texts]
        corpus.dev_texts_left_out = len(kept) - len(corpus.texts)
    log.info(
        "corpus: %d texts read, %d duplicates removed, %d left out as dev texts -> %d unique texts (%s)",
        corpus.texts_read, corpus.duplicates, corpus.dev_texts_left_out, len(corpus.texts),
        "dev included" if include_dev else f"dev rows of seed(s) {list(dev_seeds)} left out",
    )
    if not corpus.texts:
        raise ValueError(f"the pretraining corpus of tasks {list(tasks)} is empty")
    return corpus


def select_texts(
    texts: Sequence[str], heldout: int, max_texts: int | None, seed: int
) -> tuple[list[str], list[str]]:
    """``(train, heldout)``: ``heldout`` texts drawn at random (seeded) and kept out of training, then at most
    ``max_texts`` of the rest (a seeded sample); both in corpus order."""
    n = len(texts)
    if heldout >= n:
        raise ValueError(
            f"pretrain.heldout_texts={heldout}: the corpus has only {n} texts, which leaves none to train on; "
            "lower pretrain.heldout_texts"
        )
    order = list(range(n))
    random.Random(seed).shuffle(order)
    held = sorted(order[:heldout])
    rest = order[heldout:]
    train = sorted(rest if max_texts is None else rest[:max_texts])
    return [texts[i] for i in train], [texts[i] for i in held]


def corpus_fingerprint(texts: Sequence[str]) -> str:
    """A content hash of the texts in order (a resumed run must train on the same texts)."""
    h = hashlib.sha256()
    for t in texts:
        h.update(t.encode("utf-8"))
        h.update(b"\n")
    return h.hexdigest()
