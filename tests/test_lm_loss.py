"""sparse_adapter.lm_loss: the causal-LM loss with the head in token chunks equals the full-logits loss, in value,
gradient and the masks SNIP and GraSP pick from it; a head it cannot rebuild (Gemma 2's soft-capped logits) falls back."""

from __future__ import annotations

import dataclasses

import pytest
import torch
import torch.nn.functional as F

from sparse_adapter import attach_adapter
from sparse_adapter.backbones import RandomBackbone
from sparse_adapter.lm_loss import IGNORE, causal_lm_loss, chunkable
from sparse_adapter.pruning import PrunerConfig, prune
from tests.test_architectures_train import backbone_from

TARGETS = {"tiny-llama": ["q_proj", "v_proj"], "tiny-qwen3": ["q_proj", "v_proj"], "tiny-gpt2": ["c_attn"]}
TEXTS = ["a small test sentence with a few more words", "another one"]


def lm(name: str, dtype: str = "float32"):
    model, tokenizer = dataclasses.replace(backbone_from(name), dtype=dtype).build("causal-lm")
    prunable = attach_adapter(model, "lora", r=2, targets=TARGETS.get(name, ["q_proj", "v_proj"]))
    batch = dict(tokenizer(TEXTS, return_tensors="pt", padding=True))
    batch.pop("token_type_ids", None)
    labels = batch["input_ids"].clone()
    labels[batch["attention_mask"] == 0] = IGNORE
    labels[:, :3] = IGNORE  # a prompt: no loss on it
    return model.eval(), prunable, {**batch, "labels": labels}


def full_loss(model, batch, temperature: float = 1.0, smoothing: float = 0.0) -> torch.Tensor:
    logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits[:, :-1]
    logits = logits.to(torch.promote_types(logits.dtype, torch.float32)) / temperature
    return F.cross_entropy(logits.flatten(0, 1), batch["labels"][:, 1:].flatten(), ignore_index=IGNORE, label_smoothing=smoothing)


def chunked_loss(model, batch, temperature: float = 1.0, smoothing: float = 0.0) -> torch.Tensor:
    vocab = model.get_output_embeddings().weight.shape[0]
    return causal_lm_loss(model, batch["input_ids"], batch["attention_mask"], batch["labels"], temperature, smoothing,
                          chunk_bytes=4 * vocab * 3)  # 3 tokens a chunk: several chunks


def gradient(model, prunable, loss) -> torch.Tensor:
    named = dict(model.named_parameters())
    return torch.cat([g.flatten() for g in torch.autograd.grad(loss, [named[n] for n in prunable])])


# fp64 proves the two losses are one function; fp32, what training runs, only agrees to its rounding: summing the
# loss in chunks reorders the reductions (a relative gradient error of 1.0e-5 was seen on one CPU host)
TOLERANCE = {torch.float64: (1e-12, 1e-10), torch.float32: (1e-6, 1e-4)}  # (loss rtol, gradient relative error)


@pytest.mark.parametrize("dtype", list(TOLERANCE), ids=str)
@pytest.mark.parametrize("name", list(TARGETS))
def test_the_chunked_loss_equals_the_full_logits_loss_and_its_gradient(name, dtype):
    model, prunable, batch = lm(name)
    model.to(dtype)
    loss_rtol, gradient_error = TOLERANCE[dtype]
    assert chunkable(model, batch["input_ids"], batch["attention_mask"])
    for temperature, smoothing in ((1.0, 0.0), (2.0, 0.1)):
        full, chunked = full_loss(model, batch, temperature, smoothing), chunked_loss(model, batch, temperature, smoothing)
        assert full.dtype == chunked.dtype == dtype
        assert torch.allclose(chunked, full, rtol=loss_rtol), (float(chunked), float(full))
        expected, got = gradient(model, prunable, full), gradient(model, prunable, chunked)
        assert float((got - expected).norm() / expected.norm()) < gradient_error


def test_snip_and_grasp_pick_the_same_masks_from_either_loss():
    model, prunable, batch = lm("tiny-llama")
    named = dict(model.named_parameters())
    params = {n: named[n] for n in prunable}
    for scorer in ("grasp", "snip"):  # GraSP's first: the chunkable check runs inside its closure
        masks = [prune(params, 0.5, PrunerConfig(scorer, batches=1), loss_fn=lambda b, temperature=1.0, f=f: f(model, b, temperature),
                       batches=[batch], seed=0, model=model) for f in (chunked_loss, full_loss)]
        assert all(torch.equal(masks[0][n], masks[1][n]) for n in prunable), scorer


def test_a_bf16_head_gives_an_fp32_loss_and_no_response_token_gives_zero():
    model, _, batch = lm("tiny-llama", "bfloat16")
    loss = chunked_loss(model, batch)
    assert loss.dtype == torch.float32 and torch.allclose(loss, full_loss(model, batch), rtol=1e-3)
    empty = dict(batch, labels=torch.full_like(batch["labels"], IGNORE))
    zero = chunked_loss(model, empty)
    assert float(zero) == 0.0 and zero.requires_grad


def test_soft_capped_logits_fall_back_to_the_full_loss(caplog):
    """Gemma 2 caps its logits (tanh) after the head: the head alone does not give them, so the loss takes the full logits."""
    spec = RandomBackbone(model_type="gemma2", config=dict(hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                                                            num_attention_heads=2, num_key_value_heads=1, head_dim=16,
                                                            final_logit_softcapping=2.0), attn_implementation="eager")
    model, tokenizer = spec.build("causal-lm")
    model.eval()
    batch = dict(tokenizer(TEXTS, return_tensors="pt", padding=True))
    batch.pop("token_type_ids", None)
    batch["labels"] = batch["input_ids"].masked_fill(batch["attention_mask"] == 0, IGNORE)
    with caplog.at_level("WARNING", logger="sparse_adapter.lm_loss"):
        loss = chunked_loss(model, batch)
    assert not chunkable(model, batch["input_ids"], batch["attention_mask"])
    assert "computing the loss from the full logits" in caplog.text
    assert torch.allclose(loss, full_loss(model, batch))


def test_a_model_sharded_by_fsdp2_takes_the_full_logits_path(tmp_path):
    """The root's parameters (embedding, head) are gathered only inside its own forward: calling the base model and the
    head apart would meet sharded tensors. One process, gloo, the library's own sharding."""
    import torch.distributed as dist
    from torch.distributed.device_mesh import init_device_mesh

    from sparse_adapter.distributed import shard_blocks
    from sparse_adapter.lm_loss import sharded

    model, _, batch = lm("tiny-llama")
    expected = full_loss(model, batch)
    dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'store'}", rank=0, world_size=1)
    try:
        assert shard_blocks(model, init_device_mesh("cpu", (1,))) == 2 and sharded(model)
        loss = chunked_loss(model, batch)
        loss.backward()
        torch.testing.assert_close(loss, expected)
    finally:
        dist.destroy_process_group()
