"""Live numbers of a session: an engine's own Prometheus metrics (engine.py), their rates over
time (window.py), a text sparkline (sparkline.py) and the GPUs' use from nvidia-smi (gpu.py).

Pure: nothing here opens a connection or runs a command. The caller scrapes the engine's
`Backend.metrics_path` and runs `gpu.NVIDIA_SMI` where the session runs, then hands the text in.
"""

from __future__ import annotations

from .engine import FORMATS, EngineFormat, EngineMetrics, combine, parse
from .gpu import NVIDIA_SMI, GpuReport, GpuUse, gpu_report, parse_nvidia_smi, select_gpus
from .sparkline import sparkline
from .window import MetricsWindow

__all__ = ["FORMATS", "NVIDIA_SMI", "EngineFormat", "EngineMetrics", "GpuReport", "GpuUse",
           "MetricsWindow", "combine", "gpu_report", "parse", "parse_nvidia_smi", "select_gpus",
           "sparkline"]
