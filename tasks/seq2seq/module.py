"""Summarisation over an adapter-equipped encoder–decoder: teacher-forced training, generated
summaries for evaluation, ROUGE-1/2/L."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from tasks.base import AdapterModule
from tasks.seq2seq.data import IGNORE, XSumTask
from tasks.seq2seq.metrics import rouge_scores


class Seq2SeqModule(AdapterModule):
    task_head = "seq2seq-lm"
    encoder_decoder = True

    def __init__(self, backbone, adapter, optimizer, task: XSumTask):
        super().__init__(backbone, adapter, optimizer, task.head_config)
        self.task = task
        self._predictions: list[str] = []
        self._references: list[str] = []
        self._documents: list[str] = []

    def forward(self, batch) -> torch.Tensor:
        """Teacher-forced logits; the model shifts ``labels`` right into decoder inputs."""
        return self.model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], labels=batch["labels"]).logits

    def loss(self, logits: torch.Tensor, labels: torch.Tensor, temperature: float = 1.0, smoothing: float = 0.0) -> torch.Tensor:
        return F.cross_entropy((logits / temperature).flatten(0, 1).float(), labels.flatten(), ignore_index=IGNORE, label_smoothing=smoothing)

    def scoring_loss(self, batch, temperature: float = 1.0) -> torch.Tensor:
        """The training loss (with its smoothing) through encoder and decoder, logits / temperature."""
        return self.loss(self(batch), batch["labels"], temperature, self.task.label_smoothing)

    def training_step(self, batch, batch_idx):
        loss = self.scoring_loss(batch)
        self.log("train/loss", loss, prog_bar=True, batch_size=batch["input_ids"].shape[0])
        return loss

    def validation_step(self, batch, batch_idx):
        self.log("val/loss", self.loss(self(batch), batch["labels"]), batch_size=batch["input_ids"].shape[0])
        generated = self.model.generate(
            input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], num_beams=self.task.num_beams,
            length_penalty=self.task.length_penalty, max_new_tokens=self.task.max_new_tokens, do_sample=False,
        )
        self._predictions += [text.strip() for text in self.tokenizer.batch_decode(generated, skip_special_tokens=True)]
        self._references += batch["references"]
        room = self.task.num_samples - len(self._documents)
        self._documents += batch["documents"][: max(room, 0)]

    def on_validation_epoch_end(self):
        self.log_dict({f"val/{k}": v for k, v in rouge_scores(self._predictions, self._references).items()}, prog_bar=True)
        self.sample_predictions = [
            {"document": d[:500], "summary": p, "reference": r}
            for d, p, r in zip(self._documents, self._predictions, self._references)
        ]
        self._predictions, self._references, self._documents = [], [], []
