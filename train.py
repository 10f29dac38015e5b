"""Train one adapter run (or a sweep with -m): python train.py adapter=lora pruner=grasp sparsity=0.75"""

import os
import sys
from pathlib import Path

os.environ.setdefault("WANDB_MODE", "offline")  # never wait on a network unless asked
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import hydra  # noqa: E402
from hydra.core.hydra_config import HydraConfig  # noqa: E402
from omegaconf import DictConfig  # noqa: E402

from tasks.cli import precheck, run_checked  # noqa: E402


@hydra.main(version_base="1.3", config_path="conf", config_name="train")
def main(cfg: DictConfig) -> float:
    return run_checked(cfg, Path(HydraConfig.get().runtime.output_dir))


if __name__ == "__main__":
    sys.argv[1:] = precheck(sys.argv[1:])  # one `error:` line for bad overrides; resume=DIR expanded
    main()
