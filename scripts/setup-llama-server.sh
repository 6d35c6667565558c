#!/usr/bin/env bash
# Build llama.cpp's own HTTP server, `llama-server` (the `llama-server` backend; unlike
# llama-cpp-python's server it has Prometheus metrics, GET /metrics with --metrics), from the
# llama.cpp source that the llama-cpp-python sdist on PyPI vendors: PyPI is the one source of it
# reachable here, and Debian 12 has no llama.cpp package. CPU only, one static binary, built once
# per machine into a cache outside the checkout (like pip's wheel cache, so a fresh clone reuses
# it), for this CPU (-march=native) but without AMX, as the Makefile builds llama-cpp-python.
#
#   scripts/setup-llama-server.sh          build it unless built; prints the binary's path
#   scripts/setup-llama-server.sh --where  print where the binary is (or will be); build nothing
#   scripts/setup-llama-server.sh --force  build again
#
# Settings (environment):
#   HPCSERVE_ENGINES         where engines built here live (default: ~/.cache/hpcserve/engines);
#                            the binary is $HPCSERVE_ENGINES/llama-server/0.3.36/bin/llama-server
#   HPCSERVE_LLAMA_SDIST     a copy of llama_cpp_python-0.3.36.tar.gz to build from instead of
#                            `pip download` (its SHA-256 is checked either way)
#   HPCSERVE_BUILD_JOBS      parallel compile jobs (default: the number of cores)
#   LLAMA_SERVER_CMAKE_ARGS  more cmake options, e.g. "-DGGML_CUDA=ON" on a machine with CUDA
# About 9 minutes on 2 cores (1 to download, 8 to build); 15 MB installed. Messages go to
# stderr, the path to stdout.
set -euo pipefail

VERSION=0.3.36
SDIST=llama_cpp_python-$VERSION.tar.gz
SDIST_SHA256=832db0699007f1be95a7e41ef12e88926b02ba836461e36a36372db2760c1a2e

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
ENGINES=${HPCSERVE_ENGINES:-${XDG_CACHE_HOME:-$HOME/.cache}/hpcserve/engines}
PREFIX=$ENGINES/llama-server/$VERSION
BIN=$PREFIX/bin/llama-server
STAMP=$PREFIX/.hpcserve-build
WORK=$ENGINES/llama-server/.build-$VERSION  # kept after a failure: the next run resumes it

say() { printf 'setup-llama-server: %s\n' "$*" >&2; }
die() { printf 'setup-llama-server: error: %s\n' "$*" >&2; exit 1; }

FORCE=0
case "${1:-}" in
  "") ;;
  --where) printf '%s\n' "$BIN"; exit 0 ;;
  --force) FORCE=1 ;;
  -h|--help) sed -n '2,22p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//'; exit 0 ;;
  *) die "unknown argument '$1' (use --where, --force or --help)" ;;
esac

# Compile without AMX where the compiler knows the flags: some virtual machines advertise AMX
# without enabling it, and ggml's AMX kernels then fault on the first prompt (see the Makefile).
NO_AMX="-mno-amx-tile -mno-amx-int8 -mno-amx-bf16"
# shellcheck disable=SC2086
if ! printf 'int main(void){return 0;}' | ${CC:-cc} $NO_AMX -x c -o /dev/null - 2>/dev/null; then
  NO_AMX=""
fi
read -r -a EXTRA_CMAKE_ARGS <<<"${LLAMA_SERVER_CMAKE_ARGS:-}"
CMAKE_ARGS=(
  -DCMAKE_BUILD_TYPE=Release
  -DBUILD_SHARED_LIBS=OFF            # one self-contained binary: the build tree is removed
  -DLLAMA_CURL=OFF -DLLAMA_OPENSSL=OFF  # no model downloads: models are local files
  -DLLAMA_BUILD_COMMON=ON -DLLAMA_BUILD_TOOLS=ON -DLLAMA_BUILD_SERVER=ON
  -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_EXAMPLES=OFF -DLLAMA_BUILD_APP=OFF
  # The web UI is neither built (npm) nor fetched (a Hugging Face bucket): an API server only.
  -DLLAMA_BUILD_UI=OFF -DLLAMA_USE_PREBUILT_UI=OFF
  -DGGML_NATIVE=ON
  "-DCMAKE_C_FLAGS=$NO_AMX" "-DCMAKE_CXX_FLAGS=$NO_AMX"
  "${EXTRA_CMAKE_ARGS[@]}"
)
# What the binary was built from and for: another CPU (a home directory shared between nodes)
# or other options mean building again.
CPU_FLAGS=$(grep -m1 '^flags' /proc/cpuinfo 2>/dev/null | sha256sum | cut -c1-16 || true)
STAMP_TEXT="llama-cpp-python $VERSION ($SDIST_SHA256) cpu $CPU_FLAGS cmake ${CMAKE_ARGS[*]}"

built() {
  [[ -x $BIN ]] && [[ -f $STAMP ]] && [[ $(cat "$STAMP") == "$STAMP_TEXT" ]] \
    && "$BIN" --version >/dev/null 2>&1
}

# One build at a time per cache (two checkouts, or CI beside a developer, may share it).
mkdir -p "$ENGINES/llama-server"
if command -v flock >/dev/null 2>&1; then
  exec 9>"$ENGINES/llama-server/.lock"
  flock 9
fi
if ((FORCE)); then
  say "removing $PREFIX"
  rm -rf "$PREFIX" "$WORK"
fi
if built; then
  say "$BIN is built"
  printf '%s\n' "$BIN"
  exit 0
fi

# The build tools: installed from Debian's mirror when missing and we may (root with apt-get).
if ! command -v cmake >/dev/null 2>&1 || ! command -v c++ >/dev/null 2>&1; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    say "installing cmake and g++ (apt-get)"
    DEBIAN_FRONTEND=noninteractive apt-get install -y -q cmake g++ >/dev/null \
      || { apt-get update -q >/dev/null && DEBIAN_FRONTEND=noninteractive apt-get install -y -q cmake g++ >/dev/null; } \
      || die "apt-get could not install cmake and g++"
  fi
fi
for tool in cmake c++ tar sha256sum; do
  command -v "$tool" >/dev/null 2>&1 || die "'$tool' is needed to build llama-server (apt-get install cmake g++)"
done
start=$SECONDS
mkdir -p "$WORK"

# 1. The sdist, checked against the SHA-256 PyPI publishes for it.
tarball=$WORK/$SDIST
if [[ -n ${HPCSERVE_LLAMA_SDIST:-} ]]; then
  [[ -f $HPCSERVE_LLAMA_SDIST ]] || die "HPCSERVE_LLAMA_SDIST=$HPCSERVE_LLAMA_SDIST is no file"
  cp "$HPCSERVE_LLAMA_SDIST" "$tarball.part" && mv "$tarball.part" "$tarball"
elif [[ ! -f $tarball ]]; then
  PIP_PYTHON=$ROOT/.venv/bin/python
  [[ -x $PIP_PYTHON ]] || PIP_PYTHON=python3
  say "downloading the llama-cpp-python $VERSION sdist from PyPI (pip download, about a minute)"
  # (without the warning some machines' pip configuration prints for an index lacking it)
  "$PIP_PYTHON" -m pip download --quiet --disable-pip-version-check --no-deps \
    --no-binary :all: -d "$WORK" "llama-cpp-python==$VERSION" \
    2> >(grep -v "is ignored: it is neither a file nor a directory" >&2) \
    || die "pip could not download llama-cpp-python==$VERSION (set HPCSERVE_LLAMA_SDIST to a copy)"
fi
[[ -f $tarball ]] || die "pip left no $SDIST in $WORK"
if [[ $(sha256sum "$tarball" | cut -d' ' -f1) != "$SDIST_SHA256" ]]; then
  rm -f "$tarball"
  die "$SDIST does not have the SHA-256 PyPI publishes ($SDIST_SHA256)"
fi

# 2. llama.cpp's source, and its git metadata (the sdist keeps it: the build's version string).
src=$WORK/llama_cpp_python-$VERSION/vendor/llama.cpp
if [[ ! -f $src/tools/server/CMakeLists.txt ]]; then
  say "unpacking vendor/llama.cpp"
  tar -xzf "$tarball" -C "$WORK" "llama_cpp_python-$VERSION/vendor/llama.cpp" \
    "llama_cpp_python-$VERSION/.git/modules/vendor/llama.cpp"
fi

# 3. Only the llama-server target.
generator=()
command -v ninja >/dev/null 2>&1 && generator=(-G Ninja)
if [[ -f $WORK/build/CMakeCache.txt ]] && ! grep -q "^CMAKE_GENERATOR:INTERNAL=${generator[1]:-Unix Makefiles}$" \
    "$WORK/build/CMakeCache.txt"; then
  rm -rf "$WORK/build"
fi
jobs=${HPCSERVE_BUILD_JOBS:-$(nproc 2>/dev/null || echo 2)}
say "building llama-server ($jobs jobs; about 8 minutes on 2 cores)"
cmake -S "$src" -B "$WORK/build" "${generator[@]}" "${CMAKE_ARGS[@]}" >"$WORK/cmake.log" 2>&1 \
  || { tail -n 40 "$WORK/cmake.log" >&2; die "cmake failed (log: $WORK/cmake.log)"; }
cmake --build "$WORK/build" --target llama-server --parallel "$jobs" >"$WORK/build.log" 2>&1 \
  || { tail -n 40 "$WORK/build.log" >&2; die "the build failed (log: $WORK/build.log)"; }

# 4. Installed whole or not at all; the build tree goes.
built_bin=$WORK/build/bin/llama-server
[[ -x $built_bin ]] || die "the build made no $built_bin"
"$built_bin" --version >/dev/null 2>&1 || die "$built_bin --version fails on this machine"
mkdir -p "$PREFIX/bin"
rm -f "$STAMP"
cp "$built_bin" "$BIN.part"
mv -f "$BIN.part" "$BIN"
printf '%s' "$STAMP_TEXT" >"$STAMP"
built || die "$BIN does not run after installing"
rm -rf "$WORK"
say "built $("$BIN" --version 2>&1 | grep -m1 version) in $((SECONDS - start)) s"
printf '%s\n' "$BIN"
