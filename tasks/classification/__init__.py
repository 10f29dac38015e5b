"""Sequence classification and regression (GLUE)."""

from tasks.classification.data import GlueDataModule, GlueTask
from tasks.classification.module import ClassificationModule

__all__ = ["ClassificationModule", "GlueDataModule", "GlueTask"]
