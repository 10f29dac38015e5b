"""Summarisation over an adapter-equipped encoder–decoder: teacher-forced training, generated
summaries for evaluation, ROUGE-1/2/L."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from tasks.base import AdapterModule
from tasks.seq2seq.data import IGNORE, XSumTask
from tasks.seq2seq.metrics import rouge_scores

SAMPLE_CHARACTERS = 500  # of each document, for the sample table


class Seq2SeqModule(AdapterModule):
    task_head = "seq2seq-lm"
    encoder_decoder = True

    def __init__(self, backbone, adapter, optimizer, task: XSumTask):
        super().__init__(backbone, adapter, optimizer, task.head_config)
        self.task = task
        self._generated: dict[int, tuple[str, str, str]] = {}  # dev position -> (summary, reference, document's start)

    def forward(self, batch) -> torch.Tensor:
        """Teacher-forced logits; the model shifts ``labels`` right into decoder inputs."""
        return self.model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], labels=batch["labels"]).logits

    def loss(self, logits: torch.Tensor, labels: torch.Tensor, temperature: float = 1.0, smoothing: float = 0.0) -> torch.Tensor:
        return F.cross_entropy((logits.float() / temperature).flatten(0, 1), labels.flatten(), ignore_index=IGNORE, label_smoothing=smoothing)

    def scoring_loss(self, batch, temperature: float = 1.0) -> torch.Tensor:
        """The training loss (with its smoothing) through encoder and decoder, logits / temperature."""
        return self.loss(self(batch), batch["labels"], temperature, self.task.label_smoothing)

    def training_step(self, batch, batch_idx):
        loss = self.scoring_loss(batch)
        self.log("train/loss", loss, prog_bar=True, batch_size=batch["input_ids"].shape[0])
        return loss

    def validation_step(self, batch, batch_idx):
        self.log("val/loss", self.loss(self(batch), batch["labels"]), batch_size=batch["input_ids"].shape[0], sync_dist=True)  # mean over ranks
        summaries = self.generate(batch)
        for position, summary, reference, document in zip(batch["positions"], summaries, batch["references"], batch["documents"]):
            self._generated[position] = (summary, reference, document[:SAMPLE_CHARACTERS])

    def generate(self, batch) -> list[str]:
        """Summaries of the batch's documents (the decoder generates from the encoded source)."""
        generated = self.model.generate(
            input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], num_beams=self.task.num_beams,
            length_penalty=self.task.length_penalty, max_new_tokens=self.task.max_new_tokens, do_sample=False,
        )
        return [text.strip() for text in self.tokenizer.batch_decode(generated, skip_special_tokens=True)]

    def on_validation_epoch_end(self):
        entries = self.gather_dev_outputs(self._generated)  # every document once, in dev order (under DDP: from every process)
        scores = rouge_scores([summary for summary, _, _ in entries], [reference for _, reference, _ in entries])
        self.log_dict({f"val/{k}": v for k, v in scores.items()}, prog_bar=True)
        self.sample_predictions = [
            {"document": d, "summary": p, "reference": r} for p, r, d in entries[: self.task.num_samples]
        ]
        self._generated = {}
