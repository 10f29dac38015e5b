"""AdapterFusion (Pfeiffer et al., 2021): a fusion layer per block attends over several task
adapters trained beforehand (stage 1) and learns how to combine them for a new task (stage 2).

Stage 2 loads the N saved adapter files (``adapter.sources``), attaches their bottleneck adapters
side by side, frozen (pruned entries stay the zeros they were saved as), and trains one fusion
layer per adapter slot plus the task head. At a slot with input ``h``, the sources give
``o_n = adapter_n(h)``; the fusion layer scores ``softmax_n(Q(h) · K(o_n))`` and returns
``Σ_n α_n · V(o_n)``. ``V`` starts as the identity, so one source passes through unchanged.
The fusion layer's Q, K, V matrices are what the pruner prunes; the sources keep their sparsity.
"""

from __future__ import annotations

import glob
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn

from sparse_adapter.adapter_file import check_backbone, read_adapter
from sparse_adapter.adapters.base import ADAPTERS, AdapterConfig, AdapterLayer, freeze_backbone, linear
from sparse_adapter.adapters.bottleneck import Bottleneck, on_hidden
from sparse_adapter.adapters.houlsby import HoulsbyConfig
from sparse_adapter.adapters.layouts import replace_submodule, transformer_blocks
from sparse_adapter.adapters.pfeiffer import PfeifferConfig
from sparse_adapter.errors import ConfigError
from sparse_adapter.schema import ranged

SOURCES = {"houlsby": HoulsbyConfig, "pfeiffer": PfeifferConfig}  # what AdapterFusion fuses: bottleneck adapters


class FusionLayer(AdapterLayer):
    """Attention over adapter outputs: query from the slot's input, keys and values from each output."""

    def __init__(self, hidden: int, init_std: float):
        super().__init__()
        self.query = nn.Linear(hidden, hidden)
        self.key = nn.Linear(hidden, hidden)
        self.value = nn.Linear(hidden, hidden)
        with torch.no_grad():
            for layer in (self.query, self.key):
                layer.weight.normal_(0.0, init_std)
                layer.bias.zero_()
            self.value.weight.copy_(torch.eye(hidden))
            self.value.bias.zero_()

    def forward(self, hidden: torch.Tensor, outputs: torch.Tensor) -> torch.Tensor:
        # hidden: (..., H); outputs: (..., N, H); computed in hidden's dtype (a bf16 body's: adapter_dtype)
        query = linear(self.query, hidden).unsqueeze(-2)
        scores = (query * linear(self.key, outputs)).sum(-1) / hidden.shape[-1] ** 0.5
        weights = torch.softmax(scores, dim=-1).unsqueeze(-1)
        return (weights * linear(self.value, outputs)).sum(dim=-2)


class FusedAdapters(nn.Module):
    """Runs ``inner``, then every frozen source adapter on its output, and fuses them."""

    def __init__(self, inner: nn.Module, sources: list[Bottleneck], fusion: FusionLayer):
        super().__init__()
        self.inner = inner
        self.sources = nn.ModuleList(sources)
        self.fusion = fusion

    def forward(self, *args, **kwargs):
        return on_hidden(self.inner(*args, **kwargs), self.fuse)

    def fuse(self, hidden: torch.Tensor) -> torch.Tensor:
        outputs = torch.stack([source(hidden) for source in self.sources], dim=-2)
        return self.fusion(hidden, outputs)


@ADAPTERS.register("fusion")
@dataclass
class FusionConfig(AdapterConfig):
    sources: list[str] = field(default_factory=list)  # adapter files or run dirs from stage 1 (globs matching one)
    init_std: float = ranged(0.02, gt=0.0)
    shared_slots_only: bool = False  # sources adapting different slots: fuse only the slots all of them adapt

    def validate(self) -> None:
        super().validate()
        if not self.sources:
            raise ConfigError(
                "adapter.sources is empty: AdapterFusion needs adapters trained beforehand, e.g. "
                "adapter.sources=[outputs/mrpc/<run>/adapter.safetensors,...] (see scripts/fusion_demo.sh)"
            )

    def _read_sources(self, model: nn.Module):
        loaded = []
        for source in self.sources:
            path = Path(source)
            if any(c in source for c in "*?["):  # a pattern (sweeps: "<sweep dir>/*row=...,task=cola*")
                matches = sorted(glob.glob(source))
                if len(matches) != 1:
                    raise ConfigError(
                        f"adapter.sources: pattern '{source}' matches {len(matches)} paths, not one "
                        "(train the source adapters first, e.g. the t4_pfeiffer row of experiment=table4)"
                    )
                path = Path(matches[0])
            path = path / "adapter.safetensors" if path.is_dir() else path
            if not path.is_file():
                raise ConfigError(f"adapter.sources: '{source}' is not an adapter file or a run directory holding one")
            tensors, _, metadata = read_adapter(path)
            check_backbone(model, metadata.get("backbone"), path, setting="adapter.sources:")
            config_class = SOURCES.get(metadata.get("adapter"))
            if config_class is None:
                raise ConfigError(
                    f"adapter.sources: '{source}' holds adapter={metadata.get('adapter')}; AdapterFusion fuses "
                    "bottleneck adapters (houlsby, pfeiffer)"
                )
            loaded.append((path, config_class(**metadata.get("adapter_config", {})), tensors))
        return loaded

    def insert(self, model: nn.Module) -> list[str]:
        sources = self._read_sources(model)
        slots = [s for s in ("after_attention", "after_ffn") if all(s in config.sublayers for _, config, _ in sources)]
        if not self.shared_slots_only and any(set(config.sublayers) != set(slots) for _, config, _ in sources):
            listed = "; ".join(f"{Path(file).name if Path(file).name != 'adapter.safetensors' else Path(file).parent.name}: "
                               f"{', '.join(config.sublayers)}" for file, config, _ in sources)
            raise ConfigError(
                f"adapter.sources: the sources adapt different slots ({listed}); fusing would silently drop the slots not "
                f"shared by all; set adapter.shared_slots_only=true to fuse only {', '.join(slots) or 'the shared ones'}"
            )
        if not slots:
            raise ConfigError("adapter.sources: the adapters share no slot to fuse at (mix of houlsby and pfeiffer?)")
        freeze_backbone(model)
        hidden = model.config.hidden_size
        prunable = []
        for block_name, block, layout in transformer_blocks(model):
            for slot in slots:
                path = getattr(layout, slot)
                if not path:
                    continue
                adapters = []
                for file, config, tensors in sources:
                    adapter = Bottleneck(hidden, config.bottleneck, config.activation, config.dropout, config.init, config.init_std)
                    prefix = f"{block_name}.{path}.adapter."
                    state = {k[len(prefix):]: v for k, v in tensors.items() if k.startswith(prefix)}
                    try:
                        adapter.load_state_dict(state)
                    except RuntimeError as error:
                        raise ConfigError(f"adapter.sources: '{file}' does not fit this model at {prefix[:-1]}: {error}") from error
                    adapter.requires_grad_(False)
                    adapters.append(adapter)
                fused = FusedAdapters(block.get_submodule(path), adapters, FusionLayer(hidden, self.init_std))
                replace_submodule(block, path, fused)
                name = f"{block_name}.{path}.fusion"
                prunable += [f"{name}.query.weight", f"{name}.key.weight", f"{name}.value.weight"]
        return prunable
