"""Latency and CPU time of callables measured in turns, and the machine they ran on.

Every round calls each callable once, in a new random order (seeded), so a burst of load from
another process hits all of them alike, and no callable always follows the same other one (a
call is slower right after another runtime's: its idle threads asleep, its caches cold).
A call's wall time is the time it took; its CPU time is the CPU time of the whole process (every
thread) from its start until the next call starts, after `settle_seconds` of sleep: runtimes keep
their worker threads spinning for a while after they return (OpenVINO about 1 ms), and that CPU
time belongs to the call that woke them, not to the next one.
"""

import os
import platform
import time

import numpy as np

# The ISA extensions that decide int8 speed, as /proc/cpuinfo names them.
ISA_FLAGS = (
    "avx2",
    "avx512f",
    "avx512_vnni",
    "avx512_bf16",
    "avx_vnni",
    "amx_tile",
    "amx_int8",
    "amx_bf16",
)


def interleaved_times(
    calls: dict, rounds: int, warmup: int = 10, seed: int = 0, settle_seconds=0.0, progress=None
) -> dict:
    """{name: {"wall": seconds [rounds], "cpu": process CPU seconds [rounds]}} of zero-argument
    callables, called in turns (see the module doc). `progress(n)` is told of each round."""
    for call in calls.values():
        for _ in range(warmup):
            call()
    names = list(calls)
    wall = {name: [] for name in names}
    cpu = {name: [] for name in names}
    rng = np.random.default_rng(seed)
    for _ in range(rounds):
        for position in rng.permutation(len(names)):
            name = names[position]
            cpu_start, start = time.process_time(), time.perf_counter()
            calls[name]()
            wall[name].append(time.perf_counter() - start)
            if settle_seconds:
                time.sleep(settle_seconds)
            cpu[name].append(time.process_time() - cpu_start)
        if progress:
            progress(1)
    return {name: {"wall": np.array(wall[name]), "cpu": np.array(cpu[name])} for name in names}


def time_summary(times: dict) -> dict:
    """Median and p90 wall milliseconds and median CPU milliseconds of one callable's times."""
    return {
        "median_ms": round(1e3 * float(np.median(times["wall"])), 4),
        "p90_ms": round(1e3 * float(np.percentile(times["wall"], 90)), 4),
        "cpu_ms": round(1e3 * float(np.median(times["cpu"])), 4),
    }


def cpu_info(path: str = "/proc/cpuinfo") -> dict:
    """{"model": CPU model name, "isa": the ISA_FLAGS it has}; "unknown" where not Linux."""
    try:
        with open(path) as f:
            lines = f.read().splitlines()
    except OSError:
        return {"model": platform.processor() or platform.machine() or "unknown", "isa": []}
    model = next((x.split(":", 1)[1].strip() for x in lines if x.startswith("model name")), "?")
    flags = next((x.split(":", 1)[1].split() for x in lines if x.startswith("flags")), [])
    return {"model": model, "isa": [f for f in ISA_FLAGS if f in flags]}


def cpu_description() -> str:
    """'AMD EPYC (avx2, avx512f, avx512_vnni, ...)': the CPU and what decides its int8 speed."""
    info = cpu_info()
    return f"{info['model']} ({', '.join(info['isa']) or 'no AVX2'})"


def machine() -> dict:
    """The CPU, its ISA extensions, its cores (and those this process may use), the OS."""
    return {
        **cpu_info(),
        "cores": os.cpu_count(),
        "usable_cores": len(os.sched_getaffinity(0)),
        "platform": platform.platform(),
        "python": platform.python_version(),
    }
