"""Files and folders from others are data: no code runs from them, sizes they ask for are checked before allocating,
and where authenticity matters a pinned checksum or an HMAC key is verified (issue 35)."""

from __future__ import annotations

import json
import pickle
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import save_file

from sparse_adapter import ConfigError, load_adapter, read_adapter, save_adapter
from sparse_adapter.adapter_file import CHECKSUM, CHECKSUMS, HMAC_KEY, SIGNATURE, seal
from sparse_adapter.adapters import HoulsbyConfig
from tasks.replay import override_problem
from tests.cli_support import FAST, call_train, error_lines
from tests.conftest import ROOT, tiny_model

# ---- no code from a run folder ------------------------------------------------------------------------------------

PAYLOADS = {  # a line planted in <run dir>/.hydra/overrides.yaml → what the one error line names
    "callback-target": ("+callbacks.x._target_=builtins.exec", "sets _target_"),
    "callback-as-a-mapping": ("+callbacks.x={_target_: torch.load, f: payload.pkl, weights_only: false}", "sets _target_"),
    "target-in-a-list": ("+logger.x.args=[{_target_: os.system, command: id}]", "sets _target_"),
    "metric-target": ("+task.metrics.x._target_=os.system", "sets _target_"),
    "partial-keyword": ("+callbacks.x._partial_=true", "sets _partial_"),
    "task-module-path": ("task.module=os.system", "sets module"),
    "datamodule-path": ("task.datamodule=subprocess.Popen", "sets datamodule"),
    "weights-package": ("backbone.tokenizer.package=payload", "sets package"),
    "remote-code": ("+backbone.config.trust_remote_code=true", "sets trust_remote_code"),
    "hydra-search-path": ("hydra.searchpath=[file:///tmp/payload]", "changes Hydra's own settings"),
    "package-move": ("task@callbacks.x=rte", "moves a config node"),
    "interpolation": ("seed=${oc.env:HOME}", "is an interpolation"),
    "group-outside-conf": ("callbacks=../../../tmp/payload", "is not an option name of group callbacks"),
    "unknown-group-option": ("callbacks=payload", "callbacks has no option 'payload'"),
    "sweep": ("seed=1,2", "is a sweep"),
}


def planted_run(tmp_path: Path, saved: list, checkpoint: bytes = b"not read") -> Path:
    run = tmp_path / "run"
    (run / ".hydra").mkdir(parents=True)
    (run / ".hydra" / "overrides.yaml").write_text(json.dumps(saved))  # JSON is YAML
    (run / "checkpoints").mkdir()
    (run / "checkpoints" / "last.ckpt").write_bytes(checkpoint)
    return run


@pytest.mark.parametrize("name", list(PAYLOADS))
def test_a_planted_override_is_refused_with_one_line_and_nothing_runs(name, tmp_path, capsys):
    payload, named = PAYLOADS[name]
    run = planted_run(tmp_path, ["backbone=tiny-bert", "callbacks=resumable", payload])
    before = {p: p.read_bytes() for p in run.rglob("*") if p.is_file()}
    assert call_train(f"resume={run}") == 2
    [line] = error_lines(capsys.readouterr().err)
    assert named in line and "never code" in line and str(run / ".hydra" / "overrides.yaml") in line, line
    assert {p: p.read_bytes() for p in run.rglob("*") if p.is_file()} == before  # nothing written


def test_a_planted_override_given_again_on_the_command_line_is_the_users_choice(tmp_path):
    assert override_problem("+callbacks.x._target_=builtins.exec") is not None
    assert all(override_problem(o) is None for o in (  # what real runs save: plain settings and our own option files
        "backbone=tiny-bert", "row=snip", "~row", "callbacks=null", "optimizer.betas=[0.9,0.98]", "optimizer.lr=0.001",
        "+backbone.config.attention_probs_dropout_prob=0", "data.group_by_length=True", "logger=csv"))


class Payload:
    """Pickled, it calls ``Path.touch`` on load: what a planted checkpoint would do under weights_only=False."""

    def __init__(self, canary: Path):
        self.canary = canary

    def __reduce__(self):
        return (Path.touch, (self.canary,))


def test_a_planted_pickle_checkpoint_is_refused_and_never_runs(tmp_path, glue_dir, capsys):
    canary = tmp_path / "canary"
    saved = [*FAST, f"data_dir={glue_dir}", "callbacks=resumable"]
    run = planted_run(tmp_path, saved, pickle.dumps({"state_dict": {}, "sparse_adapter": Payload(canary)}))
    assert call_train(f"resume={run}") == 2
    [line] = error_lines(capsys.readouterr().err)
    assert "not a readable checkpoint" in line and "last.ckpt" in line, line
    assert not canary.exists()
    assert not (run / "summary.json").exists()


# ---- bounded allocation: re-sealed files asking for more than they hold, loaded under a memory limit -------------


def reseal(path: Path, edit) -> None:
    """What anyone can do: edit a file's metadata and compute its checksums again."""
    with safe_open(str(path), framework="pt") as handle:
        raw = {key: handle.get_tensor(key) for key in handle.keys()}
        metadata = dict(handle.metadata())
    for key in (CHECKSUMS, CHECKSUM, SIGNATURE):
        metadata.pop(key, None)
    edit(raw, metadata)
    save_file(raw, str(path), metadata=seal(raw, metadata))


def houlsby_file(tmp_path: Path, name: str) -> Path:
    torch.manual_seed(0)
    model, _ = tiny_model()
    HoulsbyConfig(bottleneck=8).attach(model)
    path = tmp_path / f"{name}.safetensors"
    save_adapter(model, path)
    return path


def oversized_files(tmp_path: Path) -> dict[str, Path]:
    from peft import LoraConfig, get_peft_model

    from sparse_adapter.peft import SPARSE_FILE, prune_peft_model, save_sparse_peft
    from sparse_adapter.peft_files import CONFIG_FILE, seal_peft

    labels = houlsby_file(tmp_path, "labels")
    reseal(labels, lambda raw, m: m.update(head=m["head"].replace('"num_labels": 2', '"num_labels": 1000000000')))
    width = houlsby_file(tmp_path, "width")
    reseal(width, lambda raw, m: m.update(adapter_config=m["adapter_config"].replace('"bottleneck": 8', '"bottleneck": 1000000000')))
    sparse = tmp_path / "sparse.safetensors"  # 1 kept value of a 10^6 × 10^6 matrix, in a file of a few hundred bytes
    raw = {"w::values": torch.ones(1), "w::indices": torch.zeros(1, dtype=torch.int32)}
    save_file(raw, str(sparse), metadata=seal(raw, {"format": "sparse-adapter/2", "shapes": json.dumps({"w": [10**6, 10**6]})}))
    torch.manual_seed(0)
    model = get_peft_model(tiny_model()[0], LoraConfig(r=4, target_modules=["query", "value"], init_lora_weights="gaussian"))
    folder = save_sparse_peft(model, tmp_path / "peft", prune_peft_model(model, 0.5, pruner="random"))
    config = json.loads((folder / CONFIG_FILE).read_text())
    (folder / CONFIG_FILE).write_text(json.dumps({**config, "r": 2**24}))

    def reseal_peft(raw, metadata):  # the attacker updates the config's checksum too
        metadata.update({k: v for k, v in seal_peft(folder, raw, {}).items() if k == CONFIG_FILE})

    reseal(folder / SPARSE_FILE, reseal_peft)
    return {"labels": labels, "width": width, "sparse": sparse, "peft": folder}


BOUNDED_LOADS = textwrap.dedent("""
    import resource, sys, torch
    from sparse_adapter import ConfigError, load_adapter, read_adapter
    from sparse_adapter.peft import load_sparse_peft
    from tests.conftest import tiny_backbone, tiny_model
    base = {"labels": tiny_backbone(), "width": tiny_model()[0], "peft": tiny_model()[0]}
    size = int(open("/proc/self/statm").read().split()[0]) * resource.getpagesize()
    resource.setrlimit(resource.RLIMIT_AS, (size + 2**30, size + 2**30))  # 1 GiB more than the loaders already hold
    loads = {"labels": lambda p: load_adapter(base["labels"], p), "width": lambda p: load_adapter(base["width"], p),
             "sparse": read_adapter, "peft": lambda p: load_sparse_peft(base["peft"], p)}
    for case, path in zip(sys.argv[1::2], sys.argv[2::2]):
        try:
            loads[case](path)
            print(case, "LOADED")
        except ConfigError as error:
            print(case, "REFUSED", str(error).replace("\\n", " "))
        except BaseException as error:
            print(case, "FAILED", type(error).__name__)
""")


def test_files_asking_for_more_than_they_hold_are_refused_before_allocating_under_a_memory_limit(tmp_path):
    pytest.importorskip("peft")
    files = oversized_files(tmp_path)
    argv = [str(x) for case, path in files.items() for x in (case, path)]
    result = subprocess.run([sys.executable, "-c", BOUNDED_LOADS, *argv], cwd=ROOT, capture_output=True, text=True, timeout=300,
                            env={"PATH": "/usr/bin:/bin", "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"})
    outcome = {line.split(" ", 2)[0]: line.split(" ", 2)[1:] for line in result.stdout.splitlines() if line.split(" ")[0] in files}
    assert set(outcome) == set(files), result.stdout + result.stderr[-3000:]
    assert all(status == "REFUSED" for status, *_ in outcome.values()), outcome
    assert "metadata field 'head.num_labels'=1000000000" in outcome["labels"][1]
    assert "metadata field 'adapter_config.bottleneck'=1000000000" in outcome["width"][1]
    assert "tensor 'w' asks for 1000000000000 entries" in outcome["sparse"][1]
    assert "r=16777216 asks for" in outcome["peft"][1]


# ---- authenticity: checksums catch accidents; a pinned checksum or an HMAC key catches edits ----------------------


def test_a_pinned_checksum_refuses_a_resealed_file(tmp_path):
    path = houlsby_file(tmp_path, "pinned")
    with safe_open(str(path), framework="pt") as handle:
        recorded = handle.metadata()[CHECKSUM]
    load_adapter(tiny_model()[0], path, checksum=recorded)
    reseal(path, lambda raw, m: raw.update({k: v * 2 for k, v in raw.items() if k.startswith("classifier")}))  # passes checksums
    read_adapter(path)
    with pytest.raises(ConfigError, match="is not the pinned checksum"):
        load_adapter(tiny_model()[0], path, checksum=recorded)


def test_with_an_hmac_key_only_files_signed_with_it_load(tmp_path, monkeypatch):
    unsigned = houlsby_file(tmp_path, "unsigned")
    monkeypatch.setenv(HMAC_KEY, "our team's secret")
    signed = houlsby_file(tmp_path, "signed")
    load_adapter(tiny_model()[0], signed)
    with pytest.raises(ConfigError, match="carries no HMAC"):
        read_adapter(unsigned)
    monkeypatch.delenv(HMAC_KEY)
    reseal(signed, lambda raw, m: m.update(hmac_kept="x"))  # someone without the key re-seals an edit...
    monkeypatch.setenv(HMAC_KEY, "our team's secret")
    with pytest.raises(ConfigError, match="carries no HMAC|does not match"):
        read_adapter(signed)
    monkeypatch.setenv(HMAC_KEY, "another key")
    with pytest.raises(ConfigError, match="carries no HMAC|does not match"):
        read_adapter(signed)


@pytest.fixture
def sparse_peft_folder(tmp_path):
    pytest.importorskip("peft")
    from peft import LoraConfig, get_peft_model

    from sparse_adapter.peft import prune_peft_model, save_sparse_peft

    torch.manual_seed(0)
    model = get_peft_model(tiny_model()[0], LoraConfig(r=4, target_modules=["query"], init_lora_weights="gaussian"))
    return save_sparse_peft(model, tmp_path / "peft", prune_peft_model(model, 0.5, pruner="random"))


def test_a_sparse_peft_folder_with_a_flipped_bit_is_refused(sparse_peft_folder):
    from sparse_adapter.peft import SPARSE_FILE, load_sparse_peft

    path = sparse_peft_folder / SPARSE_FILE
    data = bytearray(path.read_bytes())
    data[-3] ^= 0x10  # inside the last tensor's bytes
    path.write_bytes(bytes(data))
    with pytest.raises(ConfigError, match="does not match its checksum"):
        load_sparse_peft(tiny_model()[0], sparse_peft_folder)


def test_a_target_module_the_folder_cannot_fill_is_refused_even_when_resealed(sparse_peft_folder):
    from sparse_adapter.peft import SPARSE_FILE, load_sparse_peft
    from sparse_adapter.peft_files import CONFIG_FILE, seal_peft

    load_sparse_peft(tiny_model()[0], sparse_peft_folder)  # as written: loads
    config_file = sparse_peft_folder / CONFIG_FILE
    config = json.loads(config_file.read_text())
    config_file.write_text(json.dumps({**config, "target_modules": ["query", "value"]}))
    with pytest.raises(ConfigError, match="does not match the checksum"):
        load_sparse_peft(tiny_model()[0], sparse_peft_folder)
    reseal(sparse_peft_folder / SPARSE_FILE,
           lambda raw, m: m.update({k: v for k, v in seal_peft(sparse_peft_folder, raw, {}).items() if k == CONFIG_FILE}))
    with pytest.raises(ConfigError, match="holds no tensor for .*value.*target_modules"):
        load_sparse_peft(tiny_model()[0], sparse_peft_folder)


# ---- the Trainer callback resumes with the masks of the checkpoint it resumes ------------------------------------


def test_the_trainer_callback_reads_the_masks_of_the_checkpoint_being_resumed(glue_dir, tmp_path):
    pytest.importorskip("peft")
    from sparse_adapter.hf_trainer import MASKS_FILE, SparseAdapterCallback
    from tests.test_peft_integration import encode, peft_model, trainer_for

    with open(f"{glue_dir}/glue/SST-2/train.tsv") as handle:
        rows = [(line.split("\t")[0], int(line.split("\t")[1])) for line in list(handle)[1:17]]
    masks = {}
    for run, seed in (("A", 0), ("B", 1)):  # two runs, other weights and other masks, each with a checkpoint-2
        model, tokenizer = peft_model(seed=seed)
        callback = SparseAdapterCallback(sparsity=0.5, pruner="random", num_batches=1, seed=seed)
        trainer_for(model, encode(tokenizer, rows), tmp_path / run, callback, max_steps=2, save_strategy="steps", save_steps=2).train()
        masks[run] = callback.masks
    assert any(not torch.equal(masks["A"][n], masks["B"][n]) for n in masks["A"])
    model, tokenizer = peft_model(seed=2)
    callback = SparseAdapterCallback(sparsity=0.5, pruner="random", num_batches=1, seed=2)
    trainer = trainer_for(model, encode(tokenizer, rows), tmp_path / "B", callback, max_steps=4)  # output_dir: B
    trainer.train(resume_from_checkpoint=str(tmp_path / "A" / "checkpoint-2"))  # resumes A
    assert all(torch.equal(callback.masks[n], masks["A"][n]) for n in masks["A"])  # A's masks, not B's

    foreign = {n: m[:, :1] if m.dim() == 2 else m for n, m in masks["A"].items()}  # masks of another model's shapes
    from sparse_adapter.hf_trainer import save_masks

    save_masks(foreign, tmp_path / "A" / "checkpoint-2" / MASKS_FILE)
    model, tokenizer = peft_model(seed=2)
    trainer = trainer_for(model, encode(tokenizer, rows), tmp_path / "C", SparseAdapterCallback(sparsity=0.5, num_batches=1), max_steps=4)
    with pytest.raises(ConfigError, match="checkpoint-2: its masks do not fit this model"):
        trainer.train(resume_from_checkpoint=str(tmp_path / "A" / "checkpoint-2"))
