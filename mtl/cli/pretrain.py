"""``mtl-pretrain``: masked-language-model pretraining on the task texts, a Hydra app over ``mtl/conf/pretrain.yaml``
(groups ``encoder``, ``tasks``, ``data`` as in ``mtl-train``, and ``pretrain``); docs/pretraining.md."""

from __future__ import annotations

import logging
import os
import sys

import hydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig

from mtl.cli.train import CONFIG_MODULE, user_errors
from mtl.pretrain.settings import register_pretrain_configs

log = logging.getLogger("mtl")
register_pretrain_configs()  # pretrain/default (the options' defaults) and data/default


@hydra.main(version_base="1.3", config_path=f"pkg://{CONFIG_MODULE}", config_name="pretrain")
def main(cfg: DictConfig) -> None:
    # imported late so `--help` and `--cfg job` stay fast
    from mtl.pretrain.mlm import WholeWordMaskError
    from mtl.pretrain.run import PretrainStopped, pretrain

    try:
        pretrain(cfg, HydraConfig.get().runtime.output_dir)
    except (*user_errors(), WholeWordMaskError, PretrainStopped) as exc:
        if os.environ.get("MTL_DEBUG"):
            raise
        message = exc.args[0] if isinstance(exc, KeyError) and exc.args else exc
        log.error("%s: %s", type(exc).__name__, message)
        sys.exit(1)


if __name__ == "__main__":
    main()
