"""The PEFT + Trainer example runs (tiny model), and the docs include exactly its core."""

from __future__ import annotations

import importlib.util
import re

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


def test_the_docs_include_the_example_core_from_its_source():
    source = (ROOT / "examples" / "peft_trainer.py").read_text()
    core = re.search(r"# --8<-- \[start:core\]\n(.*?)\s*# --8<-- \[end:core\]", source, re.S).group(1)
    assert "SparseAdapterCallback(" in core and "trainer.train()" in core
    page = (ROOT / "docs" / "peft-trainer.md").read_text()  # mkdocs includes the lines at build time (test_docs.py)
    assert '```python\n--8<-- "examples/peft_trainer.py:core"\n```' in page
