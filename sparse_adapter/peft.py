"""SparseAdapter for PEFT models: which tensors are adapter weights, pruning them with our scorers,
sparse adapter folders, and SHiRA masks chosen by SNIP/GraSP/magnitude instead of at random.

    from sparse_adapter.peft import prune_peft_model
    from sparse_adapter.hold import hold_masks
    masks = prune_peft_model(model, sparsity=0.4, pruner="snip", batches=batches)
    hold = hold_masks(optimizer, dict(model.named_parameters()), masks)

The loss is the model's own (``model(**batch).loss``), so batches carry their labels. Every
PEFT tuner layer lists its tensors in ``adapter_layer_names`` (LoRA's A/B and DoRA's magnitude,
IA³'s vectors, LoHa/LoKr factors, ...); prompt-learning methods train ``prompt_encoder``. Heads in
``modules_to_save`` are trained but are not adapter weights, so they are never pruned. DoRA's magnitude
vectors scale whole output channels of the frozen weight (pruning one entry switches a channel off), so
they are left out unless ``include`` names them.
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
import warnings
from collections.abc import Iterable, Mapping, Sequence
from functools import partial
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from sparse_adapter import arguments as check
from sparse_adapter.adapter_file import encode
from sparse_adapter.adapters.base import AdapterLayer
from sparse_adapter.backbones import second_order_attention
from sparse_adapter.errors import ConfigError, EmptyMatricesWarning
from sparse_adapter.io import atomic_path, write_json_atomic
from sparse_adapter.peft_files import check_filled, read_sparse_peft, seal_peft
from sparse_adapter.pruning import PrunerConfig, PruneResult, prune_with_report
from sparse_adapter.pruning.pruner import declared_settings, scorer_settings
from sparse_adapter.pruning.masks import owning_module
from sparse_adapter.pruning.allocation import top_k_mask
from sparse_adapter.pruning.scorers import SCORERS

SPARSE_FILE = "sparse_adapter_model.safetensors"
# adapter tensors left out of pruning unless an explicit ``include`` matches them: DoRA's per-channel magnitudes
GATING_TENSORS = re.compile(r"lora_magnitude_vector")
FORMAT = "sparse-peft/1"
# a sparse folder's adapter_config.json keeps PEFT's fields, its peft_type under PEFT_TYPE_KEY; "peft_type" itself is
# this sentence, so PeftModel.from_pretrained (which would find no adapter_model.safetensors) stops at its config lookup
# with a KeyError that says how to load the folder
PEFT_TYPE_KEY = "sparse_adapter_peft_type"
NOT_FOR_PEFT = ("a sparse_adapter folder (kept values + masks): load it with "
                "sparse_adapter.peft.load_sparse_peft(base_model, folder); PeftModel.from_pretrained cannot read it")


def _tuner_layer_class():
    try:
        from peft.tuners.tuners_utils import BaseTunerLayer
    except ImportError:  # peft is optional: our own adapters need none of it
        return None
    return BaseTunerLayer


def adapter_tensors(model: nn.Module, include: str | None = None, exclude: str | None = None) -> dict[str, nn.Parameter]:
    """The trainable adapter tensors of a PEFT model (any tuner) or of our own adapters, by parameter name.

    ``include``/``exclude``: regular expressions searched in the names (e.g. ``include="lora_B"``,
    ``exclude="lora_A"``). Biases and task heads (``modules_to_save``) are not adapter weights; DoRA's
    magnitude vectors are left out unless ``include`` matches them.
    """
    check.model(model)
    include_pattern, exclude_pattern = compiled("include", include), compiled("exclude", exclude)
    owners: set[int] = set()
    tuner_layer = _tuner_layer_class()
    for module in model.modules():
        if tuner_layer is not None and isinstance(module, tuner_layer):
            for attribute in module.adapter_layer_names:
                container = getattr(module, attribute, None)
                if isinstance(container, nn.Module):
                    owners.update(id(p) for p in container.parameters())
        elif isinstance(module, AdapterLayer):
            owners.update(id(p) for name, p in module.adapter_parameters() if not name.endswith("bias"))
    prompt_encoder = getattr(model, "prompt_encoder", None)
    if isinstance(prompt_encoder, nn.Module):
        owners.update(id(p) for p in prompt_encoder.parameters())
    selected = {
        name: p for name, p in model.named_parameters()
        if p.requires_grad and id(p) in owners
        and (include_pattern.search(name) if include_pattern else not GATING_TENSORS.search(name))
        and not (exclude_pattern and exclude_pattern.search(name))
    }
    if not selected:
        trainable = [n for n, p in model.named_parameters() if p.requires_grad][:3]
        if include is not None or exclude is not None:
            raise ConfigError(f"include={include!r}, exclude={exclude!r} select no trainable adapter tensor (trainable: {', '.join(trainable) or 'none'})")
        raise ConfigError(f"the model has no trainable adapter tensors to prune (trainable: {', '.join(trainable) or 'none'}); wrap it with peft.get_peft_model first")
    return selected


def compiled(argument: str, pattern: str | None) -> re.Pattern | None:
    """The regular expression ``pattern`` (None stays None), or one ConfigError naming ``argument``."""
    check.regex(pattern, argument)
    return re.compile(pattern) if pattern is not None else None


def model_loss(model: nn.Module):
    """``loss_fn(batch, temperature)`` for our scorers from the model's own loss. GraSP's temperature
    divides classification logits (2-D); any other head keeps the model's loss (temperature 1)."""

    def loss_fn(batch: Mapping, temperature: float = 1.0) -> torch.Tensor:
        output = model(**batch)
        logits, labels = getattr(output, "logits", None), batch.get("labels")
        if temperature != 1.0 and logits is not None and labels is not None and logits.dim() == 2 and logits.shape[-1] > 1:
            return F.cross_entropy(logits.float() / temperature, labels)
        if output.loss is None:
            raise ConfigError("batches: the model returned no loss; the scoring batches need their labels")
        return output.loss

    return loss_fn


def to_device(batch, device: torch.device):
    """A dict batch's tensors on ``device``; any other batch (a custom loss's) as it is."""
    if not isinstance(batch, Mapping):
        return batch
    return {k: v.to(device) if torch.is_tensor(v) else v for k, v in batch.items()}


def setting_owner(name: str, preferred) -> str | None:
    """The scorer whose own settings (``options``) include ``name``, ``preferred`` first: for a keyword given
    where the pruner's settings go."""
    for scorer in dict.fromkeys([preferred, *SCORERS] if isinstance(preferred, str) else SCORERS):
        declared = declared_settings(scorer)
        if declared is not None and name in {f.name for f in dataclasses.fields(declared)}:
            return scorer
    return None


def pruner_config(pruner: str, sparsity: float, num_batches: int, options: Mapping) -> PrunerConfig:
    """``PrunerConfig`` from the library's keywords, every one checked now: an unknown keyword or a bad
    value is one ConfigError naming it, before any model is touched."""
    fields = {f.name for f in dataclasses.fields(PrunerConfig)} - {"scorer", "batches"}
    unknown = sorted(set(options) - fields)
    if unknown and (owner := setting_owner(unknown[0], pruner)) is not None:  # e.g. GraSP's temperature, once a keyword
        raise ConfigError(f"{unknown[0]}=: a setting of scorer '{owner}' itself; pass options={{{unknown[0]!r}: ...}}"
                          f" (with pruner={owner!r})")
    if unknown:
        raise ConfigError(f"{unknown[0]}=: not a pruner setting (known: sparsity, pruner, seed, include, exclude, "
                          f"{', '.join(sorted(fields))})")
    if not isinstance(pruner, str) or (pruner not in SCORERS and pruner != "none"):
        raise ConfigError(f"pruner={pruner!r} is unknown (choose from {', '.join(SCORERS)})")
    if pruner == "none":
        raise ConfigError("pruner='none' prunes nothing: train the dense adapter without this call")
    config = PrunerConfig(scorer=pruner, batches=num_batches, **options)
    config.validate(sparsity)
    return config


def module_owners(model: nn.Module) -> dict[str, str]:
    """Parameter name → the adapter module it belongs to (a PEFT tuner layer or one of ours): a module
    with an empty factor (LoRA's A or B, an IA³ vector) contributes nothing, so it is reported silenced."""
    owners = {}
    tuner_layer = _tuner_layer_class()
    for module_name, module in model.named_modules():
        if isinstance(module, AdapterLayer) or (tuner_layer is not None and isinstance(module, tuner_layer)):
            for name, _ in module.named_parameters(prefix=module_name):
                owners.setdefault(name, module_name)
    return owners


def report_empty(model: nn.Module, result: PruneResult) -> None:
    """Warn, as the CLI logs, about matrices a global ranking emptied and the modules they silence."""
    empty = result.empty_matrices
    if not empty:
        return
    owners = module_owners(model)
    silenced = sorted({owners.get(name, owning_module(name)) for name in empty})
    warnings.warn(
        f"{len(empty)} adapter matrices kept no weight ({', '.join(empty[:3])}{' ...' if len(empty) > 3 else ''}); modules"
        f" silenced by an empty factor: {', '.join(silenced)} (min_density=0.05, say, keeps a floor in every matrix)",
        EmptyMatricesWarning, stacklevel=3,
    )


def prune_parameters(model: nn.Module, params: dict[str, nn.Parameter], sparsity: float, pruner: str = "snip",
                     batches: Sequence[Mapping] = (), seed: int = 0, loss_fn=None, **options) -> PruneResult:
    """Score ``params`` in eval mode (dropout off) on ``batches`` for exact-k masks (and what scoring found);
    the model's train/eval mode and the global RNG are as they were before."""
    check.model(model), check.parameters(params), check.integer(seed, "seed"), check.callable_or_none(loss_fn, "loss_fn")
    batches = check.batches(batches, items=loss_fn is None)  # a custom loss takes any batch; the model's, dicts
    config = pruner_config(pruner, sparsity, max(len(batches), 1), options)
    if config.needs_batches and not batches:
        raise ConfigError(f"batches: pruner '{pruner}' scores on training batches; pass some (with labels)")
    device = next(iter(params.values())).device
    batches = [to_device(b, device) for b in batches]
    config.check_model(model, params)
    was_training = model.training
    model.eval()
    try:
        with torch.random.fork_rng(devices=[]):
            result = prune_with_report(params, sparsity, config, loss_fn=loss_fn or model_loss(model), batches=batches,
                                       seed=seed, model=model)
    finally:
        model.train(was_training)
    report_empty(model, result)
    return result


def prune_peft_model(model: nn.Module, sparsity: float = 0.4, pruner: str = "snip", batches: Sequence[Mapping] = (),
                     include: str | None = None, exclude: str | None = None, seed: int = 0,
                     **options) -> dict[str, torch.Tensor]:
    """Masks (parameter name → bool, True = kept) over the model's adapter tensors keeping exactly
    round((1 - sparsity) · N); ``batches`` is the list of scoring batches (dicts with labels);
    ``options`` are ``PrunerConfig``'s (scope, iterations, control, zero_init, on_degenerate, ...), the scorer's
    own settings among them as ``options={...}`` (as ``pruner.options`` on the command line: GraSP's
    temperature is ``options={"temperature": 100.0}``, default 200). Any unknown keyword or bad value is one
    ConfigError naming it, before the model is touched. The weights are not touched: hold the masks with
    ``hold_masks`` (or ``SparseAdapterCallback``).
    Tensors the scorer could not rank and matrices left empty are named in a ``DegenerateScoresWarning``
    and an ``EmptyMatricesWarning``."""
    params = adapter_tensors(model, include, exclude)  # checks the model first
    return prune_parameters(model, params, sparsity, pruner, batches, seed, **options).masks


# ---- files -------------------------------------------------------------------------------------

def save_sparse_peft(model: nn.Module, folder: str | os.PathLike, masks: Mapping[str, torch.Tensor]) -> Path:
    """A PEFT folder whose pruned tensors hold kept values + mask (bits or indices): ``adapter_config.json``
    as PEFT writes it, every trainable tensor (adapters and ``modules_to_save`` heads) in
    ``sparse_adapter_model.safetensors``. Load it with ``load_sparse_peft``; the file shrinks with sparsity."""
    from safetensors.torch import save_file

    check.model(model), check.new_folder(folder, "folder"), check.masks(masks, dict(model.named_parameters()), boolean=True)
    if not isinstance(getattr(model, "peft_config", None), Mapping):
        raise ConfigError(f"model: not a PEFT model (no peft_config); wrap it with peft.get_peft_model first, got {type(model).__name__}")
    folder = Path(folder)
    if folder.exists() and any(folder.iterdir()):
        raise ConfigError(f"{folder}: not empty; save into a new folder")
    named = dict(model.named_parameters())
    unknown = [n for n in masks if n not in named]
    if unknown:
        raise ConfigError(f"masks: '{unknown[0]}' is not a parameter of this model")
    folder.mkdir(parents=True, exist_ok=True)
    adapter = getattr(model, "active_adapter", "default")
    model.peft_config[adapter].save_pretrained(str(folder))
    config = json.loads((folder / "adapter_config.json").read_text())
    config.update({"peft_type": NOT_FOR_PEFT, PEFT_TYPE_KEY: config["peft_type"]})
    write_json_atomic(config, folder / "adapter_config.json")
    tensors, shapes = {}, {}
    for name, parameter in named.items():
        if not parameter.requires_grad:
            continue
        encoded = encode(name, parameter.detach() * masks[name] if name in masks else parameter.detach(), masks.get(name))
        if name not in encoded:
            shapes[name] = list(parameter.shape)
        tensors.update(encoded)
    with atomic_path(folder / SPARSE_FILE) as temporary:  # no half-written file on a full disk
        save_file(tensors, str(temporary), metadata=seal_peft(folder, tensors, {"format": FORMAT, "adapter": adapter, "shapes": json.dumps(shapes)}))
    return folder


def load_sparse_peft(base_model: nn.Module, folder: str | os.PathLike):
    """(PEFT model, masks) from a ``save_sparse_peft`` folder: ``get_peft_model`` with its config, then
    its tensors (pruned entries exact zeros); a tensor the model lacks, or of another shape, is an error.
    Folders written before ``PEFT_TYPE_KEY`` (a plain ``peft_type``) load the same way."""
    from peft import PeftConfig, get_peft_model

    check.model(base_model, "base_model"), check.existing(folder, "folder", folder=True)
    folder = Path(folder)
    path = folder / SPARSE_FILE
    if not path.is_file():
        raise ConfigError(f"{folder}: no {SPARSE_FILE} (written by save_sparse_peft?)")
    tensors, masks, metadata = read_sparse_peft(folder, path, FORMAT, getattr(base_model.config, "hidden_size", 1))  # before PEFT allocates
    try:
        attributes = json.loads((folder / "adapter_config.json").read_text())
        attributes["peft_type"] = attributes.pop(PEFT_TYPE_KEY, attributes.get("peft_type"))
        config = PeftConfig.from_peft_type(**attributes)
    except (OSError, ValueError, KeyError, TypeError) as error:
        raise ConfigError(f"{folder}: adapter_config.json is not a readable PEFT config ({error!r})") from error
    model = get_peft_model(base_model, config, adapter_name=metadata.get("adapter", "default"))
    check_filled(path, model, tensors)
    named = dict(model.named_parameters())
    for name, tensor in tensors.items():
        if name not in named:
            raise ConfigError(f"{path}: tensor '{name}' is not a parameter of the PEFT model (another base model?)")
        if tuple(named[name].shape) != tuple(tensor.shape):
            raise ConfigError(f"{path}: tensor '{name}' has shape {tuple(tensor.shape)}, the model {tuple(named[name].shape)}")
        with torch.no_grad():
            named[name].copy_(tensor)
    return model, masks


# ---- SHiRA -------------------------------------------------------------------------------------

def shira_mask_fn(model: nn.Module, batches: Sequence[Mapping] = (), scorer: str = "snip", seed: int = 0,
                  target_modules: Iterable[str] | None = None, loss_fn=None, options: Mapping | None = None):
    """A SHiRA ``mask_fn`` that keeps, in every adapted weight, the r·(m+n) entries our ``scorer`` ranks
    highest (SNIP |w·g|, GraSP w·Hg, magnitude |w|), instead of PEFT's random choice. ``options``: the
    scorer's own settings, as ``pruner.options`` on the command line (GraSP: ``{"temperature": 200.0}``, the
    default); an unknown or out-of-range one is a ConfigError naming it.

    Scores are taken once, here, on the *base* model's Linear weights (those whose names end in one
    of ``target_modules``, all Linears otherwise) with the model's own loss on ``batches``; then
        config = ShiraConfig(r=..., target_modules=[...]); config.mask_fn = shira_mask_fn(model, batches)
        model = get_peft_model(model, config)
    """
    check.model(model), check.integer(seed, "seed"), check.names(target_modules, "target_modules")
    batches, _ = check.batches(batches, items=loss_fn is None), check.callable_or_none(loss_fn, "loss_fn")
    if scorer not in SCORERS or scorer == "synflow":
        raise ConfigError(f"scorer='{scorer}': a SHiRA mask is scored with one of snip, grasp, magnitude, random")
    settings = scorer_settings(scorer, options or {}, prefix="options")
    suffixes = tuple(target_modules) if target_modules else None
    linears = {name: m for name, m in model.named_modules()
               if isinstance(m, nn.Linear) and (suffixes is None or name.split(".")[-1] in suffixes)}
    if not linears:
        raise ConfigError(f"target_modules={list(suffixes or [])}: no Linear module of the model matches")
    params = {f"{name}.weight": m.weight for name, m in linears.items()}
    if SCORERS[scorer].needs_batches and not batches:
        raise ConfigError(f"batches: scorer '{scorer}' scores on training batches; pass some (with labels)")
    device = next(iter(params.values())).device
    batches = [to_device(b, device) for b in batches]
    flags = {name: p.requires_grad for name, p in params.items()}
    was_training = model.training
    model.eval()
    try:
        for p in params.values():
            p.requires_grad_(True)
        with torch.random.fork_rng(devices=[]):
            scores = SCORERS[scorer](params=params, loss_fn=loss_fn or model_loss(model), batches=batches,
                                     generator=torch.Generator().manual_seed(seed),
                                     double_backward=partial(second_order_attention, model), model=model, **settings)
    finally:
        for name, p in params.items():
            p.requires_grad_(flags[name])
        model.train(was_training)
    by_weight = {id(linears[name[: -len(".weight")]].weight): score for name, score in scores.items()}
    generator = torch.Generator().manual_seed(seed)

    def mask_fn(base_layer: nn.Module, r: int, **_) -> torch.Tensor:
        score = by_weight.get(id(base_layer.weight))
        if score is None:
            raise ConfigError("shira_mask_fn: this layer was not scored; pass the same target_modules as the ShiraConfig")
        out_features, in_features = base_layer.weight.shape
        budget = min(r * (out_features + in_features), base_layer.weight.numel())
        return top_k_mask(score.detach().float(), budget, generator).to(dtype=base_layer.weight.dtype, device=base_layer.weight.device)

    return mask_fn
