"""Extractive question answering (SQuAD v1.1): exact match and F1."""

from tasks.qa.data import SquadDataModule, SquadTask
from tasks.qa.module import QAModule

__all__ = ["QAModule", "SquadDataModule", "SquadTask"]
