"""Supervised fine-tuning of a decoder-only LM: next-token loss on the response tokens only (labels -100 on
the prompt and padding), so training, every pruner's score and the dev loss see the same objective.

Dev metrics: response loss (token-weighted mean), perplexity exp(loss), token accuracy (greedy next token
on response positions), and, as the task says, GSM8K exact match or ROUGE of greedy generations after
left-padded prompts.
"""

from __future__ import annotations

import math
import re

import torch
import torch.nn.functional as F
from transformers.models.auto.modeling_auto import (
    MODEL_FOR_MASKED_LM_MAPPING_NAMES,
    MODEL_FOR_SEQ_TO_SEQ_CAUSAL_LM_MAPPING_NAMES,
)

from sparse_adapter.errors import ConfigError
from sparse_adapter.lm_loss import causal_lm_loss
from tasks.base import AdapterModule
from tasks.seq2seq.metrics import rouge_scores
from tasks.sft.data import SFTTask
from tasks.sft.metrics import gsm8k_scores
from tasks.sft.templates import IGNORE, end_token_id

SAMPLE_CHARACTERS = 500
DECODER_ONLY = "tiny-llama, tiny-qwen3, tiny-gpt2, llama-3.2-1b, qwen2.5-0.5b, gpt2"


class SFTModule(AdapterModule):
    task_head = "causal-lm"
    encoder_decoder = False

    def __init__(self, backbone, adapter, optimizer, task: SFTTask):
        self.task_label = task.name
        try:
            super().__init__(backbone, adapter, optimizer, task.head_config)
        except ConfigError as error:  # T5 and kin have no causal-LM head at all: say which tasks they take
            found = re.search(r"backbone '([^']+)' has no causal-lm head", str(error))
            if found is None:
                raise
            refusal = self.refusal(found.group(1), "an encoder–decoder", "task=xsum and the classification tasks")
            raise ConfigError(refusal) from error
        self.task = task
        self._generated: dict[int, tuple[str, str, str]] = {}  # dev position -> (output, reference, prompt's start)
        self._sums = torch.zeros(3, dtype=torch.float64)  # response loss sum, correct next tokens, response tokens

    def check_architecture(self) -> None:
        """A bidirectional encoder sees the token it predicts; an encoder–decoder's decoder alone lacks its source."""
        model_type = self.model.config.model_type
        encoder_decoder = getattr(self.model.config, "is_encoder_decoder", False)
        if encoder_decoder or model_type in MODEL_FOR_SEQ_TO_SEQ_CAUSAL_LM_MAPPING_NAMES:
            kind, takes = "an encoder–decoder", "task=xsum and the classification tasks"
        elif model_type in MODEL_FOR_MASKED_LM_MAPPING_NAMES:
            kind = "an encoder-only (bidirectional) model"
            takes = "the classification tasks (sst2, mrpc, cola, stsb, rte) and squad"
        else:
            return
        raise ConfigError(self.refusal(model_type, kind, takes))

    def refusal(self, model_type: str, kind: str, takes: str) -> str:
        return (f"backbone: task {self.task_label} is a causal LM and needs a decoder-only backbone ({DECODER_ONLY}); "
                f"'{model_type}' is {kind}, which takes {takes}")

    def forward(self, batch) -> torch.Tensor:
        """Next-token logits aligned with ``labels[:, 1:]``."""
        return self.model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits[:, :-1]

    def scoring_loss(self, batch, temperature: float = 1.0) -> torch.Tensor:
        """The training loss: mean cross-entropy over the response tokens (with its smoothing), logits / temperature, in
        fp32 at least; the LM head runs on the response tokens only, in chunks (``sparse_adapter.lm_loss``)."""
        return causal_lm_loss(self.model, batch["input_ids"], batch["attention_mask"], batch["labels"], temperature,
                              self.task.label_smoothing)

    def training_step(self, batch, batch_idx):
        loss = self.scoring_loss(batch)
        self.log("train/loss", loss, prog_bar=True, batch_size=batch["input_ids"].shape[0])
        return loss

    def on_validation_epoch_start(self):
        self._sums = torch.zeros(3, dtype=torch.float64, device=self.device)
        self._generated = {}

    def validation_step(self, batch, batch_idx):
        logits, labels = self(batch), batch["labels"][:, 1:]
        kept = labels != IGNORE
        total = F.cross_entropy(logits.flatten(0, 1).float(), labels.flatten(), ignore_index=IGNORE, reduction="sum")
        correct = (logits.argmax(-1) == labels)[kept].sum()
        self._sums += torch.stack([total.double(), correct.double(), kept.sum().double()]).to(self._sums.device)
        if self.task.generation != "none":
            outputs = self.generate(batch)
            rows = zip(batch["positions"], outputs, batch["references"], batch["prompts"])
            for position, output, reference, prompt in rows:
                self._generated[position] = (output, reference, prompt[:SAMPLE_CHARACTERS])

    def generate(self, batch) -> list[str]:
        """Greedy continuations of the left-padded prompts, decoded without special tokens."""
        prompts = batch["prompt_ids"]
        ends = {end_token_id(self.tokenizer)}
        configured = getattr(getattr(self.model, "generation_config", None), "eos_token_id", None)
        ends |= set(configured) if isinstance(configured, list) else {configured}
        generated = self.model.generate(
            input_ids=prompts, attention_mask=batch["prompt_mask"], num_beams=self.task.num_beams,
            max_new_tokens=self.task.max_new_tokens, do_sample=False, pad_token_id=self.tokenizer.pad_token_id,
            eos_token_id=sorted(e for e in ends if e is not None) or None,
        )
        texts = self.tokenizer.batch_decode(generated[:, prompts.shape[1]:], skip_special_tokens=True)
        return [text.strip() for text in texts]

    def on_validation_epoch_end(self):
        sums = self._sums.clone()
        if self._trainer is not None and self.trainer.world_size > 1:
            torch.distributed.all_reduce(sums)
        loss = (sums[0] / sums[2]).item() if sums[2] > 0 else float("nan")
        accuracy = (sums[1] / sums[2]).item() if sums[2] > 0 else 0.0
        metrics = {"loss": loss, "perplexity": math.exp(min(loss, 700.0)), "token_accuracy": accuracy}
        if self.task.generation != "none":
            entries = self.gather_dev_outputs(self._generated)
            outputs, references = [e[0] for e in entries], [e[1] for e in entries]
            score = gsm8k_scores if self.task.generation == "gsm8k" else rouge_scores
            metrics |= score(outputs, references)
            self.sample_predictions = [{"prompt": p, "output": o, "reference": r}
                                       for o, r, p in entries[: self.task.num_samples]]
        self.log_dict({f"val/{k}": v for k, v in metrics.items()}, prog_bar=True)
        self._generated = {}
