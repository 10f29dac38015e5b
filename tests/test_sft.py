"""Instruction tuning (tasks/sft/): formats → chat turns, labels on every assistant turn and nothing else,
truncation, GSM8K exact match held to lm-evaluation-harness's own filters, the LM head frozen, pruners on
the response-only loss, bad input as one error line, and short runs of each format on Llama, Qwen3 and GPT-2."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import lightning as L
import pytest
import torch
import torch.nn.functional as F

from callbacks import MaskEnforcement, PruneAtInit
from sparse_adapter.adapters import LoRAConfig
from sparse_adapter.adapters.base import adapter_parameter_names
from sparse_adapter.errors import ConfigError
from sparse_adapter.pruning import PrunerConfig
from tasks.optim import AdamWConfig
from tasks.sft import SFTDataModule, SFTModule, SFTTask
from tasks.sft.formats import detect_format, to_messages
from tasks.sft.metrics import flexible_answer, gsm8k_scores, normalise, strict_answer
from tasks.sft.templates import IGNORE, ChatTemplate
from tests.conftest import data_dir

# a chat template in words the tiny models' BERT vocabulary has: "<role> content [SEP]" per turn
TEMPLATE = ("{% for m in messages %}{{ m.role }} : {{ m.content }} [SEP] {% endfor %}"
            "{% if add_generation_prompt %}assistant : {% endif %}")
ROWS = {
    "alpaca": [{"instruction": f"add {i} and {i}", "input": "" if i % 2 else "show the work",
                "output": f"the sum is {2 * i}"} for i in range(8)],
    "messages": [{"messages": [{"role": "system", "content": "be brief"}, {"role": "user", "content": f"hello {i}"},
                               {"role": "assistant", "content": f"hi there {i}"},
                               {"role": "user", "content": "and then"},
                               {"role": "assistant", "content": f"goodbye {i}"}]} for i in range(8)],
    "prompt_completion": [{"prompt": f"what is {i} times two", "completion": f"it is {2 * i}"} for i in range(8)],
}


def backbone(name: str):
    from hydra.utils import instantiate
    from omegaconf import OmegaConf

    from tests.conftest import ROOT

    return instantiate(OmegaConf.load(ROOT / "conf" / "backbone" / f"{name}.yaml"))


@pytest.fixture(scope="module")
def tokenizer():
    return backbone("tiny-llama").build("causal-lm")[1]


def write_jsonl(path: Path, rows: list) -> str:
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return str(path)


def test_each_format_becomes_chat_turns_and_is_detected():
    assert detect_format(ROWS["alpaca"][0], {}, None, "f") == "alpaca"
    assert to_messages(ROWS["alpaca"][0], "alpaca", {}, None, "sys") == [
        {"role": "system", "content": "sys"}, {"role": "user", "content": "add 0 and 0\n\nshow the work"},
        {"role": "assistant", "content": "the sum is 0"}]
    assert detect_format(ROWS["messages"][0], {}, None, "f") == "messages"
    sharegpt = {"conversations": [{"from": "human", "value": "q"}, {"from": "gpt", "value": "a"}]}
    assert detect_format(sharegpt, {}, None, "f") == "messages"
    assert to_messages(sharegpt, "messages", {}, None, None) == [{"role": "user", "content": "q"},
                                                                 {"role": "assistant", "content": "a"}]
    gsm = {"question": "two plus two?", "answer": "4\n#### 4"}
    columns = {"prompt": "question", "completion": "answer"}
    assert detect_format(gsm, columns, None, "f") == "prompt_completion"
    user = to_messages(gsm, "prompt_completion", columns, "Q: {prompt} ({question})", None)[0]
    assert user["content"] == "Q: two plus two? (two plus two?)"


def test_labels_cover_every_assistant_turn_only_and_truncation_keeps_the_markers(tokenizer):
    template = ChatTemplate(tokenizer, TEMPLATE)
    messages = to_messages(ROWS["messages"][3], "messages", {}, None, None)
    encoded = template.encode(messages, max_length=64, max_target_length=32)
    labelled = [t for t in encoded.labels if t != IGNORE]
    # both assistant turns, each with its end-of-turn marker; no system or user token
    assert tokenizer.decode(labelled) == "hi there 3 [SEP] goodbye 3 [SEP]"
    assert tokenizer.decode(encoded.input_ids[: encoded.prompt_length]).endswith("and then [SEP] assistant :")
    assert all(label == token for label, token in zip(encoded.labels, encoded.input_ids) if label != IGNORE)
    everything = template.encode(messages, 64, 32, train_on_prompt=True)
    assert everything.labels == everything.input_ids
    # a long prompt is cut at the end of its last user turn, a long response at its end; the markers stay
    long = [{"role": "user", "content": "word " * 50 + "question"},
            {"role": "assistant", "content": "yes " * 30 + "end"}]
    cut = template.encode(long, max_length=12, max_target_length=6)
    text = tokenizer.decode(cut.input_ids)
    assert cut.prompt_length <= 12 and len(cut.input_ids) - cut.prompt_length <= 6
    assert text.startswith("user : word") and "[SEP] assistant : yes" in text and "question" not in text
    plain = ChatTemplate(tokenizer, "none").encode(to_messages(ROWS["alpaca"][1], "alpaca", {}, None, None), 64, 32)
    assert tokenizer.decode([t for t in plain.labels if t != IGNORE]) == "the sum is 2 [SEP]"  # response + EOS ([SEP])


def test_auto_template_falls_back_to_plain_and_says_so(tokenizer, caplog):
    with caplog.at_level(logging.WARNING):
        template = ChatTemplate(tokenizer, "auto")
    assert template.plain and sum("has no chat template" in r.message for r in caplog.records) == 1
    with pytest.raises(ConfigError, match="task.chat_template='chatml'"):
        ChatTemplate(tokenizer, "chatml")


GENERATIONS = [
    "She pays 5 + 3 = 8.\n#### 8", "#### 1,250 dollars", "The answer is $1,250.", "so 12 apples, then 7.", "#### -3.5",
    "no number here", "#### 42\n#### 43", "It costs 100. Then 3", "answer: 72.", "$5", "9", "#### 7 more: 8",
]
REFERENCES = ["a\n#### 8", "b\n#### 1250", "c\n#### 1250", "d\n#### 7", "e\n#### -3.5", "f\n#### 0", "g\n#### 42",
              "h\n#### 3", "i\n#### 72", "j\n#### 5", "k\n#### 9", "l\n#### 8"]


def test_gsm8k_extraction_and_exact_match_equal_lm_evaluation_harness():
    from lm_eval.api.metrics import exact_match_hf_evaluate
    from lm_eval.filters.extraction import RegexFilter

    strict = RegexFilter(regex_pattern=r"#### (\-?[0-9\.\,]+)")  # lm_eval/tasks/gsm8k/gsm8k.yaml, then take_first
    flexible = RegexFilter(regex_pattern=r"(-?[$0-9.,]{2,})|(-?[0-9]+)", group_select=-1)
    theirs = {"strict": [r[0] for r in strict.apply([[g] for g in GENERATIONS], None)],
              "flexible": [r[0] for r in flexible.apply([[g] for g in GENERATIONS], None)]}
    assert [strict_answer(g) for g in GENERATIONS] == theirs["strict"]
    assert [flexible_answer(g) for g in GENERATIONS] == theirs["flexible"]
    options = dict(regexes_to_ignore=[",", "\\$", "(?s).*#### ", "\\.$"], ignore_case=True, ignore_punctuation=False)
    ours = gsm8k_scores(GENERATIONS, REFERENCES)
    for name in ("strict", "flexible"):
        expected = exact_match_hf_evaluate(theirs[name], REFERENCES, **options)["exact_match"]
        assert ours[f"exact_match_{name}"] == pytest.approx(expected, abs=0)
    assert 0 < ours["exact_match_strict"] < ours["exact_match_flexible"] < 1  # the strings tell the two apart
    assert normalise("#### 1,250.") == "1250"


def sft_module(name: str = "tiny-llama", adapter=None, task: SFTTask | None = None) -> SFTModule:
    return SFTModule(backbone(name), adapter or LoRAConfig(r=4, targets=["q_proj", "v_proj"]), AdamWConfig(lr=1e-2),
                     task or SFTTask(path="x.jsonl"))


def test_lm_head_is_frozen_on_an_untied_llama_and_full_fine_tuning_still_trains_it():
    module = sft_module()
    model = module.model
    assert model.get_output_embeddings().weight is not model.get_input_embeddings().weight  # untied
    trained = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trained == adapter_parameter_names(model) and "lm_head.weight" not in trained
    report = module.parameter_report()
    assert report["head_params"] == 0
    assert report["trained_params"] == sum(p.numel() for n, p in model.named_parameters() if n in trained)
    from sparse_adapter.adapters import FullFineTuningConfig

    full = sft_module(adapter=FullFineTuningConfig())
    assert all(p.requires_grad for p in full.model.parameters())


@pytest.mark.parametrize("scorer", ["snip", "grasp"])
def test_pruners_score_through_the_response_only_loss_with_exact_counts(tmp_path, scorer):
    L.seed_everything(0)
    path = write_jsonl(tmp_path / "pc.jsonl", ROWS["prompt_completion"])
    task = SFTTask(path=path, validation_size=2)
    module = sft_module(task=task)
    data = SFTDataModule(task, module.tokenizer, batch_size=3, max_length=32, max_target_length=16)
    data.setup()
    batch = data.collator.train(data.datasets["train"][:3])
    logits = module(batch)
    labels = batch["labels"][:, 1:]
    response = labels != IGNORE
    assert 0 < response.sum() < (batch["attention_mask"][:, 1:] == 1).sum()  # the prompt is not in the loss
    torch.testing.assert_close(module.scoring_loss(batch), F.cross_entropy(logits[response], labels[response]))
    L.Trainer(callbacks=[PruneAtInit(PrunerConfig(scorer, batches=1), 0.6), MaskEnforcement()], max_steps=2,
              accelerator="cpu",
              logger=False, enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
              limit_val_batches=0, num_sanity_val_steps=0, default_root_dir=tmp_path).fit(module, datamodule=data)
    assert module.masks.kept() == round(0.4 * module.masks.total())
    params = module.prunable_parameters()
    assert all(torch.count_nonzero(params[n][~m]) == 0 for n, m in module.masks.items())


def test_held_out_rows_are_a_seeded_fraction_or_a_second_file(tmp_path, tokenizer):
    path = write_jsonl(tmp_path / "pc.jsonl", ROWS["prompt_completion"])
    first, second = (SFTDataModule(SFTTask(path=path, validation_fraction=0.25), tokenizer) for _ in range(2))
    for data in (first, second):
        data.setup()
    prompts = {split: [r["messages"][0]["content"] for r in first.examples[split]] for split in ("train", "validation")}
    assert (len(prompts["train"]), len(prompts["validation"])) == (6, 2)
    assert not set(prompts["train"]) & set(prompts["validation"])
    assert prompts["validation"] == [r["messages"][0]["content"] for r in second.examples["validation"]]  # split_seed
    dev = write_jsonl(tmp_path / "dev.jsonl", ROWS["alpaca"][:3])  # another file, another format: detected on its own
    other = SFTDataModule(SFTTask(path=path, eval_path=dev), tokenizer)
    other.setup()
    assert len(other.examples["train"]) == 8 and len(other.examples["validation"]) == 3


def test_bad_rows_and_settings_are_one_clear_error(tmp_path, tokenizer, monkeypatch):
    def setup(rows, **task):
        path = write_jsonl(tmp_path / "d.jsonl", rows)
        SFTDataModule(SFTTask(path=path, validation_size=1, **task), tokenizer).setup()

    with pytest.raises(ConfigError, match=r"fields \[answer, text\], none of the known formats: alpaca .*columns"):
        setup([{"text": "a", "answer": "b"}] * 3)
    with pytest.raises(ConfigError, match=r"no usable row \(empty response: 2\)"):
        setup([{"prompt": "a", "completion": " "}] * 3)
    with pytest.raises(ConfigError, match=r"no usable row \(no assistant turn: 2\)"):
        setup([{"messages": [{"role": "user", "content": "hi"}]}] * 3)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(ConfigError, match=r"task.path: 'someone/dataset' is no local file and the hub is unreachable"):
        SFTDataModule(SFTTask(path="someone/dataset"), tokenizer).setup()
    with pytest.raises(ConfigError, match=r"task.path: no file 'missing.jsonl'"):
        SFTDataModule(SFTTask(path="missing.jsonl"), tokenizer).setup()
    with pytest.raises(ConfigError, match=r"max\(data.max_target_length, task.max_new_tokens\)=600 exceeds"):
        SFTDataModule(SFTTask(path="x.jsonl", generation="gsm8k", max_new_tokens=88), tokenizer, max_length=512,
                      max_target_length=8, max_positions=512)
    for name, kind in [("tiny-bert", "encoder-only"), ("tiny-bart", "encoder–decoder")]:
        with pytest.raises(ConfigError, match=rf"task sft is a causal LM .*'{name[5:]}' is an {kind}"):
            sft_module(name, adapter=LoRAConfig(r=4))


def gsm8k_ready() -> str:
    found = data_dir()
    if found is None or not (Path(found) / "gsm8k" / "train.jsonl").is_file():
        pytest.skip("GSM8K not found: set SPARSE_ADAPTER_DATA to the folder that holds gsm8k/")
    return found


RUN = ["trainer=smoke", "logger=csv", "data.max_train_samples=8", "data.max_eval_samples=3", "data.batch_size=4",
       "data.eval_batch_size=4", "trainer.max_steps=2", "pruner=snip", "pruner.batches=1", "sparsity=0.5",
       "adapter=lora", "adapter.r=4",
       "data.max_length=48", "data.max_target_length=24", "task.max_new_tokens=6"]


@pytest.mark.parametrize("name, form", [("tiny-llama", "gsm8k"), ("tiny-qwen3", "messages"), ("tiny-gpt2", "alpaca")])
def test_each_format_trains_on_llama_qwen3_and_gpt2(tmp_path, name, form):
    from tests.cli_support import call_train

    if form == "gsm8k":
        task = [f"data_dir={gsm8k_ready()}", "task=gsm8k"]
    else:
        rows = write_jsonl(tmp_path / "rows.jsonl", ROWS[form])
        (tmp_path / "chat.jinja").write_text(TEMPLATE)
        template = f"task.chat_template={tmp_path / 'chat.jinja'}" if form == "messages" else ""
        task = ["task=sft", f"task.path={rows}", "task.validation_size=3", template]
    run = tmp_path / "run"
    assert call_train(*RUN, f"backbone={name}", *[t for t in task if t], f"hydra.run.dir={run}") == 0
    s = json.loads((run / "summary.json").read_text())
    assert s["adapter_weights_kept"] == round(0.5 * s["adapter_weights_total"]) and s["head_params"] == 0
    assert s["trained_params"] == s["adapter_weights_kept"]  # LoRA has no bias: the kept adapter weights, no LM head
    assert {"loss", "perplexity", "token_accuracy"} <= set(s["metrics"]) and s["metrics"]["perplexity"] > 1
    assert s["dataset"] == ("gsm8k/train.jsonl" if form == "gsm8k" else str(tmp_path / "rows.jsonl"))
    if form == "gsm8k":
        assert s["main_metric"] == "exact_match_strict"
        assert {"exact_match_strict", "exact_match_flexible"} <= set(s["metrics"])
        assert s["baseline"]["predictor"].startswith("most frequent training answer") and len(s["samples"]) == 3
    from sparse_adapter.io import read_adapter

    tensors, _, _ = read_adapter(run / "adapter.safetensors")
    assert all(".lora_" in n for n in tensors)  # the file holds the adapter only


@pytest.mark.parametrize("name, kind", [("tiny-bert", "encoder-only"), ("tiny-t5", "encoder–decoder"),
                                        ("tiny-bart", "encoder–decoder")])
def test_causal_lm_tasks_refuse_other_architectures_with_one_error_line(tmp_path, capsys, name, kind):
    from tests.cli_support import call_train, error_lines

    rows = write_jsonl(tmp_path / "rows.jsonl", ROWS["prompt_completion"])
    code = call_train(*RUN, f"backbone={name}", "task=sft", f"task.path={rows}", f"hydra.run.dir={tmp_path / 'run'}")
    lines = error_lines(capsys.readouterr().err)
    assert code == 2 and len(lines) == 1 and f"'{name[5:]}' is an {kind}" in lines[0] and "takes " in lines[0]
    assert "task sft is a causal LM and needs a decoder-only backbone (tiny-llama" in lines[0]
    assert not (tmp_path / "run" / "summary.json").exists()
