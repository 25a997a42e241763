"""Batches from a real `torch.utils.data.DataLoader` (the `data` axis's loader modes).

A workload's staged batches become a map-style dataset (with a random horizontal flip,
as image pipelines have), read by a DataLoader that shuffles and may use worker
processes. Two ways to build it:

- `loader`: seeded as PyTorch's reproducibility notes say: a `generator` drawn from the
  trial's data seed and a `worker_init_fn` that seeds each worker's `random` and numpy
  from its torch seed;
- `loader-unseeded`: the common mistake: no generator, no `worker_init_fn`, in a script
  that seeds nothing (detcost reseeds the global generator the loader falls back on from
  the operating system's entropy when the loader is made). A script that does call
  `torch.manual_seed` before making its loader gets a repeatable order even without a
  generator, but one that shifts whenever anything else draws from the global generator
  first; a generator of its own keeps the data order independent of the model's code.

`LoaderBatches` hands the loader's batches out one step at a time, on the device, inside
the timed step: what the loader costs is part of step time. It is a sequence for the
training loop, read once, in step order: reading an earlier step again is an IndexError
(a loader does not rewind).
"""

from __future__ import annotations

import hashlib
import random
from collections.abc import Callable, Iterator, Sequence

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, RandomSampler, Sampler, get_worker_info

SEEDED, UNSEEDED = "loader", "loader-unseeded"
FLIP_P = 0.5  # the augmentation: horizontal flip with this probability


class FlipDataset(Dataset):
    """Samples kept on the CPU; each read flips an image (and a per-pixel label) at random.
    In a worker the flips draw from the worker's torch generator (seeded by the loader);
    read in the trial's own process (no workers) they draw from a generator of their own
    made from `flip_seed`, so in both cases they follow the data pipeline's seed, not what
    the model's code did with the global generator. (Only the seed travels to workers.)"""

    def __init__(self, x: torch.Tensor, y: torch.Tensor, flip_seed: int):
        self.x, self.y, self.flip_seed, self._gen = x, y, flip_seed, None

    def __len__(self) -> int:
        return len(self.x)

    def __getstate__(self) -> dict:
        return {**self.__dict__, "_gen": None}

    def _flips(self) -> torch.Generator | None:
        if get_worker_info() is not None:
            return None
        if self._gen is None:
            self._gen = torch.Generator().manual_seed(self.flip_seed)
        return self._gen

    def __getitem__(self, i: int):
        x, y = self.x[i], self.y[i]
        if float(torch.rand((), generator=self._flips())) < FLIP_P:
            x = x.flip(-1)
            y = y.flip(-1) if y.dim() >= 1 else y
        return x, y


def seed_worker(worker_id: int) -> None:
    """PyTorch's recipe, the DataLoader's `worker_init_fn`: each worker's `random` and numpy
    from its torch seed. torch seeds a worker with `base_seed + worker_id`, `base_seed`
    drawn from the loader's generator; `random` and numpy are left alone unless seeded here.
    (`detcost.seeding.worker_init_fn` is this function.)"""
    seed = torch.initial_seed() % 2**32
    np.random.seed(seed)
    random.seed(seed)


class RecordingSampler(Sampler[int]):
    """A sampler that remembers the indices it handed out (in the trial process, where
    the loader's sampler runs even with workers): the data order, for the record."""

    def __init__(self, inner: Sampler[int]):
        self.inner, self.seen = inner, []

    def __iter__(self) -> Iterator[int]:
        for i in self.inner:
            self.seen.append(int(i))
            yield i

    def __len__(self) -> int:
        return len(self.inner)


def pool_of(batches: Sequence) -> tuple[torch.Tensor, torch.Tensor]:
    """The distinct staged batches as one set of samples on the CPU. A loader needs one
    sample shape: a workload whose input size changes between steps cannot use one."""
    distinct = list({id(x): (x, y) for x, y in batches}.values())
    shapes = {tuple(x.shape[1:]) for x, _ in distinct}
    if len(shapes) > 1:
        raise ValueError(f"--data loader needs one input shape; this workload uses {len(shapes)}")
    return torch.cat([x.cpu() for x, _ in distinct]), torch.cat([y.cpu() for _, y in distinct])


def make_loader(
    x: torch.Tensor, y: torch.Tensor, *, mode: str, batch: int, workers: int, data_seed: int, device: str
) -> tuple[DataLoader, RecordingSampler]:
    """The DataLoader a training script would write, seeded or not (see the module notes)."""
    if mode == UNSEEDED:
        torch.seed()  # nobody seeded the generator the sampler falls back on
    gen = torch.Generator().manual_seed(data_seed) if mode == SEEDED else None
    # the flips read in this process (no workers): from the data seed, or from entropy
    flip_seed = data_seed + 1 if mode == SEEDED else torch.Generator().seed()
    sampler = RecordingSampler(RandomSampler(range(len(x)), generator=gen))
    loader = DataLoader(
        FlipDataset(x, y, flip_seed),
        batch_size=batch,
        sampler=sampler,
        drop_last=True,
        num_workers=workers,
        persistent_workers=workers > 0,  # no worker restart at each epoch
        pin_memory=torch.device(device).type == "cuda",
        generator=gen,
        worker_init_fn=seed_worker if mode == SEEDED else None,
    )
    return loader, sampler


class LoaderBatches(Sequence):
    """`steps` batches from a DataLoader, epoch after epoch, moved to the device as each
    step reads them (through `transforms`, e.g. a memory format)."""

    read_once = True  # a loader does not rewind: a caller that cycles through batches cannot use it

    def __init__(self, loader: DataLoader, sampler: RecordingSampler, steps: int, device: str):
        self.loader, self.sampler, self.steps, self.device = loader, sampler, steps, device
        self.transforms: list[Callable] = []
        ds = loader.dataset
        self.sample_shapes = (tuple(ds.x.shape[1:]), ds.x.dtype, tuple(ds.y.shape[1:]), ds.y.dtype)
        self._pos, self._it = 0, None

    def _next(self):
        while True:
            if self._it is None:
                self._it = iter(self.loader)
            try:
                return next(self._it)
            except StopIteration:
                self._it = None

    def fetch(self, i: int):
        if i < self._pos:
            raise IndexError(f"a DataLoader's steps are read once, in order: step {i} after step {self._pos - 1}")
        while self._pos < i:
            self._next()
            self._pos += 1
        x, y = self._next()
        self._pos += 1
        pair = (x.to(self.device, non_blocking=True), y.to(self.device, non_blocking=True))
        for fn in self.transforms:
            pair = fn(pair)
        return pair

    def __len__(self) -> int:
        return self.steps

    def __getitem__(self, i):
        if isinstance(i, slice):
            return _View(self, range(self.steps)[i])
        if not -self.steps <= i < self.steps:
            raise IndexError(i)
        return self.fetch(i % self.steps)

    def __iter__(self):
        return (self.fetch(i) for i in range(self.steps))

    def shapes(self, start: int, stop: int) -> list[tuple]:
        """(input shape, dtype, label shape, dtype) of each step in [start, stop), unread."""
        n, (xs, xd, ys, yd) = self.loader.batch_size, self.sample_shapes
        return [((n, *xs), xd, (n, *ys), yd)] * (stop - start)

    def order_sha256(self) -> str:
        """The data order of the steps read so far: the sample indices, in order."""
        used = self.sampler.seen[: self._pos * self.loader.batch_size]
        return hashlib.sha256(np.asarray(used, dtype=np.int64).tobytes()).hexdigest()


class _View(Sequence):
    """Steps `rng` of a LoaderBatches, read in order as the training loop reads them."""

    def __init__(self, parent: LoaderBatches, rng: range):
        self.parent, self.rng = parent, rng

    def __len__(self) -> int:
        return len(self.rng)

    def __getitem__(self, i):
        if isinstance(i, slice):
            return _View(self.parent, self.rng[i])
        return self.parent.fetch(self.rng[i])

    def __iter__(self):
        return (self.parent.fetch(i) for i in self.rng)

    def shapes(self, start: int, stop: int) -> list[tuple]:
        return self.parent.shapes(start, stop)


def loader_batches(staged: Sequence, mode: str, workers: int, data_seed: int, steps: int, device: str) -> LoaderBatches:
    """A DataLoader's batches over the samples of a workload's staged ones, at their batch size."""
    x, y = pool_of(staged)
    batch = len(staged[0][0])
    loader, sampler = make_loader(x, y, mode=mode, batch=batch, workers=workers, data_seed=data_seed, device=device)
    return LoaderBatches(loader, sampler, steps, device)


def map_batches(batches: Sequence, fn: Callable) -> Sequence:
    """`fn` on every (x, y) a step reads: at once for staged batches, per step for a loader."""
    if isinstance(batches, LoaderBatches):
        batches.transforms.append(fn)
        return batches
    return [fn(pair) for pair in batches]


def batch_shapes(batches: Sequence, start: int, stop: int) -> list[tuple]:
    """(input shape, dtype, label shape, dtype) of steps [start, stop), without reading a
    loader."""
    if hasattr(batches, "shapes"):
        return batches.shapes(start, stop)
    return [(tuple(x.shape), x.dtype, tuple(y.shape), y.dtype) for x, y in (batches[j] for j in range(start, stop))]


def order_sha256(batches: Sequence) -> str | None:
    """The data order a loader gave (None for staged batches, whose order is fixed)."""
    return batches.order_sha256() if isinstance(batches, LoaderBatches) else None
