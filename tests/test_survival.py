"""Issue 26 beyond single bad inputs: tamper-evident adapter files, exports that never overwrite, a report that
skips bad runs, disk faults (a real full and read-only disk where the machine allows a tmpfs), sweeps that
finish their other jobs. Signals and SLURM requeue are in tests/test_resume.py."""

from __future__ import annotations

import errno
import json
import logging
import os
import subprocess

import pytest

from paper.report import main as report_main
from sparse_adapter import ConfigError, load_adapter, read_adapter, save_adapter
from sparse_adapter.adapters import HoulsbyConfig, LoRAConfig
from sparse_adapter.errors import StorageError
from sparse_adapter.export import main as export_main
from sparse_adapter.io import write_json_atomic
from tests.cli_support import FAST, call_train, error_lines, train_subprocess
from tests.conftest import tiny_backbone, tiny_model
from tests.test_bad_input import Env, _edit_tensor_bytes, _rewrite_metadata, _unseal, sparse_adapter_file

# ---- adapter files ----------------------------------------------------------------------------------------------

def test_a_sealed_file_round_trips_and_any_edit_is_named(tmp_path):
    path = sparse_adapter_file(Env(tmp_path, ""), "a")
    tensors, masks, metadata = read_adapter(path)
    assert "checksum" in metadata and masks  # sealed, and stored sparsely
    load_adapter(tiny_backbone("bert"), path)  # untouched: loads
    _edit_tensor_bytes(path, "classifier.bias", 0, b"\x00\x00\xc0\x7f")  # a NaN written into the head
    with pytest.raises(ConfigError, match=r"adapter file '.*a.safetensors': tensor 'classifier.bias' does not match its checksum"):
        load_adapter(tiny_backbone("bert"), path)


def test_a_file_from_before_checksums_loads_with_a_note(tmp_path, caplog):
    path = sparse_adapter_file(Env(tmp_path, ""), "old")
    _rewrite_metadata(path, _unseal)
    with caplog.at_level(logging.WARNING):
        load_adapter(tiny_backbone("bert"), path)
    assert any("carries no checksum" in r.getMessage() and "old.safetensors" in r.getMessage() for r in caplog.records)


def test_load_adapter_refuses_non_finite_tensors_even_unsealed(tmp_path):
    path = sparse_adapter_file(Env(tmp_path, ""), "old")
    _rewrite_metadata(path, _unseal)
    _edit_tensor_bytes(path, "classifier.weight", 0, b"\x00\x00\x80\x7f")  # +Inf
    with pytest.raises(ConfigError, match="tensor 'classifier.weight' holds 1 non-finite value"):
        read_adapter(path)


# ---- export --------------------------------------------------------------------------------------------------------

@pytest.fixture
def lora_file(tmp_path):
    model, _ = tiny_model("bert")
    LoRAConfig(r=4, alpha=8, targets=["query", "value"]).attach(model)
    save_adapter(model, tmp_path / "adapter.safetensors")
    return tmp_path / "adapter.safetensors"


def test_export_never_overwrites_a_non_empty_folder_unless_forced(lora_file, tmp_path, capsys):
    out = tmp_path / "peft"
    out.mkdir()
    (out / "adapter_config.json").write_text('{"mine": true}')  # a user's own file
    assert export_main([str(lora_file), "--peft", str(out)]) == 2
    [line] = error_lines(capsys.readouterr().err)
    assert "is not empty (holds adapter_config.json)" in line and "--force" in line
    assert (out / "adapter_config.json").read_text() == '{"mine": true}' and not (out / "adapter_model.safetensors").exists()
    assert export_main([str(lora_file), "--peft", str(out), "--force"]) == 0
    assert json.loads((out / "adapter_config.json").read_text())["peft_type"] == "LORA"
    assert not list(out.glob("*.tmp")) and not list(out.glob(".*.tmp"))


def test_export_refuses_a_file_as_target_and_a_tampered_source(lora_file, tmp_path, capsys):
    target = tmp_path / "target"
    target.write_text("x")
    assert export_main([str(lora_file), "--peft", str(target)]) == 2
    assert "is a file, not a folder" in error_lines(capsys.readouterr().err)[0]
    _rewrite_metadata(lora_file, lambda m: m.update(adapter_config=m["adapter_config"].replace('"r": 4', '"r": 8')))
    assert export_main([str(lora_file), "--peft", str(tmp_path / "new")]) == 2
    assert "metadata field 'adapter_config' does not match its checksum" in error_lines(capsys.readouterr().err)[0]
    assert not (tmp_path / "new").exists()


# ---- report ----------------------------------------------------------------------------------------------------------

def test_report_skips_each_bad_run_with_one_warning_and_still_writes(tmp_path, capsys):
    from tests.test_report import write_run

    runs = tmp_path / "runs"
    for seed, value in [(1, 0.6), (2, 0.7)]:
        write_run(runs, "rte", "snip", seed, value)
    bad = {
        "cut": b'{"status": "complete", "task": "rt',
        "not-utf8": b'{"status": "complete", "task": "caf\xe9"}',
        "incomplete": json.dumps({"status": "complete", "task": "rte", "metrics": {}}).encode(),
        "nan-metric": None,
        "list": b"[1, 2]",
    }
    for name, content in bad.items():
        folder = runs / name
        folder.mkdir()
        if content is None:
            write_run(runs / name, "rte", "snip", 3, float("nan"))
        else:
            (folder / "summary.json").write_bytes(content)
    (runs / "snip-rte-1" / "csv" / "metrics.csv").write_bytes(b"\x00\xff garbage \xfe")  # a run whose log is garbage
    report_main([str(runs), "--out", str(tmp_path / "out")])
    err = capsys.readouterr().err
    warnings = [line for line in err.splitlines() if line.startswith("warning:")]
    assert len(warnings) == len(bad) + 1, err  # one per bad run, one for the garbage log
    for name in bad:
        assert sum(f"/{name}/" in line for line in warnings) == 1, (name, warnings)
    assert any("nan-metric" in line and "not a finite number" in line for line in warnings)
    assert any("metrics.csv: learning curve skipped" in line for line in warnings)
    assert "65.0 ± 7.1" in (tmp_path / "out" / "report.md").read_text()  # the two good runs


def test_report_exits_non_zero_only_when_nothing_is_readable(tmp_path, capsys):
    (tmp_path / "a").mkdir()
    (tmp_path / "a" / "summary.json").write_text("{cut")
    with pytest.raises(SystemExit, match="no complete summary.json") as stopped:
        report_main([str(tmp_path), "--out", str(tmp_path / "out")])
    assert stopped.value.code != 0 and not (tmp_path / "out").exists()
    assert "warning:" in capsys.readouterr().err


# ---- disk faults -------------------------------------------------------------------------------------------------------

@pytest.fixture
def tmpfs(tmp_path):
    """Mount a real tmpfs (``make(size, read_only)``) where the machine allows it (root); skip otherwise."""
    mounted = []

    def make(size: str, read_only: bool = False):
        point = tmp_path / f"mnt{len(mounted)}"
        point.mkdir()
        options = f"size={size}" + (",ro" if read_only else "")
        if subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(point)], capture_output=True).returncode:
            pytest.skip("cannot mount a tmpfs here (needs root)")
        mounted.append(point)
        return point

    yield make
    for point in mounted:
        subprocess.run(["umount", str(point)], capture_output=True)


def test_a_read_only_run_dir_is_refused_before_any_model_loads(tmpfs, glue_dir, capsys, monkeypatch):
    read_only = tmpfs("1m", read_only=True)
    import tasks.experiment

    monkeypatch.setattr(tasks.experiment, "_run", lambda *a: pytest.fail("the run started"))  # nothing may load
    assert call_train(*FAST, f"data_dir={glue_dir}", f"hydra.run.dir={read_only / 'run'}") == 2
    [line] = error_lines(capsys.readouterr().err)
    assert "hydra.run.dir: cannot write in" in line and "Read-only file system" in line


def test_a_full_disk_while_checkpointing_is_one_error_line_and_leaves_no_temporary_file(tmpfs, glue_dir, capsys):
    full = tmpfs("2m")  # room for the run's small files, not for a 5 MB checkpoint
    run = full / "run"
    code = call_train(*FAST, f"data_dir={glue_dir}", f"hydra.run.dir={run}", "callbacks=resumable",
                      "callbacks.last_checkpoint.every_n_train_steps=2")
    [line] = error_lines(capsys.readouterr().err)
    assert code == 2
    assert "cannot write" in line and "last.ckpt" in line and "No space left on device" in line, line
    assert not [p for p in full.rglob("*") if p.name.endswith(".tmp")]
    assert not (run / "summary.json").exists() and not (run / "checkpoints" / "last.ckpt").exists()


@pytest.mark.parametrize("code", [errno.ENOSPC, errno.EACCES])
def test_a_failed_write_keeps_the_old_file_and_leaves_no_temporary(tmp_path, monkeypatch, code):
    """Fault injection at the rename (the last step of every atomic write), for machines without a tmpfs."""
    target = tmp_path / "summary.json"
    write_json_atomic({"old": True}, target)

    def refuse(*args):
        raise OSError(code, os.strerror(code))

    monkeypatch.setattr(os, "replace", refuse)
    with pytest.raises(StorageError, match=f"cannot write {target}: {os.strerror(code)}"):
        write_json_atomic({"new": True}, target)
    assert json.loads(target.read_text()) == {"old": True}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["summary.json"]


# ---- sweeps ------------------------------------------------------------------------------------------------------------

def test_a_sweep_job_that_fails_at_run_time_lets_the_others_finish_and_is_named(tmp_path, glue_dir):
    # sparsity 0.99999 passes the config check but keeps no weight of this model: found when the model is built
    result = train_subprocess("-m", *FAST, f"data_dir={glue_dir}", "sparsity=0.99999,0.4", f"hydra.sweep.dir={tmp_path}")
    assert result.returncode == 2, result.stderr[-3000:]
    assert "Traceback" not in result.stderr
    last = error_lines(result.stderr)[-1]
    assert last.startswith("error: 1 sweep job(s) failed, the others finished: #0 (") and "sparsity=0.99999" in last
    [done] = tmp_path.glob("*/summary.json")
    assert json.loads(done.read_text())["sparsity"] == 0.4  # the good job ran after the bad one


def test_an_adapter_file_on_a_full_disk_is_a_storage_error_and_no_partial_file(tmpfs):
    full = tmpfs("64k")
    model, _ = tiny_model("bert")
    HoulsbyConfig(bottleneck=256).attach(model)  # a file of ~270 KB: more than the disk holds
    with pytest.raises(StorageError, match="adapter.safetensors: No space left on device"):
        save_adapter(model, full / "adapter.safetensors")
    assert list(full.iterdir()) == []


def test_a_sweep_revisiting_a_job_with_a_cut_summary_composes_it_as_unfinished(tmp_path):
    """Hydra resolves hydra.output_subdir (``record_dir``) before the job runs: a cut summary must not raise there."""
    from tasks.resolvers import record_dir

    (tmp_path / "summary.json").write_text('{"status": "comp')
    assert record_dir(str(tmp_path), True) == ".hydra"  # an unfinished job: its record is written, the job runs
    (tmp_path / "summary.json").write_text('{"status": "complete"}')
    assert record_dir(str(tmp_path), True) is None  # a finished one keeps its record as it ran
