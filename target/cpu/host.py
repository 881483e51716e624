"""What CPU this is, in words a benchmark can print: its model name, LLVM's name for it, and its vector ISA."""

from __future__ import annotations

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


def describe_host() -> str:
    """e.g. 'Intel(R) Xeon(R) Processor (LLVM sapphirerapids; avx512f avx512_vnni avx2 fma)'."""
    info = _cpuinfo()
    flags = set((info.get("flags") or info.get("Features") or "").split())
    isa = " ".join(f for f in ISA_FLAGS if f in flags) or "no vector ISA flags found"
    name = info.get("model name") or info.get("Hardware") or "unknown CPU"
    return f"{name} (LLVM {codegen.llvm_get_system_cpu()}; {isa})"
