#!/usr/bin/env bash
# Build the JupyterLab extension (labextension/) from source and link it into the venv:
#   1. node dependencies, installed exactly as yarn.lock says (jlpm install --immutable);
#   2. the production build into labextension/build/labextensions/hpcserve-jupyter, which the
#      wheel ships as share/jupyter/labextensions/hpcserve-jupyter;
#   3. the link VENV/share/jupyter/labextensions/hpcserve-jupyter -> that build, as
#      `jupyter labextension develop --overwrite .` makes for the usual layout (that command
#      needs a `_jupyter_labextension_paths()` inside the Python package; here the build lives
#      beside it, so the same jupyter-builder function is called with the build's path), and
#      the server extension's enable file, so `jupyter lab` from the venv has the sidebar;
#   4. Debian's chromium for the browser tests (tests/lab), installed when missing and root.
#
# Needs: the venv with jupyterlab (jlpm, jupyter-builder: `pip install -e '.[test]'`) and
# Node.js >= 18 on PATH.
# Usage: scripts/build-labextension.sh [--no-browser] [--if-needed] [--optional]
#   --no-browser  skip step 4
#   --if-needed   skip steps 1-2 when the build is newer than every source file
#   --optional    without Node.js, say so and stop with success (make demo: the sidebar is extra)
#   VENV=path     the virtualenv to use (default .venv)
set -euo pipefail
cd "$(dirname "$0")/.."
REPO=$PWD
VENV=${VENV:-.venv}
BROWSER=1
IF_NEEDED=0
OPTIONAL=0
for arg in "$@"; do
  case $arg in
    --no-browser) BROWSER=0 ;;
    --if-needed) IF_NEEDED=1 ;;
    --optional) OPTIONAL=1 ;;
    *) echo "usage: $0 [--no-browser] [--if-needed] [--optional]" >&2; exit 2 ;;
  esac
done
BUILT=labextension/build/labextensions/hpcserve-jupyter

if [[ ! -x $VENV/bin/jlpm ]]; then
  echo "build-labextension: $VENV/bin/jlpm not found: install the test extra first" \
       "($VENV/bin/pip install -e '.[test]')" >&2
  exit 1
fi

# Fresh: the build's package.json (written last) is newer than every source file.
fresh() {
  [[ -f $BUILT/package.json && -f $BUILT/static/style.js ]] || return 1
  [[ -z $(find labextension/src labextension/style labextension/package.json \
            labextension/yarn.lock labextension/tsconfig.json \
            -newer "$BUILT/package.json" -print -quit) ]]
}

if [[ $IF_NEEDED == 1 ]] && fresh; then
  echo "build-labextension: $BUILT is up to date"
elif ! command -v node >/dev/null; then
  if [[ $OPTIONAL == 1 ]]; then
    echo "build-labextension: Node.js is not on PATH, so the JupyterLab sidebar is not built" \
         "(install Node.js >= 18, then: make lab)" >&2
    exit 0
  fi
  echo "build-labextension: Node.js is not on PATH (>= 18 is needed to build the extension)" >&2
  exit 1
else
  # jupyter-builder (run by `jlpm build:prod`) comes from the venv
  export PATH="$REPO/$VENV/bin:$PATH"
  start=$SECONDS
  cd labextension
  # --immutable: fail instead of changing yarn.lock (CI sets it too; say it for everyone)
  jlpm install --immutable
  jlpm build:prod
  cd "$REPO"
  test -f "$BUILT/package.json"
  test -f "$BUILT/static/style.js"
  echo "build-labextension: built $BUILT in $((SECONDS - start)) s"
fi

# The link (replacing a copy an earlier `pip install` may have put there) and the check.
"$VENV/bin/python" - "$REPO/$BUILT" <<'PY'
import sys

from jupyter_builder.federated_extensions import develop_labextension

print("build-labextension: linked", develop_labextension(
    sys.argv[1], symlink=True, overwrite=True, sys_prefix=True, destination="hpcserve-jupyter"))
PY
# The server extension's enable file ships with the package (pip install -e puts it into the
# venv); enable it only if an installer left it out.
if [[ ! -f $VENV/etc/jupyter/jupyter_server_config.d/hpcserve_jupyter.json ]]; then
  "$VENV/bin/jupyter" server extension enable --sys-prefix hpcserve_jupyter
fi
listed=$("$VENV/bin/jupyter" labextension list 2>&1 | sed 's/\x1b\[[0-9;]*m//g')
if ! grep -Eq 'hpcserve-jupyter v[0-9.]+ enabled +OK' <<<"$listed"; then
  echo "build-labextension: jupyter labextension list does not show hpcserve-jupyter" \
       "enabled and OK:" >&2
  echo "$listed" >&2
  exit 1
fi

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
