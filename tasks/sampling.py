"""A training order that a resumed run can reproduce: a function of (seed, epoch), restartable mid-epoch.

``shuffle=True`` draws each epoch's order from the global RNG, whose state after a restart differs
from the uninterrupted run's, and restarts the epoch from its first batch. This sampler draws the
order from its own generator seeded by (seed, epoch) and skips the rows a checkpoint already
trained on, so the resumed run sees exactly the batches the uninterrupted run would have seen.

Given each row's length and the batch size, it groups rows of similar length into batches (as
Hugging Face's ``group_by_length``): with dynamic padding a batch costs its longest row times its
size, and random GLUE batches pad 1.5× (MRPC) to 2.5× (STS-B) the tokens they hold. Under DDP
``batch_size`` is one step's rows over all processes (batch size × world size): each process takes
every W-th row of such a unit, so its batch still holds rows of similar length.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch.utils.data import Sampler

POOL_BATCHES = 50  # rows are sorted by length within pools of 50 random batches, as in transformers


class ResumableSampler(Sampler[int]):
    def __init__(self, size: int, seed: int, lengths: Sequence[int] | None = None, batch_size: int | None = None):
        if lengths is not None and (len(lengths) != size or not batch_size):
            raise ValueError("ResumableSampler: grouping by length needs one length per row and the batch size")
        self.size, self.seed = size, seed
        self.lengths, self.batch_size = lengths, batch_size
        self.epoch = 0
        self._skip = 0

    def set_epoch(self, epoch: int) -> None:
        """Lightning calls this at each epoch start (it also sets DistributedSampler's epoch under DDP)."""
        self.epoch = epoch

    def skip_next(self, rows: int) -> None:
        """The next iteration starts ``rows`` into this epoch's order (a resume mid-epoch)."""
        self._skip = rows

    def order(self) -> list[int]:
        """This epoch's order: a function of (seed, epoch) only."""
        generator = torch.Generator().manual_seed(self.seed * 100_003 + self.epoch)
        order = torch.randperm(self.size, generator=generator).tolist()
        if self.lengths is None:
            return order
        pool = self.batch_size * POOL_BATCHES
        batches = []
        for start in range(0, self.size, pool):  # longest first within a pool; ties keep the random order
            rows = sorted(order[start:start + pool], key=lambda i: -self.lengths[i])
            batches += [rows[i:i + self.batch_size] for i in range(0, len(rows), self.batch_size)]
        last = batches.pop() if len(batches[-1]) < self.batch_size else None  # a short batch stays last: the
        shuffled = [batches[i] for i in torch.randperm(len(batches), generator=generator).tolist()]  # loader cuts every batch_size rows
        return [i for batch in shuffled + ([last] if last else []) for i in batch]

    def __iter__(self):
        order = self.order()
        start, self._skip = self._skip, 0
        return iter(order[start:])

    def __len__(self) -> int:
        return self.size  # the epoch's length, also when resumed part-way (Lightning counts the skipped batches as done)
