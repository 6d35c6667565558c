#!/bin/bash
# hpcserve-jupyter's Tapis app (ZIP runtime): Tapis unpacks this bundle into the job's exec
# directory and runs this script with the job's arguments, which are ONE command (an engine,
# or a one-off job's driver) written as quoted words by hpcserve. The script:
#   - reads the job's secrets from the 0600 file HPCSERVE_SECRETS_FILE names and deletes it
#     (secrets never travel in the job's arguments or environment: Tapis records those);
#   - puts back the words Tapis would refuse in an argument ({HPCSERVE_ARG_<i>}, their
#     values in the env file), picks a free port (or HPCSERVE_PORT) and fills the
#     {HPCSERVE_*} placeholders of the arguments and of the variables HPCSERVE_TEMPLATED_ENV
#     names;
#   - starts the command (inside HPCSERVE_CONTAINER_IMAGE with `singularity exec` when
#     set), writes endpoint.json ({"node", "ports"}) once it listens, and
#     exits with its exit code (also written to exit_code); SIGTERM (a cancelled job) is
#     passed on to the command.
set -uo pipefail
EXEC_DIR="${_tapisExecSystemExecDir:-$PWD}"
cd "$EXEC_DIR" || exit 1

if [ -n "${HPCSERVE_SECRETS_FILE:-}" ] && [ -f "$HPCSERVE_SECRETS_FILE" ]; then
  set -a
  . "$HPCSERVE_SECRETS_FILE"
  set +a
  rm -f "$HPCSERVE_SECRETS_FILE"
fi

PY="${HPCSERVE_PYTHON:-python3}"
export HPCSERVE_PYTHON="$PY"
BIND_HOST="${HPCSERVE_BIND_HOST:-0.0.0.0}"
if [ -n "${HPCSERVE_PORT:-}" ]; then
  PORT="$HPCSERVE_PORT"
else
  PORT=$("$PY" -c 'import socket; s = socket.socket(); s.bind(("", 0)); print(s.getsockname()[1])')
fi
NODE=$(hostname)

fill() {
  # Quoted patterns and replacements: taken literally (no globbing, no `&` of bash 5.2).
  local a="$1"
  a="${a//"{HPCSERVE_PORT}"/"$PORT"}"
  a="${a//"{HPCSERVE_HOST}"/"$BIND_HOST"}"
  a="${a//"{HPCSERVE_PYTHON}"/"$PY"}"
  a="${a//"{HPCSERVE_JOBDIR}"/"$EXEC_DIR"}"
  a="${a//"{HPCSERVE_API_KEY}"/"${HPCSERVE_API_KEY:-}"}"
  FILLED="$a"  # a variable, not $(...): that would drop trailing newlines
}

for name in ${HPCSERVE_TEMPLATED_ENV:-}; do
  case "$name" in
    *[!A-Za-z0-9_]* | [0-9]* | "") continue ;;
  esac
  fill "${!name:-}"
  export "$name=$FILLED"
done

ARGS=()
for a in "$@"; do
  # A word Tapis would refuse or rewrite travelled in the env file (HPCSERVE_ARG_<i>).
  if [[ "$a" =~ ^\{HPCSERVE_ARG_([0-9]+)\}$ ]]; then
    var="HPCSERVE_ARG_${BASH_REMATCH[1]}"
    a="${!var-}"
  fi
  fill "$a"
  ARGS+=("$FILLED")
done
if [ "${#ARGS[@]}" -eq 0 ]; then
  echo "hpcserve: no command given to the app" >&2
  echo 2 > "$EXEC_DIR/exit_code"
  exit 2
fi

# runtime SINGULARITY: the command runs inside the image (GPUs with --nv).
PREFIX=()
if [ -n "${HPCSERVE_CONTAINER_IMAGE:-}" ]; then
  PREFIX=("${HPCSERVE_CONTAINER:-singularity}" exec)
  [ -n "${HPCSERVE_CONTAINER_GPU:-}" ] && PREFIX+=(--nv)
  [ -n "${HPCSERVE_CONTAINER_BINDS:-}" ] && PREFIX+=(--bind "$HPCSERVE_CONTAINER_BINDS")
  PREFIX+=("$HPCSERVE_CONTAINER_IMAGE")
fi

echo "hpcserve: starting on $NODE:$PORT"
${PREFIX[@]+"${PREFIX[@]}"} "${ARGS[@]}" &  # (the +: an empty array under set -u, bash < 4.4)
PID=$!
trap 'kill -TERM "$PID" 2>/dev/null; wait "$PID"; echo 143 > "$EXEC_DIR/exit_code"; exit 143' TERM INT

PROBE='import socket, sys; socket.create_connection(("127.0.0.1", int(sys.argv[1])), 1)'
(
  until "$PY" -c "$PROBE" "$PORT" 2>/dev/null; do
    kill -0 "$PID" 2>/dev/null || exit 0
    sleep 0.5
  done
  printf '{"node": "%s", "ports": [%s]}\n' "$NODE" "$PORT" > "$EXEC_DIR/endpoint.json.tmp"
  mv "$EXEC_DIR/endpoint.json.tmp" "$EXEC_DIR/endpoint.json"
) &
WATCHER=$!

wait "$PID"
CODE=$?
kill "$WATCHER" 2>/dev/null
echo "$CODE" > "$EXEC_DIR/exit_code"
echo "hpcserve: the command exited with code $CODE"
exit "$CODE"
