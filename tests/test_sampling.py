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


def test_under_ddp_each_process_takes_its_distributed_sampler_share_of_one_order():
    """Process p takes rows p, p+W, … of the padded order, as torch's DistributedSampler deals an order out."""
    from torch.utils.data import DistributedSampler

    rows, processes = lengths(), 2
    shares = [ResumableSampler(SIZE + 1, seed=0, lengths=rows + [7], batch_size=BATCH, rank=r, processes=processes) for r in range(2)]
    order = shares[0].order()
    assert order == shares[1].order()  # one order over all processes
    for rank, sampler in enumerate(shares):
        dealt = [order[i] for i in DistributedSampler(range(SIZE + 1), num_replicas=processes, rank=rank, shuffle=False)]
        assert list(sampler) == dealt and len(sampler) == len(dealt) == -(-(SIZE + 1) // processes)
    assert sorted(list(shares[0]) + list(shares[1])) == sorted(list(range(SIZE + 1)) + [order[0]])  # padded by one row


def test_under_ddp_every_process_batch_holds_rows_of_similar_length():
    rows, processes = lengths(), 2
    for rank in range(processes):
        order = list(ResumableSampler(SIZE, seed=0, lengths=rows, batch_size=BATCH, rank=rank, processes=processes))
        spans = [max(rows[i] for i in order[b:b + BATCH]) - min(rows[i] for i in order[b:b + BATCH]) for b in range(0, len(order), BATCH)]
        assert max(spans[:-1]) <= 20  # one step's rows over both processes are grouped (random batches of lengths 5-100 span ~90)
        assert padded_tokens(order, rows) < 1.1 * sum(rows[i] for i in order)


def test_under_ddp_a_resume_continues_each_process_share():
    rows = lengths()
    for rank in range(2):
        uninterrupted = list(ResumableSampler(SIZE, seed=5, lengths=rows, batch_size=BATCH, rank=rank, processes=2))
        resumed = ResumableSampler(SIZE, seed=5, lengths=rows, batch_size=BATCH, rank=rank, processes=2)
        resumed.skip_next(7 * BATCH)
        assert list(resumed) == uninterrupted[7 * BATCH:]


def test_the_datamodule_deals_the_order_over_the_trainer_processes_and_lightning_keeps_it():
    import lightning as L
    from lightning.pytorch.trainer.states import RunningStage

    from tasks.data import TaskDataModule

    module = TaskDataModule(task=None, tokenizer=None, data_dir=None, batch_size=BATCH, eval_batch_size=BATCH,
                            max_train_samples=None, max_eval_samples=None, num_workers=0, seed=0, group_by_length=True)
    module.datasets = {"train": [{"input_ids": [0] * n} for n in lengths()]}
    alone = module.train_loader(collate_fn=None).sampler
    assert (alone.unit, alone.num_replicas, len(alone)) == (BATCH, 1, SIZE)  # no trainer: one process
    module.trainer = L.Trainer(accelerator="cpu", devices=2, strategy="ddp", logger=False, enable_checkpointing=False)
    module.continue_epoch(epoch=2, batches=3)  # a DDP trainer is built, not launched: it only tells the processes
    loader = module.train_loader(collate_fn=None)
    assert (loader.sampler.unit, loader.sampler.num_replicas, len(loader.sampler)) == (BATCH * 2, 2, SIZE // 2)
    epoch_two = ResumableSampler(SIZE, 0, lengths(), BATCH, rank=0, processes=2)
    epoch_two.set_epoch(2)
    assert list(loader.sampler) == epoch_two.share()[3 * BATCH:] != []
    # Lightning wraps a plain sampler in DistributedSamplerWrapper (dealing it out a second time); it keeps this one
    prepared = module.trainer._data_connector._prepare_dataloader(loader, shuffle=True, mode=RunningStage.TRAINING)
    assert prepared.sampler is loader.sampler
