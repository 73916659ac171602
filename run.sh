#!/usr/bin/env bash
# One entry point that sets everything up on a fresh machine (Python 3.11 + pip), then:
#   bash run.sh demo    simulated federation of 3 banks on the bundled Banking77 demo data
#   bash run.sh test    the test suite (what CI runs)
#   bash run.sh bench   the benchmark suite (bench/README.md)
set -euo pipefail
cd "$(dirname "$0")"
VENV="${FEDTUNE_VENV:-.venv}"
PY="$(command -v python3.11 || command -v python3)"

setup() {
  if [ ! -x "$VENV/bin/python" ]; then
    "$PY" -m venv "$VENV"
  fi
  # Re-install only when the dependency list changed (stamp = hash of pyproject.toml).
  local stamp="$VENV/.fedtune-installed"
  local want
  want="$(sha256sum pyproject.toml | cut -d' ' -f1)"
  if [ ! -f "$stamp" ] || [ "$(cat "$stamp")" != "$want" ]; then
    "$VENV/bin/pip" install -q --upgrade pip
    # torch first and pinned exactly: a looser pin pulls a multi-GB CUDA build.
    "$VENV/bin/pip" install -q torch==2.13.0
    "$VENV/bin/pip" install -q torch==2.13.0 -e '.[test]'
    echo "$want" > "$stamp"
  fi
  export PATH="$PWD/$VENV/bin:$PATH"
  export HF_HUB_OFFLINE=1 FLWR_TELEMETRY_ENABLED=0 FLWR_DISABLE_UPDATE_CHECK=1
}

# System packages the tests need (the demo needs neither): installed only when missing and root.
system_packages() {
  # nginx: the coordinator's TLS front (fedtune/ops/proxy.py); installed only when missing and we are root
  if ! command -v nginx >/dev/null 2>&1 && [ ! -x /usr/sbin/nginx ] && [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq nginx-light || DEBIAN_FRONTEND=noninteractive apt-get install -y -qq nginx; } >/dev/null 2>&1 || echo "run.sh: could not install nginx (the deployed coordinator needs it)" >&2; fi
  # chromium: headless browser for the status page's tests (tests/test_status_page.py, tests/test_report.py); same rule
  if ! command -v chromium >/dev/null 2>&1 && [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium; } >/dev/null 2>&1 || echo "run.sh: could not install chromium (the status page tests will skip)" >&2; fi
}

cmd="${1:-demo}"
shift || true
case "$cmd" in
  demo)  setup; exec fedtune simulate --config configs/demo.toml --out "runs/demo-$(date +%Y%m%d-%H%M%S)" "$@" ;;
  test)  setup; system_packages; exec python -m pytest -q "$@" ;;
  bench) setup; exec python bench/run_all.py "$@" ;;
  setup) setup; system_packages ;;
  *) echo "usage: bash run.sh [demo|test|bench|setup] [args...]" >&2; exit 2 ;;
esac
