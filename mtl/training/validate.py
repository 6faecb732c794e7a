"""Checks of a run before it reads data or writes a file: the composed config, the run directory, and a
resumed checkpoint's identity.

* :func:`validate_config`: every value the loop would trip on later (``trainer.eval_every=0`` as a
  ``ZeroDivisionError`` hundreds of steps in, ``tasks=[]`` as an attribute error), and a gradient balancer
  with a one-task sampler, from the registered classes' attributes, before any data is read; a task's
  ``type`` and whether its loss fits it (a multi-label task needs a multi-label loss such as ``zlpr``, a
  single-label task refuses one). Each :class:`ConfigError` names the key and the value.
* :func:`claim_run_dir`: a directory that already holds a run is refused unless the run resumes it
  (``trainer.resume=auto``) or replaces it (``trainer.overwrite=true``); an exclusive lock
  (``<run_dir>/.lock``) keeps two runs from writing into one directory at once.
* :func:`identity_differences`: the settings of a resumed checkpoint that decide which examples the run
  sees and how its trajectory goes; a resume that changes one is refused (see ``docs/reliability.md``).
"""

from __future__ import annotations

import logging
import math
import os
import shutil
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

log = logging.getLogger(__name__)

__all__ = [
    "RUN_FILES",
    "ConfigError",
    "RunDirError",
    "check_resume_identity",
    "check_task_losses",
    "claim_run_dir",
    "clear_run_outputs",
    "holds_run",
    "identity_differences",
    "validate_config",
]


class ConfigError(ValueError):
    """A config value the run cannot use; the message names the key and the value."""


class RunDirError(ValueError):
    """The run directory holds another run, or another process is writing to it."""


# ---------------------------------------------------------------------------------------------------- config

PRECISIONS = ("auto", "fp32", "bf16", "fp16")
POOLINGS = ("cls", "mean", "max", "pooler", "attention")  # mtl.models.heads.POOLINGS
HEADS = ("linear", "mlp", "bilstm", "bigru", "cnn")  # mtl.models.heads.HEAD_KINDS
SHARINGS = ("hard", "private_top", "adapters", "lora")  # mtl.models.sharing.SHARINGS
BAD_ROW = ("error", "skip")


def _number(value: Any) -> float | None:
    if isinstance(value, bool):
        return None
    try:
        return float(value)
    except (TypeError, ValueError):
        return None


def validate_config(cfg: DictConfig) -> None:
    """Raise :class:`ConfigError` for the first unusable value of the composed config (before data is read)."""
    problems: list[str] = []

    def need(key: str, ok: bool, what: str) -> None:
        if not ok:
            problems.append(f"{key}={_value(cfg, key)!s}: {what}")

    def positive_int(key: str, *, optional: bool = False, zero_ok: bool = False) -> None:
        v = _get(cfg, key)
        if v is None and optional:
            return
        ok = isinstance(v, int) and not isinstance(v, bool) and (v >= 0 if zero_ok else v > 0)
        need(key, ok, "must be a non-negative integer" if zero_ok else "must be a positive integer")

    def finite(key: str, *, low: float | None = 0.0, strict: bool = False, optional: bool = False,
               high: float | None = None) -> None:
        v = _get(cfg, key)
        if v is None and optional:
            return
        x = _number(v)
        ok = x is not None and math.isfinite(x)
        if ok and low is not None:
            ok = x > low if strict else x >= low  # type: ignore[operator]
        if ok and high is not None:
            ok = x < high  # type: ignore[operator]
        bound = "" if low is None else f" {'>' if strict else '>='} {low:g}"
        if high is not None:
            bound += f"{' and' if bound else ''} < {high:g}"
        need(key, ok, f"must be a finite number{bound}")

    tasks = cfg.get("tasks")
    if not tasks:
        problems.append("tasks=[]: no tasks selected; pass e.g. tasks=[ocnli,ocemotion,tnews]")
    need("seed", isinstance(_get(cfg, "seed"), int) and not isinstance(_get(cfg, "seed"), bool),
         "must be an integer")
    # optim
    finite("optim.lr", strict=True)
    finite("optim.head_lr", strict=True, optional=True)
    finite("optim.weight_decay")
    finite("optim.warmup")
    finite("optim.grad_clip", optional=True)
    # trainer
    if _get(cfg, "trainer.max_epochs") is None:
        positive_int("trainer.max_steps")
    else:
        finite("trainer.max_epochs", strict=True)
    positive_int("trainer.eval_every")
    positive_int("trainer.log_every")
    positive_int("trainer.checkpoint_every", optional=True, zero_ok=True)
    positive_int("trainer.grad_accum_steps")
    positive_int("trainer.max_consecutive_nonfinite")
    positive_int("trainer.early_stopping_patience", optional=True, zero_ok=True)
    need("trainer.precision", str(_get(cfg, "trainer.precision")) in PRECISIONS, f"choose one of {PRECISIONS}")
    # training tricks (docs/training_tricks.md)
    adv = _get(cfg, "trainer.adversarial")
    need("trainer.adversarial", adv in (None, "fgm", "pgd"), "choose null, fgm or pgd")
    finite("trainer.adv_epsilon", strict=True, optional=True)
    finite("trainer.adv_alpha", strict=True, optional=True)
    positive_int("trainer.adv_steps", optional=True)
    finite("trainer.rdrop_alpha", optional=True)
    need("trainer.rdrop_alpha", not (adv and (_number(_get(cfg, "trainer.rdrop_alpha")) or 0) > 0),
         "R-Drop with trainer.adversarial is not supported: choose one")
    finite("trainer.ema_decay", strict=True, high=1.0, optional=True)
    finite("trainer.swa_start", optional=True)
    need("trainer.swa_start", _get(cfg, "trainer.ema_decay") is None or _get(cfg, "trainer.swa_start") is None,
         "trainer.ema_decay and trainer.swa_start are alternatives: set one")
    need("optim.optimizer", str(_get(cfg, "optim.optimizer") or "adamw") in ("adamw", "adafactor"),
         "choose adamw or adafactor")
    finite("optim.layer_decay", strict=True, optional=True)
    need("optim.layer_decay", (_number(_get(cfg, "optim.layer_decay")) or 0.5) <= 1.0, "must lie in (0, 1]")
    positive_int("model.dropout_samples", optional=True)
    # data, model, encoder
    positive_int("data.batch_size")
    positive_int("data.eval_batch_size")
    positive_int("data.num_workers", zero_ok=True)
    positive_int("data.max_train_per_task", optional=True)
    positive_int("data.max_dev_per_task", optional=True)
    finite("data.dev_fraction", strict=True, high=1.0)
    need("data.on_bad_row", str(_get(cfg, "data.on_bad_row")) in BAD_ROW, f"choose one of {BAD_ROW}")
    finite("model.dropout", high=1.0)
    need("model.head", str(_get(cfg, "model.head")) in HEADS, f"choose one of {HEADS}")
    problems.extend(_model_problems(cfg, list(tasks or {})))
    positive_int("encoder.max_length")
    need("encoder.pooling", str(_get(cfg, "encoder.pooling")) in POOLINGS, f"choose one of {POOLINGS}")
    if _get(cfg, "decision") is not None:
        from mtl.evaluation.decision import RULES

        need("decision.rule", str(_get(cfg, "decision.rule")) in RULES, f"choose one of {', '.join(RULES)}")
        finite("decision.tau", low=None)
        positive_int("decision.rounds")
    for name in tasks or {}:
        problems.extend(_task_problems(str(name), tasks[name]))
    if problems:
        more = f" (and {len(problems) - 1} more: {'; '.join(problems[1:])})" if len(problems) > 1 else ""
        raise ConfigError(f"{problems[0]}{more}")
    check_pairing(cfg)
    check_task_losses(cfg)


def _model_problems(cfg: Any, tasks: list[str]) -> list[str]:
    """The structure options of ``model`` (docs/structures.md) that can be checked without the encoder: the
    sharing, the poolings and layer choices, the sizes, and ``model.heads.<task>`` naming run tasks and
    known keys (layer indices are checked against the encoder when the model is built)."""
    from mtl.models.multitask import HEAD_KEYS, LAYER_CHOICES

    out: list[str] = []

    def layer_ok(v: Any) -> bool:
        return v in LAYER_CHOICES or (isinstance(v, int) and not isinstance(v, bool))

    def pos(key: str, v: Any, optional: bool = False) -> None:
        if v is None and optional:
            return
        if not (isinstance(v, int) and not isinstance(v, bool) and v > 0):
            out.append(f"{key}={'null' if v is None else v}: must be a positive integer")

    if _get(cfg, "model") is None:
        return out
    sharing = _get(cfg, "model.sharing")
    if sharing is not None and sharing not in SHARINGS:
        out.append(f"model.sharing={sharing}: choose one of {SHARINGS}")
    pooling = _get(cfg, "model.pooling")
    if pooling is not None and pooling not in POOLINGS:
        out.append(f"model.pooling={pooling}: choose null (the encoder's) or one of {POOLINGS}")
    layer = _get(cfg, "model.layer")
    if layer is not None and not layer_ok(layer):
        out.append(f"model.layer={layer}: choose one of {LAYER_CHOICES} or a layer index")
    for key in ("concat_layers", "private_layers", "adapter_size", "lora_r"):
        if _get(cfg, f"model.{key}") is not None:
            pos(f"model.{key}", _get(cfg, f"model.{key}"))
    pos("model.head_hidden", _get(cfg, "model.head_hidden"), optional=True)
    placement = _get(cfg, "model.adapter_placement")
    if placement is not None and placement not in ("pfeiffer", "houlsby"):
        out.append(f"model.adapter_placement={placement}: choose pfeiffer or houlsby")
    heads = _get(cfg, "model.heads") or {}
    for task in heads:
        own = heads[task]
        if tasks and task not in tasks:
            out.append(f"model.heads.{task}: no task {task!r} in this run (tasks: {', '.join(tasks)})")
            continue
        if not hasattr(own, "keys"):
            out.append(f"model.heads.{task}={own}: give a mapping, e.g. model.heads.{task}.kind=bilstm")
            continue
        bad = sorted(set(own.keys()) - set(HEAD_KEYS))
        if bad:
            out.append(f"model.heads.{task}: unknown keys {bad}; choose from {sorted(HEAD_KEYS)}")
        if own.get("kind") is not None and own.get("kind") not in HEADS:
            out.append(f"model.heads.{task}.kind={own.get('kind')}: choose one of {HEADS}")
        if own.get("pooling") is not None and own.get("pooling") not in POOLINGS:
            out.append(f"model.heads.{task}.pooling={own.get('pooling')}: choose one of {POOLINGS}")
        if own.get("layer") is not None and not layer_ok(own.get("layer")):
            out.append(f"model.heads.{task}.layer={own.get('layer')}: choose one of {LAYER_CHOICES} or a layer index")
        for key in ("concat_layers", "hidden"):
            if own.get(key) is not None:
                pos(f"model.heads.{task}.{key}", own.get(key))
    return out


def _task_problems(name: str, task: Any) -> list[str]:
    """A task's ``type`` (single_label | multi_label) and, for a multi-label task, its ``label_separator``."""
    from mtl.data.loading import is_multi_label

    if not hasattr(task, "get"):
        return []
    try:
        multi = is_multi_label(task, name)
    except ValueError as exc:
        return [f"tasks.{name}.type={task.get('type')}: {exc}"]
    sep = task.get("label_separator")
    if multi and sep is not None and not (isinstance(sep, str) and sep):
        return [f"tasks.{name}.label_separator={sep!r}: must be a non-empty string"]
    return []


def check_task_losses(cfg: DictConfig) -> None:
    """Each task's loss fits its type (``mtl.training.build.check_loss_types``), as a :class:`ConfigError`."""
    from mtl.training.build import check_loss_types

    if not cfg.get("tasks"):
        return
    try:
        check_loss_types(cfg)
    except ValueError as exc:
        raise ConfigError(str(exc)) from None


def _get(cfg: Any, key: str) -> Any:
    return OmegaConf.select(cfg, key, default=None) if isinstance(cfg, DictConfig) else _dig(cfg, key)


def _dig(d: Any, key: str) -> Any:
    for part in key.split("."):
        if not isinstance(d, Mapping) or part not in d:
            return None
        d = d[part]
    return d


def _value(cfg: Any, key: str) -> Any:
    v = _get(cfg, key)
    return "null" if v is None else v


def _class_of(node: Any, registry: Any) -> type | None:
    """The class ``balancer``/``sampler`` would build, without building it (None: unknown here)."""
    if node is None:
        return None
    target = node.get("_target_") if hasattr(node, "get") else None
    if target:
        try:
            from hydra.utils import get_class

            return get_class(str(target))
        except Exception:  # noqa: BLE001 - the build step reports a bad _target_ with its own error
            return None
    name = node.get("name") if hasattr(node, "get") else None
    return registry.get(str(name)) if name is not None else None  # KeyError lists the registered names


def check_pairing(cfg: DictConfig) -> None:
    """A gradient-level balancer needs every task in every step: refused with a one-task sampler."""
    from mtl.balancers import BALANCERS
    from mtl.samplers import SAMPLERS

    bal, sam = _class_of(cfg.get("balancer"), BALANCERS), _class_of(cfg.get("sampler"), SAMPLERS)
    sources = getattr(bal, "sources", None)  # an aggregator defined on some gradient sources only
    source = cfg.balancer.get("source") if bal is not None and hasattr(cfg.balancer, "get") else None
    if sources is not None and source is not None and str(source) not in sources:
        raise ConfigError(
            f"balancer.source={source}: balancer {cfg.balancer.get('name', bal.__name__)!r} runs on "
            f"{' or '.join(sources)} only (docs/balancers.md, weightings and aggregators)"
        )
    if bal is None or sam is None:
        return
    if getattr(bal, "needs_gramian", False) and getattr(sam, "one_task_per_step", False):
        multi = [n for n in SAMPLERS.names() if not SAMPLERS.get(n).one_task_per_step]
        bname = cfg.balancer.get("name", bal.__name__)
        sname = cfg.sampler.get("name", sam.__name__)
        raise ConfigError(
            f"balancer={bname} with sampler={sname}: balancer {bname!r} is a gradient-level method: it compares "
            f"the tasks' gradients within one step, but sampler {sname!r} feeds one task per step. "
            f"Use a sampler that gives every task a batch each step: {', '.join('sampler=' + m for m in multi)}"
        )


# ---------------------------------------------------------------------------------------------------- run dir

#: what a run writes into its directory (``config.yaml``, ``metrics.json`` or ``checkpoints/`` mark a run)
RUN_MARKERS = ("config.yaml", "metrics.json", "checkpoints")
RUN_FILES = (
    "config.yaml", "metrics.json", "dev_predictions.json", "train_log.csv", "eval_log.csv", "curves.png",
    "balancer_weights.png", "sampler_proportions.png", "confusion_matrices.png", "confusion_matrices_tuned_biases.png",
    "checkpoints",
)
LOCK = ".lock"


def holds_run(run_dir: str | Path) -> list[str]:
    """The marks of a run in ``run_dir`` (empty: none)."""
    run_dir = Path(run_dir)
    found = []
    for name in RUN_MARKERS:
        p = run_dir / name
        if p.is_file() or (p.is_dir() and any(p.iterdir())):
            found.append(name + ("/" if p.is_dir() else ""))
    return found


def clear_run_outputs(run_dir: str | Path) -> list[str]:
    """Remove what an earlier run wrote into ``run_dir`` (``trainer.overwrite=true``); returns the names."""
    run_dir = Path(run_dir)
    removed = []
    for name in RUN_FILES:
        p = run_dir / name
        if p.is_dir() and not p.is_symlink():
            shutil.rmtree(p)
        elif p.exists() or p.is_symlink():
            p.unlink()
        else:
            continue
        removed.append(name)
    return removed


def check_run_dir(run_dir: Path, *, resume_spec: Any, resume_path: Path | None, overwrite: bool) -> bool:
    """Whether this run may write into ``run_dir``; True when an earlier run's files are to be cleared.

    Raises :class:`RunDirError` (one line) when the directory holds a run that this run neither resumes
    in place nor is told to overwrite.
    """
    found = holds_run(run_dir)
    if not found:
        return False
    resuming = resume_spec is not None and str(resume_spec).strip().lower() not in ("", "none", "null", "false", "no")
    if overwrite and resuming:
        raise RunDirError(
            f"trainer.overwrite=true and trainer.resume={resume_spec} contradict each other: resume the run in "
            f"{run_dir} or replace it, not both"
        )
    if overwrite:
        log.warning("trainer.overwrite=true: replacing the run in %s (%s)", run_dir, ", ".join(found))
        return True
    if resume_path is not None and _inside(resume_path, run_dir):
        return False  # resumed in place: the same run goes on
    if resuming and resume_path is None and "metrics.json" not in found:
        return False  # trainer.resume=auto on a run killed before its first checkpoint: it starts again
    why = "holds a finished run with no checkpoint to resume" if resuming else "already holds a run"
    raise RunDirError(
        f"run directory {run_dir} {why} ({', '.join(found)}); continue it with trainer.resume=auto, replace it "
        "with trainer.overwrite=true, or choose another hydra.run.dir"
    )


def _inside(path: Path, folder: Path) -> bool:
    try:
        Path(path).resolve().relative_to(Path(folder).resolve())
    except ValueError:
        return False
    return True


@contextmanager
def lock_run_dir(run_dir: str | Path) -> Iterator[Path]:
    """Hold an exclusive lock on ``<run_dir>/.lock`` while the run writes; another holder is refused."""
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    path = run_dir / LOCK
    try:
        import fcntl
    except ImportError:  # pragma: no cover - not a POSIX system: no locking
        yield path
        return
    fh = open(path, "a+", encoding="utf-8")  # noqa: SIM115 - held open for the lock's lifetime
    try:
        try:
            fcntl.flock(fh.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            fh.seek(0)
            holder = fh.read().strip()
            raise RunDirError(
                f"run directory {run_dir} is in use by another run{f' (pid {holder})' if holder else ''}: "
                "wait for it to finish or choose another hydra.run.dir"
            ) from None
        fh.seek(0)
        fh.truncate()
        fh.write(str(os.getpid()))
        fh.flush()
        try:
            yield path
        finally:
            fh.seek(0)
            fh.truncate()
            fh.flush()
            fcntl.flock(fh.fileno(), fcntl.LOCK_UN)
    finally:
        fh.close()


claim_run_dir = lock_run_dir  # the name the module docstring uses


# ---------------------------------------------------------------------------------------------------- resume

#: top-level groups whose settings decide the examples and the trajectory of a run
IDENTITY_GROUPS = ("seed", "tasks", "data", "encoder", "model", "balancer", "sampler", "optim")
#: keys inside those groups that may change on resume: where files live, speed and memory only
FREE_KEYS = (
    "data.root", "data.cache_dir", "data.eval_batch_size", "data.num_workers", "data.length_buckets",
    "data.pad_to_multiple_of",
)
#: trainer keys that change the trajectory (the rest of ``trainer`` is how the run is carried out)
TRAJECTORY_TRAINER_KEYS = ("adversarial", "adv_epsilon", "adv_steps", "adv_alpha", "rdrop_alpha", "ema_decay",
                           "swa_start")
#: per-task keys that only prediction and reports read
FREE_TASK_KEYS = ("test_files", "test_columns", "submission_file", "label_names")


def identity_differences(old: Mapping[str, Any], new: Mapping[str, Any]) -> list[str]:
    """``key: old -> new`` for each identity setting that differs between a checkpoint's config and this run's.

    A key missing on one side (a setting added since the checkpoint was written) is not a difference,
    except a task added or removed.
    """
    out: list[str] = []
    old_tasks, new_tasks = list(old.get("tasks") or {}), list(new.get("tasks") or {})
    if old_tasks != new_tasks:
        out.append(f"tasks: {old_tasks} -> {new_tasks}")

    def walk(a: Any, b: Any, key: str) -> None:
        if key in FREE_KEYS:
            return
        parts = key.split(".")
        if parts[0] == "tasks" and len(parts) >= 3 and parts[2] in FREE_TASK_KEYS:
            return
        if isinstance(a, Mapping) and isinstance(b, Mapping):
            for k in sorted(set(a) & set(b), key=str):
                walk(a[k], b[k], f"{key}.{k}")
            # a different method has different options; a task given its own head (model.heads.<task>) differs
            if parts[0] in ("balancer", "sampler") or parts[:2] == ["model", "heads"]:
                for k in sorted(set(a) ^ set(b), key=str):
                    out.append(f"{key}.{k}: {a.get(k, '<unset>')} -> {b.get(k, '<unset>')}")
        elif a != b:
            out.append(f"{key}: {a} -> {b}")

    for key in TRAJECTORY_TRAINER_KEYS:  # trainer keys that change what a step computes
        a, b = _dig(old, f"trainer.{key}"), _dig(new, f"trainer.{key}")
        if a != b and f"{key}" in (old.get("trainer") or {}) and f"{key}" in (new.get("trainer") or {}):
            out.append(f"trainer.{key}: {a} -> {b}")
    for group in IDENTITY_GROUPS:
        if group == "tasks":
            for t in [t for t in old_tasks if t in new_tasks]:
                walk(old["tasks"][t], new["tasks"][t], f"tasks.{t}")
        elif group in old and group in new:
            walk(old[group], new[group], group)
    return out


def check_resume_identity(old: Any, new: Any, path: str | Path) -> None:
    """Refuse (one line) to resume ``path`` when the run's identity differs from the checkpoint's."""
    if not isinstance(old, Mapping) or not isinstance(new, Mapping):
        return
    diff = identity_differences(old, new)
    if diff:
        shown = "; ".join(diff[:6]) + (f"; and {len(diff) - 6} more" if len(diff) > 6 else "")
        raise ConfigError(
            f"cannot resume from {path}: this run's settings differ from the checkpoint's ({shown}); these change "
            "the examples or the trajectory, so it would not continue the same run. Resume with the checkpoint's "
            "settings, or start a new run without trainer.resume (in a new hydra.run.dir)"
        )
