"""nvidia-smi output -> GpuReport, on the samples in samples/nvidia-smi-*.txt (each cites the
public pages its lines come from; `# exit:` and `# stream:` say how nvidia-smi ended)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from hpcserve_jupyter.metrics import GpuReport, GpuUse, gpu_report, select_gpus
from hpcserve_jupyter.metrics.gpu import NO_DRIVER, NO_GPU, NO_SESSION_GPU, NO_SMI

SAMPLES = Path(__file__).resolve().parent / "samples"


def run(name: str) -> GpuReport:
    """The report of a recorded run: the sample's lines on its stream, with its exit code."""
    lines = (SAMPLES / f"nvidia-smi-{name}.txt").read_text().splitlines()
    header = dict(line[2:].split(": ", 1) for line in lines
                  if line.startswith(("# exit: ", "# stream: ")))
    output = "".join(line + "\n" for line in lines if not line.startswith("#"))
    if header.get("stream") == "stderr":
        return gpu_report(int(header["exit"]), "", output)
    return gpu_report(int(header["exit"]), output, "")


A100 = [
    GpuUse(0, "GPU-513536b6-7d19-9063-b049-1e69664bb298", "NVIDIA A100-SXM4-80GB", None,
           36537, 81920),
    GpuUse(1, "GPU-d8594bd4-0fc3-8595-e355-7c98138f3b95", "NVIDIA A100-SXM4-80GB", 100.0,
           7488, 81920),
    GpuUse(2, "GPU-5e375e7e-b41f-155b-dcdc-534524c356fc", "NVIDIA A100-SXM4-80GB", 100.0,
           7500, 81920),
    GpuUse(3, "GPU-69ec2344-ebac-b028-f88f-452abb3d7f11", "NVIDIA A100-SXM4-80GB", 99.0,
           7500, 81920),
]


def test_four_gpus_one_in_mig_mode_without_utilisation() -> None:
    report = run("a100-mig")
    assert report == GpuReport(gpus=tuple(A100))
    assert json.loads(json.dumps(report.public()))["gpus"][0]["utilization_pct"] is None


def test_not_available_and_not_supported_fields_are_none() -> None:
    gb10, gtx = run("gb10").gpus
    assert (gb10.name, gb10.utilization_pct, gb10.memory_used_mib, gb10.memory_total_mib) \
        == ("NVIDIA GB10", 0.0, None, None)
    assert (gtx.name, gtx.utilization_pct, gtx.memory_used_mib, gtx.memory_total_mib) \
        == ("GeForce GTX 650", None, 0, 2004)


def test_a_warning_exit_still_lists_the_gpus() -> None:
    report = run("h100")
    assert [(g.index, g.name, g.utilization_pct, g.memory_used_mib, g.memory_total_mib)
            for g in report.gpus] == [(0, "NVIDIA H100 80GB HBM3", 2.0, 72790, 81559),
                                      (1, "NVIDIA H100 80GB HBM3", 0.0, 72790, 81559)]
    assert report.reason == ("nvidia-smi warned (exit 14): "
                             "WARNING: infoROM is corrupted at gpu 0000:19:00.0")
    assert not report.absent


@pytest.mark.parametrize(("name", "reason", "absent"), [
    ("no-devices", NO_GPU, True),
    ("missing", NO_SMI, True),
    ("missing-srun", NO_SMI, True),
    ("no-driver", NO_DRIVER, False),
])
def test_why_there_is_no_gpu(name: str, reason: str, absent: bool) -> None:
    assert run(name) == GpuReport(gpus=(), reason=reason, absent=absent)


def test_other_failures_say_what_nvidia_smi_said() -> None:
    # A driver upgraded under a loaded kernel module (lyulyul/shine-cluster#50 quotes it).
    report = gpu_report(18, "Failed to initialize NVML: Driver/library version mismatch\n")
    assert report == GpuReport(reason="nvidia-smi failed (exit 18): Failed to initialize NVML: "
                                      "Driver/library version mismatch")
    assert gpu_report(1, "", "") == GpuReport(reason="nvidia-smi failed (exit 1)")


def test_an_empty_answer_means_no_gpu() -> None:
    assert gpu_report(0, "\n") == GpuReport(reason=NO_GPU, absent=True)


def test_values_with_units_are_read_too() -> None:
    # The same query without `nounits`.
    (gpu,) = gpu_report(0, "0, GPU-1, NVIDIA L4, 35 %, 1024 MiB, 23034 MiB\n").gpus
    assert (gpu.utilization_pct, gpu.memory_used_mib, gpu.memory_total_mib) == (35.0, 1024, 23034)


# ------------------------------------------------------------------ the session's GPUs


def test_select_by_index_uuid_or_uuid_prefix() -> None:
    node = run("a100-mig")
    assert select_gpus(node, "1,3").gpus == (A100[1], A100[3])
    assert select_gpus(node, [A100[2].uuid]).gpus == (A100[2],)
    assert select_gpus(node, "GPU-5e375e7e, 0").gpus == (A100[0], A100[2])
    assert select_gpus(node, ["gpu-D8594BD4"]).gpus == (A100[1],)
    assert select_gpus(node, None) is node


def test_a_session_without_gpus() -> None:
    node = run("a100-mig")
    for visible in ("", "NoDevFiles", "-1", []):
        assert select_gpus(node, visible) == GpuReport(reason=NO_SESSION_GPU, absent=True)


def test_gpus_the_node_does_not_list() -> None:
    node = run("a100-mig")
    mig = "MIG-feb88891-0321-5fef-9c87-d4af3b54259e"  # a MIG instance: --query-gpu lists GPUs
    report = select_gpus(node, [mig])
    assert report.gpus == () and report.reason is not None and mig in report.reason
    partial = select_gpus(node, "3,7")
    assert partial.gpus == (A100[3],) and partial.reason == "nvidia-smi does not list 7"


def test_a_node_without_gpus_stays_so() -> None:
    none = run("no-devices")
    assert select_gpus(none, "0") is none
