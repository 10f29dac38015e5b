"""Train one adapter run (or a sweep with -m): python train.py adapter=lora pruner=grasp sparsity=0.75"""

import logging
import os
import sys
import warnings
from pathlib import Path

os.environ.setdefault("WANDB_MODE", "offline")  # never wait on a network unless asked
os.environ.setdefault("WANDB_SILENT", "true")  # W&B's banners and run summary repeat what our log says
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import hydra  # noqa: E402
from hydra.core.hydra_config import HydraConfig  # noqa: E402
from omegaconf import DictConfig  # noqa: E402

from tasks.cli import precheck, run_checked  # noqa: E402


def quiet_libraries() -> None:
    """Keep the console to what a user can act on: our run line, pruning, progress, results, errors.

    Lightning's hardware lines, tips and model table, `datasets`' per-split bars on small local
    files, transformers' bar over a sub-second weight load and a torch deprecation raised inside
    Lightning say nothing about this run.
    """
    for name in ("lightning.pytorch", "lightning.fabric"):
        logging.getLogger(name).setLevel(logging.WARNING)
    warnings.filterwarnings("ignore", message=r".*LeafSpec.*")
    import datasets

    datasets.disable_progress_bars()
    datasets.logging.set_verbosity_error()
    import transformers

    transformers.utils.logging.disable_progress_bar()


@hydra.main(version_base="1.3", config_path="conf", config_name="train")
def main(cfg: DictConfig) -> float:
    quiet_libraries()
    return run_checked(cfg, Path(HydraConfig.get().runtime.output_dir))


if __name__ == "__main__":
    argv = precheck(sys.argv[1:])  # one `error:` line for bad overrides, before Hydra writes anything
    if argv != sys.argv[1:]:  # resume=DIR: this command again, as the overrides that run was started with
        os.execv(sys.executable, [sys.executable, *sys.orig_argv[1:-len(sys.argv)], sys.argv[0], *argv])
    main()
