"""The PEFT path's API: what is pruned by default, what is reported, and every keyword checked up front."""

from __future__ import annotations

import warnings

import pytest
import torch

peft = pytest.importorskip("peft")
from peft import LoraConfig, get_peft_model  # noqa: E402

import sparse_adapter  # noqa: E402
from sparse_adapter.errors import ConfigError, EmptyMatricesWarning  # noqa: E402
from sparse_adapter.hf_trainer import SparseAdapterCallback  # noqa: E402
from sparse_adapter.hold import hold_masks  # noqa: E402
from sparse_adapter.peft import adapter_tensors, prune_peft_model  # noqa: E402
from tests.conftest import tiny_model  # noqa: E402

LORA = dict(r=4, lora_alpha=8, target_modules=["query", "value"], modules_to_save=["classifier"])


def model_and_batches(seed=0, **lora):
    torch.manual_seed(seed)
    base, _ = tiny_model()
    model = get_peft_model(base, LoraConfig(**{**LORA, **lora}))
    generator = torch.Generator().manual_seed(seed)
    batches = [{"input_ids": torch.randint(5, 1000, (4, 16), generator=generator),
                "labels": torch.randint(0, 2, (4,), generator=generator)} for _ in range(3)]
    return model, batches


def test_entry_points_import_from_the_package():
    from sparse_adapter import SparseAdapterCallback as callback, hold_masks as hold, prune_peft_model as prune_peft

    assert (callback, hold, prune_peft) == (SparseAdapterCallback, hold_masks, prune_peft_model)
    assert {"SparseAdapterCallback", "hold_masks", "prune_peft_model"} <= set(sparse_adapter.__all__)


def test_dora_magnitudes_and_heads_are_left_out_unless_named():
    model, batches = model_and_batches(use_dora=True)
    default = adapter_tensors(model)
    assert default and not any("magnitude" in n or "classifier" in n for n in default)
    assert all("lora_A" in n or "lora_B" in n for n in default)
    named = adapter_tensors(model, include="lora_magnitude_vector")
    assert named and all("lora_magnitude_vector" in n for n in named)
    masks = prune_peft_model(model, sparsity=0.5, batches=batches)
    assert set(masks) == set(default)  # no output channel of a frozen projection is switched off


def test_a_sparsity_that_keeps_nothing_is_refused():
    model, batches = model_and_batches()
    with pytest.raises(ConfigError, match="keeps no weight"):
        prune_peft_model(model, sparsity=0.999999, batches=batches)


def test_emptied_matrices_and_silenced_modules_are_reported():
    model, batches = model_and_batches()
    with pytest.warns(EmptyMatricesWarning, match="silenced by an empty factor: base_model.model.bert.encoder") as caught:
        masks = prune_peft_model(model, sparsity=0.9, pruner="magnitude", batches=batches, on_degenerate="warn")
    empty = [name for name, mask in masks.items() if not mask.any()]
    assert empty and all("lora_B" in n for n in empty)  # B = 0 ranks last under magnitude: the collapse
    message = str(next(w.message for w in caught if w.category is EmptyMatricesWarning))
    assert f"{len(empty)} adapter matrices kept no weight" in message


def test_masks_save_and_load_with_torch_weights_only(tmp_path):
    model, batches = model_and_batches()
    masks = prune_peft_model(model, sparsity=0.5, batches=batches)
    torch.save(masks, tmp_path / "masks.pt")
    loaded = torch.load(tmp_path / "masks.pt", weights_only=True)
    assert loaded.keys() == masks.keys() and all(torch.equal(loaded[n], masks[n]) for n in masks)


@pytest.mark.parametrize("keywords, argument", [
    ({"pruner": "snipp"}, "pruner='snipp'"),
    ({"sparsity": 1.0}, "sparsity=1.0"),
    ({"num_batches": 0}, "num_batches=0"),
    ({"batches": [{}]}, "num_batches="),
    ({"seed": "0"}, "seed='0'"),
    ({"include": "lora_(A"}, "include='lora_\\(A'"),
    ({"exclude": 3}, "exclude: expected a regular expression"),
    ({"scope": "row"}, "pruner.scope='row'"),
    ({"iterationz": 3}, "iterationz="),
    ({"on_degenerate": "ignore"}, "pruner.on_degenerate"),
    ({"masks": {"x": torch.rand(2)}}, "not a bool tensor"),
    ({"masks": [torch.ones(2, dtype=torch.bool)]}, "masks: expected a dict"),
])
def test_the_callback_checks_every_keyword_when_built(keywords, argument):
    with pytest.raises(ConfigError, match=argument):
        SparseAdapterCallback(**keywords)


def test_the_callback_takes_the_count_under_its_old_name_with_a_warning():
    with pytest.warns(FutureWarning, match="num_batches"):
        assert SparseAdapterCallback(batches=3).num_batches == 3


@pytest.mark.parametrize("call, argument", [
    (lambda m, b: prune_peft_model(m, batches=5), "batches: expected a list"),
    (lambda m, b: prune_peft_model(m, batches=b, seed=1.5), "seed: expected an integer"),
    (lambda m, b: prune_peft_model(m, batches=b, pruner=None), "pruner=None"),
    (lambda m, b: prune_peft_model(m, batches=b, masks={}), "masks=: not a pruner setting"),
    (lambda m, b: prune_peft_model("bert-base-uncased", batches=b), "model: expected a model"),
])
def test_prune_peft_model_names_the_bad_argument(call, argument):
    model, batches = model_and_batches()
    with pytest.raises(ConfigError, match=argument):
        call(model, batches)


def test_hold_masks_refuses_scores_and_a_second_hold():
    model, batches = model_and_batches()
    params = dict(model.named_parameters())
    masks = prune_peft_model(model, sparsity=0.5, batches=batches)
    name = next(iter(masks))
    with pytest.raises(ConfigError, match="not a bool tensor"):
        hold_masks(None, params, {name: masks[name].float()})
    first = hold_masks(None, params, masks)
    with pytest.raises(ConfigError, match="held already"):
        hold_masks(None, params, {name: masks[name]})
    first.remove()
    second = hold_masks(None, params, {name: masks[name]})  # after remove() a new hold is fine
    second.remove()


def test_the_callback_holds_precomputed_masks(tmp_path):
    from transformers import Trainer, TrainingArguments

    model, batches = model_and_batches()
    masks = prune_peft_model(model, sparsity=0.6, batches=batches, seed=5)
    callback = SparseAdapterCallback(masks=masks)
    rows = [{"input_ids": b["input_ids"][i], "labels": b["labels"][i]} for b in batches for i in range(4)]
    args = TrainingArguments(output_dir=str(tmp_path), per_device_train_batch_size=4, max_steps=3, learning_rate=1e-2,
                             report_to=[], save_strategy="no", use_cpu=True, disable_tqdm=True)
    trainer = Trainer(model=model, args=args, train_dataset=rows, callbacks=[callback])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        trainer.train()
    params = dict(model.named_parameters())
    assert callback.masks is not masks and set(callback.masks) == set(masks)
    for name, mask in masks.items():
        assert torch.equal(callback.masks[name], mask)
        assert not params[name].detach()[~mask].any()
        assert params[name].detach()[mask].any() or not mask.any()
