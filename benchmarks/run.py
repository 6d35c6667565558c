"""Run the benchmarks: `python benchmarks/run.py [NAME ...]` (default: all). Each prints its
figures and writes benchmarks/results/NAME.json."""

from __future__ import annotations

import importlib
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
ALL = ["p5_import_time", "p4_launch_overhead", "p1_proxy", "p6_gateway", "p7_load_ext"]


def main(names: list[str]) -> None:
    for name in names or ALL:
        print(f"== {name}")
        importlib.import_module(name).main()


if __name__ == "__main__":
    main(sys.argv[1:])
