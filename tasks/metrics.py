"""GLUE's official scorers (scikit-learn and SciPy, as the GLUE benchmark computes them) as torchmetrics.

Why not torchmetrics' own classes: their conventions differ on degenerate inputs. On the CoLA dev
set a constant predictor gets Matthews 0.0256 from ``BinaryMatthewsCorrCoef`` and 0.0 from GLUE's
scorer (sklearn). Predictions and labels are gathered (``dist_reduce_fx="cat"``, so every rank's
share counts under DDP) and scored once per evaluation with the official function. Under DDP
Lightning's sampler repeats a few dev rows so that every process gets as many; given each row's dev
position, the score counts every row once, as on one process.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable

import numpy as np
import torch
from torchmetrics import Metric
from torchmetrics.utilities import dim_zero_cat

from sparse_adapter.errors import ConfigError


def accuracy(predictions: np.ndarray, labels: np.ndarray) -> float:
    return float((predictions == labels).mean())


def f1(predictions: np.ndarray, labels: np.ndarray) -> float:
    """F1 of the positive class (label 1), as GLUE scores MRPC; 0.0 when nothing is predicted positive."""
    from sklearn.metrics import f1_score

    return float(f1_score(labels, predictions, pos_label=1, zero_division=0.0))


def matthews(predictions: np.ndarray, labels: np.ndarray) -> float:
    from sklearn.metrics import matthews_corrcoef

    return float(matthews_corrcoef(labels, predictions))


def _correlation(function: Callable, predictions: np.ndarray, labels: np.ndarray) -> float:
    """SciPy's correlation; a constant input (undefined, SciPy's NaN) scores 0.0, as sklearn's Matthews does.

    NaN would poison every average and the value a sweeper optimises; a constant predictor carries
    no correlation, which 0.0 says.
    """
    if np.ptp(predictions) == 0 or np.ptp(labels) == 0:
        return 0.0
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return float(function(predictions, labels)[0])


def pearson(predictions: np.ndarray, labels: np.ndarray) -> float:
    from scipy.stats import pearsonr

    return _correlation(pearsonr, predictions, labels)


def spearman(predictions: np.ndarray, labels: np.ndarray) -> float:
    from scipy.stats import spearmanr

    return _correlation(spearmanr, predictions, labels)


SCORERS: dict[str, Callable[[np.ndarray, np.ndarray], float]] = {
    "accuracy": accuracy, "f1": f1, "matthews": matthews, "pearson": pearson, "spearman": spearman,
}


class GlueScore(Metric):
    """One official GLUE score over all predictions of an evaluation (class ids, or floats for STS-B)."""

    full_state_update = False

    def __init__(self, name: str, **kwargs):
        super().__init__(**kwargs)
        if name not in SCORERS:
            raise ConfigError(f"task.metrics: '{name}' is unknown (choose from {', '.join(SCORERS)})")
        self.name, self.scorer = name, SCORERS[name]
        self.add_state("predictions", default=[], dist_reduce_fx="cat")
        self.add_state("labels", default=[], dist_reduce_fx="cat")
        self.add_state("positions", default=[], dist_reduce_fx="cat")

    def update(self, predictions: torch.Tensor, labels: torch.Tensor, positions: torch.Tensor | None = None) -> None:
        """``positions``: each row's place in the dev set (needed only where rows may repeat, under DDP)."""
        self.predictions.append(predictions.detach().reshape(-1).double())
        self.labels.append(labels.detach().reshape(-1).double())
        if positions is not None:
            self.positions.append(positions.detach().reshape(-1).long())

    def compute(self) -> torch.Tensor:
        predictions = dim_zero_cat(self.predictions).cpu().numpy()
        labels = dim_zero_cat(self.labels).cpu().numpy()
        if len(self.positions):
            positions = dim_zero_cat(self.positions).cpu().numpy()
            if len(positions) != len(predictions):
                raise ValueError(f"GlueScore: {len(positions)} positions for {len(predictions)} predictions (give them with every update or never)")
            _, first = np.unique(positions, return_index=True)  # a repeated row counts once
            predictions, labels = predictions[first], labels[first]
        return torch.tensor(self.scorer(predictions, labels), dtype=torch.float64)
