"""Where a step's batch comes from: the `data` axis (staged batches or a shuffling
DataLoader, see detcost.loader) and the `workers` that read a loader's samples."""

from __future__ import annotations

from detcost.axes.registry import Axis, Cost, int_at_least

# Where a step's batch comes from: batches staged on the device before timing (the
# default: the price of the kernels alone), or a real DataLoader that shuffles, with
# `workers` worker processes, seeded as PyTorch's notes say or not seeded at all (the
# common mistake). A loader's batches are read inside the timed step. See detcost.loader.
DATA_MODES = ("staged", "loader", "loader-unseeded")
# What reading a loader's batch adds to a step, for the dry run. Measured on a 2-core CPU
# (torch 2.13, simple_cnn and resnet18 at their cpu and quick sizes, LoaderBatches): read in
# the trial's own process, 6-7 us a sample (the flip, the collate); with worker processes
# the samples are read beside the step and a batch costs 0.6-0.9 ms to hand over; a
# worker's start, 0.01-0.02 s. The copy to a GPU (pinned memory) is not in these figures.
LOADER_SAMPLE_S = 7e-6
LOADER_WORKER_BATCH_S = 0.9e-3
LOADER_WORKER_START_S = 0.02


class Data(Axis):
    """A shuffling DataLoader in place of the staged batches (see detcost.loader)."""

    def batches(self, value, batches, spec):
        if value == "staged":
            return batches
        from detcost.loader import loader_batches

        workers = spec.axes.get("workers", 0)
        return loader_batches(batches, value, workers, spec.data_seed, spec.total_steps, spec.device)

    def read_back(self, workload) -> str:
        loader = getattr(workload.batches, "loader", None)
        if loader is None:
            return "staged"
        seeded = "seeded" if loader.generator is not None else "unseeded"
        return f"DataLoader ({seeded}, {loader.num_workers} workers)"

    def id_part(self, value):
        return None if value == "staged" else value

    def estimate(self, value, spec) -> Cost:
        if value == "staged":
            return Cost()
        workers = spec.axes.get("workers", 0)
        step = LOADER_WORKER_BATCH_S if workers else spec.batch_size * LOADER_SAMPLE_S
        basis = (
            f"--data {value}: {LOADER_SAMPLE_S * 1e6:g} us a sample read in the trial's process, "
            f"{LOADER_WORKER_BATCH_S * 1e3:g} ms a batch from workers, {LOADER_WORKER_START_S:g} s a worker's "
            "start (measured on a 2-core CPU; the copy to a GPU is not in them)"
        )
        return Cost(cold_start_s=workers * LOADER_WORKER_START_S, step_s=step, basis=(basis,))

    def snippet(self, values, cpu):
        if values != ["loader"]:
            return []
        return [
            "# a seeded DataLoader, as priced: g = torch.Generator().manual_seed(seed)",
            "# def seed_worker(_): s = torch.initial_seed() % 2**32; numpy.random.seed(s); random.seed(s)",
            "# DataLoader(dataset, shuffle=True, generator=g, worker_init_fn=seed_worker, num_workers=...)",
        ]

    def check_workload(self, value, workload):
        if value == "staged" or not workload.input_size_varies:
            return None
        return (
            f"--data {value}: {workload.name} changes its input size every step, and a DataLoader batches one "
            "size; leave it out of --workloads (the default workloads include it)"
        )

    def check_axes(self, value, others):
        """A DDP trial (--nproc) shards the staged batches over its ranks; a DataLoader's
        batches are not sharded yet, and each rank would fail at its first batch."""
        if value == "staged" or others.get("nproc") is None:
            return None
        return (
            f"--data {value} with --nproc {others['nproc']}: a DDP trial shards the staged batches over its "
            "ranks, and a DataLoader's are not sharded yet; use --data staged with --nproc"
        )


DATA = Data(
    name="data",
    default="staged",
    values=DATA_MODES,
    help="comma list of staged (batches on the device before timing; default), loader (a shuffling "
    "DataLoader, seeded: generator + worker_init_fn), loader-unseeded (the same, seeded by nobody)",
)


class Workers(Axis):
    """DataLoader worker processes: the data axis reads them; they matter only with a loader."""

    def id_part(self, value):
        return f"w{value}" if value else None

    def applies(self, others):
        return others.get("data", "staged") != "staged"


WORKERS = Workers(
    name="workers",
    default=0,
    help="DataLoader worker processes for --data loader modes, comma list (default: 0, the trial's own "
    "process reads the data)",
    parse=lambda text: int_at_least(text, 0),
)
