"""The README's "add your own balancer" example, executed exactly as the README shows it."""

from __future__ import annotations

import json
import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def readme_example() -> tuple[str, list[str]]:
    text = (REPO / "README.md").read_text(encoding="utf-8")
    section = text.split("## Add your own balancer or sampler", 1)[1]
    code = re.search(r"```python\n(# my_balancers\.py\n.*?)```", section, re.S).group(1)
    command = re.search(r"```bash\n(PYTHONPATH=\. mtl-train .*?)\n```", section, re.S).group(1)
    return code, shlex.split(command)


def test_readme_extension_example_runs(tmp_path: Path, fixture_data_root: Path) -> None:
    code, command = readme_example()
    assert len(code.strip().splitlines()) <= 22  # "a complete 20-line example"
    (tmp_path / "my_balancers.py").write_text(code, encoding="utf-8")
    env_assign, program, *overrides = command
    assert env_assign == "PYTHONPATH=." and program == "mtl-train"
    env = {k: v for k, v in os.environ.items() if k != "MTL_DATA_DIR"}
    env["PYTHONPATH"] = "."
    quick = [
        "encoder=tiny_random", f"data.root={fixture_data_root}", "trainer.max_steps=6", "trainer.eval_every=6",
        "trainer.progress=false", f"hydra.run.dir={tmp_path / 'run'}",
    ]
    proc = subprocess.run(
        [sys.executable, "-m", "mtl.train", *overrides, *quick], cwd=tmp_path, env=env,
        capture_output=True, text=True, timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert metrics["balancer"]["name"] == "inverse_loss"
    weights = metrics["balancer"]["last_weights"]
    assert len(weights) == 1 and abs(sum(weights.values()) - 1.0) < 1e-6  # one task per step: weight = 1


def test_inverse_loss_weights_by_hand(tmp_path: Path) -> None:
    import torch

    from mtl.balancers import BalanceInput

    code, _ = readme_example()
    namespace: dict = {}
    exec(compile(code, "my_balancers.py", "exec"), namespace)
    bal = namespace["InverseLoss"](["a", "b"], power=0.5)
    w = bal.compute(BalanceInput(tasks=["a", "b"], losses=torch.tensor([4.0, 1.0]), step=0, max_steps=1))
    # L^-0.5 = (0.5, 1.0) -> scaled to sum 2: (2/3, 4/3)
    torch.testing.assert_close(w, torch.tensor([2 / 3, 4 / 3]))
