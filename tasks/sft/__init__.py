"""Supervised fine-tuning (instruction tuning) of decoder-only LMs: alpaca / messages / prompt-completion
data, chat templates, loss on the responses only; GSM8K and causal-LM XSum are configurations of it."""

from tasks.sft.data import SFTDataModule, SFTTask
from tasks.sft.module import SFTModule

__all__ = ["SFTDataModule", "SFTModule", "SFTTask"]
