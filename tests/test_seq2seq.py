"""Summarisation: ROUGE on hand examples, the seeded XSum split, bad rows, adapters in BART's
encoder/decoder/cross-attention held by the masks, GraSP through the decoder, train.py."""

from __future__ import annotations

import gzip
import json
import re
from pathlib import Path

import lightning as L
import pytest
import torch

from callbacks import MaskEnforcement, PruneAtInit
from sparse_adapter.adapters import HoulsbyConfig, IA3Config, LoRAConfig, MAMConfig, ParallelConfig, PrefixConfig
from sparse_adapter.backbones import RandomBackbone
from sparse_adapter.errors import ConfigError
from sparse_adapter.pruning import PrunerConfig
from tasks.optim import AdamWConfig
from tasks.seq2seq import Seq2SeqModule, XSumDataModule, XSumTask
from tasks.seq2seq.data import lead_sentence
from tasks.seq2seq.metrics import rouge_scores
from tests.conftest import data_dir, dev_passes
from tests.test_cli import summary, train

TINY_BART = dict(d_model=32, encoder_layers=2, decoder_layers=2, encoder_attention_heads=2, decoder_attention_heads=2,
                 encoder_ffn_dim=64, decoder_ffn_dim=64, max_position_embeddings=256)


@pytest.fixture(scope="module")
def xsum_dir() -> str:
    found = data_dir()
    if found is None or not (Path(found) / "xsum").is_dir():
        pytest.skip("XSum file not found: set SPARSE_ADAPTER_DATA to the folder that holds xsum/")
    return found


def tiny_bart(attn: str = "sdpa", parts=None) -> RandomBackbone:
    return RandomBackbone(model_type="bart", config=dict(TINY_BART), attn_implementation=attn, adapter_parts=parts)


def test_rouge_on_hand_examples():
    scores = rouge_scores(["the cat sat on the mat"], ["the cat is on the mat"])
    # unigrams: 5 of 6 shared each way; bigrams: the cat, on the, the mat = 3 of 5; LCS "the cat on the mat" = 5
    assert scores == pytest.approx({"rouge1": 5 / 6, "rouge2": 3 / 5, "rougeL": 5 / 6})
    stemmed = rouge_scores(["The runners were running"], ["the runner runs"])  # Porter: runner(s) -> runner, running/runs -> run
    assert stemmed["rouge1"] == pytest.approx(6 / 7)  # P 3/4, R 3/3 (unstemmed only "the" would match)
    two = rouge_scores(["a b c", "x y"], ["a b c", "z w"])  # the mean over documents
    assert two == pytest.approx({"rouge1": 0.5, "rouge2": 0.5, "rougeL": 0.5})
    assert lead_sentence("First one here.  Second\nsentence!") == "First one here."


def write_xsum(folder: Path, lines: list[str]) -> None:
    (folder / "xsum").mkdir(parents=True)
    with gzip.open(folder / "xsum" / "test_subset.jsonl.gz", "wt", encoding="utf-8") as handle:
        handle.write("\n".join(lines) + "\n")


def test_seeded_split_and_counted_bad_rows(tmp_path, xsum_dir):
    tokenizer = tiny_bart().build("seq2seq-lm")[1]
    task = XSumTask(validation_size=333)
    first, second = (XSumDataModule(task, tokenizer, data_dir=xsum_dir, max_length=64) for _ in range(2))
    for module in (first, second):
        module.setup()
    ids = {split: [r["id"] for r in first.examples[split]] for split in ("train", "validation")}
    assert (len(ids["train"]), len(ids["validation"])) == (2000, 333)
    assert ids == {split: [r["id"] for r in second.examples[split]] for split in ("train", "validation")}  # fixed
    assert not set(ids["train"]) & set(ids["validation"])

    good = [json.dumps({"id": str(i), "document": f"Document {i}. More.", "summary": f"Summary {i}."}) for i in range(6)]
    bad = ["{not json", json.dumps({"id": "e", "document": "  ", "summary": "s"}), json.dumps({"id": "m", "summary": "s"}),
           json.dumps({"id": "n", "document": "d", "summary": ""})]
    write_xsum(tmp_path, good + bad)
    module = XSumDataModule(XSumTask(validation_size=2), tokenizer, data_dir=str(tmp_path), max_length=64)
    module.setup()
    assert len(module.examples["train"]) + len(module.examples["validation"]) == 6
    counts = module.skipped.as_dict()
    assert counts["file"] == {"malformed JSON": 1}
    assert sum(n for split in ("train", "validation") for n in counts.get(split, {}).values()) == 3
    assert module.trivial_baseline()["predictor"].startswith("LEAD-1")
    with pytest.raises(ConfigError, match="task.validation_size"):
        XSumDataModule(XSumTask(validation_size=9), tokenizer, data_dir=str(tmp_path)).setup()


def adapter_parts_of(names) -> set[str]:
    return {"cross" if ".encoder_attn" in n else "encoder" if ".encoder." in n else "decoder" for n in names}


@pytest.mark.parametrize("adapter", [HoulsbyConfig(bottleneck=8), LoRAConfig(r=4), ParallelConfig(bottleneck=8), IA3Config(), MAMConfig(size=4)],
                         ids=lambda c: type(c).__name__)
def test_adapters_in_encoder_decoder_and_cross_attention_hold_their_masks(tmp_path, xsum_dir, adapter):
    L.seed_everything(0)
    module = Seq2SeqModule(tiny_bart(), adapter, AdamWConfig(lr=1e-2), XSumTask())
    expected = {"encoder", "decoder"} | ({"cross"} if not isinstance(adapter, ParallelConfig) else set())  # parallel: FFNs only
    assert adapter_parts_of(module.prunable) == expected
    data = XSumDataModule(XSumTask(), module.tokenizer, data_dir=xsum_dir, max_length=64, max_target_length=16, batch_size=4, max_train_samples=12)
    initial = {n: p.detach().clone() for n, p in module.prunable_parameters().items()}
    L.Trainer(callbacks=[PruneAtInit(PrunerConfig("snip", batches=1), 0.5), MaskEnforcement()], max_steps=3, accelerator="cpu",
              logger=False, enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
              limit_val_batches=0, num_sanity_val_steps=0, default_root_dir=tmp_path).fit(module, datamodule=data)
    assert module.masks.kept() == round(0.5 * module.masks.total())
    params = module.prunable_parameters()
    for name, mask in module.masks.items():
        assert torch.count_nonzero(params[name][~mask]) == 0
    assert adapter_parts_of(n for n, m in module.masks.items() if m.any()) == expected  # scored through the decoder too
    assert any(not torch.equal(params[n][m], initial[n][m]) for n, m in module.masks.items())


def test_adapter_parts_choose_where_adapters_go():
    module = Seq2SeqModule(tiny_bart(parts=["cross"]), HoulsbyConfig(bottleneck=8), AdamWConfig(), XSumTask())
    assert adapter_parts_of(module.prunable) == {"cross"} and len(module.prunable) == 2 * 2
    with pytest.raises(ConfigError, match="backbone.adapter_parts"):
        Seq2SeqModule(tiny_bart(parts=["middle"]), HoulsbyConfig(), AdamWConfig(), XSumTask())
    module = Seq2SeqModule(tiny_bart(parts=["encoder"]), PrefixConfig(length=4), AdamWConfig(), XSumTask())
    assert adapter_parts_of(module.prunable) == {"encoder"} and len(module.prunable) == 2 * 2


@pytest.mark.parametrize("adapter", [HoulsbyConfig(bottleneck=8), MAMConfig(size=4)], ids=lambda c: type(c).__name__)
def test_grasp_scores_through_bart_and_restores_sdpa(tmp_path, xsum_dir, adapter):
    L.seed_everything(0)
    module = Seq2SeqModule(tiny_bart(), adapter, AdamWConfig(lr=1e-2), XSumTask(label_smoothing=0.1))
    data = XSumDataModule(XSumTask(), module.tokenizer, data_dir=xsum_dir, max_length=64, max_target_length=16, batch_size=4, max_train_samples=8)
    L.Trainer(callbacks=[PruneAtInit(PrunerConfig("grasp", batches=2), 0.6), MaskEnforcement()], max_steps=1, accelerator="cpu",
              logger=False, enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
              limit_val_batches=0, num_sanity_val_steps=0, default_root_dir=tmp_path).fit(module, datamodule=data)
    assert module.masks.kept() == round(0.4 * module.masks.total())
    assert adapter_parts_of(n for n, m in module.masks.items() if m.any()) == {"encoder", "decoder", "cross"}
    assert module.model.config._attn_implementation == "sdpa"


def test_xsum_trains_end_to_end_through_train_py(tmp_path, xsum_dir):
    result = train(tmp_path, f"data_dir={xsum_dir}", "task=xsum", "backbone=tiny-bart", "pruner=snip", "sparsity=0.4",
                   "data.max_length=128", "data.max_target_length=32", "task.max_new_tokens=8")
    assert result.returncode == 0, result.stderr[-3000:]
    s = summary(tmp_path)
    assert (s["task"], s["backbone"], s["main_metric"], s["sparsity"]) == ("xsum", "tiny-bart", "rouge2", 0.4)
    assert set(s["metrics"]) >= {"rouge1", "rouge2", "rougeL"} and all(0.0 <= s["metrics"][k] <= 1.0 for k in ("rouge1", "rouge2", "rougeL"))
    assert s["baseline"]["predictor"].startswith("LEAD-1") and s["baseline"]["metrics"]["rouge2"] > 0
    assert s["actual_sparsity"] == pytest.approx(0.4, abs=1e-3) and s["adapter_weights_total"] == 10 * 2 * 32 * 64
    assert len(s["samples"]) == 8 and set(s["samples"][0]) == {"document", "summary", "reference"}


def test_wrong_family_for_the_backbone_is_one_clear_error(tmp_path, capsys):
    """In-process: tests/test_bad_input.py proves the same error path through real processes."""
    from tests.cli_support import FAST, call_train

    code = call_train(*FAST, f"hydra.run.dir={tmp_path}", "data_dir=/nonexistent", "task=squad", "backbone=tiny-bart")
    err = capsys.readouterr().err
    message = "error: backbone: task family QAModule needs an encoder backbone; 'bart' is an encoder–decoder"
    assert code == 2 and err.strip().startswith(message), err[-2000:]
    assert not (tmp_path / "summary.json").exists()


@pytest.mark.parametrize("overrides, message", [
    (["task=xsum", "backbone=tiny-bert"], "backbone 'bert' has no seq2seq-lm head"),
    (["task=xsum", "backbone=bart-base"], "backbone.name_or_path: cannot load 'facebook/bart-base'"),
    (["task=squad", "data.doc_stride=320"], "data.doc_stride=320 must be below"),
])
def test_bad_settings_of_the_new_families_are_config_errors(tmp_path, overrides, message, monkeypatch):
    from tests.test_cli import train_in_process

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(ConfigError, match=re.escape(message)):
        train_in_process(tmp_path, "data_dir=/nonexistent", *overrides)
    assert not (tmp_path / "summary.json").exists()

def bart_inputs(tokenizer):
    source = tokenizer(["a short document about cats and dogs .", "another one"], return_tensors="pt", padding=True)
    labels = tokenizer(text_target=["cats and dogs play", "one"], return_tensors="pt", padding=True)["input_ids"]
    return {"input_ids": source["input_ids"], "attention_mask": source["attention_mask"], "labels": labels}


@pytest.mark.parametrize("adapter", [PrefixConfig(length=3), PrefixConfig(length=3, mlp_hidden=8)], ids=["plain", "mlp"])
def test_bart_prefix_keeps_causality_agrees_eager_sdpa_and_caches(adapter):
    logits = {}
    for attn in ("sdpa", "eager"):
        model, tokenizer = tiny_bart(attn).build("seq2seq-lm")
        torch.manual_seed(0)  # the same prefix for both attention kernels
        prunable = adapter.attach(model)
        assert adapter_parts_of(prunable) == {"encoder", "decoder", "cross"}
        model.eval()
        batch = bart_inputs(tokenizer)
        logits[attn] = model(**batch).logits
        changed = dict(batch, labels=batch["labels"].clone())
        changed["labels"][:, -1] = 7  # a later target token may not change earlier positions
        assert torch.allclose(model(**changed).logits[:, :-1], logits[attn][:, :-1], atol=1e-6)
        source = {k: batch[k] for k in ("input_ids", "attention_mask")}
        cached = model.generate(**source, max_new_tokens=6, do_sample=False, use_cache=True)
        uncached = model.generate(**source, max_new_tokens=6, do_sample=False, use_cache=False)
        assert torch.equal(cached, uncached)
    assert torch.allclose(logits["sdpa"], logits["eager"], atol=1e-5)


def test_grouped_dev_pass_is_longest_first_covers_every_document_and_scores_the_same(tmp_path, xsum_dir):
    """group_by_length also sorts the dev documents (less padding); loss and ROUGE must not notice the order."""
    task = XSumTask(max_new_tokens=4)
    L.seed_everything(0)
    module = Seq2SeqModule(tiny_bart(), HoulsbyConfig(bottleneck=8), AdamWConfig(lr=1e-2), task)
    passes = dev_passes(module, lambda grouped: XSumDataModule(
        task, module.tokenizer, data_dir=xsum_dir, max_length=256, max_target_length=16, eval_batch_size=4, max_train_samples=4,
        max_eval_samples=40, group_by_length=grouped), tmp_path)
    (_, plain, plain_scores), (_, grouped, grouped_scores) = passes[False], passes[True]
    documents = {name: [d for batch in batches for d in batch["documents"]] for name, batches in (("plain", plain), ("grouped", grouped))}
    assert len(documents["plain"]) == 40 and sorted(documents["grouped"]) == sorted(documents["plain"])  # every document once
    assert [len(d) for d in documents["grouped"]] == sorted(map(len, documents["plain"]), reverse=True)
    assert sum(b["input_ids"].numel() for b in grouped) < sum(b["input_ids"].numel() for b in plain)
    assert grouped_scores == pytest.approx(plain_scores, abs=1e-5)  # a random tiny BART: the loss tells, ROUGE is 0
