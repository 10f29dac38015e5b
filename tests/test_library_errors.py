"""The library's error contract, table-driven beside the CLI's (tests/test_bad_input.py): a wrong type, shape, device,
regular expression or an impossible setting given to a public function of ``sparse_adapter`` is one ``ConfigError``
naming the argument, raised before anything is written."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import torch

peft = pytest.importorskip("peft")
from peft import LoraConfig, get_peft_model  # noqa: E402

from sparse_adapter import ConfigError, PrunerConfig, attach_adapter, load_adapter, prune, read_adapter, save_adapter  # noqa: E402
from sparse_adapter.adapters import HoulsbyConfig  # noqa: E402
from sparse_adapter.export import export_peft  # noqa: E402
from sparse_adapter.hold import hold_masks  # noqa: E402
from sparse_adapter.peft import adapter_tensors, load_sparse_peft, prune_peft_model, save_sparse_peft, shira_mask_fn  # noqa: E402
from tests.conftest import tiny_model  # noqa: E402


@dataclass
class Env:
    tmp: Path
    bert: torch.nn.Module  # no adapter
    peft: torch.nn.Module  # LoRA on query
    params: dict
    masks: dict  # bool, one per adapter tensor
    adapter_file: Path

    @property
    def name(self) -> str:
        return next(iter(self.params))

    def with_mask(self, value) -> dict:
        return {**self.masks, self.name: value}


@pytest.fixture(scope="module")
def shared(tmp_path_factory):
    torch.manual_seed(0)
    model = get_peft_model(tiny_model()[0], LoraConfig(r=4, target_modules=["query"], init_lora_weights="gaussian"))
    params = adapter_tensors(model)
    saved, _ = tiny_model()
    HoulsbyConfig(bottleneck=4).attach(saved)
    folder = tmp_path_factory.mktemp("files")
    save_adapter(saved, folder / "adapter.safetensors")
    return tiny_model()[0], model, params, {n: torch.ones_like(p, dtype=torch.bool) for n, p in params.items()}, folder / "adapter.safetensors"


def meta_model():
    with torch.device("meta"):
        return torch.nn.Linear(2, 2)


Case = Callable[[Env], object]
CASES: dict[str, tuple[Case, str]] = {
    # attach_adapter
    "attach-model-is-a-name": (lambda e: attach_adapter("bert-base-uncased", "houlsby"), "model: expected a model (torch.nn.Module), got the name"),
    "attach-model-is-none": (lambda e: attach_adapter(None, "houlsby"), "model: expected a model"),
    "attach-model-on-meta": (lambda e: attach_adapter(meta_model(), "lora"), "model: has parameters on the meta device"),
    "attach-unknown-adapter": (lambda e: attach_adapter(e.bert, "nope"), "adapter='nope' is unknown"),
    "attach-adapter-wrong-type": (lambda e: attach_adapter(e.bert, 42), "adapter: expected a AdapterConfig"),
    "attach-unknown-option": (lambda e: attach_adapter(e.bert, "houlsby", bottlenek=8), "bottlenek"),
    "attach-options-with-a-config": (lambda e: attach_adapter(e.bert, HoulsbyConfig(), bottleneck=8), "bottleneck: options go with an adapter name"),
    "attach-impossible-width": (lambda e: attach_adapter(e.bert, "houlsby", bottleneck=0), "adapter.bottleneck=0"),
    # prune
    "prune-params-a-list": (lambda e: prune(list(e.params.values()), 0.4, PrunerConfig("random")), "params: expected a mapping"),
    "prune-params-on-meta": (lambda e: prune({"w": meta_model().weight}, 0.4, PrunerConfig("random")), "params: 'w' is on the meta device"),
    "prune-sparsity-too-high": (lambda e: prune(e.params, 1.5, PrunerConfig("random")), "sparsity=1.5 must be in [0, 1)"),
    "prune-sparsity-a-string": (lambda e: prune(e.params, "0.4", PrunerConfig("random")), "sparsity: expected a finite number"),
    "prune-sparsity-nan": (lambda e: prune(e.params, float("nan"), PrunerConfig("random")), "sparsity: expected a finite number"),
    "prune-config-a-string": (lambda e: prune(e.params, 0.4, "snip"), "config: expected a PrunerConfig"),
    "prune-unknown-scope": (lambda e: prune(e.params, 0.4, PrunerConfig("random", scope="nope")), "pruner.scope='nope' is unknown"),
    "prune-seed-negative": (lambda e: prune(e.params, 0.4, PrunerConfig("random"), seed=-1), "seed=-1 must be ≥ 0"),
    "prune-seed-a-float": (lambda e: prune(e.params, 0.4, PrunerConfig("random"), seed=1.5), "seed: expected an integer"),
    "prune-loss-not-callable": (lambda e: prune(e.params, 0.4, PrunerConfig("random"), loss_fn="mse"), "loss_fn: expected a function"),
    "prune-batches-one-dict": (lambda e: prune(e.params, 0.4, PrunerConfig("random"), batches={"input_ids": torch.ones(1)}), "batches: expected a list"),
    "prune-batches-a-string": (lambda e: prune(e.params, 0.4, PrunerConfig("random"), batches="input_ids"), "batches: expected a list"),
    "prune-model-a-name": (lambda e: prune(e.params, 0.4, PrunerConfig("random"), model="bert"), "model: expected a Module or None"),
    # prune_peft_model / adapter_tensors
    "peft-prune-model-a-name": (lambda e: prune_peft_model("bert", 0.4), "model: expected a model"),
    "peft-prune-bad-include-regex": (lambda e: prune_peft_model(e.peft, 0.4, "random", include="lora_["), "include='lora_[' is not a valid regular expression"),
    "peft-prune-exclude-not-a-string": (lambda e: prune_peft_model(e.peft, 0.4, "random", exclude=3), "exclude: expected a regular expression"),
    "peft-prune-unknown-pruner": (lambda e: prune_peft_model(e.peft, 0.4, "snipp"), "pruner='snipp' is unknown"),
    "peft-prune-negative-sparsity": (lambda e: prune_peft_model(e.peft, -0.1, "random"), "sparsity=-0.1 must be in [0, 1)"),
    "peft-prune-snip-without-batches": (lambda e: prune_peft_model(e.peft, 0.4, "snip"), "batches: pruner 'snip' scores on training batches"),
    "peft-prune-batches-of-text": (lambda e: prune_peft_model(e.peft, 0.4, "snip", batches=["a sentence"]), "batches[0]: expected a dict"),
    "peft-prune-seed-a-string": (lambda e: prune_peft_model(e.peft, 0.4, "random", seed="7"), "seed: expected an integer"),
    "peft-prune-temperature-keyword": (lambda e: prune_peft_model(e.peft, 0.4, "grasp", temperature=100),
                                       "temperature=: a setting of scorer 'grasp' itself; pass options={'temperature'"),
    "peft-prune-temperature-zero": (lambda e: prune_peft_model(e.peft, 0.4, "grasp", options={"temperature": 0}),
                                    "pruner.options.temperature=0: must be > 0"),
    "adapter-tensors-model-a-list": (lambda e: adapter_tensors([e.peft]), "model: expected a model"),
    # hold_masks
    "hold-optimizer-a-name": (lambda e: hold_masks("adamw", e.params, e.masks), "optimizer: expected a torch optimizer"),
    "hold-params-a-list": (lambda e: hold_masks(None, list(e.params.values()), e.masks), "params: expected a mapping"),
    "hold-masks-numpy": (lambda e: hold_masks(None, e.params, e.with_mask(np.ones((4, 32), dtype=bool))), "is numpy.ndarray, expected a torch.Tensor"),
    "hold-masks-on-meta": (lambda e: hold_masks(None, e.params, e.with_mask(torch.ones(4, 32, dtype=torch.bool, device="meta"))), "is on the meta device"),
    "hold-masks-unknown-name": (lambda e: hold_masks(None, e.params, {"nope": torch.ones(1, dtype=torch.bool)}), "masks: 'nope' is not a parameter"),
    "hold-masks-wrong-shape": (lambda e: hold_masks(None, e.params, e.with_mask(torch.ones(3, dtype=torch.bool))), "has shape (3,)"),
    "hold-masks-a-list": (lambda e: hold_masks(None, e.params, list(e.masks.values())), "masks: expected a mapping"),
    # save_sparse_peft: refused before anything is written
    "save-peft-folder-is-a-file": (lambda e: save_sparse_peft(e.peft, e.tmp / "a-file", e.masks), "is an existing file"),
    "save-peft-float-mask": (lambda e: save_sparse_peft(e.peft, e.tmp / "new", e.with_mask(torch.ones(4, 32))), "expected torch.bool"),
    "save-peft-mask-wrong-shape": (lambda e: save_sparse_peft(e.peft, e.tmp / "new", e.with_mask(torch.ones(2, 2, dtype=torch.bool))), "has shape (2, 2)"),
    "save-peft-not-a-peft-model": (lambda e: save_sparse_peft(e.bert, e.tmp / "new", {}), "model: not a PEFT model"),
    "save-peft-folder-a-number": (lambda e: save_sparse_peft(e.peft, 7, e.masks), "folder: expected a path"),
    # save_adapter / load_adapter / read_adapter
    "save-adapter-path-is-a-folder": (lambda e: save_adapter(e.bert, e.tmp), "path="),
    "save-adapter-folder-missing": (lambda e: save_adapter(e.bert, e.tmp / "no" / "a.safetensors"), "does not exist"),
    "save-adapter-masks-numpy": (lambda e: save_adapter(e.peft, e.tmp / "a.safetensors", masks={e.name: np.ones((4, 32), dtype=bool)}), "expected a torch.Tensor"),
    "save-adapter-metadata-a-list": (lambda e: save_adapter(e.bert, e.tmp / "a.safetensors", ["task"]), "metadata: expected a mapping"),
    "save-adapter-model-a-name": (lambda e: save_adapter("bert", e.tmp / "a.safetensors"), "model: expected a model"),
    "load-adapter-missing-file": (lambda e: load_adapter(e.bert, e.tmp / "missing.safetensors"), "does not exist"),
    "load-adapter-model-a-name": (lambda e: load_adapter("bert", e.adapter_file), "model_or_backbone: expected a model"),
    "load-adapter-bad-checksum": (lambda e: load_adapter(e.bert, e.adapter_file, checksum="abc"), "checksum: expected the file's SHA-256"),
    "read-adapter-path-none": (lambda e: read_adapter(None), "path: expected a path"),
    "load-peft-folder-missing": (lambda e: load_sparse_peft(e.bert, e.tmp / "nowhere"), "no such folder"),
    "load-peft-base-model-a-name": (lambda e: load_sparse_peft("bert", e.tmp), "base_model: expected a model"),
    # shira_mask_fn, export_peft
    "shira-target-modules-a-string": (lambda e: shira_mask_fn(e.bert, scorer="magnitude", target_modules="query"), "target_modules: expected a list"),
    "shira-temperature-zero": (lambda e: shira_mask_fn(e.bert, scorer="grasp", options={"temperature": 0}),
                               "options.temperature=0: must be > 0"),
    "shira-option-of-another-scorer": (lambda e: shira_mask_fn(e.bert, scorer="magnitude", options={"temperature": 9}),
                                       "options.temperature: scorer 'magnitude' has no settings"),
    "shira-synflow": (lambda e: shira_mask_fn(e.bert, scorer="synflow"), "scorer='synflow'"),
    "export-force-a-string": (lambda e: export_peft(e.adapter_file, e.tmp / "out", force="yes"), "force: expected True or False"),
    "export-source-none": (lambda e: export_peft(None, e.tmp / "out"), "source: expected a path"),
}


@pytest.mark.parametrize("name", list(CASES))
def test_a_wrong_argument_is_one_config_error_naming_it_before_anything_is_written(name, shared, tmp_path):
    bert, model, params, masks, adapter_file = shared
    (tmp_path / "a-file").write_text("not a folder")
    env = Env(tmp_path, bert, model, params, masks, adapter_file)
    call, named = CASES[name]
    before = sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*"))
    with pytest.raises(ConfigError) as raised:
        call(env)
    message = str(raised.value)
    assert named in message and "\n" not in message, message
    assert sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*")) == before  # nothing written, no half folder


def test_the_table_has_at_least_forty_cases():
    assert len(CASES) >= 40


def test_a_corrected_retry_after_a_refused_save_succeeds(shared, tmp_path):
    _, model, _, masks, _ = shared
    bad = {**masks, next(iter(masks)): torch.ones(2, 2, dtype=torch.bool)}
    with pytest.raises(ConfigError):
        save_sparse_peft(model, tmp_path / "peft", bad)
    assert save_sparse_peft(model, tmp_path / "peft", masks).is_dir()  # not refused as "not empty"
