"""Per-task batch streams that never run dry and resume exactly where they stopped.

Each task has its own stream of index batches: a seeded permutation per pass over the task's
training set, cut into batches (optionally grouped by length, so padding stays small). The
stream's position (pass, batch) is part of the checkpoint, so a resumed run sees the same
batches in the same order.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, Sampler


def _token_batches(order: np.ndarray, lens: np.ndarray, max_tokens: int, max_rows: int) -> list[list[int]]:
    """Cut rows (sorted longest first) into batches of at most ``max_tokens`` padded positions (rows x the
    batch's longest row) and at most ``max_rows`` rows; a row longer than the budget is a batch of its own."""
    batches: list[list[int]] = []
    current: list[int] = []
    longest = 0
    for i in order.tolist():
        length = int(lens[i])
        grown = max(longest, length)
        if current and ((len(current) + 1) * grown > max_tokens or len(current) >= max_rows):
            batches.append(current)
            current, grown = [], length
        current.append(i)
        longest = grown
    if current:
        batches.append(current)
    return batches


def _pass_batches(
    n: int, batch_size: int, seed: int, pass_index: int, lengths: Sequence[int] | None, group_by_length: bool,
    drop_last: bool, rank: int = 0, world_size: int = 1, max_tokens: int | None = None,
) -> list[list[int]]:
    rng = np.random.default_rng([seed, pass_index])
    order = rng.permutation(n)
    if world_size > 1:  # each rank its own shard of every task (same permutation on every rank)
        usable = (n // world_size) * world_size
        order = order[:usable][rank::world_size]
    grouped = (group_by_length or max_tokens is not None) and lengths is not None
    if grouped:
        # sort within mega-chunks of 50 batches, then shuffle the batches: little padding, still random
        chunk = batch_size * 50
        lens = np.asarray(lengths)
        parts = [order[i : i + chunk] for i in range(0, len(order), chunk)]
        order = np.concatenate([p[np.argsort(-lens[p], kind="stable")] for p in parts]) if parts else order
    if max_tokens is not None and lengths is not None:  # token budget: batches of ~constant padded positions
        batches = _token_batches(order, np.asarray(lengths), int(max_tokens), batch_size)
        return [batches[i] for i in rng.permutation(len(batches))]
    batches = [order[i : i + batch_size].tolist() for i in range(0, len(order), batch_size)]
    if drop_last and batches and len(batches[-1]) < batch_size and len(batches) > 1:
        batches.pop()
    if group_by_length:
        batches = [batches[i] for i in rng.permutation(len(batches))]
    return batches


class TaskBatchSampler:
    """An endless, checkpointable sampler of index batches for one task."""

    def __init__(
        self,
        n: int,
        batch_size: int,
        seed: int,
        lengths: Sequence[int] | None = None,
        group_by_length: bool = False,
        drop_last: bool = False,
        rank: int = 0,
        world_size: int = 1,
        max_tokens: int | None = None,
    ) -> None:
        if n <= 0:
            raise ValueError("cannot sample batches from an empty training set")
        if batch_size <= 0:
            raise ValueError(f"batch_size must be positive, got {batch_size}")
        if max_tokens is not None and (int(max_tokens) < 1 or lengths is None):
            raise ValueError(f"data.max_tokens={max_tokens}: needs a positive budget and the rows' lengths")
        self.max_tokens = None if max_tokens is None else int(max_tokens)
        self.n, self.batch_size, self.seed = n, batch_size, seed
        self.lengths, self.group_by_length, self.drop_last = lengths, group_by_length, drop_last
        self.rank, self.world_size = rank, world_size
        self.pass_index = 0
        self.position = 0  # batches consumed in the current pass
        self._batches = self._make(self.pass_index)

    def _make(self, pass_index: int) -> list[list[int]]:
        return _pass_batches(
            self.n, self.batch_size, self.seed, pass_index, self.lengths, self.group_by_length,
            self.drop_last, self.rank, self.world_size, self.max_tokens,
        )

    def __iter__(self) -> Iterator[list[int]]:
        while True:
            if self.position >= len(self._batches):
                self.pass_index += 1
                self.position = 0
                self._batches = self._make(self.pass_index)
            batch = self._batches[self.position]
            self.position += 1
            yield batch

    def batches_per_pass(self) -> int:
        if self.max_tokens is not None:  # token budget: the current pass's count (passes differ a little)
            return len(self._batches)
        local = (self.n // self.world_size) if self.world_size > 1 else self.n
        full, rest = divmod(local, self.batch_size)
        if rest and not (self.drop_last and full >= 1):
            full += 1
        return full

    def state_dict(self) -> dict[str, int]:
        return {"pass_index": self.pass_index, "position": self.position}

    def load_state_dict(self, state: dict[str, int]) -> None:
        self.pass_index = int(state["pass_index"])
        self.position = int(state["position"])
        self._batches = self._make(self.pass_index)


class TaskStream:
    """A DataLoader over one task driven by a :class:`TaskBatchSampler`.

    The loader is (re)built lazily so that loading a sampler state takes effect; the position
    counts batches handed to the trainer, not batches prefetched by workers.
    """

    def __init__(
        self, dataset: Dataset, sampler: TaskBatchSampler, collate: Callable[[list[Any]], dict[str, torch.Tensor]],
        num_workers: int = 0, pin_memory: bool = False,
    ) -> None:
        self.dataset, self.sampler, self.collate = dataset, sampler, collate
        self.num_workers, self.pin_memory = num_workers, pin_memory
        self._iter: Iterator[dict[str, torch.Tensor]] | None = None
        self._consumed: dict[str, int] = sampler.state_dict()

    def _loader(self) -> Iterator[dict[str, torch.Tensor]]:
        # a fresh sampler copy positioned at the consumed state, so prefetching cannot skip batches
        s = self.sampler
        own = TaskBatchSampler(s.n, s.batch_size, s.seed, s.lengths, s.group_by_length, s.drop_last, s.rank, s.world_size,
                               s.max_tokens)
        own.load_state_dict(self._consumed)
        loader = DataLoader(
            self.dataset, batch_sampler=own, collate_fn=self.collate, num_workers=self.num_workers,
            pin_memory=self.pin_memory, persistent_workers=False,
        )
        return iter(loader)

    def next(self) -> dict[str, torch.Tensor]:
        if self._iter is None:
            self._iter = self._loader()
        batch = next(self._iter)
        pass_index, position = self._consumed["pass_index"], self._consumed["position"]
        if position >= self.sampler.batches_per_pass():
            pass_index, position = pass_index + 1, 0
        self._consumed = {"pass_index": pass_index, "position": position + 1}
        return batch

    def state_dict(self) -> dict[str, int]:
        return dict(self._consumed)

    def load_state_dict(self, state: dict[str, int]) -> None:
        self._consumed = dict(state)
        self.sampler.load_state_dict(state)
        self._iter = None


class LengthSortedSampler(Sampler[int]):
    """Evaluation order: the rows sorted by length, longest first (a batch of similar lengths pads little,
    and an out-of-memory shows at the first batch). ``order[i]`` is the dataset row visited ``i``-th, so the
    evaluation puts each prediction back in the dataset's order."""

    def __init__(self, lengths: Sequence[int]) -> None:
        self.order: list[int] = np.argsort(-np.asarray(lengths, dtype=np.int64), kind="stable").tolist()

    def __iter__(self) -> Iterator[int]:
        return iter(self.order)

    def __len__(self) -> int:
        return len(self.order)
