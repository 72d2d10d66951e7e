"""What this machine can run: CPU feature flags and the ``--precision`` checks."""

import functools
import warnings

import torch

PRECISIONS = ("fp32", "bf16", "fp16")
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


def check_precision(precision, device):
    """Raise ValueError (a one-line message) when ``precision`` cannot run on ``device``; warn once
    when bfloat16 will be slow on this CPU."""
    if precision not in PRECISIONS:
        raise ValueError(f"unknown precision {precision!r}; choose one of {', '.join(PRECISIONS)}")
    device = torch.device(device)
    if precision == "fp16" and device.type == "cpu":
        raise ValueError("--precision fp16 needs a CUDA GPU (CPUs compute float16 slowly): "
                         "use --precision bf16 on the CPU")
    if precision == "bf16" and device.type == "cpu":
        warn_if_slow_bf16()


@functools.lru_cache(maxsize=1)
def cpu_flags():
    """The CPU feature flags of /proc/cpuinfo (empty where it cannot be read); read once per process,
    since :func:`check_precision` asks on every prediction."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("flags"):
                    return frozenset(line.split(":", 1)[1].split())
    except OSError:
        pass
    return frozenset()


def native_bf16_cpu(flags=None):
    """Whether the CPU computes bfloat16 natively (AVX-512 BF16 or AMX)."""
    flags = cpu_flags() if flags is None else flags
    return bool({"avx512_bf16", "amx_bf16"} & flags)


_warned_slow = False


def warn_if_slow_bf16(flags=None):
    """Warn (once per process) when bfloat16 has no native support on this CPU. Returns whether it warned."""
    global _warned_slow
    if _warned_slow or native_bf16_cpu(flags):
        return False
    _warned_slow = True
    warnings.warn("this CPU has no native bfloat16 (neither AVX-512 BF16 nor AMX in /proc/cpuinfo): "
                  "--precision bf16 is emulated and likely slower than fp32", stacklevel=3)
    return True
