"""GLUE metrics equal GLUE's official scorers (sklearn, scipy), degenerate predictors included."""

import csv
from pathlib import Path

import numpy as np
import pytest
import torch
from scipy.stats import pearsonr, spearmanr
from sklearn.metrics import f1_score, matthews_corrcoef

from tasks.metrics import GlueScore


def score(name: str, predictions, labels) -> float:
    metric = GlueScore(name)
    half = len(labels) // 2  # two updates, as two validation batches would give
    metric.update(torch.as_tensor(predictions[:half]), torch.as_tensor(labels[:half]))
    metric.update(torch.as_tensor(predictions[half:]), torch.as_tensor(labels[half:]))
    return float(metric.compute())


def cola_dev_labels(glue_dir: str) -> np.ndarray:
    with (Path(glue_dir) / "glue" / "CoLA" / "dev.tsv").open(encoding="utf-8") as handle:
        return np.array([int(row[1]) for row in csv.reader(handle, delimiter="\t", quoting=csv.QUOTE_NONE)])


def test_classification_scores_match_sklearn_on_random_predictions():
    rng = np.random.default_rng(0)
    labels, predictions = rng.integers(0, 2, 500), rng.integers(0, 2, 500)
    assert score("matthews", predictions, labels) == pytest.approx(matthews_corrcoef(labels, predictions), abs=1e-12)
    assert score("f1", predictions, labels) == pytest.approx(f1_score(labels, predictions), abs=1e-12)
    assert score("accuracy", predictions, labels) == pytest.approx((labels == predictions).mean(), abs=1e-12)


def test_a_constant_predictor_scores_zero_matthews_on_the_cola_dev_set(glue_dir):
    labels = cola_dev_labels(glue_dir)
    assert len(labels) == 1043 and labels.sum() == 721
    majority = np.ones_like(labels)
    assert matthews_corrcoef(labels, majority) == 0.0  # GLUE's scorer
    assert score("matthews", majority, labels) == 0.0  # torchmetrics' BinaryMatthewsCorrCoef gives 0.0256 here
    assert score("accuracy", majority, labels) == pytest.approx(721 / 1043)


def test_f1_is_of_the_positive_class_and_zero_when_nothing_is_positive():
    labels = np.array([1, 1, 0, 0, 1])
    assert score("f1", np.array([1, 0, 0, 1, 1]), labels) == pytest.approx(2 / 3)  # tp 2, fp 1, fn 1
    assert score("f1", np.zeros(5, dtype=int), labels) == 0.0
    assert score("f1", np.ones(5, dtype=int), labels) == pytest.approx(f1_score(labels, np.ones(5, dtype=int)))


def test_correlations_match_scipy_and_a_constant_predictor_scores_zero():
    rng = np.random.default_rng(1)
    labels = rng.uniform(0, 5, 300)
    predictions = labels + rng.normal(0, 1.5, 300)
    assert score("pearson", predictions, labels) == pytest.approx(pearsonr(predictions, labels)[0], abs=1e-10)
    assert score("spearman", predictions, labels) == pytest.approx(spearmanr(predictions, labels)[0], abs=1e-10)
    constant = np.full(300, labels.mean())
    assert score("pearson", constant, labels) == 0.0  # scipy: NaN (undefined); 0.0 keeps averages finite
    assert score("spearman", constant, labels) == 0.0


def test_an_unknown_metric_is_a_config_error():
    from sparse_adapter.errors import ConfigError

    with pytest.raises(ConfigError, match="task.metrics"):
        GlueScore("bleu")


def test_a_dev_row_repeated_across_processes_counts_once():
    """Under DDP Lightning's sampler repeats rows to even the shares out; with positions the score ignores the repeats."""
    from tasks.metrics import pearson

    rng = np.random.default_rng(0)
    predictions, labels = rng.normal(size=9), rng.normal(size=9)
    score = GlueScore("pearson")
    score.update(torch.tensor(predictions[:5]), torch.tensor(labels[:5]), positions=torch.arange(5))
    score.update(torch.tensor(predictions[[5, 6, 7, 8, 0]]), torch.tensor(labels[[5, 6, 7, 8, 0]]), positions=torch.tensor([5, 6, 7, 8, 0]))
    assert float(score.compute()) == pytest.approx(pearson(predictions, labels), abs=1e-12)
    repeated = GlueScore("pearson")
    repeated.update(torch.tensor(predictions[[0, 1, 2, 3, 4, 5, 6, 7, 8, 0]]), torch.tensor(labels[[0, 1, 2, 3, 4, 5, 6, 7, 8, 0]]))
    assert float(repeated.compute()) != pytest.approx(pearson(predictions, labels), abs=1e-6)  # without positions it counts twice
    partial = GlueScore("accuracy")
    partial.update(torch.ones(3), torch.ones(3), positions=torch.arange(3))
    partial.update(torch.ones(2), torch.ones(2))
    with pytest.raises(ValueError, match="every update or never"):
        partial.compute()
