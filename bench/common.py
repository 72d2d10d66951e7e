"""Helpers shared by the benchmark scripts: peak memory, child processes, the machine, tables.

Peak memory is a process's whole life (``ru_maxrss``), so a benchmark that
compares two code paths runs each in its own child process
(:func:`run_child`) and the peaks never mix.
"""

import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def peak_rss_mb():
    """This process's peak resident set size so far, in MiB (Linux reports ru_maxrss in KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def current_rss_mb():
    """This process's resident set size now, in MiB (Linux /proc; falls back to the peak)."""
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20
    except (OSError, ValueError, IndexError):
        return peak_rss_mb()


def status_mb(field):
    """A memory figure of this process from /proc/self/status (VmRSS, VmHWM), in MB."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1]) / 1024
    raise OSError(f"{field} not in /proc/self/status")


def reset_peak():
    """Reset VmHWM to the current RSS (Linux ≥ 4.0), so the peak counts the prediction only."""
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")


def emit_result(result):
    """Child side of :func:`run_child`: print ``result`` (a JSON-able dict) as the last stdout line."""
    print("RESULT " + json.dumps(result), flush=True)


def run_child(module, argv, timeout=None):
    """Run ``python -m module *argv`` from the repository root; return the dict it passed to :func:`emit_result`.

    The child's stderr passes through (progress, warnings); a failing child raises
    RuntimeError with the tail of its output.
    """
    proc = subprocess.run([sys.executable, "-m", module, *argv], cwd=ROOT, stdout=subprocess.PIPE,
                          text=True, timeout=timeout)
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")]
    if proc.returncode != 0 or not lines:
        raise RuntimeError(f"child `{module} {' '.join(argv)}` failed (exit {proc.returncode}):\n"
                           + proc.stdout[-2000:])
    return json.loads(lines[-1][len("RESULT "):])


def cpu_model():
    """The CPU's model name as lscpu/`/proc/cpuinfo` give it ('unknown' elsewhere)."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def cpu_features():
    """Which of the vector extensions that decide inference speed the CPU has, as one line."""
    from core.ops.capabilities import cpu_flags

    flags = cpu_flags()
    names = (("avx2", "AVX2"), ("avx512f", "AVX-512"), ("avx512_bf16", "AVX-512 BF16"), ("amx_bf16", "AMX-BF16"))
    return ", ".join(f"{label} {'yes' if flag in flags else 'no'}" for flag, label in names)


def median_range(values):
    """(median, min, max) of a list of numbers."""
    return statistics.median(values), min(values), max(values)


def machine_summary(threads):
    """One line naming the machine and the software the numbers were measured with."""
    import torch

    return (f"{cpu_model()}, {os.cpu_count()} logical CPUs, {threads} torch threads; "
            f"Python {platform.python_version()}, torch {torch.__version__}")


def load_average():
    """1-minute load average (other processes competing for the cores), or None."""
    try:
        return os.getloadavg()[0]
    except OSError:
        return None


def matmul_gflops(n=4096, repeat=3, threads=None):
    """Best-of-``repeat`` GFLOP/s of an n×n float32 matrix product on the CPU (2·n³ FLOPs)."""
    import torch

    if threads:
        torch.set_num_threads(threads)
    gen = torch.Generator().manual_seed(0)
    a = torch.randn(n, n, generator=gen)
    b = torch.randn(n, n, generator=gen)
    a @ b  # warm-up: thread pool, MKL dispatch
    best = float("inf")
    for _ in range(repeat):
        start = time.perf_counter()
        a @ b
        best = min(best, time.perf_counter() - start)
    return 2 * n ** 3 / best / 1e9


def format_table(headers, rows):
    """A plain-text table: ``headers`` a list of str, ``rows`` lists of str/number (right-aligned)."""
    cells = [[str(h) for h in headers]] + [[c if isinstance(c, str) else f"{c}" for c in row] for row in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(headers))]
    lines = []
    for k, row in enumerate(cells):
        lines.append("  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(row, widths))))
        if k == 0:
            lines.append("  ".join("-" * w for w in widths))
    return "\n".join(lines)
