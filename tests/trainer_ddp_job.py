"""One rank of a 2-process DDP run of the Hugging Face Trainer with SparseAdapterCallback (tests/test_peft_integration.py).

Launched by torchrun; each rank writes its masks and its pruned-entry check to <out>/rank<N>.pt.
"""

import sys
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from peft import LoraConfig, get_peft_model  # noqa: E402
from transformers import Trainer, TrainingArguments  # noqa: E402

from sparse_adapter.hf_trainer import SparseAdapterCallback  # noqa: E402
from tests.conftest import tiny_model  # noqa: E402


def main(out: str, rows: str) -> None:
    torch.manual_seed(0)
    model, tokenizer = tiny_model()
    model = get_peft_model(model, LoraConfig(r=4, lora_alpha=8, target_modules=["query", "value"], modules_to_save=["classifier"],
                                             init_lora_weights="gaussian"))
    texts = [line.split("\t") for line in Path(rows).read_text().splitlines()[1:33]]
    data = [{**{k: torch.tensor(v) for k, v in tokenizer(t, truncation=True, max_length=32, padding="max_length").items()},
             "labels": torch.tensor(int(label))} for t, label in texts]
    callback = SparseAdapterCallback(sparsity=0.5, num_batches=2)
    args = TrainingArguments(output_dir=out, per_device_train_batch_size=4, max_steps=6, learning_rate=5e-3, weight_decay=0.1,
                             report_to=[], save_strategy="no", use_cpu=True, seed=0, disable_tqdm=True, ddp_backend="gloo")
    trainer = Trainer(model=model, args=args, train_dataset=data, callbacks=[callback])
    trainer.train()
    named = dict(model.named_parameters())
    pruned_zero = all(bool((named[n].detach()[~m] == 0).all()) for n, m in callback.masks.items())
    rank = torch.distributed.get_rank() if torch.distributed.is_initialized() else 0
    world = torch.distributed.get_world_size() if torch.distributed.is_initialized() else 1
    torch.save({"masks": callback.masks, "pruned_zero": pruned_zero, "world": world}, Path(out) / f"rank{rank}.pt")


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
