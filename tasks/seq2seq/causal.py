"""Summarisation on decoder-only backbones (Llama, Qwen, Mistral, GPT-2) as a causal LM.

Source and target are one sequence, ``PROMPT`` then the summary and EOS; the loss covers the
summary tokens only (the prompt's labels are -100). Evaluation left-pads the prompts, generates
greedily after them and scores the new tokens with the same ROUGE as the encoder–decoder family.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from tasks.family import check_positions
from tasks.seq2seq.data import IGNORE, Seq2SeqCollator, XSumDataModule
from tasks.seq2seq.module import Seq2SeqModule

PROMPT = ("Summarize: ", "\nSummary:")  # "Summarize: {document}\nSummary: {summary}<eos>"; the document is cut, never the template


class CausalCollator(Seq2SeqCollator):
    """Rows → [bos] prompt(document) summary eos, labels on the summary only; evaluation adds the
    left-padded prompts alone (``prompt_ids``/``prompt_mask``) for generation."""

    def __init__(self, tokenizer, max_length: int, max_target_length: int):
        super().__init__(tokenizer, max_length, max_target_length)
        words = lambda text, limit=None: tokenizer(text, add_special_tokens=False, truncation=limit is not None,  # noqa: E731
                                                   max_length=limit)["input_ids"]
        bos = [tokenizer.bos_token_id] if tokenizer.bos_token_id is not None else []
        self.head, self.tail = bos + words(PROMPT[0]), words(PROMPT[1])
        eos = tokenizer.eos_token_id if tokenizer.eos_token_id is not None else tokenizer.sep_token_id
        self.eos = [eos] if eos is not None else []
        self.words = words

    def prompt(self, document: str) -> list[int]:
        room = max(1, self.max_length - len(self.head) - len(self.tail))
        return self.head + self.words(document, room) + self.tail

    def encode(self, rows: list[dict]) -> list[dict]:
        out = []
        for row in rows:
            prompt = self.prompt(row["document"])
            target = self.words(" " + row["summary"], max(1, self.max_target_length - len(self.eos))) + self.eos
            out.append({"input_ids": np.asarray(prompt + target, dtype=np.int32),
                        "labels": np.asarray([IGNORE] * len(prompt) + target, dtype=np.int32)})
        return out

    def evaluation(self, rows: list[dict]) -> dict:
        prompts = [self.prompt(r["document"]) for r in rows]
        width = max(len(p) for p in prompts)
        prompt_ids = torch.full((len(prompts), width), self.pad_id, dtype=torch.long)
        prompt_mask = torch.zeros((len(prompts), width), dtype=torch.long)
        for i, prompt in enumerate(prompts):  # left padding: generation continues right after each prompt
            prompt_ids[i, width - len(prompt):] = torch.as_tensor(prompt)
            prompt_mask[i, width - len(prompt):] = 1
        return super().evaluation(rows) | {"prompt_ids": prompt_ids, "prompt_mask": prompt_mask}


class CausalXSumDataModule(XSumDataModule):
    collator_class = CausalCollator

    def __init__(self, task, tokenizer, data_dir: str | None = None, max_length: int = 512, max_target_length: int = 128,
                 batch_size: int = 8, eval_batch_size: int = 16, max_train_samples: int | None = None,
                 max_eval_samples: int | None = None, num_workers: int = 0, seed: int = 0, max_positions: int | None = None,
                 group_by_length: bool = False):
        super().__init__(task, tokenizer, data_dir, max_length, max_target_length, batch_size, eval_batch_size, max_train_samples,
                         max_eval_samples, num_workers, seed, max_positions, group_by_length)
        # prompt and summary share one sequence
        check_positions("data.max_length + data.max_target_length", max_length + max_target_length, max_positions)


class CausalSummaryModule(Seq2SeqModule):
    task_head = "causal-lm"
    encoder_decoder = False

    def forward(self, batch) -> torch.Tensor:
        """Next-token logits aligned with ``labels[:, 1:]``."""
        return self.model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits[:, :-1]

    def loss(self, logits, labels, temperature: float = 1.0, smoothing: float = 0.0) -> torch.Tensor:
        return F.cross_entropy((logits / temperature).flatten(0, 1).float(), labels[:, 1:].flatten(), ignore_index=IGNORE,
                               label_smoothing=smoothing)

    def generate(self, batch) -> list[str]:
        prompts = batch["prompt_ids"]
        generated = self.model.generate(
            input_ids=prompts, attention_mask=batch["prompt_mask"], num_beams=self.task.num_beams, length_penalty=self.task.length_penalty,
            max_new_tokens=self.task.max_new_tokens, do_sample=False, pad_token_id=self.tokenizer.pad_token_id,
            eos_token_id=self.collator_eos(),
        )
        return [text.strip() for text in self.tokenizer.batch_decode(generated[:, prompts.shape[1]:], skip_special_tokens=True)]

    def collator_eos(self):
        return self.tokenizer.eos_token_id if self.tokenizer.eos_token_id is not None else self.tokenizer.sep_token_id
