"""Every shell command in README.md and docs/*.md runs as written (item 8).

The commands are taken from the ```bash blocks (continuation lines joined, ``&&`` chains split, comments
cut). Each one is either run or listed in :data:`SKIP` with the reason. What changes when they run:

* ``mtl-train``: in this process (the Hydra app itself, ``mtl.cli.train.main`` with ``sys.argv``), with
  :data:`TINY` settings put in place of the documented ones (the tiny random encoder, 2 steps), the run or
  sweep folder pinned under a temporary directory, a grid's seeds cut to its first seed (every other value
  of a grid, e.g. each balancer, still runs), Optuna cut to 2 trials, wandb disabled, and the plots
  skipped (they are tested in tests/test_plots.py);
* the data: the fixture files stand in for ``../shared/data/raw`` (and ``MTL_DATA_DIR`` is set to them for
  commands that do not set it, as in the user's shell);
* ``mtl-predict`` / ``mtl-report``: their ``main`` with the documented paths (``outputs/<run>``, dated run
  and sweep folders, ``my_ocnli.tsv``) mapped onto the runs and sweeps the documented ``mtl-train``
  commands just produced (:func:`path_substitutions`);
* ``mkdir`` / ``cp``: by bash, with ``HOME`` pointing into the temporary directory; files shown in the docs
  as ``# <path>`` blocks (``my_balancers.py``, ``~/mtl_configs/my_train.yaml``) are written first.

The fast tests check that every command is classified and that every ``mtl-train`` command composes; the
slow one runs them all.
"""

from __future__ import annotations

import inspect
import json
import logging
import os
import re
import shlex
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
DOC_FILES = (REPO / "README.md", *sorted((REPO / "docs").glob("*.md")))
RUNNERS = ("mtl-train", "mtl-predict", "mtl-report", "mkdir", "cp")

# Commands that are not run, each with the reason (regular expressions over the command text).
SKIP: tuple[tuple[str, str], ...] = (
    (r"^pip install", "installs packages: needs the package index; the test environment is installed already"),
    (r"^python -m pytest", "the test suite itself, of which this test is part"),
    (r"^ruff check", "the linter (CI runs it: .ci/run); not a program of this project"),
    (r"^torchrun ", "torchrun with several processes (a GPU each); one-process DDP runs in tests/test_ddp.py"),
    (r"^sbatch ", "needs a SLURM cluster"),
    (r"device=cuda|--device cuda|nvidia-smi", "needs a GPU"),
    (r"hydra/launcher=slurm", "needs a SLURM cluster (the launcher config composes in tests/test_sweeps.py)"),
    (r"^wandb sync", "uploads to the Weights & Biases service: needs the network and an account"),
    (r"python scripts/bench_\w+\.py", "a benchmark (minutes of measurement); smoke-tested in tests/test_scripts_*.py"),
    (r"python scripts/compare_balancers\.py", "the full balancer comparison (hours); smoke-tested in "
     "tests/test_scripts_balancers.py"),
    (r"\.\.\.$", "elided in the docs (ends in '...'): not a complete command"),
)

# What every documented mtl-train run gets instead of its own settings (documented values are replaced).
TINY = {
    "encoder": "tiny_random",
    "trainer.max_steps": "2",
    "trainer.max_epochs": "null",
    "trainer.eval_every": "2",
    "trainer.progress": "false",
    "data.batch_size": "8",
}
OPTUNA = {"hydra.sweeper.n_trials": "2", "hydra.sweeper.sampler.n_startup_trials": "2"}


@dataclass
class DocCommand:
    file: str
    line: int
    text: str
    env: dict[str, str] = field(default_factory=dict)
    program: str = ""
    args: list[str] = field(default_factory=list)

    @property
    def where(self) -> str:
        return f"{self.file}:{self.line}: {self.text}"


def _cut_comment(line: str) -> str:
    """The line up to an unquoted ``#`` that starts a word."""
    quote = ""
    for i, ch in enumerate(line):
        if quote:
            if ch == quote:
                quote = ""
        elif ch in "'\"":
            quote = ch
        elif ch == "#" and (i == 0 or line[i - 1].isspace()):
            return line[:i].rstrip()
    return line.rstrip()


def doc_commands() -> list[DocCommand]:
    out = []
    for path in DOC_FILES:
        text = path.read_text(encoding="utf-8")
        for block in re.finditer(r"^```(?:bash|sh|shell|console)\n(.*?)^```", text, re.S | re.M):
            start = text[: block.start(1)].count("\n") + 1
            lines = block.group(1).split("\n")
            i = 0
            while i < len(lines):
                number, line = start + i, lines[i]
                while line.endswith("\\") and i + 1 < len(lines):
                    i += 1
                    line = line[:-1] + " " + lines[i].strip()
                i += 1
                line = _cut_comment(line.strip())
                if not line:
                    continue
                for part in line.split(" && "):
                    out.append(DocCommand(path.name if path.parent == REPO else f"docs/{path.name}", number,
                                          part.strip()))
    return out


def doc_files() -> dict[str, str]:
    """Files the docs show in full, as blocks whose first line is ``# <path>`` (path -> content)."""
    files = {}
    for path in DOC_FILES:
        text = path.read_text(encoding="utf-8")
        for block in re.finditer(r"^```(?:python|yaml)\n# (\S+\.(?:py|yaml))\n(.*?)^```", text, re.S | re.M):
            files[block.group(1)] = f"# {block.group(1)}\n{block.group(2)}"
    return files


def skip_reason(cmd: DocCommand) -> str | None:
    for pattern, reason in SKIP:
        if re.search(pattern, cmd.text):
            return reason
    return None


def split_env(cmd: DocCommand) -> DocCommand:
    """``A=1 B=2 prog args`` -> env {A, B}, program, the raw argument text (expanded later by bash)."""
    words = cmd.text.split()
    env = {}
    while words and re.fullmatch(r"[A-Z_][A-Z0-9_]*=\S*", words[0]):
        key, _, value = words.pop(0).partition("=")
        env[key] = value
    cmd.env, cmd.program = env, words[0] if words else ""
    return cmd


ALL = [split_env(c) for c in doc_commands()]
TO_RUN = [c for c in ALL if skip_reason(c) is None]


def test_every_documented_command_is_run_or_skipped_with_a_reason() -> None:
    assert len(ALL) > 40, "the extraction found too few commands"
    unknown = [c.where for c in TO_RUN if c.program not in RUNNERS]
    assert not unknown, "documented commands neither run nor in SKIP (add a runner or a reason):\n" + "\n".join(unknown)
    for program in ("mtl-train", "mtl-predict", "mtl-report"):
        assert any(c.program == program for c in TO_RUN), program
    # the README's static weights example is run, not skipped
    assert any("balancer.weights={ocnli: 2.0, tnews: 0.5}" in c.text for c in TO_RUN)
    # a skipped mtl-* command is skipped for a reason that applies to it (SLURM or elided), never for speed
    for c in ALL:
        if c.program.startswith("mtl-") and c not in TO_RUN:
            assert "slurm" in c.text or "cuda" in c.text or c.text.endswith("..."), c.where


# ---------------------------------------------------------------------------------------------------------
# turning a documented command into the argv that runs


def bash_argv(text: str, env: dict[str, str], cwd: Path) -> list[str]:
    """The words bash makes of ``text`` (quotes, ``~``, ``$HOME``), without running it."""
    if not text.strip():
        return []
    proc = subprocess.run(["bash", "-c", f"printf '%s\\0' {text}"], cwd=cwd, env=env, capture_output=True,
                          check=True)
    return proc.stdout.decode("utf-8").split("\0")[:-1]


def _override_key(arg: str) -> str | None:
    m = re.match(r"^[+~]{0,2}([\w./@-]+)=", arg)
    return m.group(1) if m and not arg.startswith("-") else None


def tiny_overrides(args: list[str], multirun: bool, out_dir: Path) -> list[str]:
    """``args`` with :data:`TINY` (and the Optuna trial cap) in place of their documented values, and the
    run/sweep folder pinned to ``out_dir`` unless the command names its own ``hydra.run.dir``."""
    settings = dict(TINY)
    if any("hparams_search=optuna" in a for a in args):
        settings.update(OPTUNA)
    if multirun:
        settings["hydra.sweep.dir"] = str(out_dir)
    elif not any(a.startswith("hydra.run.dir=") for a in args):
        settings["hydra.run.dir"] = str(out_dir)
    out = []
    for a in args:
        key = _override_key(a)
        if key in settings:
            out.append(f"{key}={settings.pop(key)}")
        elif key == "seed" and multirun:  # one seed of a grid: the other seeds run the same code again
            out.append(a.split(",", 1)[0])
        else:
            out.append(a)
    return out + [f"{k}={v}" for k, v in settings.items()]


def preset_grid_cap(overrides: list[str]) -> list[str]:
    """One seed of a preset's own grid (``experiment=sweep_balancers``: ``hydra.sweeper.params.seed``)."""
    from mtl.config import compose_train

    cfg = compose_train(first_point(overrides), return_hydra_config=True)
    params = cfg.hydra.sweeper.get("params") or {}
    seed = str(params.get("seed", ""))
    if "," in seed and not any(_override_key(o) == "seed" for o in overrides):
        return [f"hydra.sweeper.params.seed={seed.split(',', 1)[0].strip()}"]
    return []


def first_point(overrides: list[str]) -> list[str]:
    """One point of a sweep (the first value of every ``a=x,y``), for composing without a sweeper."""
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from hydra.core.override_parser.types import ValueType

    parsed = OverridesParser.create().parse_overrides([o for o in overrides if not o.startswith("hydra.")])
    out = []
    for o in parsed:
        if o.is_sweep_override():
            if o.value_type is ValueType.INTERVAL_SWEEP:  # a search range (Optuna): the preset's default stays
                continue
            value = next(iter(o.sweep_string_iterator()))
            out.append(f"{o.get_key_element()}={value}")
        else:
            out.append(o.input_line)
    return out


def tiny_encoder_cleanup(overrides: list[str]) -> list[str]:
    """Deletions of ``encoder.kwargs`` a preset sets for its own encoder that the tiny one does not take
    (``sweep_balancers``: ``num_hidden_layers``)."""
    from mtl.config import compose_train
    from mtl.models.encoder import tiny_random_encoder

    cfg = compose_train(first_point(overrides))
    accepted = set(inspect.signature(tiny_random_encoder).parameters)
    return [f"~encoder.kwargs.{k}" for k in (cfg.encoder.get("kwargs") or {}) if k not in accepted]


def train_argv(cmd: DocCommand, words: list[str], out_dir: Path) -> list[str]:
    flags, overrides = [], []
    it = iter(words)
    for w in it:
        if w in ("--config-dir", "-cd", "--config-name", "-cn", "--cfg", "-c", "--info", "-i"):
            flags += [w, next(it)]
        elif w.startswith("-"):
            flags.append(w)
        else:
            overrides.append(w)
    multirun = "-m" in flags or "--multirun" in flags
    if "--cfg" in flags or "-c" in flags or "--info" in flags or "-i" in flags:
        return [*flags, *overrides]  # prints and exits: nothing to shrink
    overrides = tiny_overrides(overrides, multirun, out_dir)
    user_folders = "--config-dir" in flags or "-cd" in flags or any("hydra.searchpath" in o for o in overrides)
    if not user_folders:  # (presets in user folders are composed by the run itself)
        overrides += tiny_encoder_cleanup(overrides)
        if multirun:
            overrides += preset_grid_cap(overrides)
    return [*flags, *overrides]


# ---------------------------------------------------------------------------------------------------------
# the fast check: every mtl-train command composes


TRAIN = [c for c in TO_RUN if c.program == "mtl-train"]


@pytest.mark.parametrize("cmd", [c for c in TRAIN if "mtl_configs" not in c.text],  # user folders: slow test
                         ids=lambda c: f"{c.file}:{c.line}")
def test_documented_mtl_train_command_composes(cmd: DocCommand) -> None:
    from mtl.config import compose_train

    words = shlex.split(cmd.text.split("mtl-train", 1)[1])
    overrides = [w for w in words if not w.startswith("-") and "=" in w]
    if any(o.startswith("imports=") for o in overrides):
        pytest.skip("needs the README's my_balancers.py on the path: run by the slow test")
    compose_train(first_point(overrides))  # as documented: every group and key exists


# ---------------------------------------------------------------------------------------------------------
# the slow test: run them all


@dataclass
class Workspace:
    work: Path
    home: Path
    data: Path
    outputs: dict[int, Path] = field(default_factory=dict)  # index in TO_RUN -> run or sweep folder


def path_substitutions(ws: Workspace) -> list[tuple[str, str]]:
    """Documented paths -> what the documented mtl-train commands produced here (longest first)."""

    def produced(pattern: str, multirun: bool) -> Path:
        for i, c in enumerate(TO_RUN):
            if c.program == "mtl-train" and re.search(pattern, c.text) and (" -m " in f" {c.text} ") == multirun:
                return ws.outputs[i]
        raise AssertionError(f"no documented mtl-train command matches {pattern!r}")

    quick = produced(r"experiment=quickstart", multirun=False)
    sweep = produced(r"experiment=sweep_balancers", multirun=True)
    grid = produced(r"balancer=equal,pcgrad,mgda_ub", multirun=True)
    imbalance = produced(r"loss=ce,class_balanced,focal,logit_adjusted", multirun=True)
    tricks = {name: produced(rf"hydra\.sweep\.dir=outputs/study/tricks/{name}\b", multirun=True)
              for name in ("base", "ema", "llrd", "rdrop", "fgm")}
    structures = {name: produced(rf"hydra\.sweep\.dir=outputs/study/structures/{name}\b", multirun=True)
                  for name in ("scalar_mix", "attention_pooling", "bilstm_heads", "lora", "private_top")}
    protocol = {name: produced(rf"hydra\.sweep\.dir=outputs/study/protocol/{name}\b", multirun=True)
                for name in ("quickstart_more", "mt_equal", "single", "mt_balanced", "single_balanced", "all_equal",
                             "all_uncertainty", "all_famo", "all_upgrad", "mt_ocnli2", "mt_balanced_private_top")}
    full = {name: produced(rf"hydra\.sweep\.dir=outputs/study/full/{name}\b", multirun=True)
            for name in ("baseline", "best_recipe")}
    subs = {
        "outputs/<run>/checkpoints/best.pt": quick / "checkpoints" / "best.pt",
        "outputs/2026-11-21/15-29-19_quickstart": quick,
        "outputs/<date>/<time>_quickstart": quick,
        "outputs/<run>": quick,
        "outputs/multirun/2026-11-21/16-15-25_sweep_balancers": sweep,
        "outputs/multirun/2026-11-21/16-15-24_sweep_balancers": sweep,
        "outputs/multirun/<date>/<time>_<name>": grid,
        "outputs/study/imbalance": imbalance,
        **{f"outputs/study/tricks/{name}": folder for name, folder in tricks.items()},
        "outputs/study/tricks/base/s42": tricks["base"] / "s42",
        "outputs/study/tricks": ws.work / "tricks_report",
        **{f"outputs/study/structures/{name}": folder for name, folder in structures.items()},
        "outputs/study/structures": ws.work / "structures_report",
        **{f"outputs/study/protocol/{name}": folder for name, folder in protocol.items()},
        **{f"outputs/study/protocol/{name}/s42": protocol[name] / "s42" for name in ("mt_equal", "all_equal", "mt_balanced")},
        **{f"outputs/study/protocol/{name}": ws.work / f"protocol_{name}"
           for name in ("spread", "balanced", "like_for_like", "table", "balancers_all_tasks", "combined",
                         "combined_vs_single")},
        "outputs/study/protocol": ws.work / "protocol_report",
        **{f"outputs/study/full/{name}": folder for name, folder in full.items()},
        "outputs/study/full/baseline/s42": full["baseline"] / "s42",
        "outputs/study/full": ws.work / "full_report",
        "sweep_a/": sweep,
        "sweep_b/": grid,
        "my_ocnli.tsv": ws.data / "tianchi" / "OCNLI_train1128.csv",
    }
    return sorted(((k, str(v)) for k, v in subs.items()), key=lambda kv: -len(kv[0]))


def substitute(text: str, subs: list[tuple[str, str]], ws: Workspace) -> str:
    text = text.replace("../shared/data/raw", str(ws.data))
    for old, new in subs:
        text = re.sub(rf"(?<![\w/]){re.escape(old)}(?![\w/-])", new, text)
    text = re.sub(r"(?<![\w/])outputs/(?=\s|$)", str(ws.work) + "/", text)  # "every run below outputs/"
    assert "<" not in text.replace("< ", ""), f"a placeholder is left in {text!r}"
    return text


@pytest.fixture
def workspace(tmp_path: Path, fixture_data_root: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Workspace]:
    from mtl.training import run as run_mod

    ws = Workspace(work=tmp_path / "work", home=tmp_path / "home", data=fixture_data_root)
    ws.work.mkdir()
    ws.home.mkdir()
    for rel, content in doc_files().items():
        target = Path(rel.replace("~", str(ws.home), 1)) if rel.startswith("~") else ws.work / rel
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(content, encoding="utf-8")
    (ws.work / "docs").symlink_to(REPO / "docs")  # the docs' commands start in the repository's root
    monkeypatch.chdir(ws.work)
    monkeypatch.setenv("HOME", str(ws.home))
    monkeypatch.setenv("MTL_DATA_DIR", str(ws.data))
    monkeypatch.setenv("MTL_OUTPUT_DIR", str(ws.work / "outputs"))
    monkeypatch.setenv("WANDB_MODE", "disabled")  # logger=wandb is built and called, nothing is synced
    monkeypatch.setattr(run_mod, "write_run_outputs", lambda *a, **k: [])
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    try:
        yield ws
    finally:
        # the README's my_balancers.py registered its classes: forget them, so other tests can import theirs
        import sys

        from mtl.balancers import BALANCERS
        from mtl.samplers import SAMPLERS

        for registry in (BALANCERS, SAMPLERS):
            for name in registry.names():
                if registry.get(name).__module__ == "my_balancers":
                    registry.unregister(name)
        sys.modules.pop("my_balancers", None)
        # Hydra configures the root logger for each job: leave it as pytest had it
        for h in list(root.handlers):
            if h not in handlers:
                root.removeHandler(h)
                h.close()
        for h in handlers:
            if h not in root.handlers:
                root.addHandler(h)
        root.setLevel(level)


def run_train(argv: list[str], env: dict[str, str], monkeypatch: pytest.MonkeyPatch, ws: Workspace) -> None:
    from mtl.cli.train import main as train_main

    with monkeypatch.context() as mp:
        for key, value in env.items():
            if key == "PYTHONPATH":
                mp.syspath_prepend(str(ws.work / value))
            elif value != "...":  # WANDB_API_KEY=...: a placeholder for the user's key, left unset
                mp.setenv(key, value)
        mp.setattr(sys, "argv", ["mtl-train", *argv])
        try:
            train_main()
        except SystemExit as exc:
            assert exc.code in (0, None), f"mtl-train {' '.join(argv)} exited with {exc.code}"


@pytest.mark.slow
def test_documented_commands_run(workspace: Workspace, monkeypatch: pytest.MonkeyPatch,
                                 capsys: pytest.CaptureFixture[str]) -> None:
    from mtl.cli.predict import main as predict_main
    from mtl.cli.report import main as report_main

    ws = workspace
    shell_env = {**os.environ, "HOME": str(ws.home)}
    done: dict[str, Path] = {}  # the same documented command (README and docs) runs once
    failures: list[str] = []
    later = []
    for i, cmd in enumerate(TO_RUN):
        if cmd.program in ("mtl-predict", "mtl-report"):
            later.append(cmd)
            continue
        text = cmd.text.replace("../shared/data/raw", str(ws.data))
        if cmd.program in ("mkdir", "cp"):
            subprocess.run(["bash", "-c", text], cwd=ws.work, env=shell_env, check=True)
            continue
        if cmd.text in done:
            ws.outputs[i] = done[cmd.text]
            continue
        env = {k: v.replace("../shared/data/raw", str(ws.data)) for k, v in cmd.env.items()}
        words = bash_argv(text.split("mtl-train", 1)[1], {**shell_env, **env}, ws.work)
        out_dir = ws.work / ("sweeps" if ("-m" in words or "--multirun" in words) else "runs") / str(i)
        ws.outputs[i] = done[cmd.text] = out_dir
        try:
            run_train(train_argv(cmd, words, out_dir), env, monkeypatch, ws)
        except Exception as exc:  # noqa: BLE001 - collect every failing command, then fail once
            failures.append(f"{cmd.where}\n    {exc}\n    {capsys.readouterr().err[-600:]}")
            continue
        if "--cfg" not in words and "--info" not in words:
            own = re.search(r"hydra\.run\.dir=(\S+)", text)
            where = ws.work / own.group(1) if own else out_dir
            if not list(where.rglob("metrics.json")):
                failures.append(f"{cmd.where}: no metrics.json under {where}")
        capsys.readouterr()  # keep the captured output small

    subs = path_substitutions(ws)
    for cmd in later:
        text = substitute(cmd.text, subs, ws)
        env = {k: substitute(v, subs, ws) for k, v in cmd.env.items()}
        words = bash_argv(text.split(cmd.program, 1)[1], {**shell_env, **env}, ws.work)
        with monkeypatch.context() as mp:
            for key, value in env.items():
                mp.setenv(key, value)
            main = predict_main if cmd.program == "mtl-predict" else report_main
            code = main([*words, *(["--device", "cpu"] if cmd.program == "mtl-predict" else [])])
        err = capsys.readouterr().err
        if code != 0:
            failures.append(f"{cmd.where} -> exit {code}: {err[-600:]}")
    assert not failures, "documented commands that failed:\n" + "\n".join(failures)
    # the README's static weights example ran with its balancer
    static = next(i for i, c in enumerate(TO_RUN) if "balancer=static" in c.text)
    metrics = json.loads((ws.outputs[static] / "metrics.json").read_text())
    assert metrics["balancer"]["name"] == "static"
