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

import tasks  # noqa: E402,F401 (registers the config's resolvers; torch, Lightning and the rest load only for a run)

# Hydra flags that only show something (help, the composed config, its sources): no run, so nothing to check first
SHOW_ONLY = {"--help", "-h", "--hydra-help", "--cfg", "-c", "--info", "-i", "--version", "--resolve", "--package", "-p"}


def quiet_libraries() -> None:
    """Keep the console to what a user can act on: our run line, pruning, progress, results, errors.

    Lightning's hardware lines, tips and model table, `datasets`' per-split bars on small local
    files, transformers' bar over a sub-second weight load and a torch deprecation raised inside
    Lightning say nothing about this run.
    """
    for name in ("lightning.pytorch", "lightning.fabric"):
        logging.getLogger(name).setLevel(logging.WARNING)
    logging.getLogger("bitsandbytes").setLevel(logging.ERROR)  # an optional kernel it cannot fetch offline
    warnings.filterwarnings("ignore", message=r".*LeafSpec.*")
    import datasets

    datasets.disable_progress_bars()
    datasets.logging.set_verbosity_error()
    import transformers

    transformers.utils.logging.disable_progress_bar()


@hydra.main(version_base="1.3", config_path="conf", config_name="train")
def main(cfg: DictConfig) -> float:
    from tasks.cli import run_checked

    quiet_libraries()
    return run_checked(cfg, Path(HydraConfig.get().runtime.output_dir))


def checked(argv: list[str]) -> list[str]:
    """``tasks.cli.precheck`` (``resume=``, a sweep's points), skipped for a command that only shows something."""
    flags = {a.split("=", 1)[0] for a in argv if a.startswith("-")}
    if flags & SHOW_ONLY and not any(a.startswith("resume=") for a in argv):
        return argv
    from tasks.cli import precheck

    return precheck(argv)  # one `error:` line for bad overrides, before Hydra writes anything


def run_main(argv: list[str]) -> None:
    """Hydra composes the config once; its errors come back raised (HYDRA_FULL_ERROR) and leave as one line."""
    from hydra.errors import HydraException
    from omegaconf.errors import OmegaConfBaseException

    os.environ["HYDRA_FULL_ERROR"] = "1"  # raise instead of printing a multi-line report
    try:
        main()
    except (HydraException, OmegaConfBaseException) as error:
        from tasks.cli import EXIT_CODE, config_error, report

        report(config_error(error, [a for a in argv if not a.startswith("-")]))
        raise SystemExit(EXIT_CODE) from None


if __name__ == "__main__":
    argv = checked(sys.argv[1:])
    if argv != sys.argv[1:]:  # resume=DIR: this command again, as the overrides that run was started with
        os.execv(sys.executable, [sys.executable, *sys.orig_argv[1:-len(sys.argv)], sys.argv[0], *argv])
    run_main(argv)
