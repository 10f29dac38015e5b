"""GraSP's block-by-block Hessian-gradient product against the plain double backward it replaces."""

from functools import partial

import pytest
import torch
import torch.nn.functional as F
from transformers import AutoConfig, AutoModelForCausalLM

from sparse_adapter.adapters import LoRAConfig
from sparse_adapter.backbones import checkpointing, second_order_attention
from sparse_adapter.peft import model_loss
from sparse_adapter.pruning import PrunerConfig, blockwise, lm_head, prune
from sparse_adapter.pruning.allocation import select
from sparse_adapter.pruning.scorers import grasp_scores, summed_gradients

SHAPES = {
    "llama": dict(hidden_size=32, intermediate_size=48, num_hidden_layers=3, num_attention_heads=4, num_key_value_heads=2,
                  vocab_size=97, max_position_embeddings=64, tie_word_embeddings=True),
    "qwen2": dict(hidden_size=32, intermediate_size=48, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                  vocab_size=97, max_position_embeddings=64, tie_word_embeddings=False),
}


def reference_grasp(params, loss_fn, batches, temperature, double_backward):
    """The GraSP scorer as it was before scoring went block by block (kept here as the reference)."""
    tensors = list(params.values())
    g_stop = summed_gradients(tensors, loss_fn, batches, temperature)
    hg = [torch.zeros_like(p) for p in tensors]
    with double_backward():
        for batch in batches:
            loss = loss_fn(batch, temperature=temperature)
            grads = torch.autograd.grad(loss, tensors, create_graph=True, allow_unused=True)
            z = sum((g * s).sum() for g, s in zip(grads, g_stop) if g is not None)
            if not torch.is_tensor(z) or not z.requires_grad:
                continue
            for accumulator, h in zip(hg, torch.autograd.grad(z, tensors, allow_unused=True)):
                if h is not None:
                    accumulator.add_(h)
    return {name: p.detach() * h for (name, p), h in zip(params.items(), hg)}


def causal_lm(model_type, dtype, targets=("q_proj", "v_proj", "up_proj", "down_proj")):
    torch.manual_seed(0)
    config = AutoConfig.for_model(model_type, **SHAPES[model_type])
    model = AutoModelForCausalLM.from_config(config, attn_implementation="sdpa", dtype=dtype)
    for parameter in model.parameters():
        parameter.requires_grad_(False)
    names = LoRAConfig(r=4, alpha=8, targets=list(targets), init="bert").attach(model)
    named = dict(model.named_parameters())
    model.eval()
    generator = torch.Generator().manual_seed(1)
    batches = [torch.randint(0, 97, (2, 12), generator=generator) for _ in range(2)]

    def loss_fn(ids, temperature=1.0):
        logits = model(input_ids=ids).logits[:, :-1].float() / temperature
        return F.cross_entropy(logits.reshape(-1, logits.shape[-1]), ids[:, 1:].reshape(-1))

    return model, {n: named[n] for n in names}, loss_fn, batches


@pytest.mark.parametrize("model_type", ["llama", "qwen2"])
def test_blockwise_grasp_gives_the_plain_double_backwards_scores_and_masks(model_type):
    model, params, loss_fn, batches = causal_lm(model_type, torch.float64)
    double_backward = partial(second_order_attention, model)
    reference = reference_grasp(params, loss_fn, batches, 200.0, double_backward)
    used = []
    original = blockwise._BlockVJP.backward
    blockwise._BlockVJP.backward = staticmethod(lambda ctx, *a: used.append(1) or original(ctx, *a))
    try:
        scores = grasp_scores(params, loss_fn, batches, temperature=200.0, double_backward=double_backward, model=model)
    finally:
        blockwise._BlockVJP.backward = staticmethod(original)
    assert len(used) == 2 * SHAPES[model_type]["num_hidden_layers"]  # block by block: 2 batches, each block once
    for name in params:
        torch.testing.assert_close(scores[name], reference[name], rtol=1e-9, atol=1e-15)
        assert reference[name].abs().max() > 0
    masks, expected = (select(s, 0.4, "global", torch.Generator().manual_seed(3), 0.0) for s in (scores, reference))
    assert all(torch.equal(masks[name], expected[name]) for name in params)
    assert all(p.grad is None for p in params.values())


def test_blockwise_grasp_scores_inside_a_4bit_model_as_the_plain_double_backward():
    pytest.importorskip("bitsandbytes")
    from sparse_adapter.quantization import Quantization, quantize_backbone

    model, params, loss_fn, batches = causal_lm("llama", torch.float32)
    assert quantize_backbone(model, Quantization("nf4", compute_dtype="float32")) > 0
    double_backward = partial(second_order_attention, model)
    reference = reference_grasp(params, loss_fn, batches, 200.0, double_backward)
    masks = prune(params, 0.4, PrunerConfig("grasp", batches=2), loss_fn, batches, seed=3, model=model)
    expected = select(reference, 0.4, "global", torch.Generator().manual_seed(3), 0.0)
    assert all(torch.equal(masks[name], expected[name]) for name in params)


def test_snip_scores_with_gradient_checkpointing_when_the_model_trains_with_it():
    """HF models checkpoint in train mode only; scoring (eval mode) recomputes blocks itself, with equal scores."""
    model, params, loss_fn, batches = causal_lm("llama", torch.float64)
    plain = prune(params, 0.4, PrunerConfig("snip", batches=2), loss_fn, batches, seed=3, model=model)
    checkpointing(model, True)  # as backbone.gradient_checkpointing=true does
    recomputed = []
    original = blockwise._BlockVJP.forward
    blockwise._BlockVJP.forward = staticmethod(lambda ctx, *a: recomputed.append(1) or original(ctx, *a))
    try:
        checkpointed = prune(params, 0.4, PrunerConfig("snip", batches=2), loss_fn, batches, seed=3, model=model)
    finally:
        blockwise._BlockVJP.forward = staticmethod(original)
    assert len(recomputed) == 2 * SHAPES["llama"]["num_hidden_layers"]
    assert all(torch.equal(plain[name], checkpointed[name]) for name in params)


def labelled(batches, ignored=3):
    """Dict batches whose labels ignore the first ``ignored`` positions (a prompt), as SFT's."""
    out = []
    for ids in batches:
        labels = ids.clone()
        labels[:, :ignored] = -100
        out.append({"input_ids": ids, "labels": labels})
    return out


def lm_loss(model, smoothing=0.0, extra=0.0):
    """The causal-LM loss with logits / T; ``smoothing`` or an ``extra`` term (zero in value, not in gradient) make it
    another function than the head lm_head rebuilds."""

    def loss_fn(batch, temperature=1.0):
        logits = model(input_ids=batch["input_ids"]).logits[:, :-1] / temperature  # fp64 stays fp64, as SFT's loss
        loss = F.cross_entropy(logits.flatten(0, 1), batch["labels"][:, 1:].flatten(), label_smoothing=smoothing)
        return loss + extra * (logits - logits.detach()).sum()

    return loss_fn


def counting(monkeypatch, name):
    """The chunked head's calls of ``name``, each as the temperature it ran at."""
    calls = []
    original = getattr(lm_head.ChunkedHead, name)
    monkeypatch.setattr(lm_head.ChunkedHead, name, lambda self, *a: calls.append(self.temperature) or original(self, *a))
    return calls


@pytest.mark.parametrize("model_type", ["llama", "qwen2"])
def test_grasp_takes_a_causal_lms_head_in_token_chunks_with_the_plain_scores_and_masks(model_type, monkeypatch):
    model, params, _, ids = causal_lm(model_type, torch.float64)
    batches, loss_fn = labelled(ids), lm_loss(model)
    monkeypatch.setattr(lm_head, "CHUNK_BYTES", 97 * 8 * 5)  # 5 tokens a chunk: 2 × 9 kept tokens in 4 chunks
    chunks = counting(monkeypatch, "losses")
    products = counting(monkeypatch, "hessian_vector")
    double_backward = partial(second_order_attention, model)
    reference = reference_grasp(params, loss_fn, batches, 200.0, double_backward)
    scores = grasp_scores(params, loss_fn, batches, temperature=200.0, double_backward=double_backward, model=model)
    assert len(products) == 2 and len(chunks) == 2 * 2 * 4  # each batch: 4 chunks for the value check, 4 for H u
    for name in params:
        torch.testing.assert_close(scores[name], reference[name], rtol=1e-9, atol=1e-15)
    masks, expected = (select(s, 0.4, "global", torch.Generator().manual_seed(3), 0.0) for s in (scores, reference))
    assert all(torch.equal(masks[name], expected[name]) for name in params)


def test_grasp_through_peft_chunks_the_head_of_the_models_own_loss(monkeypatch):
    """PEFT's closure returns the model's loss (at temperature 1 for a causal LM; fp32, as transformers computes it)."""
    model, params, _, ids = causal_lm("qwen2", torch.float64)
    batches, loss_fn = labelled(ids[:1]), model_loss(model)
    products = counting(monkeypatch, "hessian_vector")
    double_backward = partial(second_order_attention, model)
    reference = reference_grasp(params, loss_fn, batches, 200.0, double_backward)
    scores = grasp_scores(params, loss_fn, batches, temperature=200.0, double_backward=double_backward, model=model)
    assert products == [1.0]
    for name in params:  # fp32 logits in both: equal to fp32's rounding
        torch.testing.assert_close(scores[name], reference[name], rtol=1e-5, atol=1e-5 * float(reference[name].abs().max()))
    masks, expected = (select(s, 0.4, "global", torch.Generator().manual_seed(3), 0.0) for s in (scores, reference))
    assert all(torch.equal(masks[name], expected[name]) for name in params)


@pytest.mark.parametrize("variant", [dict(smoothing=0.1), dict(extra=1e-3)])
def test_grasp_keeps_the_plain_head_when_the_closures_loss_is_another(variant, monkeypatch):
    """Label smoothing fails the value check; an extra term equal in value fails the gradient check (a second pass)."""
    model, params, _, ids = causal_lm("qwen2", torch.float64)
    batches, loss_fn = labelled(ids[:1]), lm_loss(model, **variant)
    products = counting(monkeypatch, "hessian_vector")
    double_backward = partial(second_order_attention, model)
    reference = reference_grasp(params, loss_fn, batches, 200.0, double_backward)
    scores = grasp_scores(params, loss_fn, batches, temperature=200.0, double_backward=double_backward, model=model)
    assert len(products) == (1 if "extra" in variant else 0)
    for name in params:
        torch.testing.assert_close(scores[name], reference[name], rtol=1e-9, atol=1e-15)
