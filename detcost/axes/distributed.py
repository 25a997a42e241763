"""The world size of a DistributedDataParallel job: the `nproc` axis.

Unset (the default), a trial is the ordinary one-process trial. At N (1 or more) the trial
is one DDP job of N ranks, started by torch's own elastic launcher (what `torchrun` runs)
from inside the trial's process (`detcost.ddp`): backend gloo on the CPU, nccl on CUDA with
one process per GPU. Each rank wraps its model in `DistributedDataParallel` and reads its
shard of the staged batches through a seeded `DistributedSampler` (the same seed on every
rank, `set_epoch` each epoch); rank 0 measures, every rank hashes its final parameters.
"""

from __future__ import annotations

from detcost.axes.registry import Axis, Cost, int_at_least

# What the launcher adds to a trial: its rendezvous, forking the ranks, their process
# group, and the ranks' exit. Measured on a 2-core CPU (torch 2.13, simple_cnn at quick
# sizes, gloo): a one-process trial's process_wall_s 0.37 s, at --nproc 1 0.82 s, at 2 0.87 s.
DDP_START_S = 0.45


def _world_size(text: str) -> int:
    return int_at_least(text, 1)


class Nproc(Axis):
    """The DDP world size (None: no launcher, one process)."""

    def wrap_model(self, value, model, spec):
        if value is None:
            return model
        import torch
        from torch.nn.parallel import DistributedDataParallel

        ids = [torch.device(spec.device).index] if spec.device.startswith("cuda") else None
        return DistributedDataParallel(model, device_ids=ids, bucket_cap_mb=spec.axes.get("bucket_mb"))

    def batches(self, value, batches, spec):
        if value is None:
            return batches
        if getattr(batches, "read_once", False):
            raise ValueError("--nproc shards the staged batches; a DataLoader's (--data loader) is not sharded yet")
        return rank_shard(batches, spec.data_seed, spec.total_steps)

    def read_back(self, workload):
        import torch.distributed as dist

        return dist.get_world_size() if dist.is_available() and dist.is_initialized() else None

    def id_part(self, value):
        return None if value is None else f"np{value}"

    def estimate(self, value, spec) -> Cost:
        if value is None:
            return Cost()
        basis = f"--nproc: {DDP_START_S:g} s a trial for torch's launcher and its ranks' start (on a 2-core CPU)"
        return Cost(cold_start_s=DDP_START_S, basis=(basis,))

    def describe(self, value) -> str:
        return "one process" if value is None else f"DDP x{value}"

    def check(self, value, device):
        if value is None or not device.startswith("cuda"):
            return None
        import torch

        # NVML's count, as detcost.env counts: the sweep's parent never initialises CUDA
        gpus = getattr(torch.cuda, "_device_count_nvml", lambda: -1)()
        gpus = gpus if gpus >= 0 else torch.cuda.device_count()
        first = torch.device(device).index or 0  # the ranks take cuda:first to cuda:first + value - 1
        if first + value > gpus:
            ranks = "" if first == 0 else f" from {device} (cuda:{first} to cuda:{first + value - 1})"
            return f"--nproc {value}: one process per GPU{ranks}, and this machine has {gpus}"
        return None

    def processes(self, value) -> int:
        return value or 1


def rank_shard(batches, seed: int, steps: int) -> list:
    """This rank's batches for `steps` steps: the staged batches as a dataset, sharded by a
    `DistributedSampler` seeded with the trial's data seed (the same on every rank), with
    `set_epoch(epoch)` before each pass, as DDP's training scripts do; passes repeat until
    `steps` are drawn."""
    from torch.utils.data import DistributedSampler

    sampler = DistributedSampler(range(len(batches)), shuffle=True, seed=seed)
    out, epoch = [], 0
    while len(out) < steps:
        sampler.set_epoch(epoch)
        out += [batches[i] for i in sampler]
        epoch += 1
    return out[:steps]


def _ddp_only(others) -> bool:
    return others.get("nproc") is not None


# NCCL's all-reduce algorithm, pinned through NCCL_ALGO (Megatron-LM pins Ring for
# bit-exact runs), or NCCL's own choice by message size and topology ("default").
NCCL_ALGOS = ("default", "Ring", "Tree")


class NcclAlgo(Axis):
    """NCCL_ALGO in a DDP rank's environment; it matters only with --nproc, on CUDA."""

    def apply(self, value, spec):
        import os

        if value != "default":
            # Not restored: NCCL reads it once per process, at its first communicator, and
            # a DDP rank's process ends with its trial.
            os.environ["NCCL_ALGO"] = value
        return None

    def read_back(self, workload):
        import os

        return os.environ.get("NCCL_ALGO")

    def id_part(self, value):
        return None if value == "default" else f"nccl-{value}"

    def check(self, value, device):
        if value == "default" or device.startswith("cuda"):
            return None
        return f"--nccl-algo {value}: NCCL's algorithms are CUDA's; on the CPU DDP reduces with gloo"

    def applies(self, others):
        return _ddp_only(others)

    def snippet(self, values, cpu):
        if cpu or len(values) != 1 or values[0] == "default":
            return []
        return [f"# DDP: export NCCL_ALGO={values[0]} before the first collective (torchrun passes it on)"]


class BucketMb(Axis):
    """DDP's gradient bucket size (`bucket_cap_mb`): which gradients one all-reduce carries,
    so the messages NCCL picks its algorithm for. It matters only with --nproc."""

    def read_back(self, workload):
        config = getattr(workload.model, "_bucket_config", None)  # DistributedDataParallel's
        return config.bucket_bytes_cap / 2**20 if config is not None else None

    def id_part(self, value):
        return None if value is None else f"bucket{value:g}"

    def describe(self, value) -> str:
        return "DDP's buckets (25 MiB)" if value is None else f"DDP buckets of {value:g} MiB"

    def applies(self, others):
        return _ddp_only(others)


def _positive_mb(text: str) -> float:
    value = float(text)
    if not value > 0:
        raise ValueError(f"must be more than 0 MiB, got {text}")
    return value


NCCL_ALGO = NcclAlgo(
    name="nccl_algo",
    default="default",
    values=NCCL_ALGOS,
    help="comma list of default (NCCL's choice), Ring, Tree: NCCL_ALGO in each rank of a --nproc trial "
    "(CUDA only); default: default",
)
BUCKET_MB = BucketMb(
    name="bucket_mb",
    default=None,
    help="DDP gradient bucket sizes in MiB (bucket_cap_mb), comma list, for --nproc trials; default: DDP's 25",
    parse=_positive_mb,
)

NPROC = Nproc(
    name="nproc",
    default=None,
    help="DDP world sizes, comma list: each trial runs as one DistributedDataParallel job of that many "
    "processes, started by torch's elastic launcher (gloo on the CPU, nccl on CUDA, one process per GPU); "
    "default: one process, no launcher",
    parse=_world_size,
    compare_across=True,
)
