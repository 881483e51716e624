"""What CPU this is, in words a benchmark can print: its model name, LLVM's name for it, and its vector ISA."""

from __future__ import annotations

import os
from pathlib import Path

from tvm.target import codegen

# The ISA extensions our CPU schedules care about, widest first (Linux /proc/cpuinfo flag names).
ISA_FLAGS = ("avx512f", "avx512_vnni", "avx512_bf16", "amx_tile", "avx2", "fma", "avx_vnni", "sse4_2", "neon", "asimd")


def _cpuinfo() -> dict[str, str]:
    """The first processor's fields of /proc/cpuinfo (empty where there is none)."""
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return {}
    fields: dict[str, str] = {}
    for line in text.split("\n\n", 1)[0].splitlines():
        key, sep, value = line.partition(":")
        if sep:
            fields[key.strip()] = value.strip()
    return fields


def physical_cores() -> int:
    """Cores (not hyper-threads) among the CPUs this process may run on."""
    cpus = os.sched_getaffinity(0)
    siblings = set()
    for cpu in cpus:
        try:
            siblings.add(Path(f"/sys/devices/system/cpu/cpu{cpu}/topology/thread_siblings_list").read_text().strip())
        except OSError:
            return len(cpus)
    return max(1, len(siblings))


def size_thread_pool() -> None:
    """Unless the user set TVM_NUM_THREADS, size TVM's CPU thread pool to this process's physical cores.

    TVM sizes the pool when it first runs parallel code, from TVM_NUM_THREADS, else from half of
    `hardware_concurrency` on x86 (it assumes two hyper-threads a core): on a 2-vCPU VM without them
    that is one thread, and every kernel runs at half speed. Call before TVM runs anything parallel.
    """
    os.environ.setdefault("TVM_NUM_THREADS", str(physical_cores()))


def describe_host() -> str:
    """e.g. 'Intel(R) Xeon(R) Processor (LLVM sapphirerapids; avx512f avx512_vnni avx2 fma)'."""
    info = _cpuinfo()
    flags = set((info.get("flags") or info.get("Features") or "").split())
    isa = " ".join(f for f in ISA_FLAGS if f in flags) or "no vector ISA flags found"
    name = info.get("model name") or info.get("Hardware") or "unknown CPU"
    return f"{name} (LLVM {codegen.llvm_get_system_cpu()}; {isa})"
