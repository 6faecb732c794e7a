"""``mtl-train``: the Hydra app over ``configs/``; returns the best average dev macro-F1 (for sweepers)."""

from __future__ import annotations

from pathlib import Path

import hydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig

CONFIG_DIR = str(Path(__file__).resolve().parents[2] / "configs")


@hydra.main(version_base="1.3", config_path=CONFIG_DIR, config_name="train")
def main(cfg: DictConfig) -> float:
    from mtl.training.run import run  # imported late so `--help` and `--cfg job` stay fast

    metrics = run(cfg, HydraConfig.get().runtime.output_dir)
    return float(metrics["avg_macro_f1"])


if __name__ == "__main__":
    main()
