"""GLUE through ``datasets``: local TSVs from ``$SPARSE_ADAPTER_DATA/glue/<TASK>`` or the hub."""

from __future__ import annotations

import csv
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from torch.utils.data import DataLoader
from transformers import DataCollatorWithPadding

from sparse_adapter.backbones import hub_reachable
from sparse_adapter.errors import ConfigError
from tasks.classification.tsv import check_tsv
from tasks.family import TaskFamily
from tasks.data import TaskDataModule

DATA_ENV = "SPARSE_ADAPTER_DATA"


@dataclass
class GlueTask(TaskFamily):
    """One GLUE task: where its files are, which columns hold text and label, and its metrics.

    ``num_labels=1`` means regression (STS-B). ``label_names`` maps string labels (RTE) to ids in
    the hub's order. ``metrics`` maps names to torchmetrics objects; ``main_metric`` is what sweeps
    optimise and summaries headline.
    """

    name: str
    directory: str
    text_fields: list[str]
    label_field: str
    num_labels: int
    metrics: dict
    main_metric: str
    label_names: list[str] | None = None
    columns: list[str] | None = None  # for header-less files (CoLA)
    hub_name: str = "nyu-mll/glue"
    hub_text_fields: list[str] = field(default_factory=lambda: ["sentence1", "sentence2"])
    hub_label_field: str = "label"  # the hub's GLUE uses integer (or float) labels named "label"
    module: str = "tasks.classification.module.ClassificationModule"
    datamodule: str = "tasks.classification.data.GlueDataModule"

    @property
    def is_regression(self) -> bool:
        return self.num_labels == 1

    @property
    def head_config(self) -> dict:
        problem = "regression" if self.is_regression else "single_label_classification"
        return {"num_labels": self.num_labels, "problem_type": problem}



def load_glue(task: GlueTask, data_dir: str | None):
    """``train``/``validation`` datasets with columns text_a, [text_b], labels."""
    from datasets import load_dataset

    if data_dir:
        folder = Path(data_dir).expanduser() / "glue" / task.directory
        files = {"train": folder / "train.tsv", "validation": folder / "dev.tsv"}
        missing = [str(f) for f in files.values() if not f.is_file()]
        if missing:
            raise ConfigError(f"data_dir: missing {', '.join(missing)} (set {DATA_ENV} to the folder that holds glue/)")
        for path in files.values():
            check_tsv(path, task)
        # Quoting off (fields hold unbalanced quotes), BOM stripped (MRPC), "NA"/"null" kept as text.
        options = dict(delimiter="\t", quoting=csv.QUOTE_NONE, keep_default_na=False, na_filter=False, encoding="utf-8-sig")
        if task.columns:
            options.update(header=None, column_names=list(task.columns))
        raw = load_dataset("csv", data_files={k: str(v) for k, v in files.items()}, **options)
        text_fields, label_field = task.text_fields, task.label_field
    else:
        if not hub_reachable():
            raise ConfigError(f"data: no data directory and no hub access; set {DATA_ENV} to the folder that holds glue/")
        raw = load_dataset(task.hub_name, task.name)
        raw = {"train": raw["train"], "validation": raw["validation"]}
        text_fields, label_field = task.hub_text_fields, task.hub_label_field
    return {split: _normalise(dataset, task, text_fields, label_field) for split, dataset in raw.items()}


def glue_row(task: GlueTask, data_dir: str | None, split: str, index: int) -> str:
    """Where row ``index`` of ``split`` came from, as a file and line (or a hub split and row)."""
    if not data_dir:
        return f"{task.hub_name}/{task.name} {split} row {index}"
    file = Path(data_dir).expanduser() / "glue" / task.directory / ("train.tsv" if split == "train" else "dev.tsv")
    return f"{file} line {index + (1 if task.columns else 2)}"


def _normalise(dataset, task: GlueTask, text_fields: list[str], label_field: str):
    names = ["text_a", "text_b"][: len(text_fields)]
    label_ids = {name: i for i, name in enumerate(task.label_names or [])}

    def convert(row):
        out = {new: str(row[old]) for new, old in zip(names, text_fields)}
        label = row[label_field]
        if task.is_regression:
            out["labels"] = float(label)
        else:
            out["labels"] = label_ids[label] if isinstance(label, str) and label_ids else int(label)
        return out

    return dataset.map(convert, remove_columns=dataset.column_names, desc=f"{task.name}: columns")


class GlueDataModule(TaskDataModule):
    """Tokenised GLUE with dynamic padding (each batch padded to its longest row)."""

    def __init__(self, task: GlueTask, tokenizer, *, max_length: int = 128, max_positions: int | None = None, **shared):
        super().__init__(task, tokenizer, **{**self.shared_defaults, **shared})  # the shared settings: TaskDataModule
        self.max_length, self.max_positions = max_length, max_positions
        # pad on the right whatever the tokenizer's default (Llama/Qwen ones may pad left): every row's
        # tokens keep the positions they have unpadded (GPT-2's absolute positions, a prefix that RoPE
        # does not rotate), and decoder-only heads pool the last non-padding token either way
        tokenizer.padding_side = "right"
        self.collate = DataCollatorWithPadding(tokenizer)

    def setup(self, stage: str | None = None) -> None:
        if self.datasets is not None:
            return
        raw = load_glue(self.task, self.data_dir)
        limits = self.limits()
        self.datasets = {}
        for split, dataset in raw.items():
            if limits[split]:
                dataset = dataset.select(range(min(limits[split], len(dataset))))
            texts = [c for c in ("text_a", "text_b") if c in dataset.column_names]
            self.datasets[split] = dataset.map(self._tokenize, batched=True, remove_columns=texts, desc=f"{self.task.name}: tokenize")
            self._check_lengths(split)
        # each dev row's position: under DDP the metrics drop the rows Lightning's sampler repeats (tasks.metrics)
        self.datasets["validation"] = self.datasets["validation"].add_column("position", range(len(self.datasets["validation"])))

    def _check_lengths(self, split: str) -> None:
        """A row longer than the model's positions would crash inside the embedding, mid-training; name it now."""
        if not self.max_positions or self.max_length <= self.max_positions:
            return
        lengths = [len(ids) for ids in self.datasets[split]["input_ids"]]
        too_long = next((i for i, n in enumerate(lengths) if n > self.max_positions), None)
        if too_long is not None:
            where = glue_row(self.task, self.data_dir, split, too_long)
            raise ConfigError(
                f"data.max_length={self.max_length}: {where} has {lengths[too_long]} tokens, more than the backbone's"
                f" {self.max_positions} positions; set data.max_length ≤ {self.max_positions}"
            )

    def train_lengths(self) -> list[int]:
        return [len(ids) for ids in self.datasets["train"]["input_ids"]]  # one column read, not 8k row dicts

    def eval_lengths(self) -> list[int]:
        return [len(ids) for ids in self.datasets["validation"]["input_ids"]]

    def trivial_baseline(self) -> dict:
        """The dev metrics of the strongest constant predictor, the bar any run that learned must clear.

        Classification: the class whose constant prediction scores best on dev (the majority class
        for accuracy; taking the training rows' majority instead would set the bar below an
        untrained run whenever a subset's majority differs, as RTE's first 1,000 rows do).
        Regression (STS-B): the training mean, whose correlation is 0.
        """
        self.setup()
        train = np.asarray(self.datasets["train"]["labels"], dtype=float)
        dev = np.asarray(self.datasets["validation"]["labels"], dtype=float)
        main = self.task.metrics[self.task.main_metric].scorer
        if self.task.is_regression:
            value, predictor = float(train.mean()), f"mean predictor ({train.mean():.3f})"
        else:
            value = float(max(range(self.task.num_labels), key=lambda c: (main(np.full_like(dev, c), dev), (dev == c).mean())))
            predictor = f"constant class {int(value)}"
        constant = np.full_like(dev, value)
        return {"predictor": predictor, "metrics": {name: metric.scorer(constant, dev) for name, metric in self.task.metrics.items()}}

    def _tokenize(self, rows):
        texts = [rows["text_a"]] + ([rows["text_b"]] if "text_b" in rows else [])
        return self.tokenizer(*texts, truncation=True, max_length=self.max_length)

    def train_dataloader(self) -> DataLoader:
        return self.train_loader(self.collate)

    def val_dataloader(self) -> DataLoader:
        return self.eval_loader(self.collate)
