"""Llama-like, GPT-2 and T5 layouts beyond training runs: prefix tuning at the attention interface
(GQA-shaped, not rotated, causal with the prefix visible, padding masked, eager = SDPA, cache =
no cache), decoder-only classification under padding, IA³/LoRA on fused and grouped projections,
gradient checkpointing with the masks, and refusals."""

import copy

import pytest
import torch
from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS

from sparse_adapter.adapters import HoulsbyConfig, IA3Config, LoRAConfig, PrefixConfig
from sparse_adapter.errors import ConfigError
from sparse_adapter.pruning.scorers import is_checkpointing
from tests.test_architectures_train import backbone_from

DECODERS = ["tiny-llama", "tiny-qwen3", "tiny-gpt2"]
TEXTS = ["the cat sat on the mat today", "a dog"]


def built(backbone: str, attn: str = "sdpa", **options):
    spec = backbone_from(backbone)
    spec.attn_implementation = attn
    for key, value in options.items():
        setattr(spec, key, value)
    model, tokenizer = spec.build("sequence-classification", num_labels=2)
    return model.eval(), tokenizer


def batch_of(tokenizer, side="right"):
    tokenizer.padding_side = side
    batch = dict(tokenizer(TEXTS, padding=True, return_tensors="pt"))
    batch.pop("token_type_ids", None)
    return batch


def test_gqa_shapes_in_llama_and_qwen3():
    model, _ = built("tiny-qwen3")  # 4 query heads, 2 key/value heads of 8: k/v are 16 wide, q 32
    prunable = LoRAConfig(r=2, targets=["query", "key"]).attach(model)
    named = dict(model.named_parameters())
    assert named[prunable[1]].shape == (32, 2) and named[prunable[3]].shape == (16, 2)  # B of q_proj, B of k_proj
    model, _ = built("tiny-llama")
    prunable = PrefixConfig(length=3).attach(model)
    assert [named.shape for named in (dict(model.named_parameters())[n] for n in prunable[:2])] == [(3, 16), (3, 16)]
    model, _ = built("tiny-llama")
    shapes = [dict(model.named_parameters())[n].shape for n in IA3Config().attach(model)[:3]]
    assert shapes == [(16,), (16,), (64,)]  # keys, values (GQA), the down-projection's input


def test_gpt2_names_thirds_of_its_fused_projection():
    model, tokenizer = built("tiny-gpt2")
    batch = batch_of(tokenizer)
    before = model(**batch).logits
    prunable = LoRAConfig(r=2, targets=["query", "value"], init="lora").attach(model)
    named = dict(model.named_parameters())
    assert prunable[:2] == ["transformer.h.0.attn.c_attn.lora_A", "transformer.h.0.attn.c_attn.lora_B"]
    assert named[prunable[1]].shape == (64, 2)  # query and value thirds of the 96 fused outputs
    torch.testing.assert_close(model(**batch).logits, before, rtol=0, atol=0)  # zero B: unchanged
    with torch.no_grad():
        named[prunable[1]].normal_()
    c_attn = model.transformer.h[0].attn.c_attn
    x = torch.randn(1, 3, 32)
    update = c_attn(x) - c_attn.base_layer(x)
    assert torch.count_nonzero(update[..., 32:64]) == 0 and torch.count_nonzero(update[..., :32]) > 0  # keys untouched
    model, _ = built("tiny-gpt2")
    ia3 = IA3Config(targets=["key", "value"]).attach(model)
    assert ia3 == ["transformer.h.0.attn.c_attn.scale", "transformer.h.1.attn.c_attn.scale"]
    assert dict(model.named_parameters())[ia3[0]].shape == (64,)


class Recorder:
    """Wraps one attention implementation and keeps the keys and the mask it is called with."""

    def __init__(self, inner):
        self.inner, self.calls = inner, []

    def __call__(self, module, query, key, value, mask, **kwargs):
        self.calls.append((key.detach().clone(), None if mask is None else mask.clone()))
        return self.inner(module, query, key, value, mask, **kwargs)


@pytest.mark.parametrize("backbone", ["tiny-llama", "tiny-qwen3"])
def test_prefix_keys_are_gqa_shaped_and_not_rotated(monkeypatch, backbone):
    model, tokenizer = built(backbone)
    PrefixConfig(length=3).attach(model)
    recorder = Recorder(ALL_ATTENTION_FUNCTIONS["sdpa"])
    monkeypatch.setitem(ALL_ATTENTION_FUNCTIONS._global_mapping, "sdpa", recorder)
    batch = batch_of(tokenizer)
    model(**batch)
    key, _ = recorder.calls[0]
    prefix = model.model.layers[0].self_attn.prefix_key  # (length, kv heads × head size)
    assert key.shape[:3] == (2, 2, 3 + batch["input_ids"].shape[1])  # 2 key/value heads, the prefix in front
    expected = prefix.view(3, 2, 8).transpose(0, 1)
    torch.testing.assert_close(key[:, :, :3], expected.expand(2, -1, -1, -1), rtol=0, atol=0)


@pytest.mark.parametrize("backbone", DECODERS)
def test_prefix_is_visible_to_every_position_under_the_causal_mask(backbone):
    model, tokenizer = built(backbone, attn="eager")
    PrefixConfig(length=3).attach(model)
    with torch.no_grad():
        for name, parameter in model.named_parameters():
            if name.endswith("prefix_key"):
                parameter.normal_()
    seen = []
    attention = next(m for n, m in model.named_modules() if n.endswith(("layers.0.self_attn", "h.0.attn")))
    attention.register_forward_hook(lambda m, a, out: seen.append(out[1]))
    batch = batch_of(tokenizer)
    model(**batch)
    weights = seen[0]  # (batch, heads, queries, 3 prefix + keys)
    length = batch["input_ids"].shape[1]
    assert weights.shape[-1] == 3 + length
    assert (weights[..., :3] > 0).all()  # every query, the first included, sees the prefix
    future = torch.triu(torch.ones(length, length, dtype=torch.bool), diagonal=1)
    assert torch.count_nonzero(weights[..., 3:][..., future]) == 0  # causal among the sequence's own keys
    padded = batch["attention_mask"][1] == 0
    assert padded.any() and torch.count_nonzero(weights[1][..., 3:][..., padded]) == 0  # padding masked


@pytest.mark.parametrize("backbone", DECODERS)
def test_prefix_eager_equals_sdpa_and_padding_side_does_not_matter(backbone):
    logits = {}
    for attn in ("eager", "sdpa"):
        model, tokenizer = built(backbone, attn=attn)
        torch.manual_seed(1)
        PrefixConfig(length=3).attach(model)
        for side in ("right", "left"):
            batch = batch_of(tokenizer, side)
            # the position a token has unpadded (classification pads right; left padding needs these ids)
            batch["position_ids"] = (batch["attention_mask"].cumsum(-1) - 1).clamp(min=0)
            logits[attn, side] = model(**batch).logits
        alone = dict(tokenizer(TEXTS[1:], return_tensors="pt"))
        alone.pop("token_type_ids", None)
        logits[attn, "alone"] = model(**alone).logits
    torch.testing.assert_close(logits["eager", "right"], logits["sdpa", "right"], rtol=0, atol=1e-6)
    torch.testing.assert_close(logits["sdpa", "right"], logits["sdpa", "left"], rtol=0, atol=1e-6)
    torch.testing.assert_close(logits["sdpa", "right"][1:], logits["sdpa", "alone"], rtol=0, atol=1e-6)  # last real token pooled


@pytest.mark.parametrize("backbone", ["tiny-llama", "tiny-gpt2"])
def test_generation_cache_with_a_prefix(backbone):
    from transformers import AutoModelForCausalLM

    model, tokenizer = built(backbone)
    lm = AutoModelForCausalLM.from_config(model.config).eval()
    torch.manual_seed(2)
    PrefixConfig(length=3).attach(lm)
    inputs = batch_of(tokenizer, "left")
    steps = {}
    for cache in (True, False):
        out = lm.generate(**inputs, max_new_tokens=5, do_sample=False, use_cache=cache, output_scores=True,
                          return_dict_in_generate=True, pad_token_id=tokenizer.pad_token_id)
        steps[cache] = (out.sequences, torch.stack(out.scores))
    assert torch.equal(steps[True][0], steps[False][0])
    torch.testing.assert_close(steps[True][1], steps[False][1], rtol=0, atol=1e-5)


def test_t5_prefix_leaves_the_relative_position_bias_alone(monkeypatch):
    model, tokenizer = built("tiny-t5", attn="eager")
    PrefixConfig(length=2).attach(model)
    biases = []
    from transformers.models.t5 import modeling_t5

    original = modeling_t5.eager_attention_forward

    def recording(module, query, key, value, mask, position_bias=None, **kwargs):
        biases.append(position_bias)
        return original(module, query, key, value, mask, position_bias=position_bias, **kwargs)

    monkeypatch.setattr(modeling_t5, "eager_attention_forward", recording)
    plain, _ = built("tiny-t5", attn="eager")
    batch = batch_of(tokenizer)
    model(**batch)
    first = biases[0]  # encoder layer 0: (1, heads, queries, 2 prefix + keys)
    assert torch.count_nonzero(first[..., :2]) == 0  # the prefix carries no position bias
    attention = plain.transformer.encoder.block[0].layer[0].SelfAttention
    length = batch["input_ids"].shape[1]
    torch.testing.assert_close(first[..., 2:], attention.compute_bias(length, length), rtol=0, atol=0)  # the sequence's: untouched


def test_gradient_checkpointing_gives_the_same_gradients_and_trains_with_masks(tmp_path, glue_dir):
    from sparse_adapter.adapters import MAMConfig, ParallelConfig, PfeifferConfig

    for adapter in (HoulsbyConfig(bottleneck=4), PfeifferConfig(bottleneck=4), LoRAConfig(r=2), ParallelConfig(bottleneck=4),
                    PrefixConfig(length=2), MAMConfig(size=4), IA3Config()):
        grads = {}
        for checkpointed in (False, True):
            model, tokenizer = built("tiny-llama", gradient_checkpointing=checkpointed)
            model.train()
            torch.manual_seed(3)
            prunable = adapter.attach(model)
            assert is_checkpointing(model) == checkpointed
            model(**batch_of(tokenizer), labels=torch.tensor([0, 1])).loss.backward()
            named = dict(model.named_parameters())
            grads[checkpointed] = {n: named[n].grad.clone() for n in prunable}
        for name in grads[False]:
            torch.testing.assert_close(grads[True][name], grads[False][name])
    from tests.test_architectures_train import TINY_RUN, check_run
    from tests.test_cli import train_in_process

    train_in_process(tmp_path, f"data_dir={glue_dir}", "backbone=tiny-llama", "backbone.gradient_checkpointing=true", "adapter=prefix", *TINY_RUN)
    check_run(tmp_path, "tiny-llama", "prefix")


def test_pad_token_comes_from_eos_when_the_tokenizer_has_none():
    from sparse_adapter.backbones import ensure_padding

    model, tokenizer = built("tiny-gpt2")
    tokenizer = copy.deepcopy(tokenizer)
    tokenizer.pad_token = None
    tokenizer.eos_token = "[SEP]"
    model.config.pad_token_id = None
    ensure_padding(model, tokenizer)
    assert tokenizer.pad_token == "[SEP]" and model.config.pad_token_id == tokenizer.sep_token_id


def test_unknown_targets_list_the_models_linears():
    model, _ = built("tiny-llama")
    with pytest.raises(ConfigError, match=r"'qq_proj' names no Linear .*query, key, value.* q_proj, k_proj, v_proj, o_proj"):
        LoRAConfig(targets=["query", "qq_proj"]).attach(model)


@pytest.mark.parametrize("model_type", ["mistral", "qwen2"])
def test_llama_like_relatives_take_every_variant(model_type):
    """Mistral and Qwen2 share Llama's module names (Qwen2: q/k/v biases): one layout serves them."""
    from sparse_adapter.adapters import MAMConfig
    from sparse_adapter.backbones import RandomBackbone

    spec = RandomBackbone(model_type=model_type, tokenizer=backbone_from("tiny-llama").tokenizer,
                          config=dict(backbone_from("tiny-llama").config))
    for adapter in (LoRAConfig(r=2), PrefixConfig(length=2), MAMConfig(size=4), IA3Config()):  # every slot but the serial ones
        model, tokenizer = spec.build("sequence-classification", num_labels=2)
        torch.manual_seed(0)
        prunable = adapter.attach(model)
        model(**batch_of(tokenizer), labels=torch.tensor([0, 1])).loss.backward()
        named = dict(model.named_parameters())
        assert prunable and all(named[n].grad is not None and named[n].grad.abs().sum() > 0 for n in prunable), type(adapter).__name__


@pytest.mark.parametrize("name", ["llama-3.2-1b", "qwen2.5-0.5b", "gpt2", "t5-base", "flan-t5-base"])
def test_hub_backbones_fail_offline_with_one_clear_message(monkeypatch, name):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(ConfigError, match=r"backbone\.name_or_path: cannot load .*\(the hub is unreachable"):
        backbone_from(name).build("sequence-classification", num_labels=2)


def test_bad_targets_and_impossible_variants_are_one_error_line(tmp_path, glue_dir, capsys):
    from tests.cli_support import FAST, call_train, error_lines

    code = call_train(*FAST, f"data_dir={glue_dir}", "backbone=tiny-gpt2", "adapter=lora", "adapter.targets=[q_proj]",
                      f"hydra.run.dir={tmp_path / 'a'}")
    lines = error_lines(capsys.readouterr().err)
    assert code == 2 and len(lines) == 1 and "'q_proj' names no Linear" in lines[0] and "c_attn" in lines[0]
    code = call_train(*FAST, f"data_dir={glue_dir}", "backbone=tiny-llama", "task=xsum", f"hydra.run.dir={tmp_path / 'b'}")
    lines = error_lines(capsys.readouterr().err)
    assert code == 2 and len(lines) == 1 and "backbone 'llama' has no seq2seq-lm head" in lines[0]
    assert not (tmp_path / "a" / "summary.json").exists() and not (tmp_path / "b" / "summary.json").exists()


def test_causal_summaries_put_the_loss_on_the_summary_and_generate_after_left_padded_prompts():
    """task=xsum_lm is the SFT family with conf/task/xsum_lm.yaml's settings (prompt format, plain template)."""
    from omegaconf import OmegaConf

    from sparse_adapter.lm_loss import causal_lm_loss
    from tasks.sft.data import SFTCollator
    from tasks.sft.formats import to_messages
    from tasks.sft.templates import IGNORE, ChatTemplate
    from tests.conftest import ROOT

    task = OmegaConf.load(ROOT / "conf" / "task" / "xsum_lm.yaml").task
    _, tokenizer = built("tiny-llama")
    collator = SFTCollator(ChatTemplate(tokenizer, task.chat_template), max_length=24, max_target_length=6, train_on_prompt=False)
    raw = [{"document": "the cat sat on the mat " * 20, "summary": "a cat sat"},
           {"document": "dogs bark", "summary": "dogs are loud animals indeed today"}]
    rows = [{"messages": to_messages(r, "prompt_completion", dict(task.columns), task.prompt, None), "position": i} for i, r in enumerate(raw)]
    tail = tokenizer("\nSummary:\n", add_special_tokens=False)["input_ids"]
    encoded = collator.encode(rows)
    for feature in encoded:
        ids, labels = feature["input_ids"].tolist(), feature["labels"].tolist()
        start = next(i for i, label in enumerate(labels) if label != IGNORE)
        assert start == feature["prompt_length"] and ids[start - len(tail): start] == tail  # the template's end precedes the summary
        assert labels[start:] == ids[start:]  # loss on the summary (and EOS) only
        assert start <= 24 and len(ids) - start <= 6  # document cut to the room left by the template, summary to its length
    assert encoded[0]["input_ids"][-1] == tokenizer.sep_token_id  # a short summary ends with the end token
    batch = collator.evaluation(rows)
    assert (batch["prompt_mask"][:, -1] == 1).all() and batch["prompt_mask"][1, 0] == 0  # left padding
    assert batch["prompt_ids"][1, -len(tail):].tolist() == tail
    train = collator.train(encoded)
    model, _ = backbone_from("tiny-llama").build("causal-lm")
    model.eval()
    logits = model(input_ids=train["input_ids"], attention_mask=train["attention_mask"]).logits[:, :-1]
    labels = train["labels"][:, 1:]
    expected = torch.nn.functional.cross_entropy(logits[labels != IGNORE], labels[labels != IGNORE])
    torch.testing.assert_close(causal_lm_loss(model, train["input_ids"], train["attention_mask"], train["labels"]), expected)
