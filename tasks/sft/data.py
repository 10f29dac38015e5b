"""Instruction data for decoder-only LMs: files or hub datasets → chat turns → tokens with response-only labels.

``task.path`` is a ``.jsonl`` (``.jsonl.gz``), ``.json`` or ``.parquet`` file (relative paths: under
``data_dir`` when the file is there, else against the launch folder) or a hub dataset name. The held-out
rows are ``task.eval_path`` when given, else a seeded split of ``task.path`` (``validation_size`` rows, or
a ``validation_fraction``), the same on every machine and run (``split_seed``, not the run's seed).
"""

from __future__ import annotations

import gzip
import json
import logging
import math
import random
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader

from sparse_adapter.backbones import hub_reachable
from sparse_adapter.errors import ConfigError
from tasks.data import TaskDataModule
from tasks.family import TaskFamily, check_positions
from tasks.rows import SkippedRows
from tasks.seq2seq.data import lead_sentence
from tasks.seq2seq.metrics import rouge_scores
from tasks.sft.formats import FORMATS, BadRow, detect_format, source_text, to_messages
from tasks.sft.metrics import gsm8k_scores, most_frequent_answer
from tasks.sft.templates import IGNORE, ChatTemplate

log = logging.getLogger(__name__)
GENERATION = ("none", "gsm8k", "rouge")
SUFFIXES = (".jsonl", ".jsonl.gz", ".json", ".parquet")


@dataclass
class SFTTask(TaskFamily):
    """Supervised fine-tuning of a decoder-only LM on instruction data, loss on the responses only.

    ``generation``: what evaluation generates and scores besides the response loss, perplexity and token
    accuracy: ``gsm8k`` (exact match of the final number, strict and flexible), ``rouge`` or ``none``.
    """

    name: str = "sft"
    main_metric: str = "token_accuracy"
    path: str | None = None
    eval_path: str | None = None
    validation_fraction: float = 0.1
    validation_size: int | None = None
    split_seed: int = 0
    format: str = "auto"
    columns: dict = field(default_factory=dict)
    prompt: str | None = None
    system: str | None = None
    chat_template: str = "auto"
    train_on_prompt: bool = False
    hub_split: str = "train"
    label_smoothing: float = 0.0
    generation: str = "none"
    max_new_tokens: int = 64
    num_beams: int = 1
    num_samples: int = 8
    module: str = "tasks.sft.module.SFTModule"
    datamodule: str = "tasks.sft.data.SFTDataModule"

    head_config = {}  # class attribute: the LM head needs no options

    def validate(self) -> None:
        if not self.path:
            raise ConfigError("task.path: name a .jsonl/.json/.parquet file or a hub dataset "
                              "(task=sft task.path=my_data.jsonl)")
        if self.format not in ("auto", *FORMATS):
            raise ConfigError(f"task.format={self.format}: choose from auto, {', '.join(FORMATS)}")
        if self.generation not in GENERATION:
            raise ConfigError(f"task.generation={self.generation}: choose from {', '.join(GENERATION)}")
        if not 0.0 < self.validation_fraction < 1.0:
            raise ConfigError(f"task.validation_fraction={self.validation_fraction} must be in (0, 1)")
        if not 0.0 <= self.label_smoothing < 1.0:
            raise ConfigError(f"task.label_smoothing={self.label_smoothing} must be in [0, 1)")
        if self.num_beams < 1 or self.max_new_tokens < 1:
            raise ConfigError(f"task.num_beams={self.num_beams} and task.max_new_tokens={self.max_new_tokens} "
                              "must be ≥ 1")
        if not isinstance(self.columns, dict):
            raise ConfigError(f"task.columns={self.columns!r}: a mapping of our field names to yours, "
                              "e.g. {prompt: question}")


def resolve(path: str, data_dir: str | None) -> Path | None:
    """The local file ``path`` names (under ``data_dir`` first), or None for a hub name."""
    from hydra.utils import to_absolute_path

    under_data = [Path(data_dir) / path] if data_dir and not Path(path).is_absolute() else []
    candidates = under_data + [Path(to_absolute_path(path))]
    for candidate in candidates:
        if candidate.is_file():
            return candidate
    if Path(path).suffix in (".jsonl", ".json", ".parquet", ".gz") or path.startswith((".", "/", "~")):
        looked = ", ".join(str(c) for c in candidates)
        hint = "" if data_dir else "; set SPARSE_ADAPTER_DATA (data_dir) to the folder that holds it"
        raise ConfigError(f"task.path: no file '{path}' (looked at {looked}){hint}")
    return None


def read_rows(path: Path, skipped: SkippedRows) -> list:
    name = path.name.lower()
    if not name.endswith(SUFFIXES):
        raise ConfigError(f"task.path: '{path}' is not {', '.join(SUFFIXES)}")
    try:
        if name.endswith(".parquet"):
            import pyarrow.parquet as pq

            return pq.read_table(path).to_pylist()
        if name.endswith(".json"):
            with open(path, encoding="utf-8") as handle:
                data = json.load(handle)
            if isinstance(data, dict) and isinstance(data.get("data"), list):
                data = data["data"]
            if not isinstance(data, list):
                raise ConfigError(f"task.path: '{path}' holds a JSON {type(data).__name__}; expected a list of rows")
            return data
        rows = []
        with (gzip.open if name.endswith(".gz") else open)(path, "rt", encoding="utf-8") as handle:
            for line in handle:
                if line.strip():
                    try:
                        rows.append(json.loads(line))
                    except json.JSONDecodeError:
                        skipped.skip("file", "malformed JSON")
        return rows
    except ConfigError:
        raise
    except EOFError as error:
        raise ConfigError(f"task.path: '{path}' is truncated ({error})") from error
    except (OSError, UnicodeDecodeError, ValueError) as error:
        raise ConfigError(f"task.path: cannot read '{path}': {str(error).splitlines()[0]}") from error


def read_source(path: str, data_dir: str | None, split: str, skipped: SkippedRows) -> list:
    local = resolve(path, data_dir)
    if local is not None:
        return read_rows(local, skipped)
    if not hub_reachable():
        raise ConfigError(f"task.path: '{path}' is no local file and the hub is unreachable (offline); "
                          "give a .jsonl/.json/.parquet path")
    from datasets import load_dataset

    try:
        return list(load_dataset(path, split=split))
    except Exception as error:  # datasets raises many types for a missing name or split
        reason = str(error).splitlines()[0]
        raise ConfigError(f"task.path: cannot load the hub dataset '{path}' (split {split}): {reason}") from error


def load_examples(task: SFTTask, data_dir: str | None, skipped: SkippedRows) -> dict[str, list[dict]]:
    """split → [{"messages", "source"}], rows that cannot be read counted and skipped."""
    rows = read_source(task.path, data_dir, task.hub_split, skipped)
    if task.eval_path:
        raw = {"train": rows, "validation": read_source(task.eval_path, data_dir, "test", skipped)}
    else:
        order = list(range(len(rows)))
        random.Random(task.split_seed).shuffle(order)
        size = task.validation_size
        if size is None:
            size = math.ceil(task.validation_fraction * len(rows))
        if not 0 < size < len(rows):
            raise ConfigError(f"task.validation_size={size} must be between 1 and {len(rows) - 1} "
                              f"(rows in {task.path}); or give task.eval_path")
        raw = {"validation": [rows[i] for i in order[:size]], "train": [rows[i] for i in order[size:]]}
    skipped.report(task.name, "file", len(rows))
    forms = {}
    for split, source in (("train", task.path), ("validation", task.eval_path or task.path)):  # each file its own form
        first = next((r for r in raw[split] if r is not None), None)
        forms[split] = task.format if task.format != "auto" else detect_format(first, task.columns, task.prompt, source)
    clean = {}
    for split in ("train", "validation"):
        entries, clean[split], form = raw[split], [], forms[split]
        for entry in entries:
            try:
                messages = to_messages(entry, form, task.columns, task.prompt, task.system)
            except BadRow as reason:
                skipped.skip(split, str(reason))
                continue
            clean[split].append({"messages": messages, "source": source_text(entry, task.columns)})
        skipped.report(task.name, split, len(clean[split]))
        if not clean[split]:
            reasons = ", ".join(f"{r}: {n}" for r, n in sorted(skipped.as_dict().get(split, {}).items()))
            source = task.eval_path if split == "validation" and task.eval_path else task.path
            raise ConfigError(f"task.path: the {split} rows of {source} ({form}) have no usable row "
                              f"({reasons or 'none'})")
    return clean


class SFTCollator:
    """Training: right-pads stored ids (labels -100). Evaluation adds the left-padded prompts for generation."""

    def __init__(self, template: ChatTemplate, max_length: int, max_target_length: int, train_on_prompt: bool):
        self.template, self.max_length, self.max_target_length = template, max_length, max_target_length
        self.train_on_prompt = train_on_prompt
        tokenizer = template.tokenizer
        self.pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0

    def encode(self, examples: list[dict]) -> list[dict]:
        out = []
        for example in examples:
            encoded = self.template.encode(example["messages"], self.max_length, self.max_target_length,
                                           self.train_on_prompt)
            out.append({"input_ids": np.asarray(encoded.input_ids, dtype=np.int32),
                        "labels": np.asarray(encoded.labels, dtype=np.int32), "prompt_length": encoded.prompt_length})
        return out

    @staticmethod
    def pad(sequences: list, value: int, left: bool = False) -> torch.Tensor:
        out = torch.full((len(sequences), max(len(s) for s in sequences)), value, dtype=torch.long)
        for i, sequence in enumerate(sequences):
            if len(sequence):
                if left:
                    out[i, -len(sequence):] = torch.as_tensor(sequence, dtype=torch.long)
                else:
                    out[i, : len(sequence)] = torch.as_tensor(sequence, dtype=torch.long)
        return out

    def train(self, features: list[dict]) -> dict:
        ids = [f["input_ids"] for f in features]
        return {"input_ids": self.pad(ids, self.pad_id), "attention_mask": (self.pad(ids, -1) != -1).long(),
                "labels": self.pad([f["labels"] for f in features], IGNORE)}

    def evaluation(self, rows: list[dict]) -> dict:
        """Dev rows are tokenised per batch; prompts left-padded so that generation continues right after each."""
        features = self.encode(rows)
        prompts = [f["input_ids"][: f["prompt_length"]] for f in features]
        return self.train(features) | {
            "prompt_ids": self.pad(prompts, self.pad_id, left=True),
            "prompt_mask": (self.pad(prompts, -1, left=True) != -1).long(),
            "references": [r["messages"][-1]["content"] if r["messages"][-1]["role"] == "assistant" else
                           [m for m in r["messages"] if m["role"] == "assistant"][-1]["content"] for r in rows],
            "prompts": [next((m["content"] for m in reversed(r["messages"]) if m["role"] == "user"), "") for r in rows],
            "positions": [r["position"] for r in rows],
        }


class SFTDataModule(TaskDataModule):
    """Prompts cut to ``max_length`` tokens, responses to ``max_target_length`` (tasks/sft/templates.py says where)."""

    shared_defaults = {"batch_size": 8, "eval_batch_size": 16}  # 512-token prompts + responses

    def __init__(self, task: SFTTask, tokenizer, *, max_length: int = 512, max_target_length: int = 256,
                 max_positions: int | None = None, **shared):
        super().__init__(task, tokenizer, **{**self.shared_defaults, **shared})  # the shared settings: TaskDataModule
        task.validate()
        if max_length < 1 or max_target_length < 1:
            raise ConfigError(f"data.max_length={max_length} and data.max_target_length={max_target_length} "
                              "must be ≥ 1")
        longest = max(max_target_length, task.max_new_tokens if task.generation != "none" else 0)
        check_positions("data.max_length + max(data.max_target_length, task.max_new_tokens)", max_length + longest,
                        max_positions)
        self.collator = SFTCollator(ChatTemplate(tokenizer, task.chat_template), max_length, max_target_length,
                                    task.train_on_prompt)
        self.skipped = SkippedRows()
        self.examples: dict[str, list[dict]] | None = None

    def setup(self, stage: str | None = None) -> None:
        if self.datasets is not None:
            return
        self.examples = self.first_rows(load_examples(self.task, self.data_dir, self.skipped))
        self.datasets = {"train": self.collator.encode(self.examples["train"]),
                         "validation": self.numbered(self.examples["validation"])}
        log.info("%s: %d train and %d validation rows (%s template)", self.task.name, len(self.datasets["train"]),
                 len(self.examples["validation"]), self.collator.template.name)

    def summary_fields(self) -> dict:
        return {"dataset": self.task.path, "eval_dataset": self.task.eval_path,
                "chat_template": self.collator.template.name}

    def eval_lengths(self) -> list[int]:
        return [sum(len(m["content"]) for m in row["messages"]) for row in self.datasets["validation"]]

    def trivial_baseline(self) -> dict:
        """GSM8K: the most frequent training answer; ROUGE: LEAD-1 of the source; else the commonest response token."""
        self.setup()
        train, dev = self.examples["train"], self.examples["validation"]
        answers = lambda rows: [m["content"] for r in rows for m in r["messages"][-1:]]  # noqa: E731
        if self.task.generation == "gsm8k":
            guess = most_frequent_answer(answers(train))
            return {"predictor": f"most frequent training answer ({guess})",
                    "metrics": gsm8k_scores([guess] * len(dev), answers(dev))}
        if self.task.generation == "rouge":
            sources = [r["source"] or r["messages"][-2]["content"] for r in dev]
            return {"predictor": "LEAD-1 (first sentence)",
                    "metrics": rouge_scores([lead_sentence(s) for s in sources], answers(dev))}
        counts = Counter(int(t) for f in self.datasets["train"] for t in f["labels"] if t != IGNORE)
        token = counts.most_common(1)[0][0] if counts else None
        dev_labels = [int(t) for f in self.collator.encode(dev) for t in f["labels"][1:] if t != IGNORE]
        accuracy = sum(t == token for t in dev_labels) / len(dev_labels) if dev_labels else 0.0
        return {"predictor": "the most frequent response token", "metrics": {"token_accuracy": accuracy}}

    def train_dataloader(self) -> DataLoader:
        return self.train_loader(self.collator.train)

    def val_dataloader(self) -> DataLoader:
        return self.eval_loader(self.collator.evaluation)
