"""The axes that change how the model and its training step compute: the memory layout
of its weights and batches, torch.compile of the model, mixed precision in the step."""

from __future__ import annotations

from detcost.axes.registry import Axis, Cost, StepWrapper, wrapper_of

MEMORY_FORMATS = ("contiguous", "channels_last")


def _channels_last_pair(pair):
    import torch

    x, y = pair
    return x.contiguous(memory_format=torch.channels_last), y


class MemoryFormat(Axis):
    """channels_last: the model's weights and every input batch."""

    def wrap_model(self, value, model, spec):
        import torch

        return model.to(memory_format=torch.channels_last) if value == "channels_last" else model

    def batches(self, value, batches, spec):
        from detcost.loader import map_batches

        return map_batches(batches, _channels_last_pair) if value == "channels_last" else batches

    def read_back(self, workload) -> str:
        import torch

        for p in workload.model.parameters():
            if p.dim() == 4:
                last = p.is_contiguous(memory_format=torch.channels_last) and not p.is_contiguous()
                return "channels_last" if last else "contiguous"
        return "contiguous"

    def id_part(self, value):
        return None if value == "contiguous" else value

    def snippet(self, values, cpu):
        if values != ["channels_last"]:
            return []
        return [
            "# channels_last: the model and every input batch",
            "# model = model.to(memory_format=torch.channels_last); "
            "x = x.contiguous(memory_format=torch.channels_last)",
        ]


MEMORY_FORMAT = MemoryFormat(
    name="memory_format",
    default="contiguous",
    values=MEMORY_FORMATS,
    help="comma list of contiguous, channels_last: each trial runs in each (default: contiguous)",
    affects_flops=True,
)

# torch.compile (default mode). Compiling happens on the first step, inside the warm-up,
# so its time is cold start, never step time. Under use_deterministic_algorithms Inductor
# turns deterministic too (torch._inductor.config.deterministic follows it; before torch
# 2.10 Inductor read the flag itself: detcost.compat) and skips autotuning, so
# determinism's price differs with compile; the read-back shows both.
COMPILE_MODES = ("off", "on")
# What compiling adds to a trial's cold start, for the dry run. On the CPU, measured on a
# 2-core CPU (torch 2.13, Inductor's C++ backend, quick sizes): 13 s for simple_cnn, 22 s
# for resnet18, a trial's process wall time compiled less uncompiled. On CUDA an
# assumption, not a measurement (no GPU was at hand): Inductor compiles the forward and
# backward graphs and its Triton kernels, tens of seconds for a small net on a cold cache.
COMPILE_CPU_S = 15.0
COMPILE_CUDA_S = 40.0


class Compile(Axis):
    """torch.compile of the model, after the build: the first warm-up step compiles."""

    def wrap_model(self, value, model, spec):
        import torch

        return torch.compile(model) if value == "on" else model

    def read_back(self, workload) -> str:
        from torch.nn.parallel import DistributedDataParallel

        model = workload.model
        if isinstance(model, DistributedDataParallel):  # --nproc wraps the compiled model (the axes' order)
            model = model.module
        if not hasattr(model, "_orig_mod"):  # torch.compile's OptimizedModule
            return "off"
        from detcost import compat

        return f"on (inductor deterministic={compat.inductor_deterministic()})"

    def id_part(self, value):
        return None if value == "off" else "compiled"

    def estimate(self, value, spec) -> Cost:
        if value != "on":
            return Cost()
        if spec.device.startswith("cuda"):
            basis = f"--compile on: {COMPILE_CUDA_S:g} s compiling a trial on CUDA (an assumption: no GPU measured it)"
            return Cost(cold_start_s=COMPILE_CUDA_S, basis=(basis,))
        basis = f"--compile on: {COMPILE_CPU_S:g} s compiling a trial on the CPU (13-22 s measured on 2 cores)"
        return Cost(cold_start_s=COMPILE_CPU_S, basis=(basis,))

    def snippet(self, values, cpu):
        return ["model = torch.compile(model)  # compiled, as priced"] if values == ["on"] else []


COMPILE = Compile(
    name="compile",
    default="off",
    values=COMPILE_MODES,
    help="comma list of off, on: torch.compile the model (default mode); compile time goes into the "
    "cold start (default: off)",
)

# Mixed precision: autocast on the forward pass; float16 adds a GradScaler, as training
# with it needs. The read-back is the dtype a conv actually produced under the trial's
# autocast, so a dtype the device does not support shows as what ran instead.
AMP_MODES = ("off", "bf16", "fp16")
_AMP_DTYPE = {"bf16": "bfloat16", "fp16": "float16"}


class Autocast(StepWrapper):
    """The forward pass under autocast at `dtype`; with a GradScaler, the update goes
    through it (it owns backward and the optimizer's step: the inner update is not run)."""

    def __init__(self, inner, dtype, scaler=None):
        super().__init__(inner)
        self.dtype, self.scaler = dtype, scaler

    def forward(self, wl, x, y):
        import torch

        with torch.autocast(x.device.type, dtype=self.dtype):
            return self.inner.forward(wl, x, y)

    def update(self, wl, loss) -> None:
        if self.scaler is None:
            self.inner.update(wl, loss)
            return
        self.scaler.scale(loss).backward()
        self.scaler.step(wl.optimizer)
        self.scaler.update()


class Amp(Axis):
    """Mixed precision: the training step's forward pass under autocast (fp16 with a GradScaler)."""

    def wrap_step(self, value, step, spec):
        import torch

        if value == "off":
            return step
        scaler = torch.amp.GradScaler(torch.device(spec.device).type) if value == "fp16" else None
        return Autocast(step, getattr(torch, _AMP_DTYPE[value]), scaler)

    def read_back(self, workload) -> str:
        amp = wrapper_of(workload.step, Autocast)
        if amp is None:
            return "off"
        import torch

        x = workload.eval_batch[0][:1]
        conv = torch.nn.Conv2d(x.shape[1], 1, 1).to(x.device)
        with torch.no_grad(), torch.autocast(x.device.type, dtype=amp.dtype):
            produced = conv(x).dtype
        return str(produced).removeprefix("torch.") + (" + GradScaler" if amp.scaler is not None else "")

    def id_part(self, value):
        return None if value == "off" else f"amp-{value}"

    def snippet(self, values, cpu):
        if values not in (["bf16"], ["fp16"]):
            return []
        dtype = _AMP_DTYPE[values[0]]
        lines = [f"# mixed precision, as priced: with torch.autocast(device.type, dtype=torch.{dtype}): forward"]
        if values == ["fp16"]:
            lines.append(
                "# scaler = torch.amp.GradScaler(device.type); scaler.scale(loss).backward(); scaler.step(opt)"
            )
        return lines

    def check(self, value, device):
        """On the CPU, a dtype torch's CPU autocast refuses. On CUDA nothing is asked here:
        asking would initialise CUDA in the sweep's parent (a GPU without bf16 shows in the
        trials' read-back instead)."""
        if value == "off" or not device.startswith("cpu"):
            return None
        import warnings

        import torch

        with warnings.catch_warnings():
            warnings.simplefilter("error")  # torch warns, and disables autocast, for a dtype it cannot use
            try:
                with torch.autocast(torch.device(device).type, dtype=getattr(torch, _AMP_DTYPE[value])):
                    pass
            except Exception as exc:  # noqa: BLE001 - any refusal is the user's one-line answer
                return f"--amp {value} is not supported on {device}: {str(exc).splitlines()[0]}"
        return None


AMP = Amp(
    name="amp",
    default="off",
    values=AMP_MODES,
    help="comma list of off, bf16, fp16: autocast the forward pass (fp16 with a GradScaler); each trial "
    "runs at each (default: off)",
)
