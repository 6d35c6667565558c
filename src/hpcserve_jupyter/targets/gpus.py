"""Which GPUs a machine has and which are free, for pinning through CUDA_VISIBLE_DEVICES."""

from __future__ import annotations

import shutil
import subprocess
from collections.abc import Iterable, Mapping, Sequence

from ..errors import LaunchError


def discover() -> list[str]:
    """GPU indices reported by nvidia-smi; empty when there is no NVIDIA driver."""
    exe = shutil.which("nvidia-smi")
    if not exe:
        return []
    try:
        out = subprocess.run([exe, "--query-gpu=index", "--format=csv,noheader"],
                             capture_output=True, text=True, timeout=10, check=True).stdout
    except (OSError, subprocess.SubprocessError):
        return []
    return [line.strip() for line in out.splitlines() if line.strip()]


class GpuAllocator:
    """Hands out whole GPUs, optionally from a named class (`small: [0]`, `large: [1, 2]`)."""

    def __init__(self, inventory: Sequence[str], classes: Mapping[str, Sequence[str]] | None = None,
                 target: str = "local") -> None:
        self.inventory = [str(g) for g in inventory]
        self.classes = {k: [str(g) for g in v] for k, v in (classes or {}).items()}
        self.target = target
        for cls, members in self.classes.items():
            unknown = [g for g in members if g not in self.inventory]
            if unknown:
                raise LaunchError(f"GPU class {cls!r} of target {target!r} names GPUs {unknown} "
                                  f"that this machine does not have (it has {self.inventory})")

    def allocate(self, count: int, busy: Iterable[str], gpu_class: str | None = None) -> list[str]:
        if count <= 0:
            return []
        pool = self.inventory
        if gpu_class is not None:
            if gpu_class not in self.classes:
                raise LaunchError(f"target {self.target!r} has no GPU class {gpu_class!r}",
                                  hint="classes: " + (", ".join(self.classes) or "none defined"))
            pool = self.classes[gpu_class]
        if not self.inventory:
            raise LaunchError(
                f"this launch needs {count} GPU(s) but target {self.target!r} has none",
                hint="run on a machine with NVIDIA GPUs (nvidia-smi), list them under `gpus:` "
                "in the target's config, or launch with gpus=0")
        busy = set(busy)
        free = [g for g in pool if g not in busy]
        if len(free) < count:
            which = f" of class {gpu_class!r}" if gpu_class else ""
            raise LaunchError(
                f"this launch needs {count} GPU(s){which} but only {len(free)} of {len(pool)} "
                f"are free on target {self.target!r} (busy: {sorted(busy & set(pool))})",
                hint="stop a session that holds GPUs (hpcserve status) or ask for fewer")
        return free[:count]
