"""XSum: ``$SPARSE_ADAPTER_DATA/xsum/test_subset.jsonl.gz`` split into train/validation by a fixed
seed (the offline copy holds 2,333 test documents only; see its README), or the hub's splits."""

from __future__ import annotations

import gzip
import json
import logging
import random
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader

from sparse_adapter.backbones import hub_reachable
from sparse_adapter.errors import ConfigError
from tasks.family import check_positions
from tasks.data import TaskDataModule
from tasks.family import TaskFamily
from tasks.rows import SkippedRows
from tasks.seq2seq.metrics import rouge_scores

log = logging.getLogger(__name__)
DATA_ENV = "SPARSE_ADAPTER_DATA"
IGNORE = -100  # label positions the loss skips (padding)


@dataclass
class XSumTask(TaskFamily):
    """Abstractive summarisation: data split, generation settings and loss smoothing.

    The local file is split once, by ``split_seed``: a shuffled order whose first
    ``validation_size`` documents are the validation set and the rest the training set, the same
    on every machine and run (the seed of the run does not change it).
    """

    name: str = "xsum"
    main_metric: str = "rouge2"
    file: str = "xsum/test_subset.jsonl.gz"
    validation_size: int = 333
    split_seed: int = 0
    hub_name: str = "EdinburghNLP/xsum"
    label_smoothing: float = 0.0
    num_beams: int = 1  # greedy on CPU; the BART XSum recipe uses 6 beams
    length_penalty: float = 1.0
    max_new_tokens: int = 64
    num_samples: int = 8
    module: str = "tasks.seq2seq.module.Seq2SeqModule"
    datamodule: str = "tasks.seq2seq.data.XSumDataModule"

    head_config = {}  # class attribute: the LM head needs no options

    def validate(self) -> None:
        if not 0.0 <= self.label_smoothing < 1.0:
            raise ConfigError(f"task.label_smoothing={self.label_smoothing} must be in [0, 1)")
        if self.num_beams < 1 or self.max_new_tokens < 1:
            raise ConfigError(f"task.num_beams={self.num_beams} and task.max_new_tokens={self.max_new_tokens} must be ≥ 1")


def check_row(row, split: str, skipped: SkippedRows) -> dict | None:
    if not isinstance(row, dict) or not isinstance(row.get("document"), str) or not isinstance(row.get("summary"), str):
        skipped.skip(split, "malformed")
        return None
    if not row["document"].strip():
        skipped.skip(split, "empty document")
        return None
    if not row["summary"].strip():
        skipped.skip(split, "empty summary")
        return None
    return {"id": str(row.get("id", "")), "document": row["document"], "summary": row["summary"]}


def read_jsonl(path: Path, skipped: SkippedRows) -> list:
    """Rows of a (gzipped) JSON Lines file; a line that is not JSON is counted and skipped."""
    opener = gzip.open if path.suffix == ".gz" else open
    rows = []
    try:
        with opener(path, "rt", encoding="utf-8") as handle:
            for line in handle:
                if not line.strip():
                    continue
                try:
                    rows.append(json.loads(line))
                except json.JSONDecodeError:
                    skipped.skip("file", "malformed JSON")
    except EOFError as error:  # gzip: the stream stops before its end marker
        raise ConfigError(f"task.file: '{path}' is truncated ({error}); copy the file again") from error
    except (OSError, UnicodeDecodeError) as error:
        raise ConfigError(f"task.file: cannot read '{path}': {error}") from error
    return rows


def load_xsum(task: XSumTask, data_dir: str | None, skipped: SkippedRows) -> dict[str, list[dict]]:
    if data_dir:
        path = Path(data_dir).expanduser() / task.file
        if not path.is_file():
            raise ConfigError(f"data_dir: missing {path} (set {DATA_ENV} to the folder that holds xsum/)")
        rows = read_jsonl(path, skipped)
        skipped.report(task.name, "file", len(rows))
        order = list(range(len(rows)))
        random.Random(task.split_seed).shuffle(order)
        if not 0 < task.validation_size < len(rows):
            raise ConfigError(f"task.validation_size={task.validation_size} must be between 1 and {len(rows) - 1} (rows in {path})")
        raw = {"validation": [rows[i] for i in order[: task.validation_size]], "train": [rows[i] for i in order[task.validation_size:]]}
    else:
        if not hub_reachable():
            raise ConfigError(f"data: no data directory and no hub access; set {DATA_ENV} to the folder that holds xsum/")
        from datasets import load_dataset

        hub = load_dataset(task.hub_name)
        raw = {"train": list(hub["train"]), "validation": list(hub["validation"])}
    clean = {}
    for split in ("train", "validation"):
        clean[split] = [row for entry in raw[split] if (row := check_row(entry, split, skipped)) is not None]
        skipped.report(task.name, split, len(clean[split]))
        if not clean[split]:
            raise ConfigError(f"data: the XSum {split} split has no usable row")
    return clean


def lead_sentence(document: str) -> str:
    """The first sentence of a document (LEAD-1, the classic extractive summarisation baseline)."""
    text = " ".join(document.split())
    return re.split(r"(?<=[.!?])\s+", text, maxsplit=1)[0]


class Seq2SeqCollator:
    """Training: pads stored token ids (labels with -100). Evaluation: tokenises a batch of
    documents on the fly, so memory is bounded by the batch, and passes the texts through."""

    def __init__(self, tokenizer, max_length: int, max_target_length: int):
        self.tokenizer, self.max_length, self.max_target_length = tokenizer, max_length, max_target_length
        self.pad_id = tokenizer.pad_token_id or 0

    def encode(self, rows: list[dict]) -> list[dict]:
        sources = self.tokenizer([r["document"] for r in rows], max_length=self.max_length, truncation=True)
        targets = self.tokenizer(text_target=[r["summary"] for r in rows], max_length=self.max_target_length, truncation=True)
        return [{"input_ids": np.asarray(s, dtype=np.int32), "labels": np.asarray(t, dtype=np.int32)}
                for s, t in zip(sources["input_ids"], targets["input_ids"])]

    @staticmethod
    def pad(sequences: list, value: int) -> torch.Tensor:
        out = torch.full((len(sequences), max(len(s) for s in sequences)), value, dtype=torch.long)
        for i, sequence in enumerate(sequences):
            out[i, : len(sequence)] = torch.as_tensor(sequence, dtype=torch.long)
        return out

    def train(self, features: list[dict]) -> dict:
        input_ids = self.pad([f["input_ids"] for f in features], self.pad_id)
        return {"input_ids": input_ids, "attention_mask": (self.pad([f["input_ids"] for f in features], -1) != -1).long(),
                "labels": self.pad([f["labels"] for f in features], IGNORE)}

    def evaluation(self, rows: list[dict]) -> dict:
        return self.train(self.encode(rows)) | {"documents": [r["document"] for r in rows], "references": [r["summary"] for r in rows],
                                                "positions": [r["position"] for r in rows]}  # in the dev set: DDP shares merge by it


class XSumDataModule(TaskDataModule):
    """Tokenised XSum: sources cut to ``max_length`` tokens, summaries to ``max_target_length``."""

    collator_class = Seq2SeqCollator  # how rows become model inputs (causal.py: one prompt + summary sequence)

    shared_defaults = {"batch_size": 8, "eval_batch_size": 16}  # 512-token documents

    def __init__(self, task: XSumTask, tokenizer, *, max_length: int = 512, max_target_length: int = 128,
                 max_positions: int | None = None, **shared):
        super().__init__(task, tokenizer, **{**self.shared_defaults, **shared})  # the shared settings: TaskDataModule
        task.validate()
        check_positions("data.max_length", max_length, max_positions)
        check_positions("data.max_target_length", max_target_length, max_positions)
        self.collator = self.collator_class(tokenizer, max_length, max_target_length)
        self.skipped = SkippedRows()
        self.examples: dict[str, list[dict]] | None = None

    def setup(self, stage: str | None = None) -> None:
        if self.datasets is not None:
            return
        self.examples = self.first_rows(load_xsum(self.task, self.data_dir, self.skipped))
        self.datasets = {"train": self.collator.encode(self.examples["train"]), "validation": self.numbered(self.examples["validation"])}
        log.info("%s: %d train and %d validation documents", self.task.name, len(self.datasets["train"]), len(self.examples["validation"]))

    def eval_lengths(self) -> list[int]:
        """Characters of each document (dev documents are tokenised per batch); sources cut at ``max_length``
        tokens tie at the top, which costs nothing: they pad to the same width anyway."""
        return [len(row["document"]) for row in self.datasets["validation"]]

    def trivial_baseline(self) -> dict:
        """LEAD-1: the first sentence of each validation document as its summary (no learning)."""
        self.setup()
        rows = self.examples["validation"]
        metrics = rouge_scores([lead_sentence(r["document"]) for r in rows], [r["summary"] for r in rows])
        return {"predictor": "LEAD-1 (first sentence)", "metrics": metrics}

    def train_dataloader(self) -> DataLoader:
        return self.train_loader(self.collator.train)

    def val_dataloader(self) -> DataLoader:
        return self.eval_loader(self.collator.evaluation)
