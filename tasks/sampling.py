"""A training order that a resumed run can reproduce: a function of (seed, epoch), restartable mid-epoch.

``shuffle=True`` draws each epoch's order from the global RNG, whose state after a restart differs
from the uninterrupted run's, and restarts the epoch from its first batch. This sampler draws the
order from its own generator seeded by (seed, epoch) and skips the rows a checkpoint already
trained on, so the resumed run sees exactly the batches the uninterrupted run would have seen.

Given each row's length and the batch size, it groups rows of similar length into batches (as
Hugging Face's ``group_by_length``): with dynamic padding a batch costs its longest row times its
size, and random GLUE batches pad 1.5× (MRPC) to 2.5× (STS-B) the tokens they hold. Under DDP the grouped
unit is one step's rows over all processes (batch size × W): each process takes every W-th row of
such a unit, so its batch still holds rows of similar length.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from torch.utils.data import DistributedSampler

POOL_BATCHES = 50  # rows are sorted by length within pools of 50 random batches, as in transformers


class ResumableSampler(DistributedSampler):
    def __init__(self, size: int, seed: int, lengths: Sequence[int] | None = None, batch_size: int | None = None,
                 rank: int = 0, processes: int = 1, epoch_of: Callable[[], int] | None = None):
        if lengths is not None and (len(lengths) != size or not batch_size):
            raise ValueError("ResumableSampler: grouping by length needs one length per row and the batch size")
        super().__init__(range(size), num_replicas=processes, rank=rank, shuffle=False, seed=seed, drop_last=False)
        self.size, self.lengths = size, lengths
        self.unit = batch_size * processes if batch_size else None  # one step's rows over all processes
        self._skip, self._skip_epoch = 0, None
        self.epoch_of = epoch_of  # the trainer's epoch, read when an epoch's iteration starts

    def set_epoch(self, epoch: int) -> None:
        """Lightning calls this at each epoch start."""
        self.epoch = epoch

    def skip_next(self, rows: int, epoch: int | None = None) -> None:
        """The next iteration starts ``rows`` into this process's share of the epoch (a resume mid-epoch), of ``epoch``
        when given (the checkpoint's: it outranks what Lightning passes to ``set_epoch``)."""
        self._skip, self._skip_epoch = rows, epoch

    def order(self) -> list[int]:
        """This epoch's order over all processes: a function of (seed, epoch) only."""
        generator = torch.Generator().manual_seed(self.seed * 100_003 + self.epoch)
        order = torch.randperm(self.size, generator=generator).tolist()
        if self.lengths is None:
            return order
        pool = self.unit * POOL_BATCHES
        batches = []
        for start in range(0, self.size, pool):  # longest first within a pool; ties keep the random order
            rows = sorted(order[start:start + pool], key=lambda i: -self.lengths[i])
            batches += [rows[i:i + self.unit] for i in range(0, len(rows), self.unit)]
        last = batches.pop() if len(batches[-1]) < self.unit else None  # a short batch stays last: the
        shuffled = [batches[i] for i in torch.randperm(len(batches), generator=generator).tolist()]  # loader cuts every batch_size rows
        return [i for batch in shuffled + ([last] if last else []) for i in batch]

    def share(self) -> list[int]:
        """This process's rows of the epoch, in order; with one process, the whole order."""
        order = self.order()
        padded = (order * -(-self.total_size // self.size))[: self.total_size]
        return padded[self.rank :: self.num_replicas]

    def __iter__(self):
        if self._skip_epoch is not None:
            self.epoch, self._skip_epoch = self._skip_epoch, None
        elif self.epoch_of is not None:
            # Lightning's set_epoch passes its count of epochs *processed*; resumed from an epoch-end checkpoint
            # under trainer.max_steps that count runs one ahead of the epoch being trained (its fit loop
            # treats step-limited runs as always restarting), which dealt the next epoch's order
            self.epoch = self.epoch_of()
        start, self._skip = self._skip, 0
        return iter(self.share()[start:])

    def __len__(self) -> int:
        return self.num_samples  # the share's length, also when resumed part-way (Lightning counts the skipped batches as done)
