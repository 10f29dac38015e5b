"""A training order that a resumed run can reproduce: a function of (seed, epoch), restartable mid-epoch.

``shuffle=True`` draws each epoch's order from the global RNG, whose state after a restart differs
from the uninterrupted run's, and restarts the epoch from its first batch. This sampler draws the
order from its own generator seeded by (seed, epoch) and skips the rows a checkpoint already
trained on, so the resumed run sees exactly the batches the uninterrupted run would have seen.
"""

from __future__ import annotations

import torch
from torch.utils.data import Sampler


class ResumableSampler(Sampler[int]):
    def __init__(self, size: int, seed: int):
        self.size, self.seed = size, seed
        self.epoch = 0
        self._skip = 0

    def set_epoch(self, epoch: int) -> None:
        """Lightning calls this at each epoch start (it also sets DistributedSampler's epoch under DDP)."""
        self.epoch = epoch

    def skip_next(self, rows: int) -> None:
        """The next iteration starts ``rows`` into this epoch's order (a resume mid-epoch)."""
        self._skip = rows

    def __iter__(self):
        generator = torch.Generator().manual_seed(self.seed * 100_003 + self.epoch)
        order = torch.randperm(self.size, generator=generator).tolist()
        start, self._skip = self._skip, 0
        return iter(order[start:])

    def __len__(self) -> int:
        return self.size  # the epoch's length, also when resumed part-way (Lightning counts the skipped batches as done)
