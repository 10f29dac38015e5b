"""Zero-initialized factors (PEFT's default LoRA, adapter.init=lora): scores that carry information, never silent ties."""

from __future__ import annotations

import csv
import warnings

import pytest
import torch
from torch import nn

from sparse_adapter.adapters.lora import LoRALinear
from sparse_adapter.errors import ConfigError, DegenerateScoresWarning
from sparse_adapter.pruning import PrunerConfig, prune, prune_with_report, top_k_mask
from sparse_adapter.pruning.scorers import grasp_scores, snip_scores
from sparse_adapter.pruning.zero_init import lookahead, tied_tensors


def toy(seed=0):
    """One LoRA over a 4→3 Linear (B = 0, A random), squared error against random targets, 3 batches of 5."""
    torch.manual_seed(seed)
    layer = LoRALinear(nn.Linear(4, 3), r=2, alpha=4.0, dropout=0.0, init="lora", init_std=0.02)
    batches = [(torch.randn(5, 4), torch.randn(5, 3)) for _ in range(3)]

    def loss_fn(batch, temperature=1.0):
        x, t = batch
        return 0.5 * ((layer(x) - t) ** 2).sum()

    return layer, {"A": layer.lora_A, "B": layer.lora_B}, loss_fn, batches


def by_hand(layer, batches, lr):
    """The look-ahead SNIP scores written out: B̃ = -lr·sign(g_B(0)), then |w ⊙ g| at (A, B̃)."""
    W, b, A, s = layer.base_layer.weight.detach(), layer.base_layer.bias.detach(), layer.lora_A.detach(), layer.scaling
    g_B0 = sum(s * (x @ W.T + b - t).T @ (x @ A.T) for x, t in batches)  # δ (A x)ᵀ summed, B = 0
    B = -lr * torch.sign(g_B0)
    g_B, g_A = torch.zeros_like(B), torch.zeros_like(A)
    for x, t in batches:
        delta = x @ W.T + b + s * (x @ A.T) @ B.T - t  # (n, out)
        g_B += s * delta.T @ (x @ A.T)
        g_A += s * B.T @ delta.T @ x
    return {"A": (A * g_A).abs(), "B": (B * g_B).abs()}


def test_plain_snip_ties_every_score_of_a_zero_init_lora():
    """The failure the look-ahead fixes: at B = 0 both factors score 0 everywhere."""
    _, params, loss_fn, batches = toy()
    scores = snip_scores(params, loss_fn, batches)
    assert tied_tensors(scores) == ["A", "B"]
    assert float(scores["A"].abs().sum()) == 0.0 and float(scores["B"].abs().sum()) == 0.0


def test_lookahead_snip_equals_the_hand_computation_and_puts_zeros_back():
    layer, params, loss_fn, batches = toy()
    with lookahead(params, ["B"], loss_fn, batches, lr=1e-3):
        assert float(layer.lora_B.detach().abs().max()) == pytest.approx(1e-3)
        scores = snip_scores(params, loss_fn, batches)
    assert not layer.lora_B.any()  # back at its init
    expected = by_hand(layer, batches, 1e-3)
    for name in ("A", "B"):
        torch.testing.assert_close(scores[name], expected[name], rtol=1e-5, atol=1e-9)
        assert scores[name].min() < scores[name].max()  # informative: no ties
    # prune() uses it by default: its masks are the hand scores' global top-k
    result = prune_with_report(params, 0.5, PrunerConfig("snip", batches=3), loss_fn=loss_fn, batches=batches, seed=1)
    assert result.lookahead_tensors == ["B"] and result.tied_score_tensors == []
    masks = result.masks
    assert type(masks) is dict and masks.keys() == prune(params, 0.5, PrunerConfig("snip", batches=3), loss_fn=loss_fn,
                                                          batches=batches).keys()
    flat = torch.cat([expected["A"].reshape(-1), expected["B"].reshape(-1)])
    keep = top_k_mask(flat, 7, torch.Generator().manual_seed(0))
    assert torch.equal(torch.cat([masks["A"].reshape(-1), masks["B"].reshape(-1)]), keep)


def test_the_ranking_does_not_depend_on_the_lookahead_step_to_first_order():
    _, params, loss_fn, batches = toy()
    ranks = []
    for lr in (1e-3, 1e-5):
        masks = prune(params, 0.5, PrunerConfig("snip", batches=3, lookahead_lr=lr), loss_fn=loss_fn, batches=batches)
        ranks.append(torch.cat([m.reshape(-1) for m in masks.values()]))
    assert torch.equal(ranks[0], ranks[1])


def test_grasp_scores_through_the_lookahead_too():
    _, params, loss_fn, batches = toy()
    with warnings.catch_warnings():
        warnings.simplefilter("error", DegenerateScoresWarning)
        result = prune_with_report(params, 0.5, PrunerConfig("grasp", batches=3), loss_fn=loss_fn, batches=batches)
    assert result.tied_score_tensors == [] and result.lookahead_tensors == ["B"]
    with lookahead(params, ["B"], loss_fn, batches, lr=1e-3):
        scores = grasp_scores(params, loss_fn, batches, temperature=1.0)
    assert tied_tensors(scores) == []


@pytest.mark.parametrize("scorer, options, tied", [
    ("magnitude", {}, ["B"]),                       # |0| everywhere: data-free, nothing to look ahead with
    ("snip", {"zero_init": "none"}, ["A", "B"]),    # the old behaviour, asked for by name
])
def test_degenerate_scores_warn_by_default_and_error_on_request(scorer, options, tied):
    _, params, loss_fn, batches = toy()
    config = PrunerConfig(scorer, batches=3, **options)
    with pytest.warns(DegenerateScoresWarning, match=", ".join(tied)):
        result = prune_with_report(params, 0.5, config, loss_fn=loss_fn, batches=batches)
    assert result.tied_score_tensors == tied
    with pytest.raises(ConfigError, match="on_degenerate=warn"):
        prune(params, 0.5, PrunerConfig(scorer, batches=3, on_degenerate="error", **options), loss_fn=loss_fn, batches=batches)


@pytest.mark.parametrize("setting, value", [("zero_init", "maybe"), ("on_degenerate", "ignore"), ("lookahead_lr", 0.0)])
def test_bad_settings_name_themselves(setting, value):
    with pytest.raises(ConfigError, match=f"pruner.{setting}"):
        PrunerConfig("snip", **{setting: value}).validate(0.5)


def test_settings_record_only_non_default_zero_init_handling():
    assert "zero_init" not in PrunerConfig("snip").settings()  # older records (no key) are the same masks on non-zero inits
    assert PrunerConfig("snip", zero_init="none").settings()["zero_init"] == "none"
    assert PrunerConfig("snip", lookahead_lr=1e-4).settings()["lookahead_lr"] == 1e-4
    assert "zero_init" not in PrunerConfig("magnitude", zero_init="none").settings()  # data-free: no look-ahead either way


def test_iterative_rounds_keep_pruned_entries_of_a_zero_factor_at_zero():
    _, params, loss_fn, batches = toy()
    result = prune_with_report(params, 0.8, PrunerConfig("snip", batches=3, iterations=3), loss_fn=loss_fn, batches=batches)
    assert sum(int(m.sum()) for m in result.masks.values()) == round(0.2 * 14)
    assert result.tied_score_tensors == []


# ---- PEFT's default LoRA (B = 0): masks must follow the data -------------------------------------------------------

peft = pytest.importorskip("peft")


def sst2_batches(glue_dir, tokenizer, start, count=32, size=8):
    with open(f"{glue_dir}/glue/SST-2/train.tsv", newline="") as handle:
        rows = [r for _, r in zip(range(start + count), csv.DictReader(handle, delimiter="\t", quoting=csv.QUOTE_NONE))][start:]
    encoded = tokenizer([r["sentence"] for r in rows], truncation=True, max_length=32, padding="max_length", return_tensors="pt")
    labels = torch.tensor([int(r["label"]) for r in rows])
    return [{**{k: v[i:i + size] for k, v in encoded.items()}, "labels": labels[i:i + size]} for i in range(0, count, size)]


def agreement(a, b):
    same = sum(int((a[n] == b[n]).sum()) for n in a)
    return same / sum(m.numel() for m in a.values())


def test_peft_default_lora_masks_follow_the_calibration_data(glue_dir):
    from peft import LoraConfig, get_peft_model

    from sparse_adapter.peft import prune_peft_model
    from tests.conftest import tiny_model

    torch.manual_seed(0)
    base, tokenizer = tiny_model()
    model = get_peft_model(base, LoraConfig(r=4, lora_alpha=8, target_modules=["query", "value"]))  # PEFT's default init
    assert all(not p.any() for n, p in model.named_parameters() if "lora_B" in n)
    first, second = sst2_batches(glue_dir, tokenizer, 0), sst2_batches(glue_dir, tokenizer, 32)
    with warnings.catch_warnings():
        warnings.simplefilter("error", DegenerateScoresWarning)  # no tensor may tie
        masks_first = prune_peft_model(model, sparsity=0.5, batches=first, seed=3)
        masks_second = prune_peft_model(model, sparsity=0.5, batches=second, seed=3)
    random_masks = prune_peft_model(model, sparsity=0.5, pruner="random", seed=3)
    assert agreement(masks_first, masks_second) < 0.99
    assert agreement(masks_first, random_masks) < 0.9
    with pytest.warns(DegenerateScoresWarning):  # the old behaviour: the data did not matter at all
        old_first = prune_peft_model(model, sparsity=0.5, batches=first, seed=3, zero_init="none")
        old_second = prune_peft_model(model, sparsity=0.5, batches=second, seed=3, zero_init="none")
    assert agreement(old_first, old_second) == 1.0


# ---- every path reports ties: the CLI (log, summary.json, on_degenerate=error) and the Trainer callback -------------

def test_cli_records_ties_in_the_summary_and_refuses_them_on_request(glue_dir, tmp_path, capsys):
    import json

    from tests.cli_support import FAST, call_train, error_lines

    common = [*FAST, "adapter=lora", "adapter.init=lora", f"data_dir={glue_dir}"]
    assert call_train(*common, "pruner=magnitude", f"hydra.run.dir={tmp_path / 'warn'}") == 0
    summary = json.loads((tmp_path / "warn" / "summary.json").read_text())
    assert summary["tied_score_tensors"] and all(n.endswith("lora_B") for n in summary["tied_score_tensors"])
    assert call_train(*common, f"hydra.run.dir={tmp_path / 'ahead'}") == 0  # snip: the look-ahead, no ties
    summary = json.loads((tmp_path / "ahead" / "summary.json").read_text())
    assert summary["tied_score_tensors"] == [] and all(n.endswith("lora_B") for n in summary["lookahead_tensors"])
    capsys.readouterr()
    assert call_train(*common, "pruner=magnitude", "pruner.on_degenerate=error", f"hydra.run.dir={tmp_path / 'error'}") == 2
    lines = error_lines(capsys.readouterr().err)
    assert len(lines) == 1 and "pruner.scorer=magnitude" in lines[0] and "lora_B" in lines[0]
    assert not (tmp_path / "error" / "summary.json").exists()


def test_the_trainer_callback_reports_ties(tmp_path):
    from peft import LoraConfig, get_peft_model
    from transformers import Trainer, TrainingArguments

    from sparse_adapter.hf_trainer import SparseAdapterCallback
    from tests.conftest import tiny_model

    generator = torch.Generator().manual_seed(0)
    rows = [{"input_ids": torch.randint(5, 1000, (16,), generator=generator), "labels": torch.tensor(i % 2)} for i in range(8)]

    def train(callback):
        torch.manual_seed(0)
        model = get_peft_model(tiny_model()[0], LoraConfig(r=4, lora_alpha=8, target_modules=["query", "value"]))
        args = TrainingArguments(output_dir=str(tmp_path), per_device_train_batch_size=4, max_steps=1, report_to=[],
                                 save_strategy="no", use_cpu=True, disable_tqdm=True)
        Trainer(model=model, args=args, train_dataset=rows, callbacks=[callback]).train()

    callback = SparseAdapterCallback(sparsity=0.5, pruner="magnitude", num_batches=1)
    with pytest.warns(DegenerateScoresWarning, match="lora_B"):
        train(callback)
    assert callback.tied_score_tensors and all("lora_B" in n for n in callback.tied_score_tensors)
    with pytest.raises(ConfigError, match="on_degenerate=warn"):
        train(SparseAdapterCallback(sparsity=0.5, pruner="magnitude", num_batches=1, on_degenerate="error"))
