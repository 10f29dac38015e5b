"""The PEFT + Trainer example runs (tiny model), and the README shows exactly its core."""

from __future__ import annotations

import importlib.util
import re
import textwrap

import pytest

from tests.conftest import ROOT


def load_example():
    spec = importlib.util.spec_from_file_location("peft_trainer", ROOT / "examples" / "peft_trainer.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_the_peft_trainer_example_runs_tiny_and_saves_its_adapters(glue_dir, tmp_path, monkeypatch, capsys):
    pytest.importorskip("peft")
    monkeypatch.setenv("SPARSE_ADAPTER_DATA", glue_dir)
    result = load_example().main(["--tiny", "--out", str(tmp_path)])
    assert result["kept_fraction"] == pytest.approx(0.6, abs=1e-3) and 0.0 <= result["dev_accuracy"] <= 1.0
    assert 0.5 <= result["majority_baseline"] <= 1.0
    assert (tmp_path / "adapter" / "adapter_model.safetensors").is_file()
    assert (tmp_path / "sparse-adapter" / "sparse_adapter_model.safetensors").is_file()
    assert "dev accuracy" in capsys.readouterr().out


def test_the_readme_shows_the_example_core_verbatim():
    source = (ROOT / "examples" / "peft_trainer.py").read_text()
    core = textwrap.dedent(re.search(r"# --8<-- \[start:core\]\n(.*?)\s*# --8<-- \[end:core\]", source, re.S).group(1))
    readme = (ROOT / "README.md").read_text()
    section = readme.split("## With PEFT and the Trainer", 1)[1]
    block = re.search(r"```python\n(.*?)```", section, re.S).group(1)
    assert block.strip() == core.strip()
