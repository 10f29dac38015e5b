"""SFT against its peers on tiny-llama: TRL's SFTTrainer (the same loss on the same batch; SparseAdapterCallback
holding masks inside it), PEFT (the exported CAUSAL_LM adapter loads and generates), lm-evaluation-harness
(``python -m sparse_adapter.evaluate`` on a local GSM8K task file; our exact match on its generations)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from tasks.sft import SFTDataModule, SFTTask
from tasks.sft.metrics import flexible_answer, gsm8k_scores, strict_answer
from tests.test_sft import TEMPLATE, backbone, gsm8k_ready, sft_module, write_jsonl

ROWS = [{"prompt": [{"role": "user", "content": f"what is {i} times two"}],
         "completion": [{"role": "assistant", "content": f"it is {2 * i} , i think"}]} for i in range(6)]


def test_our_sft_loss_equals_trl_and_the_callback_holds_masks_in_sft_trainer(tmp_path):
    from datasets import Dataset
    from trl import SFTConfig, SFTTrainer

    from sparse_adapter.hf_trainer import SparseAdapterCallback

    torch.manual_seed(0)
    module = sft_module()
    model, tokenizer = module.model, module.tokenizer
    tokenizer.chat_template = TEMPLATE
    callback = SparseAdapterCallback(sparsity=0.5, pruner="snip", num_batches=1)
    args = SFTConfig(output_dir=str(tmp_path / "trl"), max_steps=3, per_device_train_batch_size=len(ROWS),
                     learning_rate=1e-2, report_to=[], use_cpu=True, save_strategy="no", logging_steps=1, seed=0,
                     completion_only_loss=True,
                     disable_tqdm=True)
    trainer = SFTTrainer(model=model, args=args, train_dataset=Dataset.from_list(ROWS), processing_class=tokenizer,
                         callbacks=[callback])
    theirs = next(iter(trainer.get_train_dataloader()))  # the whole set in one batch, in TRL's order

    path = write_jsonl(tmp_path / "pc.jsonl", ROWS)
    data = SFTDataModule(SFTTask(path=path, eval_path=path), tokenizer)
    data.setup()
    ours = data.collator.train(data.datasets["train"])

    def unpadded(batch):
        return sorted(tuple(r[m.bool()].tolist()) for r, m in zip(batch["input_ids"], batch["attention_mask"]))

    def labelled(batch):
        return sorted(tuple(r[r != -100].tolist()) for r in batch["labels"])

    assert unpadded(theirs) == unpadded(ours) and labelled(theirs) == labelled(ours)  # same tokens, same labels
    model.eval()
    with torch.no_grad():
        trl_loss, our_loss = trainer.compute_loss(model, dict(theirs)), module.scoring_loss(ours)
    # fp32: measured 0.0 here (one ulp, 9.5e-7, on other rows); TRL keeps its loss in fp32 even for an fp64 model
    trl_loss, our_loss = trl_loss.item(), our_loss.item()
    assert abs(trl_loss - our_loss) <= 1e-6 * max(1.0, abs(trl_loss)), (trl_loss, our_loss)

    model.train()
    adapters = {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}
    trainer.train()
    named = dict(model.named_parameters())
    assert callback.masks and callback.kept_fraction == 0.5
    for name, mask in callback.masks.items():
        assert torch.count_nonzero(named[name][~mask]) == 0  # pruned: exactly zero after three TRL steps
        assert not torch.equal(named[name][mask], adapters[name][mask])  # kept: trained
    assert not named["lm_head.weight"].requires_grad  # the untied LM head stays frozen inside TRL too


@pytest.fixture(scope="module")
def gsm8k_run(tmp_path_factory) -> Path:
    from tests.cli_support import call_train

    run = tmp_path_factory.mktemp("sft") / "run"
    code = call_train("backbone=tiny-llama", "task=gsm8k", f"data_dir={gsm8k_ready()}", "adapter=lora", "adapter.r=4",
                      "adapter.targets=[q_proj,v_proj]", "pruner=snip", "pruner.batches=1", "sparsity=0.5",
                      "trainer=smoke", "logger=csv", "trainer.max_steps=2", "data.max_train_samples=8",
                      "data.max_eval_samples=2", "data.batch_size=4", "data.max_length=48", "data.max_target_length=24",
                      "task.max_new_tokens=4", f"hydra.run.dir={run}")
    assert code == 0
    return run


def test_peft_export_is_a_causal_lm_adapter_that_loads_and_generates(gsm8k_run, tmp_path):
    from peft import PeftModel

    from sparse_adapter.export import main as export
    from sparse_adapter.io import load_adapter

    assert export([str(gsm8k_run), "--peft", str(tmp_path / "peft")]) == 0
    config = json.loads((tmp_path / "peft" / "adapter_config.json").read_text())
    assert config["task_type"] == "CAUSAL_LM" and config["modules_to_save"] == [] and config["peft_type"] == "LORA"
    ours, tokenizer = backbone("tiny-llama").build("causal-lm")  # the run's tokenizer, as the run built it
    load_adapter(ours, gsm8k_run / "adapter.safetensors")
    base, _ = backbone("tiny-llama").build("causal-lm")
    peft_model = PeftModel.from_pretrained(base, str(tmp_path / "peft")).eval()
    inputs = tokenizer(["natalia sold clips to 48 friends"], return_tensors="pt")
    assert "token_type_ids" not in inputs
    with torch.no_grad():
        torch.testing.assert_close(peft_model(**inputs).logits, ours.eval()(**inputs).logits)
        generated = peft_model.generate(**inputs, max_new_tokens=3, do_sample=False,
                                        pad_token_id=tokenizer.pad_token_id)
    assert generated.shape[1] == inputs["input_ids"].shape[1] + 3


def test_base_model_path_is_recorded_for_a_local_backbone(tmp_path):
    from sparse_adapter.adapters import LoRAConfig
    from sparse_adapter.backbones import PretrainedBackbone
    from sparse_adapter.export import export_peft
    from sparse_adapter.io import save_adapter

    model, tokenizer = backbone("tiny-llama").build("causal-lm")
    model.save_pretrained(tmp_path / "llama")
    tokenizer.save_pretrained(tmp_path / "llama")
    local, _ = PretrainedBackbone(str(tmp_path / "llama")).build("causal-lm")
    LoRAConfig(r=2, targets=["q_proj"]).attach(local)
    save_adapter(local, tmp_path / "adapter.safetensors")
    out = export_peft(tmp_path / "adapter.safetensors", tmp_path / "peft")
    config = json.loads((out / "adapter_config.json").read_text())
    assert config["base_model_name_or_path"] == str(tmp_path / "llama") and config["task_type"] == "CAUSAL_LM"


def test_lm_eval_runs_a_local_gsm8k_task_offline_and_our_exact_match_agrees(gsm8k_run, tmp_path, monkeypatch):
    import lm_eval
    import yaml

    from sparse_adapter.evaluate import evaluate, main

    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    rows = [json.loads(line) for line in (Path(gsm8k_ready()) / "gsm8k" / "test.jsonl").read_text().splitlines()[:3]]
    data = write_jsonl(tmp_path / "test.jsonl", rows)
    spec = yaml.safe_load((Path(lm_eval.__file__).parent / "tasks" / "gsm8k" / "gsm8k.yaml").read_text())  # lm-eval's
    spec.pop("tag"), spec.pop("dataset_name")
    spec.update(task="gsm8k_local", dataset_path="json", dataset_kwargs={"data_files": {"train": data, "test": data}},
                num_fewshot=0)
    spec["generation_kwargs"]["max_gen_toks"] = 8
    (tmp_path / "gsm8k_local.yaml").write_text(yaml.safe_dump(spec))

    results = evaluate(gsm8k_run, [str(tmp_path / "gsm8k_local.yaml")], limit=2, log_samples=True)
    samples = results["samples"]["gsm8k_local"]
    extract = {"strict-match": strict_answer, "flexible-extract": flexible_answer}
    for sample in samples:  # our extraction of lm-eval's own generations equals its filters'
        assert extract[sample["filter"]](sample["resps"][0][0]) == sample["filtered_resps"][0]
    for name, lm_eval_name in (("strict", "strict-match"), ("flexible", "flexible-extract")):
        ours = [s for s in samples if s["filter"] == lm_eval_name]
        assert len(ours) == 2
        score = gsm8k_scores([s["resps"][0][0] for s in ours], [s["target"] for s in ours])[f"exact_match_{name}"]
        assert score == results["results"]["gsm8k_local"][f"exact_match,{lm_eval_name}"]
    assert main([str(gsm8k_run), "--tasks", str(tmp_path / "missing.yaml"), "--limit", "1"]) == 2
