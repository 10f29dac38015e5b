"""What every task family's LightningModule shares: backbone + adapter + masks + optimizer."""

from __future__ import annotations

import lightning as L
import torch

from sparse_adapter.accounting import parameter_report
from sparse_adapter.distributed import shard_blocks, sharded
from sparse_adapter.errors import ConfigError
from sparse_adapter.adapters import AdapterConfig
from sparse_adapter.pruning import MaskSet
from sparse_adapter.quantization import drop_quantization_state, of_backbone, quantize_backbone
from tasks.optim import AdamWConfig


class AdapterModule(L.LightningModule):
    """Builds ``backbone`` with a task head, attaches ``adapter`` and owns the pruning masks.

    ``self.masks`` is a submodule of bool buffers, so checkpoints carry the masks and a resumed
    run restores them bit for bit. Subclasses define the loss and the metrics.
    """

    task_head: str = ""  # a name in sparse_adapter.backbones.TASK_HEADS
    encoder_decoder: bool | None = None  # the architecture the family needs (None: either)

    def __init__(self, backbone, adapter: AdapterConfig, optimizer: AdamWConfig, head_config: dict):
        super().__init__()
        self.model, self.tokenizer = backbone.build(self.task_head, **head_config)
        self.check_architecture()
        self.model.train()  # from_pretrained returns eval mode; Lightning keeps submodule modes as found
        self.prunable: list[str] = adapter.attach(self.model)
        self.backbone_dtype = getattr(backbone, "dtype", "float32")  # trained tensors stay fp32 (adapters.base.train_in_fp32)
        self.quantization = of_backbone(backbone)  # after attach: adapters in fp32 beside the layers they wrap
        quantize_backbone(self.model, self.quantization)
        self.masks = MaskSet()
        self.optimizer_config = optimizer
        self.sample_predictions: list[dict] = []  # a few rows of the last evaluation, for a logger table

    def check_architecture(self) -> None:
        """A family on the wrong kind of backbone (extractive QA on BART, summaries from BERT) is a config error."""
        is_encoder_decoder = bool(getattr(self.model.config, "is_encoder_decoder", False))
        if self.encoder_decoder is not None and is_encoder_decoder != self.encoder_decoder:
            needed, found = ("an encoder–decoder", "not an encoder–decoder") if self.encoder_decoder else ("an encoder", "an encoder–decoder")
            raise ConfigError(
                f"backbone: task family {type(self).__name__} needs {needed} backbone; "
                f"'{self.model.config.model_type}' is {found} (see conf/backbone/)"
            )

    def prunable_parameters(self) -> dict[str, torch.nn.Parameter]:
        named = dict(self.model.named_parameters())
        return {name: named[name] for name in self.prunable}

    def scoring_loss(self, batch, temperature: float = 1.0) -> torch.Tensor:
        """The loss pruners differentiate; ``temperature`` divides logits (GraSP)."""
        raise NotImplementedError

    def gather_dev_outputs(self, outputs: dict[int, tuple]) -> list[tuple]:
        """Dev position → output on this process → every process's outputs in dev order, on every process.

        Under DDP each process evaluates its share of the dev rows, and Lightning's sampler repeats a few
        rows to even the shares out; keyed by dev position, the repeats collapse, so a metric computed
        from this list covers the whole dev set exactly once (with one process it is this process's list)."""
        if self._trainer is not None and self.trainer.world_size > 1:
            shares = [None] * self.trainer.world_size
            torch.distributed.all_gather_object(shares, outputs)
            outputs = {position: output for share in shares for position, output in share.items()}
        return [outputs[position] for position in sorted(outputs)]

    def parameter_report(self) -> dict:
        return parameter_report(self.model, self.prunable, self.masks)

    def configure_model(self):
        """trainer=fsdp (Lightning's ModelParallelStrategy): one ``fully_shard`` per block, then the root; masks
        were fixed before (``PruneAtInit.setup``). Other strategies: nothing to do."""
        if sharded(self._trainer):
            shard_blocks(self.model, self.device_mesh["data_parallel"])

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        if "state_dict" in checkpoint:  # (trainer=fsdp loads it itself, before this hook)
            drop_quantization_state(self.model, checkpoint["state_dict"], prefix="model.")  # quantized bodies resume too

    def configure_optimizers(self):
        return self.optimizer_config.build(self.model, int(self.trainer.estimated_stepping_batches))
