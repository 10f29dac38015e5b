"""The resumable training order, random and grouped by length."""

import random

import pytest

from tasks.sampling import ResumableSampler

SIZE, BATCH = 5000, 32


def lengths(seed: int = 0) -> list[int]:
    rng = random.Random(seed)
    return [rng.randint(5, 100) for _ in range(SIZE)]


def padded_tokens(order: list[int], rows: list[int]) -> int:
    """What a dynamically padded batch costs: its longest row times its size, summed over the epoch."""
    return sum(max(rows[i] for i in order[b:b + BATCH]) * len(order[b:b + BATCH]) for b in range(0, len(order), BATCH))


@pytest.mark.parametrize("grouped", [False, True])
def test_each_epoch_is_a_permutation_fixed_by_seed_and_epoch(grouped):
    rows = lengths() if grouped else None
    sampler, again = (ResumableSampler(SIZE, seed=3, lengths=rows, batch_size=BATCH) for _ in range(2))
    first = list(sampler)
    assert sorted(first) == list(range(SIZE))
    assert first == list(again)  # the same (seed, epoch), the same order
    sampler.set_epoch(1)
    assert list(sampler) != first


def test_grouped_batches_pad_little_and_only_the_last_batch_is_short():
    rows = lengths()
    real = sum(rows)
    grouped = ResumableSampler(SIZE, seed=0, lengths=rows, batch_size=BATCH).order()
    shuffled = ResumableSampler(SIZE, seed=0).order()
    assert padded_tokens(shuffled, rows) > 1.6 * real  # random batches of lengths 5-100: close to 2×
    assert padded_tokens(grouped, rows) < 1.1 * real  # sorted within pools of 50 batches
    spans = [max(rows[i] for i in grouped[b:b + BATCH]) - min(rows[i] for i in grouped[b:b + BATCH]) for b in range(0, SIZE, BATCH)]
    assert max(spans[:-1]) <= 20  # similar lengths in every full batch (random batches span ~90); the last pool is small
    assert SIZE % BATCH and len(grouped[(SIZE // BATCH) * BATCH:]) == SIZE % BATCH


def test_grouped_batches_come_in_random_order_not_longest_first():
    rows = lengths()
    order = ResumableSampler(SIZE, seed=0, lengths=rows, batch_size=BATCH).order()
    longest = [max(rows[i] for i in order[b:b + BATCH]) for b in range(0, BATCH * 50, BATCH)]  # the first pool's worth
    assert longest != sorted(longest, reverse=True)


def test_a_resume_continues_the_same_grouped_order():
    rows = lengths()
    uninterrupted = list(ResumableSampler(SIZE, seed=5, lengths=rows, batch_size=BATCH))
    resumed = ResumableSampler(SIZE, seed=5, lengths=rows, batch_size=BATCH)
    resumed.skip_next(7 * BATCH)
    assert list(resumed) == uninterrupted[7 * BATCH:]
    assert list(resumed) == uninterrupted  # the skip applies once


def test_grouping_needs_a_length_per_row_and_the_batch_size():
    with pytest.raises(ValueError, match="one length per row"):
        ResumableSampler(SIZE, seed=0, lengths=[3] * 10, batch_size=BATCH)
    with pytest.raises(ValueError, match="batch size"):
        ResumableSampler(SIZE, seed=0, lengths=lengths())


def test_under_ddp_every_process_batch_holds_rows_of_similar_length():
    """Lightning wraps a custom sampler in DistributedSamplerWrapper, which deals its order out round-robin."""
    from lightning.fabric.utilities.distributed import DistributedSamplerWrapper

    rows, processes = lengths(), 2
    grouped = ResumableSampler(SIZE, seed=0, lengths=rows, batch_size=BATCH * processes)
    for rank in range(processes):
        order = list(DistributedSamplerWrapper(grouped, num_replicas=processes, rank=rank, shuffle=False))
        assert len(order) == -(-SIZE // processes)
        spans = [max(rows[i] for i in order[b:b + BATCH]) - min(rows[i] for i in order[b:b + BATCH]) for b in range(0, len(order), BATCH)]
        assert max(spans[:-1]) <= 20  # one unit's rows (random batches of lengths 5-100 span ~90)
        assert padded_tokens(order, rows) < 1.1 * sum(rows[i] for i in order)


def test_the_datamodule_groups_one_step_of_rows_over_all_processes():
    import lightning as L

    from tasks.data import TaskDataModule

    module = TaskDataModule(task=None, tokenizer=None, data_dir=None, batch_size=BATCH, eval_batch_size=BATCH,
                            max_train_samples=None, max_eval_samples=None, num_workers=0, seed=0, group_by_length=True)
    module.datasets = {"train": [{"input_ids": [0] * n} for n in lengths()]}
    module.start_order()
    assert module.sampler.batch_size == BATCH  # no trainer: one process
    module.trainer = L.Trainer(accelerator="cpu", devices=2, strategy="ddp", logger=False, enable_checkpointing=False)
    module.start_order()  # a DDP trainer is built, not launched: it only tells the world size
    assert module.sampler.batch_size == BATCH * 2
