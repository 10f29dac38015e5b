"""Toy extensions from outside the package, one of each kind: they register themselves on import.

A test copies this file and ``conf/`` to a temporary folder and trains with
``plugins=[toy_extensions] hydra.searchpath=[file://<folder>/conf]`` (docs/extending.md).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from sparse_adapter.adapters.base import ADAPTERS
from sparse_adapter.adapters.bottleneck import BottleneckConfig
from sparse_adapter.adapters.layouts import LAYOUTS, Layout
from sparse_adapter.backbones import TASK_HEADS, TaskHead
from sparse_adapter.pruning.allocation import ALLOCATIONS, per_matrix, uniform_counts
from sparse_adapter.pruning.scorers import register
from sparse_adapter.schema import ranged
from tasks.base import AdapterModule
from tasks.data import TaskDataModule
from tasks.family import TaskFamily


# --- an adapter variant: a bottleneck after the attention sublayer only (needs one attachment point) ---
@ADAPTERS.register("toy_attention")
@dataclass
class ToyAttentionConfig(BottleneckConfig):
    sublayers = needs = ("after_attention",)


# --- an architecture: DistilBERT's blocks and the attachment points they have ---
LAYOUTS.register("distilbert", {"encoder": Layout(
    blocks="transformer.layer", after_attention="attention.out_lin", after_ffn="ffn",
    linears={"query": "attention.q_lin", "value": "attention.v_lin"},
)})


# --- a scorer that owns its hyperparameter: |w| ** power ---
@dataclass
class PowerSettings:
    power: float = ranged(1.0, gt=0.0)


@register("toy_power", settings=PowerSettings)
def power_scores(params: dict[str, nn.Parameter], power: float = 1.0, **_) -> dict[str, torch.Tensor]:
    return {name: p.detach().abs() ** power for name, p in params.items()}


# --- an allocation: the same density in every matrix, under a new scope name ---
ALLOCATIONS.register("toy_uniform", per_matrix(uniform_counts))


# --- a task family: is the word "good" in a synthetic sentence? (no files; one head registration) ---
TASK_HEADS.register("toy-classification", TaskHead("AutoModelForSequenceClassification", "SEQ_CLS"))
WORDS = ["good", "bad", "cat", "dog", "runs", "sleeps", "the", "a"]


@dataclass
class ToyTask(TaskFamily):
    name: str = "toy"
    main_metric: str = "accuracy"
    rows: int = ranged(64, ge=2)
    module: str = "toy_extensions.ToyModule"
    datamodule: str = "toy_extensions.ToyDataModule"


class ToyDataModule(TaskDataModule):
    def __init__(self, task: ToyTask, tokenizer, max_length: int = 16, max_positions: int | None = None, **shared):
        super().__init__(task, tokenizer, **shared)
        self.max_length = max_length

    def setup(self, stage: str | None = None) -> None:
        if self.datasets is not None:
            return
        generator = torch.Generator().manual_seed(0)
        words = torch.randint(len(WORDS), (self.task.rows, 5), generator=generator).tolist()
        sentences = [" ".join(WORDS[i] for i in row) for row in words]
        rows = [dict(self.tokenizer(s, truncation=True, max_length=self.max_length), labels=int("good" in s.split()))
                for s in sentences]
        half = len(rows) // 2
        self.datasets = self.first_rows({"train": rows[:half], "validation": rows[half:]})

    def collate(self, rows: list[dict]) -> dict:
        return self.tokenizer.pad(rows, return_tensors="pt")

    def train_dataloader(self):
        return self.train_loader(self.collate)

    def val_dataloader(self):
        return self.eval_loader(self.collate)

    def trivial_baseline(self) -> dict:
        labels = [row["labels"] for row in self.datasets["validation"]]
        majority = max(set(labels), key=labels.count)
        return {"predictor": f"constant {majority}", "metrics": {"accuracy": labels.count(majority) / len(labels)}}


class ToyModule(AdapterModule):
    task_head = "toy-classification"

    def __init__(self, backbone, adapter, optimizer, task: ToyTask):
        super().__init__(backbone, adapter, optimizer, {"num_labels": 2})
        self.task = task
        self.correct = self.seen = 0

    def scoring_loss(self, batch, temperature: float = 1.0) -> torch.Tensor:
        return F.cross_entropy(self.model(**batch).logits.float() / temperature, batch["labels"])

    def training_step(self, batch, batch_idx):
        return self.scoring_loss(batch)

    def validation_step(self, batch, batch_idx):
        logits = self.model(**batch).logits
        self.correct += int((logits.argmax(-1) == batch["labels"]).sum())
        self.seen += len(batch["labels"])

    def on_validation_epoch_end(self):
        self.log("val/accuracy", self.correct / max(1, self.seen))
        self.correct = self.seen = 0
