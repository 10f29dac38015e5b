"""Check a composed config before any model loads: one ConfigError naming the key, never a traceback.

Types and ranges come from the typed configs (``tasks.typed_config``: the dataclasses each node
instantiates, with ranges on their fields); what is written here are the rules that span several
settings. Checks that need the built model are in ``tasks.model_checks``.
"""

from __future__ import annotations

from omegaconf import DictConfig

from sparse_adapter.backbones import config_problem as storage_problem
from sparse_adapter.distributed import config_problem as sharding_problem
from sparse_adapter.errors import ConfigError
from sparse_adapter.pruning import SCORERS, PrunerConfig
from sparse_adapter.quantization import config_problem as quantization_problem
from sparse_adapter.schema import show
from tasks.model_checks import check_budget, max_positions  # noqa: F401 (checks on the built model; imported from here)
from tasks.typed_config import CONF, GROUPS, check_types_and_ranges, plain_config  # noqa: F401 (public here too)

# ---- rules that span several settings --------------------------------------------------------------

def _devices(cfg: dict) -> str | None:
    v = (cfg.get("trainer") or {}).get("devices", "auto")
    good = v in ("auto", -1) or isinstance(v, (list, str)) or (isinstance(v, int) and not isinstance(v, bool) and v >= 1)
    return None if good else f"trainer.devices={show(v)}: must be ≥ 1, -1 or auto"


def _sharded_strategy(cfg: dict) -> str | None:
    """Strategies whose parameters are sharded: masks are full-shape buffers, so they cannot act on shards."""
    strategy = str((cfg.get("trainer") or {}).get("strategy", "")).lower()
    if any(s in strategy for s in ("fsdp", "deepspeed")):
        return (
            f"trainer.strategy={strategy}: sharded parameters are not supported this way (the pruning masks are full-shape"
            " buffers); use trainer=fsdp (FSDP2, masks cut to each shard) or trainer=ddp, which replicates the adapters"
        )
    return None


def _scorer_options(cfg: dict) -> str | None:
    """``pruner.options`` against the settings its scorer declares (``register(..., settings=...)``)."""
    pruner = cfg.get("pruner") or {}
    if pruner.get("scorer") not in SCORERS:
        return None  # no scorer, or an unknown one: PrunerConfig.validate names it
    try:
        PrunerConfig(scorer=pruner["scorer"], options=dict(pruner.get("options") or {})).scorer_options()
    except ConfigError as error:
        return str(error)
    return None


# (large_sparse and its contradictions are checked where it is resolved: tasks/resolvers.py, tasks/experiment.py)
# quantization_problem: bitsandbytes installed and an adapter to train; sharding_problem (trainer=fsdp): two or more
# devices, no quantized weights; storage_problem: a half-precision body (backbone.dtype) needs an adapter
CONTRADICTIONS = [_devices, _sharded_strategy, _scorer_options, quantization_problem, sharding_problem, storage_problem]


def validate_config(cfg: DictConfig) -> None:
    """Every check that needs only the config; raises one ConfigError naming the first bad key."""
    plain = plain_config(cfg)
    check_types_and_ranges(plain)
    for contradiction in CONTRADICTIONS:
        if problem := contradiction(plain):
            raise ConfigError(problem)
