"""Helpers shared by the benchmark scripts in ``scripts/`` (not part of the ``mtl`` package).

The scripts must give comparable numbers and files: the same config composition, the same data
search, the same machine description, the same JSON layout under ``outputs/bench/`` and the same
thread handling. Keeping those pieces here means a fix reaches every benchmark at once.

Heavy imports (torch, Hydra, ``mtl``) happen inside the functions, so ``--help`` stays quick and
``compare_balancers.py`` / ``bench_balancers.py`` keep importing torch only when they run.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import torch

REPO = Path(__file__).resolve().parents[1]
CONFIG_DIR = REPO / "mtl" / "conf"
BENCH_DIR = REPO / "outputs" / "bench"
TASKS = ("ocnli", "ocemotion", "tnews")
#: A file every real data folder has: how a data root is recognised.
CHECK_FILE = Path("tianchi") / "OCNLI_train1128.csv"
#: Balancer-specific overrides that make every registered balancer config runnable on the three tasks.
BALANCER_OVERRIDES: dict[str, list[str]] = {
    "primary_auxiliary": ["balancer.primary=ocnli"],
    "torchjd": ["balancer.aggregator=UPGrad"],
}

# The scripts run from a checkout, installed or not: time this repository's code, not another copy's.
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))


# ----------------------------------------------------------------------------------------- configs


def compose(overrides: Sequence[str]) -> Any:
    """The ``train`` config with ``overrides``, as ``mtl-train`` would see it (no Hydra app, no run dir)."""
    from mtl.config import compose_train

    return compose_train(overrides)


def balancer_overrides(name: str) -> list[str]:
    """``balancer=<name>`` plus what that balancer needs to run (see ``BALANCER_OVERRIDES``)."""
    return [f"balancer={name}", *BALANCER_OVERRIDES.get(name, [])]


def layers_override(encoder: str, layers: int | None) -> list[str]:
    """Keep only the encoder's first ``layers`` layers (none: all); the key differs for ``tiny_random``."""
    if not layers:
        return []
    key = "num_layers" if encoder == "tiny_random" else "num_hidden_layers"
    return [f"++encoder.kwargs.{key}={layers}"]


# ----------------------------------------------------------------------------------------- data


def find_data_root(explicit: str | None = None) -> Path | None:
    """The real data folder: ``explicit`` if given (it must hold the task files), else the first of
    ``MTL_DATA_DIR``, ``<repo>/data`` and ``../shared/data/raw`` that does; ``None`` when none does."""
    cands = [explicit] if explicit else [os.environ.get("MTL_DATA_DIR"), str(REPO / "data"),
                                         str(REPO.parent / "shared" / "data" / "raw")]
    for c in cands:
        if c and (Path(c) / CHECK_FILE).exists():
            return Path(c).resolve()
    if explicit:
        raise SystemExit(f"--data-root {explicit}: no {CHECK_FILE} there")
    return None


def data_root(rows_per_task: int = 400) -> tuple[Path, str]:
    """``(folder, kind)``: the real data when found (kind ``"real"``), else synthetic fixture files
    written to a temporary folder (kind ``"fixtures"``), so every benchmark runs anywhere."""
    found = find_data_root()
    if found is not None:
        return use_data_root(found), "real"
    from mtl.data.fixtures import write_fixture_data

    root = Path(tempfile.mkdtemp(prefix="mtl-bench-data-"))
    return use_data_root(write_fixture_data(root, rows_per_task=rows_per_task, seed=0)), "fixtures"


def use_data_root(root: Path) -> Path:
    """Make ``root`` the data folder of every run this process (and its children) starts.

    ``MTL_DATA_DIR`` wins over ``data.root`` in :func:`mtl.data.loading.resolve_data_root`, so a value
    that points elsewhere (e.g. a folder without the task files, passed over by :func:`find_data_root`)
    would otherwise replace the folder the benchmark chose.
    """
    os.environ["MTL_DATA_DIR"] = str(root)
    return root


def bench_config(args: argparse.Namespace, *overrides: str) -> tuple[Any, str]:
    """``(cfg, data kind)`` for a benchmark: the train config with ``args``' encoder, ``max_length``
    and ``train_per_task`` on the data :func:`data_root` finds, plus ``overrides``."""
    root, kind = data_root()
    cfg = compose([f"encoder={args.encoder}", f"data.root={root}", f"encoder.max_length={args.max_length}",
                   f"data.max_train_per_task={args.train_per_task}", *overrides])
    return cfg, kind


def load_encoder_from(cfg: Any, freeze_embeddings: bool) -> tuple[Any, Any]:
    """``(encoder, tokenizer)`` for ``cfg.encoder`` (``run()``'s build step), embeddings frozen or not."""
    from omegaconf import OmegaConf

    from mtl.training.build import build_encoder

    enc = OmegaConf.merge(cfg.encoder, {"freeze_embeddings": bool(freeze_embeddings)})
    return build_encoder(enc)


def load_tasks(cfg: Any, tokenizer: Any, *, seed: int, tasks: Sequence[str] | None = None,
               with_dev: bool = False) -> tuple[dict[str, int], dict[str, Any], dict[str, Any]]:
    """``(num_labels, train, dev)`` per task through ``run()``'s build step (read, split, tokenised and
    cached alike); ``dev`` is empty unless ``with_dev``. ``tasks`` defaults to the config's tasks."""
    from omegaconf import OmegaConf

    from mtl.training.build import build_data

    data = build_data(OmegaConf.merge(cfg, {"seed": int(seed)}), tokenizer, tasks=tasks, with_dev=with_dev)
    return data.num_labels, data.train, data.dev


# ----------------------------------------------------------------------------------------- timing


def machine() -> dict[str, Any]:
    """What the numbers were measured on: versions, cores, threads and the load when the run began
    (on a shared machine the load explains much of the spread)."""
    import torch

    info: dict[str, Any] = {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "load_average_at_start": os.getloadavg() if hasattr(os, "getloadavg") else None,
    }
    if torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name()
    return info


def sync(device: torch.device) -> None:
    """Wait for queued GPU work, so a timer read afterwards includes it (CUDA calls return early)."""
    import torch

    if device.type == "cuda":
        torch.cuda.synchronize(device)


def step_samples(result: Any) -> int:
    """Rows a ``Trainer.train_step`` result trained on, over all tasks (0 for a skipped step)."""
    return sum(n for _, n in result.counts.values()) if result is not None else 0


def train_in_rotation(trainers: dict[str, Any], rng: dict[str, Any], *, warmup: int, until: int, block: int,
                      start: int = 0) -> tuple[dict[str, int], dict[str, float]]:
    """Train several Trainers in alternating blocks of ``block`` steps (A B C, B C A, ...), so that machine
    drift hits all alike; each keeps its own dropout RNG stream (``rng[name]``, updated in place).

    First ``warmup`` untimed steps each (they still train); then timed blocks from step ``start`` up to
    ``until``. Returns ``(samples, seconds)`` per trainer, printing the running samples/s after each round.
    """
    import torch

    names = list(trainers)
    seconds = dict.fromkeys(names, 0.0)
    samples = dict.fromkeys(names, 0)
    for name in names:  # untimed first steps (allocator, first kernels)
        torch.set_rng_state(rng[name])
        for _ in range(warmup):
            trainers[name].train_step()
        rng[name] = torch.get_rng_state()
    done, rnd = start, 0
    while done < until:
        n = min(block, until - done)
        for name in names[rnd % len(names):] + names[: rnd % len(names)]:
            torch.set_rng_state(rng[name])
            t0 = time.perf_counter()
            for _ in range(n):
                samples[name] += step_samples(trainers[name].train_step())
            seconds[name] += time.perf_counter() - t0
            rng[name] = torch.get_rng_state()
        done += n
        rnd += 1
        print(f"{done}/{until} steps: " + ", ".join(f"{k} {samples[k] / seconds[k]:.1f}" for k in names)
              + " samples/s", flush=True)
    return samples, seconds


@contextlib.contextmanager
def torch_threads(n: int | None) -> Iterator[None]:
    """torch intra-op threads set to ``n`` inside the block (``None``/0: left alone), restored after.

    On a shared 2-core box two OpenMP threads competing with other processes made steps several
    times slower, hence ``--threads 1``; restoring matters when a script's ``main`` is called
    in-process (the tests)."""
    import torch

    before = torch.get_num_threads()
    if n and n > 0:
        torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)


# ----------------------------------------------------------------------------------------- results


def write_json(path: str | Path, data: Any) -> Path:
    """Indented UTF-8 JSON, written atomically (``mtl.utils.files.write_json``)."""
    from mtl.utils.files import write_json as atomic_json

    return atomic_json(path, data)


def write_result(name: str, result: dict[str, Any], out: str | None = None) -> Path:
    """Print ``result`` and write it to ``--out``, by default ``outputs/bench/<name>.json``."""
    path = write_json(Path(out) if out else BENCH_DIR / f"{name}.json", result)
    print(json.dumps(result, indent=2, ensure_ascii=False, default=float))
    print(f"written to {path}")
    return path


def command_line(script: str, argv: Sequence[str] | None) -> str:
    """How to rerun this measurement: ``python scripts/<name>.py <arguments>`` (``argv``, or the
    process's own arguments when ``main`` was called without them)."""
    path = Path(script).resolve()
    shown = path.relative_to(REPO).as_posix() if path.is_relative_to(REPO) else path.as_posix()
    return " ".join(["python", shown, *(sys.argv[1:] if argv is None else argv)])


# ----------------------------------------------------------------------------------------- CLI


def make_parser(doc: str | None) -> argparse.ArgumentParser:
    """An argument parser whose ``--help`` shows the script's docstring as written."""
    return argparse.ArgumentParser(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)


def add_common_args(ap: argparse.ArgumentParser, *, steps: int, batch_size: int, max_length: int,
                    threads: int | None = None, out: str | None = None, per_task_batch: bool = False,
                    steps_help: str | None = None, out_help: str | None = None) -> None:
    """The options every training benchmark has: encoder, steps, batch size, max length, threads, out.

    Only the defaults, and what a step or a batch means in the script, differ from script to script
    (``per_task_batch``: one batch of every task per step, as the ``all_tasks`` sampler draws)."""
    ap.add_argument("--encoder", default="e5_small",
                    help="an encoder config name (mtl/conf/encoder/*.yaml; default e5_small)")
    ap.add_argument("--steps", type=int, default=steps, help=steps_help or f"training steps (default {steps})")
    batch = "examples per task per step" if per_task_batch else "examples per batch"
    ap.add_argument("--batch-size", type=int, default=batch_size, help=f"{batch} (default {batch_size})")
    ap.add_argument("--max-length", type=int, default=max_length, help=f"tokens per row at most (default {max_length})")
    shown = threads if threads else "torch's"
    ap.add_argument("--threads", type=int, default=threads,
                    help=f"torch intra-op threads (default {shown}; 0 = torch's default). "
                         "On a shared 2-core box two OpenMP threads competing with other processes were "
                         "several times slower than one")
    ap.add_argument("--out", default=out, help=out_help or "JSON output (default outputs/bench/<name>.json)")


def add_protocol_args(ap: argparse.ArgumentParser, *, steps: int, layers: int, out: str, steps_help: str,
                      out_help: str, data_root_help: str) -> None:
    """The options of the balancer scripts (``bench_balancers``, ``compare_balancers``): the common ones
    with their shared defaults (one batch of 16 per task per step, 64 tokens, 1 thread) and the model
    and data options they turn into Hydra overrides (see ``layers_override``)."""
    add_common_args(ap, steps=steps, batch_size=16, max_length=64, threads=1, out=out, per_task_batch=True,
                    steps_help=steps_help, out_help=out_help)
    ap.add_argument("--layers", type=int, default=layers,
                    help=f"load only the encoder's first N layers (default {layers}; 0 = all)")
    ap.add_argument("--unfreeze-embeddings", action="store_true", help="train the input embeddings too")
    ap.add_argument("--seed", type=int, default=42)
    ap.add_argument("--data-root", default=None, help=data_root_help)
    ap.add_argument("--extra", nargs="*", default=[], metavar="OVERRIDE",
                    help="more Hydra overrides for every run (applied after the script's own)")


def quickstart_trainer(encoder: Any, tokenizer: Any, labels: dict[str, int], train: dict[str, Any], *,
                       batch_size: int, pooling: str = "mean", seed: int = 0, losses: dict[str, Any] | None = None,
                       model_kwargs: dict[str, Any] | None = None, **settings: Any) -> Any:
    """A Trainer on the quickstart's batching (one task per step, proportional, length-grouped batches),
    with its own copy of ``encoder`` and heads initialised from ``seed`` (the same for every variant built
    with the same seed), task ``losses`` if given, and TrainerSettings overrides ``settings``."""
    import copy

    import torch

    from mtl.balancers import build_balancer
    from mtl.data.batching import TaskBatchSampler, TaskStream
    from mtl.data.loading import collate
    from mtl.models.multitask import MultiTaskModel
    from mtl.samplers import SAMPLERS
    from mtl.training.trainer import Trainer, TrainerSettings

    coll = collate(tokenizer)
    streams = {}
    for i, (t, ds) in enumerate(train.items()):
        bs = TaskBatchSampler(len(ds), batch_size, seed=1000 + i, lengths=ds["length"], group_by_length=True)
        streams[t] = TaskStream(ds, bs, coll)
    base = {"max_steps": 10**6, "eval_every": 10**9, "log_every": 10**9, "lr": 1e-4, "head_lr": 2e-3,
            "warmup": 0.0, "device": "cpu" if not torch.cuda.is_available() else "auto", "progress": False,
            "checkpoint_every": 0, "save_best": False}
    base.update(settings)
    torch.manual_seed(seed)  # same head initialisation for every variant
    model = MultiTaskModel(copy.deepcopy(encoder), labels, pooling=pooling, dropout=0.1, **(model_kwargs or {}))
    if losses:
        model.set_losses(losses)
    sampler = SAMPLERS.get("proportional")({t: len(ds) for t, ds in train.items()}, seed=0)
    return Trainer(model, build_balancer("equal", list(train)), sampler, streams, {}, TrainerSettings(**base),
                   tempfile.mkdtemp(prefix="mtl-bench-"))


def chosen_variants(ap: argparse.ArgumentParser, spec: str, known: Sequence[str], first: str) -> list[str]:
    """The ``--variants`` list: names from ``known``, starting with the reference ``first`` (else ``ap.error``)."""
    names = [n.strip() for n in spec.split(",") if n.strip()]
    unknown = [n for n in names if n not in known]
    if unknown or names[:1] != [first]:
        ap.error(f"--variants must start with {first} and name only {', '.join(known)} (unknown: {unknown})")
    return names
