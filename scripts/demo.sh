#!/usr/bin/env bash
# The main job, end to end: launch SmolLM2 on this machine, stream an answer, stop it.
set -euo pipefail
cd "$(dirname "$0")/.."
hpcserve=.venv/bin/hpcserve
name="demo-$(date +%s)"
cleanup() { "$hpcserve" stop "$name" >/dev/null 2>&1 || true; }
trap cleanup EXIT
echo "== launching smollm2-135m on local (llama.cpp server)"
"$hpcserve" launch smollm2-135m --on local --name "$name" --wait --timeout 300 >/dev/null
"$hpcserve" status "$name"
echo
echo "== prompt: Explain in two sentences what a GPU is. (streamed)"
"$hpcserve" prompt "$name" "Explain in two sentences what a GPU is." --temperature 0 --max-tokens 120
echo
echo "== stopping"
"$hpcserve" stop "$name"
trap - EXIT
"$hpcserve" status "$name" | grep -E '^(name|state)'
