"""The command line: user mistakes end with exit code 1 and one clear message naming the problem."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path


def mtl_train(cwd: Path, *overrides: str) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k not in ("MTL_DATA_DIR", "MTL_DEBUG")}
    return subprocess.run(
        [sys.executable, "-m", "mtl.train", "encoder=tiny_random", "trainer.progress=false",
         f"hydra.run.dir={cwd / 'run'}", *overrides],
        cwd=cwd, env=env, capture_output=True, text=True, timeout=300,
    )


def test_missing_data_names_the_file_and_where_it_comes_from(tmp_path: Path) -> None:
    proc = mtl_train(tmp_path, f"data.root={tmp_path / 'nowhere'}")
    assert proc.returncode == 1
    out = proc.stdout + proc.stderr
    assert "OCNLI_train1128.csv" in out and "MTL_DATA_DIR" in out and "Traceback" not in out


def test_bad_row_names_file_line_and_excerpt(tmp_path: Path, fixture_data_root: Path) -> None:
    root = tmp_path / "data"
    shutil.copytree(fixture_data_root, root)
    f = root / "tianchi" / "TNEWS_train1128.csv"
    lines = f.read_bytes().split(b"\r\n")
    lines[4] = b"99999\t\xe8\xbf\x99\xe6\x98\xaf\xe6\xa0\x87\xe9\xa2\x98\t105"  # code 105 does not exist
    f.write_bytes(b"\r\n".join(lines))
    proc = mtl_train(tmp_path, f"data.root={root}", "trainer.max_steps=2")
    out = proc.stdout + proc.stderr
    assert proc.returncode == 1
    assert "TNEWS_train1128.csv" in out and "line 5" in out and "105" in out
    # asked-for skipping: the run goes on and counts the row
    ok = mtl_train(tmp_path, f"data.root={root}", "data.on_bad_row=skip", "trainer.max_steps=2", "trainer.eval_every=2",
                   f"hydra.run.dir={tmp_path / 'run2'}")
    assert ok.returncode == 0, ok.stderr[-2000:]
    metrics = json.loads((tmp_path / "run2" / "metrics.json").read_text())
    assert sum(metrics["data"]["tnews"]["skipped"].values()) == 1
