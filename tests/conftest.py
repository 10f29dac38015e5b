"""Shared fixtures: tiny random backbones, the offline GLUE rows, a composed config."""

from __future__ import annotations

import csv
import os
from pathlib import Path

import pytest
import torch
from hydra import compose, initialize_config_dir
from hydra.utils import instantiate

ROOT = Path(__file__).resolve().parents[1]
os.environ.setdefault("WANDB_MODE", "offline")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
# pytest-xdist workers split the cores between them: more threads than cores only adds contention
WORKERS = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))
torch.set_num_threads(max(1, min(2, (os.cpu_count() or 1) // WORKERS)))

TINY = dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64)


def data_dir() -> str | None:
    candidates = [os.environ.get("SPARSE_ADAPTER_DATA"), str(ROOT.parent / "shared" / "data")]
    found = next((c for c in candidates if c and (Path(c) / "glue").is_dir()), None)
    return str(Path(found).resolve()) if found else None


@pytest.fixture(scope="session")
def glue_dir() -> str:
    found = data_dir()
    if found is None:
        pytest.skip("GLUE files not found: set SPARSE_ADAPTER_DATA to the folder that holds glue/")
    return found


@pytest.fixture(scope="session")
def sst2_rows(glue_dir) -> list[tuple[str, int]]:
    """The first 64 SST-2 training sentences with their labels (PEFT, Trainer and QLoRA tests)."""
    with open(f"{glue_dir}/glue/SST-2/train.tsv", newline="") as handle:
        reader = csv.DictReader(handle, delimiter="\t", quoting=csv.QUOTE_NONE)
        return [(r["sentence"], int(r["label"])) for _, r in zip(range(64), reader)]


def compose_config(*overrides: str):
    with initialize_config_dir(version_base="1.3", config_dir=str(ROOT / "conf")):
        return compose("train", overrides=list(overrides))


@pytest.fixture(scope="session")
def rte_task():
    return instantiate(compose_config("task=rte").task, _convert_="object")


@pytest.fixture(scope="session")
def stsb_task():
    return instantiate(compose_config("task=stsb").task, _convert_="object")


def tiny_backbone(model_type: str = "bert", attn: str = "sdpa"):
    from sparse_adapter.backbones import RandomBackbone

    config = dict(TINY, max_position_embeddings=514 if model_type == "roberta" else 512)
    if model_type == "roberta":
        config["pad_token_id"] = 0
    return RandomBackbone(model_type=model_type, config=config, attn_implementation=attn)


def tiny_model(model_type: str = "bert", num_labels: int = 2, attn: str = "sdpa"):
    return tiny_backbone(model_type, attn).build("sequence-classification", num_labels=num_labels)


def dev_passes(module, datamodule_for, tmp_path) -> dict[bool, tuple]:
    """group_by_length off and on → (the data, its dev batches, ``trainer.validate``'s metrics) of one module, to show that
    sorting the dev rows changes the padding and not the scores. ``datamodule_for(grouped)`` builds the data."""
    import lightning as L

    passes = {}
    for grouped in (False, True):
        data = datamodule_for(grouped)
        data.setup("fit")
        trainer = L.Trainer(accelerator="cpu", logger=False, enable_progress_bar=False, enable_model_summary=False,
                            default_root_dir=tmp_path)
        passes[grouped] = (data, list(data.val_dataloader()), trainer.validate(module, datamodule=data, verbose=False)[0])
    return passes
