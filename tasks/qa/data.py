"""SQuAD v1.1: JSON files from ``$SPARSE_ADAPTER_DATA/squad/`` or the hub, split into features as
Hugging Face's run_qa.py does (question + context, ``max_length`` tokens, ``doc_stride`` overlap,
offset mappings to go back from tokens to characters)."""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader

from sparse_adapter.backbones import hub_reachable
from sparse_adapter.errors import ConfigError
from sparse_adapter.schema import ranged
from tasks.family import check_positions
from tasks.data import TaskDataModule
from tasks.family import TaskFamily
from tasks.rows import SkippedRows

log = logging.getLogger(__name__)
DATA_ENV = "SPARSE_ADAPTER_DATA"


@dataclass
class SquadTask(TaskFamily):
    """Extractive QA: where the files are and how spans are post-processed (HF run_qa defaults)."""

    name: str = "squad"
    main_metric: str = "f1"
    train_file: str = "train-v1.1-subset-du2017.json"
    validation_file: str = "dev-v1.1.json"
    hub_name: str = "rajpurkar/squad"
    n_best_size: int = ranged(20, ge=1)
    max_answer_length: int = ranged(30, ge=1)
    num_samples: int = 8  # sample predictions logged as a table
    module: str = "tasks.qa.module.QAModule"
    datamodule: str = "tasks.qa.data.SquadDataModule"

    head_config = {}  # class attribute: the QA head needs no options


def _squad_rows(payload) -> list:
    """Flatten SQuAD JSON to (id, question, context, answers) rows; shape errors are raised by the caller."""
    rows = []
    for i, article in enumerate(payload["data"]):
        paragraphs = article.get("paragraphs", []) if isinstance(article, dict) else [None]
        if not isinstance(paragraphs, list):
            raise ValueError(f"data[{i}].paragraphs is {type(paragraphs).__name__}, expected a list")
        for j, paragraph in enumerate(paragraphs):
            if not isinstance(paragraph, dict):
                rows.append(None)
                continue
            questions = paragraph.get("qas", [])
            if not isinstance(questions, list):  # a string would be read character by character, a number not at all
                raise ValueError(f"data[{i}].paragraphs[{j}].qas is {type(questions).__name__}, expected a list")
            for qa in questions:
                rows.append((qa, paragraph.get("context")))
    return rows


def check_row(entry, split: str, skipped: SkippedRows) -> dict | None:
    """A clean row, or ``None`` after counting why it was skipped."""
    if entry is None:
        skipped.skip(split, "malformed")
        return None
    qa, context = entry
    if not isinstance(qa, dict) or not isinstance(context, str) or not isinstance(qa.get("question"), str) or "id" not in qa:
        skipped.skip(split, "malformed")
        return None
    if not context.strip() or not qa["question"].strip():
        skipped.skip(split, "empty question or context")
        return None
    answers = [a for a in qa.get("answers") or [] if isinstance(a, dict) and isinstance(a.get("text"), str) and isinstance(a.get("answer_start"), int)]
    if not answers:
        skipped.skip(split, "no answer")
        return None
    located = [a for a in answers if context[a["answer_start"]: a["answer_start"] + len(a["text"])] == a["text"] and a["text"].strip()]
    if split == "train" and not located:
        skipped.skip(split, "answer not at answer_start")
        return None
    kept = located if split == "train" else answers
    return {
        "id": str(qa["id"]), "question": qa["question"].lstrip(), "context": context,
        "answers": {"text": [a["text"] for a in kept], "answer_start": [a["answer_start"] for a in kept]},
    }


def read_squad_file(path: Path, setting: str) -> list:
    try:
        payload = json.loads(path.read_text(encoding="utf-8"))
        if not isinstance(payload.get("data"), list):
            raise ValueError("no 'data' list")
        return _squad_rows(payload)
    except (ValueError, AttributeError) as error:
        raise ConfigError(f"{setting}: '{path}' is not SQuAD v1.1 JSON ({error})") from error


def load_squad(task: SquadTask, data_dir: str | None, skipped: SkippedRows) -> dict[str, list[dict]]:
    """``train``/``validation`` rows with clean answers; bad rows counted in ``skipped``."""
    if data_dir:
        folder = Path(data_dir).expanduser() / "squad"
        files = {"train": folder / task.train_file, "validation": folder / task.validation_file}
        missing = [str(f) for f in files.values() if not f.is_file()]
        if missing:
            raise ConfigError(f"data_dir: missing {', '.join(missing)} (set {DATA_ENV} to the folder that holds squad/)")
        entries = {split: read_squad_file(path, f"task.{split}_file") for split, path in files.items()}
    else:
        if not hub_reachable():
            raise ConfigError(f"data: no data directory and no hub access; set {DATA_ENV} to the folder that holds squad/")
        from datasets import load_dataset

        raw = load_dataset(task.hub_name)
        entries = {
            split: [({"id": r["id"], "question": r["question"],
                      "answers": [{"text": t, "answer_start": s} for t, s in zip(r["answers"]["text"], r["answers"]["answer_start"])]},
                     r["context"]) for r in raw[split]]
            for split in ("train", "validation")
        }
    rows = {}
    for split, split_entries in entries.items():
        rows[split] = [row for entry in split_entries if (row := check_row(entry, split, skipped)) is not None]
        skipped.report(task.name, split, len(rows[split]))
        if not rows[split]:
            raise ConfigError(f"data: the SQuAD {split} split has no usable row")
    return rows


class QAFeatures:
    """Tokenises (question, context) pairs into overlapping windows of ``max_length`` tokens."""

    def __init__(self, tokenizer, max_length: int, doc_stride: int, max_question_length: int):
        if not getattr(tokenizer, "is_fast", False):
            raise ConfigError("backbone: extractive QA needs a fast tokenizer (offset mappings)")
        if doc_stride >= max_length - max_question_length - 3:
            raise ConfigError(
                f"data.doc_stride={doc_stride} must be below data.max_length - data.max_question_length - 3 "
                f"= {max_length - max_question_length - 3} (the context tokens of one window)"
            )
        self.tokenizer, self.max_length, self.doc_stride, self.max_question_length = tokenizer, max_length, doc_stride, max_question_length

    def _questions(self, rows: list[dict]) -> list[str]:
        """Questions cut to ``max_question_length`` tokens, so a window always has context room."""
        out = []
        for row in rows:
            ids = self.tokenizer(row["question"], add_special_tokens=False)["input_ids"]
            out.append(row["question"] if len(ids) <= self.max_question_length else self.tokenizer.decode(ids[: self.max_question_length]))
        return out

    def encode(self, rows: list[dict]):
        return self.tokenizer(
            self._questions(rows), [r["context"] for r in rows],
            truncation="only_second", max_length=self.max_length, stride=self.doc_stride,
            return_overflowing_tokens=True, return_offsets_mapping=True,
        )

    def train(self, rows: list[dict]) -> list[dict]:
        """Features with start/end token positions; an answer outside a window points at token 0 (CLS)."""
        encoded = self.encode(rows)
        features = []
        for i, offsets in enumerate(encoded["offset_mapping"]):
            row = rows[encoded["overflow_to_sample_mapping"][i]]
            sequence = encoded.sequence_ids(i)
            start_char = row["answers"]["answer_start"][0]
            end_char = start_char + len(row["answers"]["text"][0])
            context = [t for t, s in enumerate(sequence) if s == 1]
            first, last = context[0], context[-1]
            if offsets[first][0] <= start_char and offsets[last][1] >= end_char:
                start = next(t for t in range(first, last + 1) if offsets[t][1] > start_char)
                end = next(t for t in range(last, first - 1, -1) if offsets[t][0] < end_char)
            else:
                start = end = 0
            features.append(self._inputs(encoded, i) | {"start_positions": start, "end_positions": end})
        return features

    def evaluation(self, rows: list[dict]) -> list[dict]:
        """Features with the example id and offsets (``None`` outside the context) for post-processing."""
        encoded = self.encode(rows)
        features = []
        for i, offsets in enumerate(encoded["offset_mapping"]):
            sequence = encoded.sequence_ids(i)
            features.append(self._inputs(encoded, i) | {
                "example": encoded["overflow_to_sample_mapping"][i],
                "offsets": [tuple(o) if s == 1 else None for o, s in zip(offsets, sequence)],
            })
        return features

    @staticmethod
    def _inputs(encoded, i: int) -> dict:
        return {k: encoded[k][i] for k in ("input_ids", "attention_mask", "token_type_ids") if k in encoded}


def pad(sequences: list, value: int) -> torch.Tensor:
    longest = max(len(s) for s in sequences)
    return torch.tensor([list(s) + [value] * (longest - len(s)) for s in sequences], dtype=torch.long)


class QACollator:
    """Training: pads stored features. Evaluation: tokenises a batch of questions on the fly (memory
    bounded by the batch, whatever the dev set's size) and passes example ids, offsets, contexts
    and gold answers through as lists."""

    def __init__(self, features: QAFeatures):
        self.features = features
        self.pad_id = features.tokenizer.pad_token_id or 0

    def tensors(self, features: list[dict]) -> dict:
        batch = {"input_ids": pad([f["input_ids"] for f in features], self.pad_id),
                 "attention_mask": pad([f["attention_mask"] for f in features], 0)}
        if "token_type_ids" in features[0]:
            batch["token_type_ids"] = pad([f["token_type_ids"] for f in features], 0)
        return batch

    def train(self, features: list[dict]) -> dict:
        batch = self.tensors(features)
        for key in ("start_positions", "end_positions"):
            batch[key] = torch.tensor([f[key] for f in features])
        return batch

    def evaluation(self, rows: list[dict]) -> dict:
        features = self.features.evaluation(rows)
        batch = self.tensors(features)
        examples = [rows[f["example"]] for f in features]
        batch["example_ids"] = [e["id"] for e in examples]
        batch["positions"] = [e["position"] for e in examples]  # in the dev set: DDP shares merge by it
        batch["offsets"] = [f["offsets"] for f in features]
        batch["contexts"] = [e["context"] for e in examples]
        batch["questions"] = [e["question"] for e in examples]
        batch["golds"] = [e["answers"]["text"] for e in examples]
        return batch


class SquadDataModule(TaskDataModule):
    """SQuAD features for training (with answer positions) and evaluation (with offsets)."""

    shared_defaults = {"batch_size": 12, "eval_batch_size": 32}  # 384-token windows

    def __init__(self, task: SquadTask, tokenizer, *, max_length: int = 384, doc_stride: int = 128,
                 max_question_length: int = 64, max_positions: int | None = None, **shared):
        super().__init__(task, tokenizer, **{**self.shared_defaults, **shared})  # the shared settings: TaskDataModule
        check_positions("data.max_length", max_length, max_positions)
        self.features = QAFeatures(tokenizer, max_length, doc_stride, max_question_length)
        self.max_length = max_length
        self.skipped = SkippedRows()
        self.examples: dict[str, list[dict]] | None = None

    def setup(self, stage: str | None = None) -> None:
        if self.datasets is not None:
            return
        self.examples = self.first_rows(load_squad(self.task, self.data_dir, self.skipped))
        train = self.features.train(self.examples["train"])
        compact = lambda f: {k: np.asarray(v, dtype=np.int32) if isinstance(v, list) else v for k, v in f.items()}  # noqa: E731
        self.datasets = {"train": [compact(f) for f in train], "validation": self.numbered(self.examples["validation"])}
        log.info("%s: %d train questions -> %d features; %d dev questions (tokenised per batch)", self.task.name,
                 len(self.examples["train"]), len(train), len(self.examples["validation"]))

    def eval_lengths(self) -> list[int]:
        """Characters of question and context: dev questions are tokenised per batch, and characters order them
        almost as tokens would (a long context also brings more stride windows, all in its own batch)."""
        return [len(row["question"]) + len(row["context"]) for row in self.datasets["validation"]]

    def trivial_baseline(self) -> None:
        """No constant predictor exists for span extraction; the report shows no baseline row for SQuAD."""
        return None

    def train_dataloader(self) -> DataLoader:
        return self.train_loader(QACollator(self.features).train)

    def val_dataloader(self) -> DataLoader:
        return self.eval_loader(QACollator(self.features).evaluation)
