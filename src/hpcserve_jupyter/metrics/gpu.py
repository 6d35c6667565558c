"""GPU use of a session from `nvidia-smi`: the command as data, its CSV parsed, its failures
told apart (a node without NVIDIA GPUs is shown as such, not as an error).

The caller runs `NVIDIA_SMI` where the engine runs (locally; on SLURM through
`srun --overlap --jobid=JOB`) and passes the exit code and output to `gpu_report`, then keeps
the session's GPUs with `select_gpus`. Inside a SLURM step that constrains devices nvidia-smi
lists only the job's GPUs, so no selection is needed there; elsewhere select by UUID where
known, as an index means the machine's numbering only when nothing renumbered it.
"""

from __future__ import annotations

import csv
from collections.abc import Iterable
from dataclasses import asdict, dataclass, replace
from typing import Any

QUERY_FIELDS = ("index", "uuid", "name", "utilization.gpu", "memory.used", "memory.total")
NVIDIA_SMI: tuple[str, ...] = ("nvidia-smi", "--query-gpu=" + ",".join(QUERY_FIELDS),
                               "--format=csv,noheader,nounits")

NO_GPU = "no NVIDIA GPU on this node"
NO_SMI = "no NVIDIA GPU on this node (nvidia-smi is not installed)"
NO_DRIVER = "no usable NVIDIA GPU on this node: nvidia-smi cannot reach the NVIDIA driver"
NO_SESSION_GPU = "this session has no GPU"
# What CUDA_VISIBLE_DEVICES holds when a job was given no GPU (SLURM sets NoDevFiles).
NO_DEVICES = {"", "NoDevFiles", "none", "void", "-1"}


@dataclass(frozen=True)
class GpuUse:
    """One GPU as nvidia-smi reports it; a value the GPU does not report ([N/A],
    [Not Supported]: utilisation of a GPU in MIG mode, memory of a GB10) is None."""

    index: int
    uuid: str
    name: str
    utilization_pct: float | None
    memory_used_mib: int | None
    memory_total_mib: int | None


@dataclass(frozen=True)
class GpuReport:
    """The GPUs of a node or session. `reason` says why `gpus` is empty (or why some are
    missing); `absent` is True when that is because there is no GPU, not a failure."""

    gpus: tuple[GpuUse, ...] = ()
    reason: str | None = None
    absent: bool = False

    def public(self) -> dict[str, Any]:
        """The JSON views carry: {gpus: [...], reason, absent}."""
        return {"gpus": [asdict(g) for g in self.gpus], "reason": self.reason,
                "absent": self.absent}


def _value(text: str) -> str | None:
    """A field, or None for nvidia-smi's bracketed placeholders and N/A."""
    text = text.strip()
    if not text or text.upper() == "N/A" or (text.startswith("[") and text.endswith("]")):
        return None
    return text


def _number(text: str) -> float | None:
    value = _value(text)
    if value is None:
        return None
    try:  # a unit is there if the command ran without `nounits`: "81559 MiB", "2 %"
        return float(value.split()[0])
    except ValueError:
        return None


def parse_nvidia_smi(stdout: str) -> list[GpuUse]:
    """The GPUs in the output of NVIDIA_SMI, one per CSV line. A line that is not a GPU's
    (a warning nvidia-smi printed on stdout, a header) is skipped."""
    gpus = []
    for row in csv.reader(stdout.splitlines(), skipinitialspace=True):
        if len(row) != len(QUERY_FIELDS):
            continue
        index, uuid, name, util, used, total = row
        if not index.strip().isdigit():
            continue
        mem_used, mem_total = _number(used), _number(total)
        gpus.append(GpuUse(
            index=int(index), uuid=(_value(uuid) or ""), name=(_value(name) or ""),
            utilization_pct=_number(util),
            memory_used_mib=None if mem_used is None else round(mem_used),
            memory_total_mib=None if mem_total is None else round(mem_total)))
    return gpus


def _first_line(text: str) -> str:
    return next((line.strip() for line in text.splitlines() if line.strip()), "")[:200]


def gpu_report(returncode: int, stdout: str, stderr: str = "") -> GpuReport:
    """What one run of NVIDIA_SMI says: the GPUs, or why there are none. A missing nvidia-smi
    (exit 127 from a shell, `execve(): ... No such file` from srun) and "No devices were found"
    mean no GPU; a driver that does not answer or any other failure is reported as such. An
    answer with a non-zero exit is still read: nvidia-smi exits 14 after a warning (a corrupted
    infoROM) and lists the GPUs all the same."""
    text = f"{stdout}\n{stderr}"
    lowered = text.lower()
    if "no devices were found" in lowered:
        return GpuReport(reason=NO_GPU, absent=True)
    if returncode == 127 or (returncode != 0 and "nvidia-smi" in lowered and (
            "not found" in lowered or "no such file" in lowered)):
        return GpuReport(reason=NO_SMI, absent=True)
    if "nvidia-smi has failed" in lowered or "couldn't communicate with the nvidia driver" \
            in lowered:
        return GpuReport(reason=NO_DRIVER)
    gpus = tuple(parse_nvidia_smi(stdout))
    if returncode != 0:
        detail = _first_line(stderr) or _first_line(_not_gpu_lines(stdout))
        said = f"nvidia-smi {'warned' if gpus else 'failed'} (exit {returncode})"
        return GpuReport(gpus=gpus, reason=f"{said}: {detail}" if detail else said)
    if not gpus:
        return GpuReport(reason=NO_GPU, absent=True)
    return GpuReport(gpus=gpus)


def _not_gpu_lines(stdout: str) -> str:
    return "\n".join(line for line in stdout.splitlines() if not parse_nvidia_smi(line))


def _device_ids(visible: str | Iterable[str]) -> list[str]:
    items = visible.split(",") if isinstance(visible, str) else [str(v) for v in visible]
    return [item.strip() for item in items if item.strip()]


def _matches(gpu: GpuUse, device: str) -> bool:
    """CUDA takes an index, a full UUID or a unique prefix of one (GPU-8f3a...)."""
    if device.isdigit():
        return gpu.index == int(device)
    return bool(gpu.uuid) and gpu.uuid.lower().startswith(device.lower())


def select_gpus(report: GpuReport, visible: str | Iterable[str] | None) -> GpuReport:
    """The session's part of a node's report. `visible` is the session's
    CUDA_VISIBLE_DEVICES (a string) or its list of GPU indices or UUIDs; None keeps every GPU.
    A session given no GPU gets NO_SESSION_GPU rather than the node's GPUs."""
    if visible is None or not report.gpus:
        return report
    if isinstance(visible, str) and visible.strip() in NO_DEVICES:
        return GpuReport(reason=NO_SESSION_GPU, absent=True)
    devices = _device_ids(visible)
    if not devices:
        return GpuReport(reason=NO_SESSION_GPU, absent=True)
    chosen = tuple(g for g in report.gpus if any(_matches(g, d) for d in devices))
    if not chosen:
        return GpuReport(reason=f"nvidia-smi lists none of this session's GPUs "
                                f"({', '.join(devices)})")
    missing = [d for d in devices if not any(_matches(g, d) for g in chosen)]
    reason = f"nvidia-smi does not list {', '.join(missing)}" if missing else None
    return replace(report, gpus=chosen, reason=reason)
