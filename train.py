"""Train one adapter run (or a sweep with -m): python train.py adapter=lora pruner=grasp sparsity=0.75"""

import logging
import os
import sys
from pathlib import Path

os.environ.setdefault("WANDB_MODE", "offline")  # never wait on a network unless asked
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import hydra  # noqa: E402
from hydra.core.hydra_config import HydraConfig  # noqa: E402
from omegaconf import DictConfig  # noqa: E402

from sparse_adapter.errors import ConfigError  # noqa: E402
from tasks.experiment import run  # noqa: E402


@hydra.main(version_base="1.3", config_path="conf", config_name="train")
def main(cfg: DictConfig) -> float:
    try:
        return run(cfg, Path(HydraConfig.get().runtime.output_dir))
    except ConfigError as error:
        logging.getLogger("train").error("%s", error)
        print(f"error: {error}", file=sys.stderr)
        sys.exit(2)


if __name__ == "__main__":
    main()
