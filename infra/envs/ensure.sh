#!/usr/bin/env bash
# Create or update the three environments from their lock files. Idempotent: an environment whose
# stamp matches its lock file is left alone, so a second run is a no-op taking well under a second.
#   LORAOPS_ACCEL=cpu|cuda  picks trainer-<accel>/server-<accel> locks (default: cpu)
#   usage: infra/envs/ensure.sh [control] [trainer] [server]   (default: all three)
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
cd "$ROOT"
ACCEL="${LORAOPS_ACCEL:-cpu}"
PYTHON="${LORAOPS_PYTHON:-python3.11}"
UV_VERSION="0.13.9"
UV=".venv/bin/uv"
WANTED=("$@")
[ ${#WANTED[@]} -eq 0 ] && WANTED=(control trainer server)

say() { printf '[envs] %s\n' "$*"; }

# Two builders at once (two `make` runs, a test session beside a demo) wait for each other.
mkdir -p .venvs
exec 9>.venvs/.lock
if command -v flock >/dev/null 2>&1; then flock 9; fi

if ! command -v "$PYTHON" >/dev/null 2>&1; then
  echo "loraops needs Python 3.11 ($PYTHON not found); set LORAOPS_PYTHON to its path" >&2
  exit 2
fi

torch_source=()
if [ "$ACCEL" = cpu ]; then
  if [ -d /opt/wheels ]; then torch_source=(--find-links /opt/wheels)
  else torch_source=(--extra-index-url https://download.pytorch.org/whl/cpu --index-strategy unsafe-best-match)
  fi
fi

stamp_of() { cat "$@" pyproject.toml infra/envs/ensure.sh | sha256sum | cut -d' ' -f1; }

ensure_control() {
  local lock=infra/envs/control.lock.txt stamp
  stamp="$(stamp_of "$lock")"
  if [ -f .venv/.loraops-stamp ] && [ "$(cat .venv/.loraops-stamp)" = "$stamp" ]; then
    say "control plane up to date (.venv)"; return
  fi
  say "control plane: installing from $lock"
  [ -x .venv/bin/python ] || "$PYTHON" -m venv .venv
  [ -x "$UV" ] && "$UV" --version | grep -q "$UV_VERSION" || .venv/bin/python -m pip install -q "uv==$UV_VERSION"
  "$UV" pip sync -q --python .venv/bin/python "$lock"
  "$UV" pip install -q --python .venv/bin/python "uv==$UV_VERSION"
  "$UV" pip install -q --python .venv/bin/python --no-deps -e .
  echo "$stamp" > .venv/.loraops-stamp
}

ensure_tool_env() {  # name
  local name="$1" lock="infra/envs/$1-$ACCEL.lock.txt" prefix=".venvs/$1" stamp
  [ -f "$lock" ] || { echo "no lock file $lock (run make lock on a $ACCEL host)" >&2; exit 2; }
  stamp="$(stamp_of "$lock")"
  if [ -f "$prefix/.loraops-stamp" ] && [ "$(cat "$prefix/.loraops-stamp")" = "$stamp" ]; then
    say "$name up to date ($prefix)"; return
  fi
  say "$name: installing from $lock (a few minutes the first time)"
  [ -x "$prefix/bin/python" ] || "$UV" venv -q --python "$PYTHON" "$prefix"
  "$UV" pip sync -q --python "$prefix/bin/python" "${torch_source[@]}" "$lock"
  "$UV" pip install -q --python "$prefix/bin/python" --no-deps -e .
  echo "$stamp" > "$prefix/.loraops-stamp"
}

for env in "${WANTED[@]}"; do
  case "$env" in
    control) ensure_control ;;
    trainer|server) ensure_control; ensure_tool_env "$env" ;;
    *) echo "unknown environment: $env" >&2; exit 2 ;;
  esac
done
