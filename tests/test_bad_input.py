"""Every bad input ends in one `error:` line naming the setting or file, exit code 2, and nothing written.

The cases run in-process through the same entry point as train.py (``tests.cli_support.call_train``);
a few run as real subprocesses to check that no traceback reaches the terminal there either.
"""

from __future__ import annotations

import json
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import pytest
import torch

from tests.cli_support import FAST, call_train, error_lines, train_subprocess
from tests.conftest import data_dir

GLUE = Path(data_dir() or "/nonexistent") / "glue"


@dataclass
class Env:
    tmp: Path
    glue: str

    @property
    def run(self) -> Path:
        return self.tmp / "run"

    def data(self, task_dir: str = "RTE", train: bytes | str | None = None, dev: bytes | str | None = None, rows: int = 40) -> str:
        """A data_dir holding glue/<task_dir> made from the real files' first ``rows`` lines, ``train``/``dev`` replaced."""
        folder = self.tmp / "data" / "glue" / task_dir
        folder.mkdir(parents=True, exist_ok=True)
        for name, content in (("train.tsv", train), ("dev.tsv", dev)):
            if content is None:
                lines = (GLUE / task_dir / name).read_bytes().splitlines(keepends=True)[:rows]
                content = b"".join(lines)
            (folder / name).write_bytes(content.encode() if isinstance(content, str) else content)
        return str(self.tmp / "data")

    def file(self, name: str, content: bytes) -> Path:
        path = self.tmp / name
        path.write_bytes(content)
        return path


RTE_HEADER = "index\tsentence1\tsentence2\tlabel\n"


def rte(*rows: str) -> str:
    return RTE_HEADER + "".join(f"{row}\n" for row in rows) + "".join(f"{100 + i}\tA dog runs.\tAn animal moves.\tentailment\n" for i in range(12))


def fake_checkpoint(env: Env, record: dict | None) -> str:
    """A checkpoint in Lightning's layout (state_dict + our run record), as written by an earlier run."""
    path = env.tmp / "other.ckpt"
    torch.save({"state_dict": {}, **({"sparse_adapter": {"run": record}} if record else {})}, path)
    return str(path)


TRAINED = {
    "task": "rte", "backbone": "tiny-bert", "adapter": "houlsby",
    "adapter_config": {"bottleneck": 64, "activation": "relu", "dropout": 0.0, "init": "bert", "init_std": 0.02},
    "pruner": "snip", "scope": "global", "sparsity": 0.4, "large_sparse": None, "seed": 42,
}


def finished_run(env: Env, summary: str) -> None:
    env.run.mkdir(parents=True)
    (env.run / "summary.json").write_text(summary)


def adapter_file(env: Env, kind: str) -> str:
    """A file given to ``adapter=fusion adapter.sources=[...]``: a saved adapter, or something posing as one."""
    from safetensors.torch import save_file

    from sparse_adapter import save_adapter
    from sparse_adapter.adapters.parallel import ParallelConfig
    from tests.conftest import tiny_model

    path = env.tmp / f"{kind}.safetensors"
    if kind == "roberta":  # a real adapter, trained on another backbone than tiny-bert
        model, _ = tiny_model("roberta")
        ParallelConfig(bottleneck=4).attach(model)
        save_adapter(model, path)
    elif kind == "foreign":  # valid safetensors without an adapter's metadata
        save_file({"x": torch.zeros(2)}, str(path))
    elif kind == "garbage":
        path.write_bytes(b"not safetensors")
    return str(path)


def fusion(path: str) -> list[str]:
    return ["adapter=fusion", f"adapter.sources=[{path}]"]


Case = Callable[[Env], list[str]]
CASES: dict[str, tuple[Case, str]] = {
    # --- command line: options, keys, syntax, resume ---
    "unknown-option": (lambda e: ["adapter=nonexistent"], "adapter=nonexistent"),
    "unknown-trainer": (lambda e: ["trainer=nope"], "trainer=nope"),
    "unknown-key": (lambda e: ["foo=1"], "foo"),
    "added-unknown-key": (lambda e: ["+foo=1"], "foo"),
    "added-adapter-key": (lambda e: ["+adapter.size=3"], "adapter.size"),
    "added-trainer-key": (lambda e: ["+trainer.epochz=3"], "trainer.epochz"),
    "unparseable": (lambda e: ["sparsity=[0.4"], "sparsity=[0.4"),
    "resume-nothing": (lambda e: [f"resume={e.tmp / 'nowhere'}"], "resume="),
    "resume-no-checkpoint": (lambda e: (e.run.joinpath(".hydra").mkdir(parents=True), e.run.joinpath(".hydra/overrides.yaml").write_text("[]"), [f"resume={e.run}"])[-1], "callbacks=resumable"),
    "resume-bad-yaml": (lambda e: (e.run.joinpath(".hydra").mkdir(parents=True), e.run.joinpath(".hydra/overrides.yaml").write_text("- [unclosed"), e.run.joinpath("checkpoints").mkdir(), e.run.joinpath("checkpoints/last.ckpt").write_bytes(b"x"), [f"resume={e.run}"])[-1], "overrides.yaml"),
    # --- config values: types, ranges, contradictions ---
    "sparsity-one": (lambda e: ["sparsity=1.0"], "sparsity"),
    "sparsity-negative": (lambda e: ["sparsity=-0.1"], "sparsity"),
    "sparsity-keeps-nothing": (lambda e: ["sparsity=0.99999"], "sparsity=0.99999: keeps no weight"),
    "sparsity-empties-a-matrix": (lambda e: ["sparsity=0.9999", "pruner.scope=layer"], "sparsity=0.9999: keeps no weight"),
    "sparsity-string": (lambda e: ["sparsity=high"], "sparsity"),
    "bottleneck-float": (lambda e: ["adapter.bottleneck=2.5"], "adapter.bottleneck=2.5"),
    "bottleneck-zero": (lambda e: ["adapter.bottleneck=0"], "adapter.bottleneck"),
    "seed-string": (lambda e: ["seed=abc"], "seed='abc'"),
    "seed-negative": (lambda e: ["seed=-1"], "seed"),
    "batch-size-zero": (lambda e: ["data.batch_size=0"], "data.batch_size"),
    "max-length-zero": (lambda e: ["data.max_length=0"], "data.max_length"),
    "no-dev-evaluation": (lambda e: ["+trainer.limit_val_batches=0"], "trainer.limit_val_batches"),
    "max-train-samples-zero": (lambda e: ["data.max_train_samples=0"], "data.max_train_samples"),
    "accumulate-zero": (lambda e: ["trainer.accumulate_grad_batches=0"], "trainer.accumulate_grad_batches"),
    "accumulate-string": (lambda e: ["trainer.accumulate_grad_batches=two"], "trainer.accumulate_grad_batches='two': must be a number"),
    "max-epochs-zero": (lambda e: ["trainer.max_epochs=0", "trainer.max_steps=-1"], "trainer.max_epochs"),
    "lora-alpha-zero": (lambda e: ["adapter=lora", "adapter.alpha=0"], "adapter.alpha"),
    "lora-rank-zero": (lambda e: ["adapter=lora", "adapter.r=0"], "adapter.r"),
    "lora-targets-string": (lambda e: ["adapter=lora", "adapter.targets=[1,2]"], "adapter.targets"),
    "dropout-above-one": (lambda e: ["adapter.dropout=1.5"], "adapter.dropout"),
    "init-unknown": (lambda e: ["adapter.init=xavier"], "adapter.init"),
    "weight-decay-negative": (lambda e: ["optimizer.weight_decay=-1"], "optimizer.weight_decay"),
    "lr-zero": (lambda e: ["optimizer.lr=0"], "optimizer.lr"),
    "lr-string": (lambda e: ["optimizer.lr=fast"], "optimizer.lr"),
    "betas-out-of-range": (lambda e: ["optimizer.betas=[0.9,1.5]"], "optimizer.betas"),
    "pruner-batches-negative": (lambda e: ["pruner=random", "pruner.batches=-3"], "pruner.batches"),
    "snip-without-batches": (lambda e: ["pruner=snip", "pruner.batches=0"], "pruner.batches"),
    "scope-unknown": (lambda e: ["pruner.scope=diagonal"], "pruner.scope"),
    "grasp-temperature-moved": (lambda e: ["pruner=grasp", "pruner.temperature=100"], "pruner.options.temperature=100"),
    "grasp-temperature-zero": (lambda e: ["pruner=grasp", "pruner.options.temperature=0"], "options.temperature=0"),
    "temperature-not-snips": (lambda e: ["pruner=snip", "+pruner.options.temperature=1"], "pruner.options.temperature"),
    "large-sparse-zero": (lambda e: ["large_sparse=0"], "large_sparse"),
    "large-sparse-dense": (lambda e: ["pruner=none", "large_sparse=2"], "large_sparse"),
    "fsdp": (lambda e: ["+trainer.strategy=fsdp"], "trainer.strategy=fsdp"),
    "backbone-missing": (lambda e: ["backbone=bert-base", "backbone.name_or_path=/nonexistent/model"], "backbone.name_or_path"),
    # --- data files: named with file and line ---
    "data-dir-missing": (lambda e: ["data_dir=/nonexistent/data"], "SPARSE_ADAPTER_DATA"),
    "tsv-empty": (lambda e: ["data_dir=" + e.data(train='')], "train.tsv is empty"),
    "tsv-header-only": (lambda e: ["data_dir=" + e.data(train=RTE_HEADER)], "train.tsv has a header but no rows"),
    "tsv-binary": (lambda e: ["data_dir=" + e.data(train=RTE_HEADER.encode() + bytes(range(256)))], "train.tsv line 2 holds binary data"),
    "tsv-not-utf8": (lambda e: ["data_dir=" + e.data(train=RTE_HEADER.encode() + b'0\tcaf\xe9\tx\tentailment\n')], "train.tsv line 2 is not UTF-8"),
    "tsv-wrong-columns": (lambda e: ["data_dir=" + e.data(train='id\ttext\tlabel\n0\ta\tentailment\n')], "train.tsv line 1: header lacks column(s) sentence1, sentence2"),
    "tsv-truncated-row": (lambda e: ["data_dir=" + e.data(train=rte('0\tA dog runs.', ))], "train.tsv line 2: 2 fields, expected 4"),
    "tsv-unknown-label": (lambda e: ["data_dir=" + e.data(dev=rte('0\ta\tb\tmaybe'))], "dev.tsv line 2: label 'maybe'"),
    "cola-label-two": (lambda e: ["task=cola", "data_dir=" + e.data('CoLA', train='gj04\t2\t\tA sentence.\n' * 3)], "train.tsv line 1: label '2' is outside 0..1"),
    "cola-label-negative": (lambda e: ["task=cola", "data_dir=" + e.data('CoLA', train='gj04\t1\t\tFine.\n' * 3 + 'gj04\t-1\t\tBad.\n')], "train.tsv line 4: label '-1'"),
    "stsb-label-word": (lambda e: ["task=stsb", "data_dir=" + e.data('STS-B', rows=5, train=(GLUE / 'STS-B/train.tsv').read_text().splitlines()[0] + '\n0\tg\tf\ty\t1\tn\tn\ta\tb\thigh\n')], "label 'high' is not a number"),
    "row-longer-than-positions": (lambda e: ["data.max_length=1024", "data_dir=" + e.data(train=rte('0\t' + 'word ' * 700 + '\tshort\tentailment'))], "data.max_length=1024:"),
    # --- checkpoints ---
    "ckpt-missing": (lambda e: [f"ckpt_path={e.tmp / 'none.ckpt'}"], "ckpt_path="),
    "ckpt-directory": (lambda e: [f"ckpt_path={e.tmp}"], "not a file"),
    "ckpt-garbage": (lambda e: [f"ckpt_path={e.file('garbage.ckpt', b'not a checkpoint at all')}"], "not a readable checkpoint"),
    "ckpt-truncated": (lambda e: [f"ckpt_path={e.file('cut.ckpt', Path(fake_checkpoint(e, TRAINED)).read_bytes()[:100])}"], "not a readable checkpoint"),
    "ckpt-foreign": (lambda e: [f"ckpt_path={fake_checkpoint(e, None)}"], "without train.py's run record"),
    "ckpt-other-sparsity": (lambda e: [f"ckpt_path={fake_checkpoint(e, dict(TRAINED, sparsity=0.8))}"], "sparsity=0.8 (command line: 0.4)"),
    "ckpt-other-adapter": (lambda e: [f"ckpt_path={fake_checkpoint(e, dict(TRAINED, adapter_config=dict(TRAINED['adapter_config'], bottleneck=16)))}"], "adapter.bottleneck=16 (command line: 64)"),
    # --- saved adapters (AdapterFusion's sources) ---
    "adapter-file-missing": (lambda e: fusion(str(e.tmp / "none.safetensors")), "adapter.sources: '"),
    "adapter-file-garbage": (lambda e: fusion(adapter_file(e, "garbage")), "garbage.safetensors' is not a readable safetensors file"),
    "adapter-file-foreign": (lambda e: fusion(adapter_file(e, "foreign")), "foreign.safetensors' records no backbone identity"),
    "adapter-file-other-backbone": (lambda e: fusion(adapter_file(e, "roberta")), "trained on another backbone: model_type=roberta"),
    "adapter-sources-empty": (lambda e: ["adapter=fusion", "adapter.sources=[]"], "adapter.sources is empty"),
    # --- saved run outputs ---
    "run-dir-complete": (lambda e: (finished_run(e, json.dumps({"status": "complete"})), [])[-1], "already holds a complete run"),
    # (with skip_finished=true an unreadable summary marks an unfinished job instead: tests/test_resume.py)
    "summary-corrupt": (lambda e: (finished_run(e, '{"status": "compl'), [])[-1], "summary.json: not valid JSON"),
    "summary-not-object": (lambda e: (finished_run(e, "[1, 2]"), [])[-1], "summary.json: not a run summary"),
}


@pytest.mark.parametrize("name", list(CASES))
def test_bad_input_is_one_error_line_naming_it(name, tmp_path, glue_dir, capsys, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    build, named = CASES[name]
    env = Env(tmp_path, glue_dir)
    overrides = build(env)
    summary = env.run / "summary.json"
    before = summary.read_bytes() if summary.exists() else None
    has_data = any(o.startswith("data_dir=") for o in overrides)
    code = call_train(*FAST, *([] if has_data else [f"data_dir={glue_dir}"]), f"hydra.run.dir={env.run}", *overrides)
    err = capsys.readouterr().err
    lines = error_lines(err)
    assert code == 2
    assert len(lines) == 1, err[-2000:]
    assert named in lines[0], lines[0]
    assert (summary.read_bytes() if summary.exists() else None) == before  # nothing written, nothing overwritten
    assert not (env.run / "adapter.safetensors").exists()
    assert not list(env.run.glob("**/*.tmp"))


def test_there_are_at_least_forty_cases():
    assert len(CASES) >= 40


@pytest.mark.parametrize("name", ["unknown-option", "seed-string", "tsv-truncated-row", "ckpt-garbage"])
def test_bad_input_through_a_real_process(name, tmp_path, glue_dir):
    build, named = CASES[name]
    env = Env(tmp_path, glue_dir)
    overrides = build(env)
    has_data = any(o.startswith("data_dir=") for o in overrides)
    result = train_subprocess(*FAST, *([] if has_data else [f"data_dir={glue_dir}"]), f"hydra.run.dir={env.run}", *overrides)
    assert result.returncode == 2
    assert "Traceback" not in result.stderr
    lines = error_lines(result.stderr)
    assert len(lines) == 1 and named in lines[0], result.stderr[-2000:]
    assert not (env.run / "summary.json").exists() and not (env.run / "adapter.safetensors").exists()


# ---- issue 26: values, data files, tampered adapter files, disk faults, sweeps, resume ---------------------------------
# Same contract as CASES (one `error:` line naming the setting or file, exit code 2, nothing written or damaged).


def squad_dir(env: Env, train_payload) -> str:
    """A data_dir whose squad/ holds a hand-made training file (``train_payload`` as JSON) and a one-question dev file."""
    folder = env.tmp / "squad-data" / "squad"
    folder.mkdir(parents=True, exist_ok=True)
    good = {"data": [{"paragraphs": [{"context": "Paris is in France.", "qas": [{"id": "1", "question": "Where is Paris?", "answers": [{"text": "France", "answer_start": 12}]}]}]}]}
    (folder / "train-v1.1-subset-du2017.json").write_text(json.dumps(train_payload))
    (folder / "dev-v1.1.json").write_text(json.dumps(good))
    return str(env.tmp / "squad-data")


def xsum_dir(env: Env, content: bytes) -> str:
    folder = env.tmp / "xsum-data" / "xsum"
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "test_subset.jsonl.gz").write_bytes(content)
    return str(env.tmp / "xsum-data")


def truncated_gzip() -> bytes:
    import gzip

    rows = "".join(json.dumps({"id": str(i), "document": "A long document. " * 20, "summary": "A summary."}) + "\n" for i in range(50))
    whole = gzip.compress(rows.encode())
    return whole[: len(whole) // 2]  # cut mid-stream, as an interrupted copy leaves it


# -- adapter files, really edited on disk (safetensors: 8-byte header length, JSON header, raw tensor bytes) --

def _header(path: Path) -> tuple[dict, int]:
    raw = path.read_bytes()
    size = int.from_bytes(raw[:8], "little")
    return json.loads(raw[8:8 + size]), 8 + size


def _rewrite_metadata(path: Path, edit: Callable[[dict], None]) -> None:
    raw = path.read_bytes()
    header, start = _header(path)
    edit(header["__metadata__"])
    text = json.dumps(header).encode()
    text += b" " * (-len(text) % 8)
    path.write_bytes(len(text).to_bytes(8, "little") + text + raw[start:])


def _edit_tensor_bytes(path: Path, name: str, offset: int, new: bytes) -> None:
    header, start = _header(path)
    begin = start + header[name]["data_offsets"][0] + offset
    raw = bytearray(path.read_bytes())
    raw[begin:begin + len(new)] = new
    path.write_bytes(bytes(raw))


def _unseal(metadata: dict) -> None:  # a file as written before checksums existed
    metadata.pop("checksum", None)
    metadata.pop("checksums", None)


def sparse_adapter_file(env: Env, name: str, kind: str = "houlsby") -> Path:
    """A real sparse adapter file for tiny-bert (75% of its weights pruned: stored as values + bit mask or indices)."""
    from sparse_adapter import save_adapter
    from sparse_adapter.adapters import HoulsbyConfig, PfeifferConfig
    from tests.conftest import tiny_model

    model, _ = tiny_model("bert")
    (HoulsbyConfig if kind == "houlsby" else PfeifferConfig)(bottleneck=8).attach(model)
    generator = torch.Generator().manual_seed(0)
    masks = {n: torch.rand(p.shape, generator=generator) < 0.25 for n, p in model.named_parameters() if n.endswith(("down.weight", "up.weight"))}
    path = env.tmp / f"{name}.safetensors"
    save_adapter(model, path, masks=masks)
    return path


def tampered(env: Env, how: str) -> str:
    path = sparse_adapter_file(env, how)
    header, _ = _header(path)
    bits = next(k for k in header if k.endswith("::bits") or k.endswith("::indices"))
    if how == "nan-in-head":
        _edit_tensor_bytes(path, "classifier.weight", 0, struct.pack("<f", float("nan")))
    elif how == "mask-bit-moved":
        _, start = _header(path)
        first = path.read_bytes()[start + header[bits]["data_offsets"][0]]
        _edit_tensor_bytes(path, bits, 0, bytes([first ^ 0x81]))  # one kept entry moves to a pruned position
    elif how == "metadata-edited":
        _rewrite_metadata(path, lambda m: m.update(adapter_config=m["adapter_config"].replace('"bottleneck": 8', '"bottleneck": 16')))
    elif how == "checksums-edited":
        _rewrite_metadata(path, lambda m: m.update(checksums=m["checksums"].replace("tensor:", "tensor: ", 1)))
    elif how == "unsealed-nan":
        _rewrite_metadata(path, _unseal)
        _edit_tensor_bytes(path, "classifier.weight", 4, struct.pack("<f", float("inf")))
    elif how == "unsealed-broken-json":
        _rewrite_metadata(path, lambda m: (_unseal(m), m.update(adapter_config='{"bottleneck": 8,')))
    elif how == "unsealed-sparse-shape":
        _rewrite_metadata(path, lambda m: (_unseal(m), m.update(shapes=m["shapes"].replace("[8, 32]", "[16, 32]", 1).replace("[32, 8]", "[32, 16]", 1))))
    elif how == "unsealed-shape-not-a-list":
        _rewrite_metadata(path, lambda m: (_unseal(m), m.update(shapes=json.dumps({k: "big" for k in json.loads(m["shapes"])}))))
    return str(path)


def different_slots(env: Env) -> list[str]:
    return ["adapter=fusion", f"adapter.sources=[{sparse_adapter_file(env, 'h')},{sparse_adapter_file(env, 'p', 'pfeiffer')}]"]


def resumable_without_checkpoint(env: Env) -> list[str]:
    """A run started with callbacks=resumable and killed before its first checkpoint: its record, no last.ckpt."""
    (env.run / ".hydra").mkdir(parents=True)
    (env.run / ".hydra" / "overrides.yaml").write_text("- backbone=tiny-bert\n- callbacks=resumable\n")
    return [f"resume={env.run}"]


def under_a_file(env: Env) -> list[str]:
    """hydra.run.dir below a regular file: no directory can be made there (a real OSError, root included)."""
    blocker = env.file("blocker", b"a file, not a folder")
    return [f"hydra.run.dir={blocker / 'run'}"]


MORE_CASES: dict[str, tuple[Case, str]] = {
    # --- QA / summarisation windows (ranges in tasks/validation.py) ---
    "squad-max-answer-length-zero": (lambda e: ["task=squad", "task.max_answer_length=0"], "task.max_answer_length=0: must be ≥ 1"),
    "squad-max-answer-length-negative": (lambda e: ["task=squad", "task.max_answer_length=-5"], "task.max_answer_length=-5"),
    "squad-n-best-zero": (lambda e: ["task=squad", "task.n_best_size=0"], "task.n_best_size=0: must be ≥ 1"),
    "squad-n-best-negative": (lambda e: ["task=squad", "task.n_best_size=-3"], "task.n_best_size=-3"),
    "squad-max-question-length-zero": (lambda e: ["task=squad", "data.max_question_length=0"], "data.max_question_length=0: must be ≥ 1"),
    "xsum-max-target-length-zero": (lambda e: ["task=xsum", "backbone=tiny-bart", "data.max_target_length=0"], "data.max_target_length=0: must be ≥ 1"),
    "xsum-max-target-length-negative": (lambda e: ["task=xsum", "backbone=tiny-bart", "data.max_target_length=-1"], "data.max_target_length=-1"),
    # --- data files ---
    "xsum-truncated-gz": (lambda e: ["task=xsum", "backbone=tiny-bart", "data_dir=" + xsum_dir(e, truncated_gzip())], "test_subset.jsonl.gz' is truncated"),
    "xsum-not-gzip": (lambda e: ["task=xsum", "backbone=tiny-bart", "data_dir=" + xsum_dir(e, b"plain text, not gzip")], "task.file: cannot read"),
    "squad-qas-number": (lambda e: ["task=squad", "data_dir=" + squad_dir(e, {"data": [{"paragraphs": [{"context": "c", "qas": 5}]}]})], "data[0].paragraphs[0].qas is int, expected a list"),
    "squad-qas-string": (lambda e: ["task=squad", "data_dir=" + squad_dir(e, {"data": [{"paragraphs": [{"context": "c", "qas": "why?"}]}]})], "qas is str, expected a list"),
    "squad-paragraphs-string": (lambda e: ["task=squad", "data_dir=" + squad_dir(e, {"data": [{"paragraphs": "text"}]})], "data[0].paragraphs is str"),
    # --- AdapterFusion ---
    "fusion-different-slots": (different_slots, "the sources adapt different slots (h.safetensors: after_attention, after_ffn; p.safetensors: after_ffn)"),
    "fusion-shared-slots-not-bool": (lambda e: ["adapter=fusion", "adapter.sources=[x]", "adapter.shared_slots_only=maybe"], "adapter.shared_slots_only='maybe': expected true or false"),
    # --- tampered adapter files (read by load_adapter / read_adapter; here as fusion sources) ---
    "adapter-nan-written-in-head": (lambda e: fusion(tampered(e, "nan-in-head")), "tensor 'classifier.weight' does not match its checksum"),
    "adapter-mask-bit-moved": (lambda e: fusion(tampered(e, "mask-bit-moved")), "does not match its checksum"),
    "adapter-metadata-edited": (lambda e: fusion(tampered(e, "metadata-edited")), "metadata field 'adapter_config' does not match its checksum"),
    "adapter-checksums-edited": (lambda e: fusion(tampered(e, "checksums-edited")), "metadata field 'checksums' does not match its checksum"),
    "adapter-old-file-non-finite": (lambda e: fusion(tampered(e, "unsealed-nan")), "tensor 'classifier.weight' holds 1 non-finite value(s)"),
    "adapter-old-file-broken-metadata": (lambda e: fusion(tampered(e, "unsealed-broken-json")), "metadata field 'adapter_config' is not valid JSON"),
    "adapter-old-file-sparse-shape-edited": (lambda e: fusion(tampered(e, "unsealed-sparse-shape")), "tensor 'bert.encoder.layer.0.attention.output.dropout.adapter.down.weight' has a mask of 32 bytes, its shape [16, 32] needs 64"),
    "adapter-old-file-shape-not-a-list": (lambda e: fusion(tampered(e, "unsealed-shape-not-a-list")), "has an invalid shape 'big' in metadata field 'shapes'"),
    # --- disk faults: found before any model loads ---
    "run-dir-under-a-file": (under_a_file, "hydra.run.dir: cannot write in"),
    # --- resume ---
    "resume-killed-before-first-checkpoint": (resumable_without_checkpoint, "stopped before its first checkpoint"),
    "resume-overrides-not-a-list": (lambda e: (e.run.joinpath(".hydra").mkdir(parents=True), e.run.joinpath(".hydra/overrides.yaml").write_text("a: 1"), e.run.joinpath("checkpoints").mkdir(), e.run.joinpath("checkpoints/last.ckpt").write_bytes(b"x"), [f"resume={e.run}"])[-1], "not a list of overrides"),
    # --- sweeps: every point checked before the first job ---
    "sweep-one-bad-point": (lambda e: ["-m", "sparsity=1.5,0.4", f"hydra.sweep.dir={e.tmp / 'sweep'}"], "1 of 2 sweep points are invalid, nothing was run: [sparsity=1.5] sparsity=1.5: must be in [0, 1)"),
    "sweep-every-bad-point-listed": (lambda e: ["-m", "sparsity=1.5,2.0", "seed=1,-1", f"hydra.sweep.dir={e.tmp / 'sweep'}"], "4 of 4 sweep points are invalid"),
    "sweep-bad-lr": (lambda e: ["-m", "optimizer.lr=0,1e-3", f"hydra.sweep.dir={e.tmp / 'sweep'}"], "[optimizer.lr=0] optimizer.lr=0: must be > 0"),
    "sweep-bad-group-option": (lambda e: ["-m", "adapter=houlsby,nope", f"hydra.sweep.dir={e.tmp / 'sweep'}"], "[adapter=nope] adapter=nope: unknown option"),
    "sweep-unwritable-dir": (lambda e: ["-m", "sparsity=0.2,0.4", f"hydra.sweep.dir={e.file('sweep-blocker', b'x') / 'sweep'}"], "hydra.sweep.dir: cannot write in"),
}


@pytest.mark.parametrize("name", list(MORE_CASES))
def test_more_bad_input_is_one_error_line_naming_it(name, tmp_path, glue_dir, capsys, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    build, named = MORE_CASES[name]
    env = Env(tmp_path, glue_dir)
    overrides = build(env)
    files_before = {p: p.read_bytes() for p in tmp_path.rglob("*") if p.is_file()}
    has_data = any(o.startswith("data_dir=") for o in overrides)
    has_dir = any(o.startswith(("hydra.run.dir=", "resume=")) for o in overrides)
    code = call_train(*FAST, *([] if has_data else [f"data_dir={glue_dir}"]), *([] if has_dir else [f"hydra.run.dir={env.run}"]), *overrides)
    err = capsys.readouterr().err
    lines = error_lines(err)
    assert code == 2
    assert len(lines) == 1, err[-2000:]
    assert named in lines[0], lines[0]
    assert not (env.run / "summary.json").exists() and not (env.run / "adapter.safetensors").exists()
    assert not (tmp_path / "sweep").exists()  # a refused sweep starts no job
    assert not [p for p in tmp_path.rglob("*.tmp")]
    for path, content in files_before.items():  # nothing damaged
        assert path.read_bytes() == content, path


def test_issue_26_adds_at_least_thirty_cases():
    assert len(MORE_CASES) >= 30
