"""Inference from a trained run: rebuild the model from its checkpoint, predict, write the Tianchi
submission, score labelled data.

* :mod:`~mtl.inference.checkpoint`: :func:`find_checkpoint`, :func:`load_checkpoint` -> :class:`LoadedCheckpoint`;
* :mod:`~mtl.inference.predict`: :func:`predict_logits`, :func:`predict`;
* :mod:`~mtl.inference.submission`: :func:`write_submission` (``result.zip``), :func:`validate_submission`;
* :mod:`~mtl.inference.scoring`: :func:`score_dev`, :func:`score_labelled`, :func:`write_scores`.

Data flows one way: inference uses the data, models and evaluation metrics; nothing in
:mod:`mtl.evaluation` or :mod:`mtl.training` imports it.
"""

from __future__ import annotations

from mtl.inference.checkpoint import LoadedCheckpoint, find_checkpoint, load_checkpoint
from mtl.inference.predict import predict, predict_logits
from mtl.inference.scoring import score_dev, score_labelled, write_scores
from mtl.inference.submission import SUBMISSION_ZIP, Submission, validate_submission, write_submission

__all__ = [
    "SUBMISSION_ZIP",
    "LoadedCheckpoint",
    "Submission",
    "find_checkpoint",
    "load_checkpoint",
    "predict",
    "predict_logits",
    "score_dev",
    "score_labelled",
    "validate_submission",
    "write_scores",
    "write_submission",
]
