#!/usr/bin/env bash
# Build the JupyterLab extension (labextension/) from source, as `make test` needs it:
#   1. node dependencies, installed exactly as yarn.lock says (jlpm install --immutable);
#   2. the production build into labextension/build/labextensions/hpcserve-jupyter, which the
#      wheel ships as share/jupyter/labextensions/hpcserve-jupyter;
#   3. Debian's chromium for the browser tests (tests/lab), installed when missing and root.
#
# Needs: the venv with jupyterlab (jlpm, jupyter-builder: `pip install -e '.[test]'`) and
# Node.js >= 18 on PATH.
# Usage: scripts/build-labextension.sh [--no-browser]
#   VENV=path   the virtualenv to use (default .venv)
set -euo pipefail
cd "$(dirname "$0")/.."
REPO=$PWD
VENV=${VENV:-.venv}
BROWSER=1
for arg in "$@"; do
  case $arg in
    --no-browser) BROWSER=0 ;;
    *) echo "usage: $0 [--no-browser]" >&2; exit 2 ;;
  esac
done

if [[ ! -x $VENV/bin/jlpm ]]; then
  echo "build-labextension: $VENV/bin/jlpm not found: install the test extra first" \
       "($VENV/bin/pip install -e '.[test]')" >&2
  exit 1
fi
if ! command -v node >/dev/null; then
  echo "build-labextension: Node.js is not on PATH (>= 18 is needed to build the extension)" >&2
  exit 1
fi
# jupyter-builder (run by `jlpm build:prod`) comes from the venv
export PATH="$REPO/$VENV/bin:$PATH"

start=$SECONDS
cd labextension
# --immutable: fail instead of changing yarn.lock (CI sets it too; say it for everyone)
jlpm install --immutable
jlpm build:prod
test -f build/labextensions/hpcserve-jupyter/package.json
test -f build/labextensions/hpcserve-jupyter/static/style.js
echo "build-labextension: built labextension/build/labextensions/hpcserve-jupyter" \
     "in $((SECONDS - start)) s"
cd "$REPO"

if [[ $BROWSER == 1 ]] && ! command -v chromium >/dev/null; then
  if [[ $(id -u) == 0 ]]; then
    echo "build-labextension: installing Debian's chromium for the browser tests"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq chromium >/dev/null
  else
    echo "build-labextension: chromium is missing and this is not root:" \
         "sudo apt-get install -y chromium (the browser tests need it)" >&2
  fi
fi
