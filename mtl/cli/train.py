"""``mtl-train``: the Hydra app over ``mtl/conf/`` (``pkg://mtl.conf``); returns the best average dev macro-F1
(for sweepers)."""

from __future__ import annotations

import logging
import os
import sys
from pathlib import Path

import hydra
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import DictConfig

from mtl.config import register_configs

CONFIG_MODULE = "mtl.conf"  # the configs ship inside the package: found the same way editable or from a wheel
CONFIG_DIR = str(Path(__file__).resolve().parents[1] / "conf")  # the same folder as a path (initialize_config_dir)
log = logging.getLogger("mtl")
register_configs()  # the groups whose defaults live in code (optim, trainer, data, model, balancer/*, sampler/*)


def user_errors() -> tuple[type[BaseException], ...]:
    """Errors that are the input's fault: shown as one clear line, not a traceback (MTL_DEBUG=1 shows it)."""
    from mtl.data.readers import BadRowError
    from mtl.models.encoder import EncoderLoadError
    from mtl.training.trainer import TrainingStopped
    from mtl.utils.files import CheckpointError

    # ValueError covers the config checks (ConfigError: the key and the value) and the run directory's
    # (RunDirError: another run there, or in use); CheckpointError names the unreadable checkpoint file
    return (FileNotFoundError, BadRowError, EncoderLoadError, TrainingStopped, CheckpointError, ValueError,
            KeyError, TypeError)


@hydra.main(version_base="1.3", config_path=f"pkg://{CONFIG_MODULE}", config_name="train")
def main(cfg: DictConfig) -> float:
    from mtl.training.run import run  # imported late so `--help` and `--cfg job` stay fast

    hydra_cfg = HydraConfig.get()
    try:
        metrics = run(cfg, hydra_cfg.runtime.output_dir)
    except user_errors() as exc:
        if hydra_cfg.mode == RunMode.MULTIRUN or os.environ.get("MTL_DEBUG"):
            raise  # the sweeper records the failed job; MTL_DEBUG=1 shows the traceback
        message = exc.args[0] if isinstance(exc, KeyError) and exc.args else exc
        log.error("%s: %s", type(exc).__name__, message)
        sys.exit(1)
    return float(metrics["avg_macro_f1"])


if __name__ == "__main__":
    main()
