"""GLUE read from the offline TSVs: row counts, quirks (quotes, BOM, no header), clear errors."""

import gzip
import json
import time

import lightning as L
import pytest
import torch
from hydra.utils import instantiate

from sparse_adapter.adapters import HoulsbyConfig
from sparse_adapter.errors import ConfigError
from tasks.classification import ClassificationModule, GlueDataModule
from tasks.classification.data import load_glue
from tasks.optim import AdamWConfig
from tests.conftest import compose_config, dev_passes, tiny_backbone, tiny_model


def task(name):
    return instantiate(compose_config(f"task={name}").task, _convert_="object")


@pytest.mark.parametrize(
    "name, train, dev, first_label",
    [("rte", 2490, 277, 1), ("mrpc", 3668, 408, 1), ("stsb", 5749, 1500, 5.0), ("cola", 8551, 1043, 1)],
)
def test_row_counts_and_labels(glue_dir, name, train, dev, first_label):
    data = load_glue(task(name), glue_dir)
    assert (len(data["train"]), len(data["validation"])) == (train, dev)
    assert data["train"][0]["labels"] == first_label
    assert data["train"][0]["text_a"]


def test_rte_labels_follow_the_hub_order(glue_dir):
    data = load_glue(task("rte"), glue_dir)
    labels = data["validation"]["labels"]
    assert labels.count(0) == 146 and labels.count(1) == 131  # 146 entailment = 0


def test_dynamic_padding_and_max_length(glue_dir):
    _, tokenizer = tiny_model("bert")
    datamodule = GlueDataModule(task("rte"), tokenizer, data_dir=glue_dir, max_length=64, batch_size=4, max_train_samples=8, max_eval_samples=4)
    datamodule.setup("fit")
    batch = next(iter(datamodule.train_dataloader()))
    assert batch["input_ids"].shape[0] == 4 and batch["input_ids"].shape[1] <= 64
    assert batch["attention_mask"][:, -1].sum() >= 1  # padded to the longest row in the batch
    assert batch["labels"].shape == (4,)


def test_missing_files_name_the_variable(tmp_path):
    with pytest.raises(ConfigError, match="SPARSE_ADAPTER_DATA"):
        load_glue(task("rte"), str(tmp_path))


def test_no_data_dir_and_no_hub_fails_fast(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    start = time.perf_counter()
    with pytest.raises(ConfigError, match="SPARSE_ADAPTER_DATA"):
        load_glue(task("rte"), None)
    assert time.perf_counter() - start < 5


def test_hub_layout_is_normalised_like_the_local_files():
    """The hub's GLUE names columns sentence1/sentence2/label (ints); the local MRPC TSV does not."""
    from datasets import Dataset

    from tasks.classification.data import _normalise

    mrpc = task("mrpc")
    hub_rows = Dataset.from_dict({"sentence1": ["a b"], "sentence2": ["c d"], "label": [1], "idx": [0]})
    normalised = _normalise(hub_rows, mrpc, mrpc.hub_text_fields, mrpc.hub_label_field)
    assert normalised[0] == {"text_a": "a b", "text_b": "c d", "labels": 1}


@pytest.mark.parametrize(
    "name, metric, value, predictor",
    [("mrpc", "accuracy", 279 / 408, "constant class 1"), ("cola", "matthews", 0.0, "constant class 1"),
     ("rte", "accuracy", 146 / 277, "constant class 0"), ("stsb", "pearson", 0.0, "mean predictor")],
)
def test_trivial_baseline_is_the_best_constant_predictor_on_dev(glue_dir, name, metric, value, predictor):
    tokenizer = tiny_model()[1]
    # the first 1,000 RTE rows hold more not_entailment: the bar must still be dev's majority class
    datamodule = GlueDataModule(task(name), tokenizer, data_dir=glue_dir, max_train_samples=1000)
    baseline = datamodule.trivial_baseline()
    assert baseline["metrics"][metric] == pytest.approx(value)
    assert baseline["predictor"].startswith(predictor)
    if name == "cola":
        assert baseline["metrics"]["accuracy"] == pytest.approx(721 / 1043)  # the majority, among equal Matthews 0


def test_no_family_draws_from_the_global_rng_when_an_epoch_starts(tmp_path, glue_dir):
    """A train iterator seeded from the global RNG shifts dropout's stream at every epoch, so a run
    resumed mid-training would drift from an uninterrupted one (tasks/data.py's loaders carry their own generator)."""
    from tasks.qa import SquadDataModule, SquadTask
    from tasks.seq2seq import XSumDataModule, XSumTask

    _, tokenizer = tiny_model("bert")
    context = "Paris is the capital of France."
    row = {"id": "1", "question": "What is the capital of France?", "answers": [{"text": "Paris", "answer_start": 0}]}
    (tmp_path / "squad").mkdir()
    for name in ("train.json", "dev.json"):
        (tmp_path / "squad" / name).write_text(json.dumps({"data": [{"title": "t", "paragraphs": [{"context": context, "qas": [row]}]}]}))
    documents = [json.dumps({"id": str(i), "document": f"Document {i} says a thing. And more.", "summary": f"Thing {i}."}) for i in range(6)]
    (tmp_path / "xsum").mkdir()
    with gzip.open(tmp_path / "xsum" / "test_subset.jsonl.gz", "wt", encoding="utf-8") as handle:
        handle.write("\n".join(documents) + "\n")
    modules = [
        GlueDataModule(task("rte"), tokenizer, data_dir=glue_dir, max_length=64, batch_size=4, max_train_samples=8, max_eval_samples=4),
        SquadDataModule(SquadTask(train_file="train.json", validation_file="dev.json"), tokenizer, data_dir=str(tmp_path), max_length=64,
                        doc_stride=16, max_question_length=16),
        XSumDataModule(XSumTask(validation_size=2), tokenizer, data_dir=str(tmp_path), max_length=32),
    ]
    for module in modules:
        module.setup()
        torch.manual_seed(0)
        before = torch.get_rng_state()
        next(iter(module.train_dataloader()))
        assert torch.equal(before, torch.get_rng_state()), type(module).__name__


def test_grouped_dev_pass_is_longest_first_covers_every_row_and_scores_the_same(tmp_path, glue_dir):
    """group_by_length also sorts the dev rows (less padding); the metrics must not notice the order."""
    stsb = task("stsb")  # regression: a Pearson over continuous predictions notices any lost or repeated row
    L.seed_everything(0)
    module = ClassificationModule(tiny_backbone("bert"), HoulsbyConfig(bottleneck=8), AdamWConfig(lr=1e-2), stsb)
    passes = dev_passes(module, lambda grouped: GlueDataModule(stsb, module.tokenizer, data_dir=glue_dir, max_length=64, batch_size=4,
                                                               eval_batch_size=8, max_eval_samples=60, group_by_length=grouped), tmp_path)
    (_, plain, plain_scores), (_, grouped, grouped_scores) = passes[False], passes[True]
    assert sum(len(b["labels"]) for b in plain) == sum(len(b["labels"]) for b in grouped) == 60
    widths = {name: [b["input_ids"].shape[1] for b in batches] for name, batches in (("plain", plain), ("grouped", grouped))}
    assert widths["grouped"] == sorted(widths["grouped"], reverse=True) and sum(widths["grouped"]) < sum(widths["plain"])
    assert grouped_scores == pytest.approx(plain_scores, rel=1e-5, abs=1e-5)  # float32 sums in another order
