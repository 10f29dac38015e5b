"""Abstractive summarisation (XSum) on encoder–decoder backbones: ROUGE-1/2/L."""

from tasks.seq2seq.data import XSumDataModule, XSumTask
from tasks.seq2seq.module import Seq2SeqModule

__all__ = ["Seq2SeqModule", "XSumDataModule", "XSumTask"]
