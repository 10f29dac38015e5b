"""SparseAdapter where people already fine-tune: PEFT models, the Hugging Face Trainer, a plain loop, SHiRA.

Tiny random BERT with the MiniLM vocabulary, real SST-2 rows; masks checked exactly after real
optimizer steps (AdamW with weight decay, gradient accumulation, clipping).
"""

from __future__ import annotations


import pytest
import torch

peft = pytest.importorskip("peft")
from peft import IA3Config, LoHaConfig, LoKrConfig, LoraConfig, PromptTuningConfig, ShiraConfig, get_peft_model  # noqa: E402
from transformers import Trainer, TrainingArguments  # noqa: E402

from sparse_adapter import attach_adapter  # noqa: E402
from sparse_adapter.errors import ConfigError  # noqa: E402
from sparse_adapter.hf_trainer import MASKS_FILE, SparseAdapterCallback  # noqa: E402
from sparse_adapter.hold import hold_masks  # noqa: E402
from sparse_adapter.peft import (  # noqa: E402
    SPARSE_FILE, adapter_tensors, load_sparse_peft, prune_peft_model, save_sparse_peft, shira_mask_fn,
)
from sparse_adapter.pruning import PrunerConfig, kept_count, prune  # noqa: E402
from tests.conftest import tiny_model  # noqa: E402

LORA = dict(r=4, lora_alpha=8, target_modules=["query", "value"], modules_to_save=["classifier"], init_lora_weights="gaussian")


def encode(tokenizer, rows):
    return [{**{k: torch.tensor(v) for k, v in tokenizer(text, truncation=True, max_length=32, padding="max_length").items()},
             "labels": torch.tensor(label)} for text, label in rows]


def batched(examples, size=8):
    return [{k: torch.stack([e[k] for e in examples[i:i + size]]) for k in examples[0]} for i in range(0, len(examples), size)]


def peft_model(config=None, seed=0):
    torch.manual_seed(seed)
    model, tokenizer = tiny_model()
    return get_peft_model(model, config or LoraConfig(**LORA)), tokenizer


def kept(masks):
    return sum(int(m.sum()) for m in masks.values()), sum(m.numel() for m in masks.values())


@pytest.mark.parametrize("config, names", [
    (LoraConfig(**LORA), ("lora_A", "lora_B")),
    (LoraConfig(**LORA, use_dora=True), ("lora_A", "lora_B", "lora_magnitude_vector")),
    (IA3Config(target_modules=["key", "value", "output.dense"], feedforward_modules=["output.dense"]), ("ia3_l",)),
    (LoHaConfig(r=2, target_modules=["query", "value"]), ("hada_",)),
    (LoKrConfig(r=2, target_modules=["query", "value"]), ("lokr_",)),
    (PromptTuningConfig(task_type="SEQ_CLS", num_virtual_tokens=4), ("prompt_encoder",)),
])
def test_every_tuner_s_adapter_tensors_are_found_and_pruned_exactly(config, names, sst2_rows):
    model, tokenizer = peft_model(config)
    tensors = adapter_tensors(model)
    assert tensors and all(any(part in name for part in names) for name in tensors), list(tensors)
    assert not any("classifier" in name for name in tensors)  # modules_to_save: trained, never pruned
    masks = prune_peft_model(model, sparsity=0.4, pruner="snip", batches=batched(encode(tokenizer, sst2_rows[:16])))
    count, total = kept(masks)
    assert set(masks) == set(tensors) and count == kept_count(total, 0.4)


def test_include_and_exclude_select_by_name_and_bad_input_names_the_setting(sst2_rows):
    model, tokenizer = peft_model()
    assert all("lora_B" in n for n in adapter_tensors(model, include="lora_B"))
    assert not any("value" in n for n in adapter_tensors(model, exclude=r"\.value\."))
    with pytest.raises(ConfigError, match="include='nothing'"):
        adapter_tensors(model, include="nothing")
    plain, _ = tiny_model()
    with pytest.raises(ConfigError, match="no trainable adapter tensors"):
        prune_peft_model(plain, batches=[])
    with pytest.raises(ConfigError, match="sparsity=1.0"):
        prune_peft_model(model, sparsity=1.0, batches=batched(encode(tokenizer, sst2_rows[:8])))
    with pytest.raises(ConfigError, match="is not a parameter"):
        hold_masks(None, dict(model.named_parameters()), {"nope.weight": torch.ones(2, dtype=torch.bool)})
    name, parameter = next(iter(adapter_tensors(model).items()))
    with pytest.raises(ConfigError, match="has shape"):
        hold_masks(None, dict(model.named_parameters()), {name: torch.ones(parameter.numel() + 1, dtype=torch.bool)})


@pytest.mark.parametrize("backbone, targets, head", [("tiny-bert", ["query", "value"], "classifier"),
                                                    ("tiny-llama", ["q_proj", "v_proj"], "score")])
def test_snip_masks_equal_our_own_pipeline_on_the_same_lora(sst2_rows, backbone, targets, head):
    """PEFT's LoRA and ours with the same weights and batches: the same SNIP masks, name for name."""
    from tests.test_architectures_train import backbone_from

    torch.manual_seed(0)
    base, tokenizer = backbone_from(backbone).build("sequence-classification", num_labels=2)
    model = get_peft_model(base, LoraConfig(**{**LORA, "target_modules": targets, "modules_to_save": [head]}))
    ours, _ = backbone_from(backbone).build("sequence-classification", num_labels=2)
    ours.load_state_dict(model.base_model.model.state_dict(), strict=False)
    getattr(ours, head).load_state_dict(getattr(model.base_model.model, head).modules_to_save["default"].state_dict())
    prunable = attach_adapter(ours, "lora", r=4, alpha=8, targets=targets)
    theirs = dict(model.named_parameters())
    mapping = {}
    for name in prunable:  # ours: <path>.lora_A; PEFT: base_model.model.<path>.lora_A.default.weight
        path, factor = name.rsplit(".", 1)
        mapping[name] = f"base_model.model.{path}.{factor}.default.weight"
        with torch.no_grad():
            dict(ours.named_parameters())[name].copy_(theirs[mapping[name]])
    batches = [{k: v for k, v in b.items() if backbone == "tiny-bert" or k != "token_type_ids"}
               for b in batched(encode(tokenizer, sst2_rows[:16]))]
    peft_masks = prune_peft_model(model, sparsity=0.5, batches=batches, seed=3)
    ours.eval()
    params = {n: p for n, p in ours.named_parameters() if n in prunable}
    own = prune(params, 0.5, PrunerConfig("snip", batches=len(batches)), seed=3,
                loss_fn=lambda b, temperature=1.0: ours(**b).loss, batches=batches)
    with torch.no_grad():
        logits_ours = ours(**{k: v for k, v in batches[0].items() if k != "labels"}).logits
        model.eval()
        logits_peft = model(**{k: v for k, v in batches[0].items() if k != "labels"}).logits
    torch.testing.assert_close(logits_ours, logits_peft)  # the same model, so the same scores
    assert set(mapping.values()) == set(peft_masks)
    assert all(torch.equal(own[name], peft_masks[mapping[name]]) for name in prunable)


def assert_held(params, masks, optimizer):
    optimizer = getattr(optimizer, "optimizer", optimizer)
    for name, mask in masks.items():
        parameter = params[name]
        assert bool((parameter.detach()[~mask] == 0).all()), name
        state = optimizer.state[parameter]
        assert bool((state["exp_avg"][~mask] == 0).all()) and bool((state["exp_avg_sq"][~mask] == 0).all()), name
        assert not mask.any() or bool((parameter.detach()[mask] != 0).any()), name  # kept weights did train


def trainer_for(model, dataset, tmp_path, callback, max_steps=30, **args):
    settings = dict(
        output_dir=str(tmp_path), per_device_train_batch_size=4, gradient_accumulation_steps=2, max_steps=max_steps,
        learning_rate=5e-3, weight_decay=0.1, max_grad_norm=1.0, report_to=[], save_strategy="no", logging_steps=10,
        use_cpu=True, seed=0, disable_tqdm=True, dataloader_num_workers=0)
    arguments = TrainingArguments(**{**settings, **args})
    return Trainer(model=model, args=arguments, train_dataset=dataset, callbacks=[callback])


@pytest.mark.parametrize("config", [LoraConfig(**LORA), IA3Config(target_modules=["key", "value", "output.dense"], feedforward_modules=["output.dense"])],
                         ids=["lora", "ia3"])
def test_trainer_holds_masks_through_accumulation_decay_and_clipping(config, sst2_rows, tmp_path):
    model, tokenizer = peft_model(config)
    callback = SparseAdapterCallback(sparsity=0.5, pruner="snip", num_batches=4)
    trainer = trainer_for(model, encode(tokenizer, sst2_rows), tmp_path, callback)
    trainer.train()
    count, total = kept(callback.masks)
    assert count == kept_count(total, 0.5) and callback.kept_fraction == pytest.approx(count / total)
    assert_held(dict(model.named_parameters()), callback.masks, trainer.optimizer)
    assert any("sparse_adapter/kept_fraction" in entry for entry in trainer.state.log_history)


def test_trainer_resume_reads_the_masks_of_the_checkpoint(sst2_rows, tmp_path):
    model, tokenizer = peft_model()
    data = encode(tokenizer, sst2_rows)
    first = SparseAdapterCallback(sparsity=0.6, num_batches=4)
    trainer_for(model, data, tmp_path, first, max_steps=12, save_strategy="steps", save_steps=6).train()
    assert (tmp_path / "checkpoint-6" / MASKS_FILE).is_file()
    again, _ = peft_model(seed=1)  # other initial weights: a re-pruning would pick other masks
    second = SparseAdapterCallback(sparsity=0.6, num_batches=4)
    trainer = trainer_for(again, data, tmp_path, second, max_steps=12, save_strategy="no")
    trainer.train(resume_from_checkpoint=str(tmp_path / "checkpoint-6"))
    assert all(torch.equal(first.masks[n], second.masks[n]) for n in first.masks)
    assert_held(dict(again.named_parameters()), second.masks, trainer.optimizer)


def test_plain_loop_hook_holds_masks_and_comes_off(sst2_rows):
    model, tokenizer = peft_model()
    batches = batched(encode(tokenizer, sst2_rows), 4)
    masks = prune_peft_model(model, sparsity=0.5, batches=batches[:4])
    params = dict(model.named_parameters())
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=5e-3, weight_decay=0.1)
    hold = hold_masks(optimizer, params, masks)
    model.train()
    for step, batch in enumerate(batches * 2):  # 32 micro-batches, accumulation 2
        (model(**batch).loss / 2).backward()
        if step % 2:
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            optimizer.step()
            optimizer.zero_grad()
    assert_held(params, masks, optimizer)
    hold.remove()
    model(**batches[0]).loss.backward()
    optimizer.step()
    assert any(bool((params[name].detach()[~mask] != 0).any()) for name, mask in masks.items())  # the hooks are gone


def test_our_own_adapters_work_with_the_callback(sst2_rows, tmp_path):
    torch.manual_seed(0)
    model, tokenizer = tiny_model()
    attach_adapter(model, "houlsby", bottleneck=8)
    callback = SparseAdapterCallback(sparsity=0.5, num_batches=4)
    trainer = trainer_for(model, encode(tokenizer, sst2_rows), tmp_path, callback, max_steps=8)
    trainer.train()
    assert set(callback.masks) == {n for n in adapter_tensors(model)} and all("adapter" in n for n in callback.masks)
    assert_held(dict(model.named_parameters()), callback.masks, trainer.optimizer)


def test_saved_folders_keep_the_zeros_and_the_sparse_one_shrinks(sst2_rows, tmp_path):
    model, tokenizer = peft_model(LoraConfig(**{**LORA, "r": 32}))  # tensors large enough that the file header is small
    batches = batched(encode(tokenizer, sst2_rows[:16]))
    masks = prune_peft_model(model, sparsity=0.75, batches=batches)
    hold_masks(None, dict(model.named_parameters()), masks)
    model.eval()
    inputs = {k: v for k, v in batches[0].items() if k != "labels"}
    with torch.no_grad():
        expected = model(**inputs).logits
    model.save_pretrained(tmp_path / "peft")
    save_sparse_peft(model, tmp_path / "sparse", masks)
    with pytest.raises(ConfigError, match="not empty"):
        save_sparse_peft(model, tmp_path / "sparse", masks)
    reloaded = peft.PeftModel.from_pretrained(tiny_model()[0], tmp_path / "peft").eval()
    sparse, read = load_sparse_peft(tiny_model()[0], tmp_path / "sparse")
    sparse.eval()
    for other in (reloaded, sparse):
        named = dict(other.named_parameters())
        assert all(bool((named[n].detach()[~m] == 0).all()) for n, m in masks.items())
        with torch.no_grad():
            torch.testing.assert_close(other(**inputs).logits, expected)
    assert all(torch.equal(read[n], masks[n]) for n in masks)
    dense_bytes = (tmp_path / "peft" / "adapter_model.safetensors").stat().st_size
    assert (tmp_path / "sparse" / SPARSE_FILE).stat().st_size < 0.5 * dense_bytes  # 25% of the values + their bits


def test_shira_mask_fn_keeps_the_exact_budget_chosen_by_score(sst2_rows):
    torch.manual_seed(0)
    model, tokenizer = tiny_model()
    batches = batched(encode(tokenizer, sst2_rows[:16]))
    mask_fn = shira_mask_fn(model, batches, scorer="snip", target_modules=["query", "value"])
    from sparse_adapter.pruning import SCORERS

    query = model.bert.encoder.layer[0].attention.self.query
    query.weight.requires_grad_(True)
    model.eval()  # as shira_mask_fn scores: dropout off
    scores = SCORERS["snip"](params={"w": query.weight}, loss_fn=lambda b, temperature=1.0: model(**b).loss, batches=batches)["w"]
    config = ShiraConfig(r=2, target_modules=["query", "value"])
    config.mask_fn = mask_fn
    shira = get_peft_model(model, config)
    layer = shira.base_model.model.bert.encoder.layer[0].attention.self.query
    out_features, in_features = layer.base_layer.weight.shape
    mask = mask_fn(layer.base_layer, 2).bool()
    assert int(mask.sum()) == 2 * (out_features + in_features)
    assert float(scores[mask].min()) >= float(scores[~mask].max())
    with pytest.raises(ConfigError, match="no Linear module"):
        shira_mask_fn(model, batches, target_modules=["nothing"])


def test_trainer_under_ddp_trains_rank_0_s_masks_on_every_rank(glue_dir, tmp_path):
    """torchrun, 2 CPU processes (gloo): rank 0 scores and broadcasts, every rank holds the same masks."""
    import os
    import subprocess
    import sys

    from tests.conftest import ROOT

    env = dict(os.environ, OMP_NUM_THREADS="1", WANDB_MODE="offline", HF_HUB_OFFLINE="1", PYTHONPATH=str(ROOT))
    command = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", "--master_port=29533",
               str(ROOT / "tests" / "trainer_ddp_job.py"), str(tmp_path), f"{glue_dir}/glue/SST-2/train.tsv"]
    result = subprocess.run(command, env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    ranks = [torch.load(tmp_path / f"rank{r}.pt", weights_only=True) for r in (0, 1)]
    assert all(r["world"] == 2 and r["pruned_zero"] for r in ranks)
    assert set(ranks[0]["masks"]) == set(ranks[1]["masks"])
    assert all(torch.equal(ranks[0]["masks"][n], ranks[1]["masks"][n]) for n in ranks[0]["masks"])
