"""Which machine a measurement ran on, one way for every report (``vaecodec bench``, the
benchmarks, tests that record numerics): results from two machines differ in CPU, cores,
threads and kernels, and a report that cannot tell them apart cannot be compared.

Stdlib only, and torch is described only when the caller has imported it: a benchmark's
parent process that measures its children's memory stays small.
"""

from __future__ import annotations

import os
import platform
import subprocess
import sys
from typing import Any, Iterable


def _cpuinfo(key: str) -> str | None:
    """The first value of ``key`` in /proc/cpuinfo (Linux), or None."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith(key):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return None


def cpu_flags() -> set[str] | None:
    """The CPU's feature flags as Linux lists them ("avx2", "avx512_vnni", ...), or None where
    /proc/cpuinfo does not say (another OS, or an architecture without a flags line)."""
    flags = _cpuinfo("flags")
    return set(flags.split()) if flags is not None else None


def cpu_model() -> str:
    """The CPU's name ("AMD EPYC 9454", "Intel(R) Xeon(R) ..."): /proc/cpuinfo on Linux, lscpu
    where there is no such file, else what ``platform`` knows."""
    name = _cpuinfo("model name")
    if name is not None:
        return name
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True, timeout=10).stdout
        for line in out.splitlines():
            if line.startswith("Model name:"):
                return line.split(":", 1)[1].strip()
    except (OSError, subprocess.SubprocessError):
        pass
    return platform.processor() or platform.machine() or "unknown"


def version(dist: str) -> str | None:
    """An installed distribution's version; vaecodec's own in a never-installed checkout."""
    from importlib import metadata

    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        pass
    if dist == "vaecodec":          # the package is imported: this module is part of it
        return getattr(sys.modules.get(__package__), "__version__", None)
    return None


def versions(dists: Iterable[str] = ("vaecodec", "torch", "compressai", "pillow", "numpy")
             ) -> dict[str, str | None]:
    return {d: version(d) for d in dists}


def info() -> dict[str, Any]:
    """The machine as a report records it. With torch imported, also its thread count and
    the CPU kernels ATen dispatches to (``AVX2``, ``AVX512``...), which decide float sums."""
    out: dict[str, Any] = {
        "cpu_model": cpu_model(), "cpu_count": os.cpu_count(),
        "platform": platform.platform(), "processor": platform.processor() or platform.machine(),
        "python": platform.python_version()}
    torch = sys.modules.get("torch")
    if torch is not None:
        out["torch_threads"] = torch.get_num_threads()
        out["cpu_capability"] = torch.backends.cpu.get_cpu_capability()
    return out


def source_revision() -> tuple[str | None, bool | None]:
    """The git commit of the package's checkout and whether the package has uncommitted
    changes (None, None outside a checkout): which code a measurement ran."""
    where = os.path.dirname(os.path.abspath(__file__))

    def git(*args: str) -> str | None:
        try:
            return subprocess.run(["git", *args], capture_output=True, text=True, check=True,
                                  cwd=where, timeout=30).stdout.strip()
        except (OSError, subprocess.SubprocessError):
            return None

    commit = git("rev-parse", "HEAD")
    status = git("status", "--porcelain", "--", ".")
    return commit, None if status is None else status != ""


def available_memory() -> int | None:
    """Bytes of memory the kernel says a new allocation can get without swapping
    (MemAvailable in /proc/meminfo), or None where there is no such file."""
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return None


def memory_shortfall(need: int) -> str | None:
    """Why ``need`` bytes will not fit ("needs about 43.0 GB and 20.1 GB is available"), or
    None when they fit or the machine does not say."""
    have = available_memory()
    if have is None or need <= have:
        return None
    return f"needs about {need / 1e9:.1f} GB and {have / 1e9:.1f} GB is available"
