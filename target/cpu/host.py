"""What CPU this is, in words a benchmark can print: its model name, LLVM's name for it, its vector ISA,
and its theoretical fp32 peak (what a kernel's GFLOP/s is a fraction of); the TVM target for it or for
another CPU, and which of a target's ISA extensions this CPU lacks."""

from __future__ import annotations

import dataclasses
import functools
import os
from collections.abc import Iterable
from pathlib import Path

import tvm
from tvm.target import codegen

from ...errors import EdgeBertError

# The ISA extensions our CPU schedules care about, widest first (Linux /proc/cpuinfo flag names).
ISA_FLAGS = ("avx512f", "avx512_vnni", "avx512_bf16", "amx_tile", "avx2", "fma", "avx_vnni", "sse4_2", "neon", "asimd")


# LLVM's names of the x86 ISA extensions compiled code may use, with /proc/cpuinfo's names for them:
# what an artifact needs of the CPU it runs on (an instruction the CPU lacks kills the process, SIGILL).
X86_ISA_FLAGS = {
    "sse4.2": "sse4_2", "popcnt": "popcnt", "avx": "avx", "avx2": "avx2", "fma": "fma", "f16c": "f16c",
    "bmi": "bmi1", "bmi2": "bmi2", "lzcnt": "abm", "movbe": "movbe", "avxvnni": "avx_vnni",
    "avx512f": "avx512f", "avx512bw": "avx512bw", "avx512dq": "avx512dq", "avx512vl": "avx512vl",
    "avx512cd": "avx512cd", "avx512vnni": "avx512_vnni", "avx512bf16": "avx512_bf16", "avx512fp16": "avx512_fp16",
    "avx512vbmi": "avx512vbmi", "avx512vbmi2": "avx512_vbmi2", "avx512ifma": "avx512ifma",
    "avx512bitalg": "avx512_bitalg", "avx512vpopcntdq": "avx512_vpopcntdq",
    "amx-tile": "amx_tile", "amx-int8": "amx_int8", "amx-bf16": "amx_bf16",
}


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


def host_flags() -> set[str]:
    """This CPU's ISA flags as /proc/cpuinfo names them (empty where there is no /proc/cpuinfo)."""
    info = _cpuinfo()
    return set((info.get("flags") or info.get("Features") or "").split())


def host_target(num_cores: int | None = None, mcpu: str | None = None) -> tvm.target.Target:
    """The CPU this process runs on, or the one LLVM calls `mcpu` (cross-compiling), with its vector
    features and `num_cores` (default: the cores this process may run on)."""
    cores = num_cores or len(os.sched_getaffinity(0))
    return tvm.target.Target({"kind": "llvm", "mcpu": mcpu or codegen.llvm_get_system_cpu(), "num-cores": cores})


def check_mcpu(mcpu: str) -> None:
    """Refuse a CPU name LLVM does not know for this machine's architecture."""
    triple = codegen.llvm_get_system_triple()
    if not codegen.llvm_is_valid_cpu(mcpu, triple):
        raise EdgeBertError(f"--mcpu {mcpu!r} is not a CPU LLVM knows for {triple.split('-')[0]} (for example "
                            f"znver3, skylake-avx512, x86-64-v3; this machine's is {codegen.llvm_get_system_cpu()})")


def cpu_of(target: tvm.target.Target) -> tvm.target.Target | None:
    """The llvm target that runs on the CPU: `target` itself, or a GPU target's host."""
    return target if target.kind.name == "llvm" else target.host


def isa_flags(target: tvm.target.Target) -> list[str]:
    """The x86 ISA extensions code compiled for `target` (or its host) may use, by /proc/cpuinfo's names
    (none on other architectures: their artifacts are not checked)."""
    features = codegen.llvm_get_cpu_features(cpu_of(target))
    return sorted(flag for name, flag in X86_ISA_FLAGS.items() if name in features)


def missing_isa(flags: Iterable[str]) -> list[str]:
    """Those of `flags` this CPU lacks (none where it does not say what it has)."""
    have = host_flags()
    return [flag for flag in flags if flag not in have] if have else []


def check_runs_here(target: tvm.target.Target, what: str) -> None:
    """Refuse to run code compiled for `target` on this CPU if it lacks an ISA extension the code may use."""
    missing = missing_isa(isa_flags(target))
    if missing:
        raise EdgeBertError(f"{what} runs code for --mcpu {cpu_of(target).mcpu} on this CPU, which lacks "
                            f"{' '.join(missing)}: use --mcpu {codegen.llvm_get_system_cpu()} (this CPU) or one "
                            "whose extensions it has")


# The L2 a schedule assumes when it cannot read the target's: the smallest per-core L2 of the
# x86-64 server and desktop cores we meet (Zen 2/3: 512 KB; Zen 4/5 1 MB; recent Intel 1.25-2 MB).
DEFAULT_L2_BYTES = 512 * 1024


@functools.cache
def host_l2_bytes() -> int | None:
    """This CPU's per-core L2 in bytes, from sysfs (None where the kernel does not say); read once
    per process, not once per matmul kernel scheduled."""
    for index in sorted(Path("/sys/devices/system/cpu/cpu0/cache").glob("index*")):
        try:
            if (index / "level").read_text().strip() != "2" or (index / "type").read_text().strip() == "Instruction":
                continue
            text = (index / "size").read_text().strip().upper()
        except OSError:
            continue
        scale = {"K": 1024, "M": 1024 * 1024}.get(text[-1:], 1)
        digits = text.rstrip("KMB")
        return int(digits) * scale if digits.isdigit() else None
    return None


def l2_bytes(mcpu: str) -> tuple[int, str]:
    """The per-core L2 to block for on `mcpu`, and where the number came from: this machine's when
    compiling for it, else DEFAULT_L2_BYTES (a block sized to a larger L2 thrashes a smaller one)."""
    if mcpu != codegen.llvm_get_system_cpu():
        return DEFAULT_L2_BYTES, "default (not this machine's CPU)"
    found = host_l2_bytes()
    return (found, "this machine's L2 (sysfs)") if found else (DEFAULT_L2_BYTES, "default (sysfs gives no L2 size)")


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
    flags = host_flags()
    isa = " ".join(f for f in ISA_FLAGS if f in flags) or "no vector ISA flags found"
    name = info.get("model name") or info.get("Hardware") or "unknown CPU"
    return f"{name} (LLVM {codegen.llvm_get_system_cpu()}; {isa})"


@dataclasses.dataclass(frozen=True)
class Fp32Peak:
    """cores x clock x FMA pipes x fp32 lanes per pipe x 2 (an FMA is two FLOPs)."""

    cores: int
    ghz: float
    fma_pipes: int
    lanes: int

    @property
    def gflops(self) -> float:
        return self.cores * self.ghz * self.fma_pipes * self.lanes * 2

    def __str__(self) -> str:
        return (f"fp32 peak {self.gflops:.0f} GFLOP/s ({self.cores} cores x {self.ghz:.2f} GHz x {self.fma_pipes} "
                f"FMA pipes x {self.lanes} lanes x 2)")


def fp32_peak(cores: int, ghz: float, flags: set[str], mcpu: str) -> Fp32Peak:
    """The peak from what the CPU reports. Assumes two FMA pipes per core, as on every x86 core since
    Haswell and Zen (some Xeon Silver/Bronze parts have one 512-bit unit: their real peak is half);
    Zen 4 runs AVX-512 on 256-bit pipes, so its lanes per pipe are 8."""
    if "avx512f" in flags:
        lanes = 8 if mcpu == "znver4" else 16
    elif "avx2" in flags or "avx" in flags:
        lanes = 8
    else:
        lanes = 4  # SSE, NEON
    return Fp32Peak(cores, ghz, 2 if "fma" in flags or "asimd" in flags else 1, lanes)


def _clock_ghz(info: dict[str, str]) -> float:
    """The highest clock the kernel reports (cpufreq), else /proc/cpuinfo's (a VM's nominal clock)."""
    try:
        return int(Path("/sys/devices/system/cpu/cpu0/cpufreq/cpuinfo_max_freq").read_text()) / 1e6
    except (OSError, ValueError):
        return float(info.get("cpu MHz", 0.0)) / 1e3


def host_fp32_peak(threads: int | None = None) -> Fp32Peak:
    """This CPU's peak on `threads` cores (default: its physical cores)."""
    info, flags = _cpuinfo(), host_flags()
    return fp32_peak(threads or physical_cores(), _clock_ghz(info), flags, codegen.llvm_get_system_cpu())
