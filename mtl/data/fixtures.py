"""Small synthetic task files in the real layout, for tests and quick end-to-end runs without the data.

Each label has its own Chinese keywords mixed into random filler, so a tiny model learns the tasks in a
few dozen steps. Ids straddle the dev thresholds (OCNLI 50437, TNEWS 53360) with every label on both
sides, so the ``id_at_least`` split yields a dev set. Some rows contain ``"`` (the no-quoting trap) and the
test files contain full-width punctuation (the normalisation shift of the real test sets).

Beside the three Tianchi tasks, :func:`write_multilabel_fixture` writes a small multi-label task (news
topics, zero to three per row) read by the example task config ``mtl/conf/tasks/fixture_topics.yaml``
(``docs/multilabel.md``).
"""

from __future__ import annotations

import json
import random
from pathlib import Path

__all__ = [
    "OCEMOTION_LABELS",
    "OCNLI_DEV_THRESHOLD",
    "OCNLI_LABELS",
    "TNEWS_DEV_THRESHOLD",
    "TNEWS_LABELS",
    "TOPIC_LABELS",
    "write_fixture_data",
    "write_multilabel_fixture",
]

OCNLI_DEV_THRESHOLD = 50437
TNEWS_DEV_THRESHOLD = 53360

OCNLI_LABELS = ["0", "1", "2"]
OCNLI_NAMES = ["entailment", "neutral", "contradiction"]
OCEMOTION_LABELS = ["sadness", "happiness", "disgust", "anger", "like", "surprise", "fear"]
TNEWS_LABELS = [
    "100",
    "101",
    "102",
    "103",
    "104",
    "106",
    "107",
    "108",
    "109",
    "110",
    "112",
    "113",
    "114",
    "115",
    "116",
]
TNEWS_NAMES = [
    "story", "culture", "entertainment", "sports", "finance", "house", "car", "edu",
    "tech", "military", "travel", "world", "stock", "agriculture", "game",
]  # fmt: skip

_FILLER = "的一是在不了有和人这中大为上个国我以要他时来用们生到作地于出就分对成会可主发年动同工也能下过子说产种面而方后多定行学法所民得经十三之进着等部度家电力里如水化高自二理起小物现实加量都两体制机当使点从业本去把性好应开它合还因由其些然前外天政四日那社义事平形相全表间样与关各重新线内数正心反你明看原又么利比或但质气第向道命此变条只没结解问意建月公无系军很情者最立代想已通并提直题党程展五果料象员革位入常文总次品式活设及管特件长求老头基资边流路级少图山统接知较将组见计别她手角期根论运农指几九区强放决西被干做必战先回则任取据处理"
_OCNLI_MARK = ["肯定确实", "也许可能", "绝对没有"]
_OCEMOTION_MARK = ["伤心难过", "开心快乐", "恶心讨厌", "生气愤怒", "喜欢爱慕", "惊讶意外", "害怕恐惧"]
_TNEWS_MARK = [
    "故事传说", "文化艺术", "明星电影", "足球比赛", "银行理财", "楼盘房价", "汽车驾驶", "高考学校",
    "手机芯片", "军舰导弹", "旅游景点", "国际外交", "股票涨停", "农业种植", "游戏玩家",
]  # fmt: skip
#: the multi-label fixture's labels and their keywords (TNEWS keywords: their characters never occur in the filler)
TOPIC_LABELS = ["sports", "finance", "tech", "travel", "military"]
_TOPIC_MARK = ["足球比赛", "银行理财", "手机芯片", "旅游景点", "军舰导弹"]
#: the multi-label fixture's files, relative to the data root
TOPICS_TRAIN = "fixture/topics_train.tsv"
TOPICS_LABELLED = "fixture/topics_labelled.tsv"
_FULL_WIDTH = "，？！"
_MARK_CHARS = set("".join(_OCNLI_MARK + _OCEMOTION_MARK + _TNEWS_MARK))
_FILLER = "".join(dict.fromkeys(ch for ch in _FILLER if ch not in _MARK_CHARS))  # keywords only carry signal


def _filler(rng: random.Random, lo: int = 6, hi: int = 14) -> str:
    return "".join(rng.choice(_FILLER) for _ in range(rng.randint(lo, hi)))


def _sentence(rng: random.Random, mark: str, quote: bool = False, full_width: bool = False) -> str:
    left, right = _filler(rng, 3, 8), _filler(rng, 3, 8)
    text = f"{left}{mark}{right}"
    if quote:
        text = f'{left}"{mark}{right}'  # an unbalanced quote: merges rows if read with CSV quoting
    if full_width:
        text += rng.choice(_FULL_WIDTH)
    else:
        text += rng.choice(",?!.")
    return text


def _write_tsv(path: Path, rows: list[list[str]]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", encoding="utf-8", newline="") as f:
        for row in rows:
            f.write("\t".join(row) + "\r\n")


def _write_jsonl(path: Path, rows: list[dict[str, object]]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", encoding="utf-8", newline="") as f:
        for row in rows:
            f.write(json.dumps(row, ensure_ascii=False) + "\n")


def _balanced_labels(n: int, k: int, rng: random.Random) -> list[int]:
    """``n`` labels cycling through ``k`` classes, shuffled within each block of ``k`` (every class on both halves)."""
    out: list[int] = []
    while len(out) < n:
        block = list(range(k))
        rng.shuffle(block)
        out.extend(block)
    return out[:n]


def write_fixture_data(root: Path, rows_per_task: int = 60, seed: int = 0) -> Path:
    """Write synthetic OCNLI/OCEMOTION/TNEWS files under ``root`` in the real layout; returns ``root``.

    Written: ``tianchi/{OCNLI,OCEMOTION,TNEWS}_train1128.csv`` (CRLF, tab-separated, no quoting),
    ``tianchi/test_unlabelled/{OCNLI_a,ocnli_test_B,OCEMOTION_a,ocemotion_test_B,TNEWS_a,tnews_test_B}.csv``,
    ``clue_ocnli/{train.50k,dev,test}.json`` (with a few ``-`` labels), ``clue_tnews/{train,dev,labels}.json``
    and the multi-label task's files (:func:`write_multilabel_fixture`, ``rows_per_task`` rows).
    Use ``rows_per_task >= 2 * 15`` so every TNEWS label lands on both sides of the dev threshold.
    """
    if rows_per_task < 2:
        raise ValueError("rows_per_task must be at least 2")
    root = Path(root)
    rng = random.Random(seed)
    n = rows_per_task
    half = n // 2
    n_test = max(5, n // 4)
    tianchi = root / "tianchi"

    # OCNLI: the hypothesis carries the label keyword; ids straddle the CLUE-dev threshold.
    # Labels are balanced separately on each side of the threshold.
    ocnli_labels = _balanced_labels(half, 3, rng) + _balanced_labels(n - half, 3, rng)
    ocnli_rows = []
    for i, y in enumerate(ocnli_labels):
        premise = _sentence(rng, _filler(rng, 2, 3), quote=(i % 17 == 5))
        ocnli_rows.append(
            [str(OCNLI_DEV_THRESHOLD - half + i), premise, _sentence(rng, _OCNLI_MARK[y]), str(y)]
        )
    _write_tsv(tianchi / "OCNLI_train1128.csv", ocnli_rows)

    emo_labels = _balanced_labels(n, len(OCEMOTION_LABELS), rng)
    emo_rows = [
        [str(i), _sentence(rng, _OCEMOTION_MARK[y], quote=(i % 13 == 3)), OCEMOTION_LABELS[y]]
        for i, y in enumerate(emo_labels)
    ]
    _write_tsv(tianchi / "OCEMOTION_train1128.csv", emo_rows)

    k = len(TNEWS_LABELS)
    tnews_labels = _balanced_labels(half, k, rng) + _balanced_labels(n - half, k, rng)
    tnews_rows = [
        [
            str(TNEWS_DEV_THRESHOLD - half + i),
            _sentence(rng, _TNEWS_MARK[y], quote=(i % 11 == 7)),
            TNEWS_LABELS[y],
        ]
        for i, y in enumerate(tnews_labels)
    ]
    _write_tsv(tianchi / "TNEWS_train1128.csv", tnews_rows)

    # Unlabelled test files (id + texts), with full-width punctuation like the real test B sets.
    tests = tianchi / "test_unlabelled"
    for name, start in (("OCNLI_a", 0), ("ocnli_test_B", 1500)):
        rows = []
        for i in range(n_test):
            y = rng.randrange(3)
            rows.append(
                [
                    str(start + i),
                    _sentence(rng, _filler(rng, 2, 3)),
                    _sentence(rng, _OCNLI_MARK[y], full_width=True),
                ]
            )
        _write_tsv(tests / f"{name}.csv", rows)
    for name in ("OCEMOTION_a", "ocemotion_test_B"):
        marks = [_OCEMOTION_MARK[rng.randrange(len(_OCEMOTION_MARK))] for _ in range(n_test)]
        _write_tsv(
            tests / f"{name}.csv", [[str(i), _sentence(rng, m, full_width=True)] for i, m in enumerate(marks)]
        )
    for name in ("TNEWS_a", "tnews_test_B"):
        marks = [_TNEWS_MARK[rng.randrange(k)] for _ in range(n_test)]
        _write_tsv(
            tests / f"{name}.csv", [[str(i), _sentence(rng, m, full_width=True)] for i, m in enumerate(marks)]
        )

    # CLUE OCNLI: JSON lines, label strings, a few unlabelled '-' rows; ids restart at 0 in each file.
    def ocnli_json(count: int, with_label: bool, dash_every: int) -> list[dict[str, object]]:
        rows: list[dict[str, object]] = []
        for i, y in enumerate(_balanced_labels(count, 3, rng)):
            row: dict[str, object] = {
                "sentence1": _sentence(rng, _filler(rng, 2, 3), full_width=True),
                "sentence2": _sentence(rng, _OCNLI_MARK[y], full_width=True),
            }
            if with_label:
                row["label"] = "-" if dash_every and i % dash_every == dash_every - 1 else OCNLI_NAMES[y]
                row["genre"] = "news"
            row["id"] = i
            rows.append(row)
        return rows

    _write_jsonl(root / "clue_ocnli" / "train.50k.json", ocnli_json(n, True, 20))
    _write_jsonl(root / "clue_ocnli" / "dev.json", ocnli_json(max(12, n // 3), True, 10))
    _write_jsonl(root / "clue_ocnli" / "test.json", ocnli_json(n_test, False, 0))

    def tnews_json(count: int) -> list[dict[str, object]]:
        rows: list[dict[str, object]] = []
        for y in _balanced_labels(count, k, rng):
            rows.append(
                {
                    "label": TNEWS_LABELS[y],
                    "label_desc": f"news_{TNEWS_NAMES[y]}",
                    "sentence": _sentence(rng, _TNEWS_MARK[y], full_width=True),
                    "keywords": "",
                }
            )
        return rows

    _write_jsonl(root / "clue_tnews" / "train.json", tnews_json(n))
    _write_jsonl(root / "clue_tnews" / "dev.json", tnews_json(max(k, n // 3)))
    _write_jsonl(
        root / "clue_tnews" / "labels.json",
        [
            {"label": code, "label_desc": f"news_{desc}"}
            for code, desc in zip(TNEWS_LABELS, TNEWS_NAMES, strict=True)
        ],
    )
    write_multilabel_fixture(root, rows=n, seed=seed)
    return root


def _topic_rows(rng: random.Random, count: int, start: int) -> list[list[str]]:
    """``count`` rows ``[id, sentence, labels]``: 0-3 topics per row (cycling 0, 1, 1, 2, 2, 3, shuffled in
    blocks), each topic's keyword in the sentence; the label field joins the topic names with ``,``."""
    sizes: list[int] = []
    while len(sizes) < count:
        block = [0, 1, 1, 2, 2, 3]
        rng.shuffle(block)
        sizes.extend(block)
    rows = []
    for i, k in enumerate(sizes[:count]):
        topics = sorted(rng.sample(range(len(TOPIC_LABELS)), k))
        marks = [_TOPIC_MARK[j] for j in topics]
        rng.shuffle(marks)
        text = _filler(rng, 3, 6) + "".join(m + _filler(rng, 1, 3) for m in marks) + rng.choice(",?!.")
        rows.append([str(start + i), text, ",".join(TOPIC_LABELS[j] for j in topics)])
    return rows


def write_multilabel_fixture(root: Path, rows: int = 120, seed: int = 0) -> Path:
    """Write the multi-label fixture task under ``root``; returns ``root``.

    ``fixture/topics_train.tsv`` (``rows`` rows) and ``fixture/topics_labelled.tsv`` (a quarter as many, at
    least 8, for ``mtl-predict --labelled``): tab-separated ``id, sentence, labels`` without header, the
    labels field holding 0-3 of :data:`TOPIC_LABELS` joined by ``,`` (empty for a row without a topic). Its
    own random stream: the Tianchi fixture files are the same with or without it.
    """
    if rows < 2:
        raise ValueError("rows must be at least 2")
    root = Path(root)
    rng = random.Random(seed + 7919)
    _write_tsv(root / TOPICS_TRAIN, _topic_rows(rng, rows, 0))
    _write_tsv(root / TOPICS_LABELLED, _topic_rows(rng, max(8, rows // 4), 100_000))
    return root
