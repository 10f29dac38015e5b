"""What a finished run writes to ``summary.json``: one typed record, the report's (``paper``) input.

``RunSummary.as_dict()`` writes the keys and order ``summary.json`` always had, so the committed
results under ``results/`` and every reader of them keep working. Two groups are written flat: the
adapter's parameter counts (``sparse_adapter.accounting.parameter_report``) and a family's own data
fields (an SFT run's dataset and chat template), whose keys depend on the run.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

FLAT = {"flat": True}  # a field whose keys go into the summary itself, not under the field's name


@dataclass
class RunSummary:
    task: str
    backbone: str
    adapter: str
    row: str | None  # the table row it was started as (``row=...``), else the report derives it
    adapter_config: dict
    pruner: str  # the scorer, or "none"
    scope: str | None
    pruner_settings: dict
    sparsity: float  # what was pruned: 0 for a dense adapter or full fine-tuning
    large_sparse: int | None
    seed: int
    budget: dict  # tasks.budget.training_budget: what the numbers depend on besides row, task and seed
    precision: str
    quantization: dict | None
    backbone_dtype: str  # how the frozen body was stored (backbone.dtype); what trained was fp32
    resumed_from: str | None
    resume_changes: dict  # settings allowed to differ from the checkpoint (resume_changes=[...])
    main_metric: str
    metrics: dict[str, float]  # the closing dev evaluation
    baseline: dict | None  # the trivial predictor's metrics (majority class, mean, LEAD-1)
    parameters: dict = field(metadata=FLAT)  # adapter_weights_total ... trained_params_pct
    skipped_rows: dict = field(default_factory=dict)
    data_fields: dict = field(default_factory=dict, metadata=FLAT)  # e.g. the dataset an SFT run read
    samples: list = field(default_factory=list)
    empty_matrices: list = field(default_factory=list)
    silenced_modules: list = field(default_factory=list)
    tied_score_tensors: list = field(default_factory=list)
    lookahead_tensors: list = field(default_factory=list)
    layer_density: dict = field(default_factory=dict)
    prune_seconds: float | None = None
    global_steps: int = 0
    epochs: int = 0
    wall_seconds: float = 0.0  # all pieces of a resumed job
    wall_seconds_this_process: float = 0.0
    cpu_threads: int = 1  # what the wall time ran on: two jobs side by side each take fewer
    status: str = "complete"

    def as_dict(self) -> dict:
        """The summary.json object: ``status`` first, the flat groups' keys in their place."""
        out = {"status": self.status}
        for spec in dataclasses.fields(self):
            value = getattr(self, spec.name)
            if spec.metadata.get("flat"):
                out.update(value)
            elif spec.name != "status":
                out[spec.name] = value
        return out
