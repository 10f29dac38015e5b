"""Quantized backbones (QLoRA): NF4 and int8 frozen bodies under every variant, every scorer, the CLI, the PEFT path.

Tiny random Llama (bitsandbytes quantizes on CPU); real SST-2/RTE rows; masks checked exactly after real steps.
"""

from __future__ import annotations

import sys

import pytest
import torch

bnb = pytest.importorskip("bitsandbytes")

from sparse_adapter import attach_adapter  # noqa: E402
from sparse_adapter.errors import ConfigError  # noqa: E402
from sparse_adapter.io import read_adapter  # noqa: E402
from sparse_adapter.pruning import PrunerConfig, kept_count, prune  # noqa: E402
from sparse_adapter.quantization import Quantization, is_quantized, quantize_backbone, quantized_layers, weight_bytes  # noqa: E402
from tests.cli_support import call_train, error_lines  # noqa: E402
from tests.test_architectures_train import backbone_from  # noqa: E402
from tests.test_cli import summary, train_in_process  # noqa: E402
from tests.test_peft_integration import assert_held, batched, encode, kept, trainer_for  # noqa: E402

VARIANTS = {"houlsby": dict(bottleneck=4), "pfeiffer": dict(bottleneck=4), "parallel": dict(bottleneck=4),
            "prefix": dict(length=3), "mam": dict(size=3), "lora": dict(r=2, targets=["q_proj", "v_proj", "down_proj"]),
            "ia3": dict()}


def llama(seed: int = 0):
    torch.manual_seed(seed)
    return backbone_from("tiny-llama").build("sequence-classification", num_labels=2)


def body_linears(model) -> int:
    return sum(isinstance(m, torch.nn.Linear) for m in model.base_model.modules())


@pytest.mark.parametrize("variant, method", [(v, "nf4") for v in VARIANTS] + [(v, "int8") for v in ("lora", "ia3", "houlsby")])
def test_every_variant_trains_over_a_quantized_body_and_stays_fp32(variant, method, sst2_rows):
    model, tokenizer = llama()
    prunable = attach_adapter(model, variant, **VARIANTS[variant])
    swapped = quantize_backbone(model, Quantization(method, double_quant=method == "nf4"))
    layers = quantized_layers(model)
    assert swapped == len(layers) > 0
    assert not any(is_quantized(m) for m in model.score.modules())  # the task head trains: full precision
    if variant in ("lora", "ia3"):  # the wrappers wrap the quantized projections, as PEFT's bnb layers
        wrapped = [name for name in layers if name.endswith((".base_layer", ".inner"))]
        assert wrapped, list(layers)[:4]
    named = dict(model.named_parameters())
    assert all(named[n].dtype == torch.float32 and named[n].requires_grad for n in prunable)
    batch = batched(encode(tokenizer, sst2_rows[:4]), 4)[0]
    batch = {k: v for k, v in batch.items() if k != "token_type_ids"}
    model.train()
    model(**batch).loss.backward()
    assert all(named[n].grad is not None and bool(named[n].grad.abs().sum() > 0) for n in prunable), variant


def test_nf4_holds_a_fifth_of_the_fp32_weights_and_keeps_the_logits_close(sst2_rows):
    dense, tokenizer = llama()
    quantized, _ = llama()
    prunable = attach_adapter(quantized, "lora", r=2, targets=["q_proj", "v_proj"])
    attach_adapter(dense, "lora", r=2, targets=["q_proj", "v_proj"])
    before = weight_bytes(quantized)
    quantize_backbone(quantized, Quantization("nf4"))
    linear_bytes = sum(m.weight.numel() * 4 for m in dense.base_model.modules() if isinstance(m, torch.nn.Linear))
    assert before - weight_bytes(quantized) > 0.8 * linear_bytes  # 4 bits + scales of 32 instead of 32 bits per weight
    batch = {k: v for k, v in batched(encode(tokenizer, sst2_rows[:4]), 4)[0].items() if k not in ("token_type_ids", "labels")}
    with torch.no_grad():
        dense_logits, quantized_logits = dense.eval()(**batch).logits, quantized.eval()(**batch).logits
    assert torch.isfinite(quantized_logits).all() and not torch.equal(dense_logits, quantized_logits)
    assert (dense_logits - quantized_logits).abs().max() < 0.5 * dense_logits.abs().max() + 0.1
    assert len(prunable) == 8


@pytest.mark.parametrize("scorer", ["snip", "grasp", "synflow", "magnitude", "random"])
def test_every_scorer_scores_through_the_nf4_model_and_keeps_exactly_k(scorer, sst2_rows):
    model, tokenizer = llama()
    prunable = attach_adapter(model, "lora", r=4, targets=["q_proj", "v_proj", "up_proj"])
    quantize_backbone(model, Quantization("nf4"))
    model.eval()
    named = dict(model.named_parameters())
    params = {n: named[n] for n in prunable}
    batches = [{k: v for k, v in b.items() if k != "token_type_ids"} for b in batched(encode(tokenizer, sst2_rows[:8]), 4)]
    config = PrunerConfig(scorer, batches=len(batches), **({"iterations": 3} if scorer == "synflow" else {}))
    masks = prune(params, 0.6, config, loss_fn=lambda b, temperature=1.0: model(**b).loss, batches=batches, seed=1, model=model)
    count, total = kept(masks)
    assert count == kept_count(total, 0.6)
    if scorer in ("snip", "grasp"):  # the gradients came through the quantized layers: scores differ from |w|
        by_magnitude = prune(params, 0.6, PrunerConfig("magnitude"), seed=1)
        assert any(not torch.equal(masks[n], by_magnitude[n]) for n in masks)


def test_the_cli_trains_nf4_lora_with_exact_masks_records_it_and_resumes(tmp_path, glue_dir):
    run = [f"data_dir={glue_dir}", "backbone=tiny-llama", "backbone.quantization=nf4", "backbone.double_quant=true", "adapter=lora",
           "adapter.r=2", "pruner=snip", "data.max_length=32", "data.max_train_samples=16", "data.max_eval_samples=4",
           "data.batch_size=4", "callbacks=resumable", "callbacks.last_checkpoint.every_n_train_steps=2"]
    train_in_process(tmp_path, *run, "trainer.max_steps=2")
    resumed = tmp_path / "resumed"  # the checkpoint holds bitsandbytes' quantization state beside the packed weights
    train_in_process(resumed, *run, "trainer.max_steps=4", "trainer.max_epochs=2",
                     "resume_changes=[trainer.max_steps,trainer.max_epochs]", f"ckpt_path={tmp_path}/checkpoints/last.ckpt")
    assert summary(resumed)["global_steps"] > 2 and summary(resumed)["quantization"]["method"] == "nf4"
    assert all(torch.equal(read_adapter(resumed / "adapter.safetensors")[1][n], m)
               for n, m in read_adapter(tmp_path / "adapter.safetensors")[1].items())
    s = summary(tmp_path)
    assert s["quantization"] == {"method": "nf4", "compute_dtype": "float32", "double_quant": True}
    assert s["adapter_weights_kept"] == kept_count(s["adapter_weights_total"], 0.4)
    weights, masks, _ = read_adapter(tmp_path / "adapter.safetensors")
    assert masks and all(w.dtype == torch.float32 for w in weights.values())
    for name, mask in masks.items():
        assert torch.count_nonzero(weights[name][~mask]) == 0 and torch.count_nonzero(weights[name][mask]) > 0


def test_the_cli_trains_int8_ia3_with_grasp(tmp_path, glue_dir):
    train_in_process(tmp_path, f"data_dir={glue_dir}", "backbone=tiny-llama", "backbone.quantization=int8", "adapter=ia3",
                     "pruner=grasp", "sparsity=0.5", "data.max_length=32", "data.max_train_samples=8",
                     "data.max_eval_samples=4", "data.batch_size=4", "trainer.max_steps=2")
    s = summary(tmp_path)
    assert s["quantization"] == {"method": "int8"}
    assert s["adapter_weights_kept"] == kept_count(s["adapter_weights_total"], 0.5)


@pytest.mark.parametrize("overrides, expected", [
    (["adapter=none", "backbone.quantization=nf4"], "error: backbone.quantization=nf4 with adapter=none: quantized weights do not train"),
    (["backbone.quantization=int4"], "error: backbone.quantization='int4' is unknown (choose from none, nf4, int8)"),
    (["backbone.quantization=nf4", "backbone.compute_dtype=float64"], "error: backbone.compute_dtype='float64' is unknown"),
])
def test_bad_quantization_settings_are_one_error_line(overrides, expected, tmp_path, capsys):
    assert call_train("backbone=tiny-llama", "trainer=smoke", f"hydra.run.dir={tmp_path}", *overrides) == 2
    lines = error_lines(capsys.readouterr().err)
    assert len(lines) == 1 and lines[0].startswith(expected), lines
    assert not (tmp_path / "summary.json").exists()


def test_without_bitsandbytes_the_setting_names_the_extra(tmp_path, capsys, monkeypatch):
    monkeypatch.setitem(sys.modules, "bitsandbytes", None)  # what an environment without the package raises: ImportError
    assert call_train("backbone=tiny-llama", "adapter=lora", "backbone.quantization=nf4", "trainer=smoke", f"hydra.run.dir={tmp_path}") == 2
    lines = error_lines(capsys.readouterr().err)
    assert lines == ["error: backbone.quantization=nf4 needs bitsandbytes, which is not installed: pip install .[quant]"]
    with pytest.raises(ConfigError, match=r"pip install \.\[quant\]"):
        quantize_backbone(llama()[0], Quantization("int8"))


def test_a_body_with_nothing_frozen_is_refused_by_the_library():
    model, _ = llama()
    with pytest.raises(ConfigError, match="no frozen Linear layer"):
        quantize_backbone(model, Quantization("nf4"))  # full fine-tuning: every Linear trains


def peft_4bit(seed: int = 0):
    """A 4-bit PEFT LoRA model: our quantized Llama body, then PEFT's own bnb LoRA layers around its Linear4bit."""
    from peft import LoraConfig, get_peft_model

    model, tokenizer = llama(seed)
    for parameter in model.base_model.parameters():
        parameter.requires_grad_(False)
    quantize_backbone(model, Quantization("nf4", double_quant=True))
    config = LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"], modules_to_save=["score"], init_lora_weights="gaussian")
    return get_peft_model(model, config), tokenizer


def test_prune_peft_model_and_the_callback_on_a_4bit_peft_model(sst2_rows, tmp_path):
    pytest.importorskip("peft")
    from peft.tuners.lora.bnb import Linear4bit as PeftLinear4bit

    from sparse_adapter.hf_trainer import SparseAdapterCallback
    from sparse_adapter.peft import prune_peft_model

    model, tokenizer = peft_4bit()
    assert any(isinstance(m, PeftLinear4bit) for m in model.modules())
    examples = [{k: v for k, v in e.items() if k != "token_type_ids"} for e in encode(tokenizer, sst2_rows[:32])]
    masks = prune_peft_model(model, sparsity=0.5, pruner="snip", batches=batched(examples[:8], 4))
    count, total = kept(masks)
    assert count == kept_count(total, 0.5) and all("lora_" in n for n in masks)
    callback = SparseAdapterCallback(sparsity=0.5, pruner="snip", num_batches=2)
    trainer = trainer_for(model, examples[:16], tmp_path, callback, max_steps=2)
    trainer.train()
    assert kept(callback.masks)[0] == kept_count(total, 0.5)
    assert_held(dict(model.named_parameters()), callback.masks, trainer.optimizer)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
@pytest.mark.parametrize("compute_dtype", ["float32", "bfloat16"])
def test_nf4_on_cuda_scores_and_holds_masks_exactly(compute_dtype, sst2_rows):
    from sparse_adapter.hold import hold_masks

    model, tokenizer = llama()
    prunable = attach_adapter(model, "lora", r=4, targets=["q_proj", "v_proj", "up_proj"])
    quantize_backbone(model, Quantization("nf4", compute_dtype=compute_dtype, double_quant=True))
    model.to("cuda").eval()
    named = dict(model.named_parameters())
    params = {n: named[n] for n in prunable}
    batches = [{k: v.cuda() for k, v in b.items() if k != "token_type_ids"} for b in batched(encode(tokenizer, sst2_rows[:16]), 4)]
    masks = prune(params, 0.5, PrunerConfig("grasp", batches=2), loss_fn=lambda b, temperature=1.0: model(**b).loss,
                  batches=batches[:2], model=model)
    assert kept(masks)[0] == kept_count(kept(masks)[1], 0.5)
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2, weight_decay=0.1)
    hold = hold_masks(optimizer, named, masks)
    model.train()
    for batch in batches:
        model(**batch).loss.backward()
        optimizer.step()
        optimizer.zero_grad()
    hold.remove()
    assert_held(named, masks, optimizer)


@pytest.mark.parametrize("backbone, variant", [("tiny-gpt2", "lora"), ("tiny-t5", "lora"), ("tiny-bart", "ia3"),
                                               ("tiny-bert", "houlsby"), ("tiny-qwen3", "prefix")])
def test_every_architecture_quantizes_under_an_adapter(backbone, variant, sst2_rows):
    """GPT-2's Conv1D (weight in×out) becomes a transposed Linear4bit; T5 keeps ``wo`` in fp32 (it casts its input to
    that weight's dtype); encoder–decoders, BERT and Qwen3 quantize every frozen projection of the body."""
    torch.manual_seed(0)
    model, tokenizer = backbone_from(backbone).build("sequence-classification", num_labels=2)
    reference, _ = backbone_from(backbone).build("sequence-classification", num_labels=2)
    options = {"lora": dict(r=2), "ia3": dict(), "houlsby": dict(bottleneck=4), "prefix": dict(length=3)}[variant]
    prunable = attach_adapter(model, variant, **options)
    attach_adapter(reference, variant, **options)
    reference.load_state_dict(model.state_dict())
    assert quantize_backbone(model, Quantization("nf4")) > 0
    if backbone == "tiny-t5":
        assert not any(is_quantized(m) for n, m in model.named_modules() if n.endswith(".wo"))
    batch = {k: v for k, v in batched(encode(tokenizer, sst2_rows[:4]), 4)[0].items() if k != "token_type_ids" or backbone == "tiny-bert"}
    model.train()
    loss = model(**batch).loss
    loss.backward()
    named = dict(model.named_parameters())
    assert torch.isfinite(loss) and all(named[n].grad is not None for n in prunable)
    model.eval(), reference.eval()
    with torch.no_grad():  # 4-bit weights: close to the fp32 model's output, not equal
        inputs = {k: v for k, v in batch.items() if k != "labels"}
        error = (model(**inputs).logits - reference(**inputs).logits).abs().max()
    assert 0 < error < 1.0
