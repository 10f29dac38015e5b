"""Extractive QA over an adapter-equipped encoder: start/end logits, n-best spans, SQuAD EM/F1."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from tasks.base import AdapterModule
from tasks.qa.data import SquadTask
from tasks.qa.metrics import squad_scores
from tasks.qa.postprocess import best_spans

INPUTS = ("input_ids", "attention_mask", "token_type_ids")


class QAModule(AdapterModule):
    task_head = "question-answering"
    encoder_decoder = False  # an encoder with a span head (BERT, RoBERTa, MiniLM)

    def __init__(self, backbone, adapter, optimizer, task: SquadTask):
        super().__init__(backbone, adapter, optimizer, task.head_config)
        self.task = task
        self._best: dict[int, tuple] = {}  # dev position -> (score, prediction, golds, question); one entry per question

    def forward(self, batch) -> tuple[torch.Tensor, torch.Tensor]:
        output = self.model(**{k: batch[k] for k in INPUTS if k in batch})
        return output.start_logits.float(), output.end_logits.float()  # fp32 spans under bf16 autocast too

    def scoring_loss(self, batch, temperature: float = 1.0) -> torch.Tensor:
        """Mean of the start and end cross-entropies (as BertForQuestionAnswering), logits / temperature."""
        start, end = self(batch)
        return (F.cross_entropy(start / temperature, batch["start_positions"]) + F.cross_entropy(end / temperature, batch["end_positions"])) / 2

    def training_step(self, batch, batch_idx):
        loss = self.scoring_loss(batch)
        self.log("train/loss", loss, prog_bar=True, batch_size=batch["input_ids"].shape[0])
        return loss

    def validation_step(self, batch, batch_idx):
        start, end = (t.float().cpu().numpy() for t in self(batch))
        for i, position in enumerate(batch["positions"]):
            spans = best_spans(start[i], end[i], batch["offsets"][i], self.task.n_best_size, self.task.max_answer_length)
            score, text = (spans[0][0], batch["contexts"][i][spans[0][1]: spans[0][2]]) if spans else (float("-inf"), "")
            if position not in self._best or score > self._best[position][0]:
                self._best[position] = (score, text, batch["golds"][i], batch["questions"][i])

    def on_validation_epoch_end(self):
        entries = self.gather_dev_outputs(self._best)  # every question once, in dev order (under DDP: from every process)
        scores = squad_scores([e[1] for e in entries], [e[2] for e in entries])
        self.log_dict({f"val/{k}": v for k, v in scores.items()}, prog_bar=True)
        self.sample_predictions = [
            {"question": q, "prediction": p, "gold": " | ".join(g)} for _, p, g, q in entries[: self.task.num_samples]
        ]
        self._best = {}
