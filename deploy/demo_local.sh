#!/usr/bin/env bash
# The README demo on Flower's deployment engine, all on loopback: certificates, a coordinator with
# TLS + node authentication, three bank sites (each reading only its own file), one `fedtune run`
# with configs/demo.toml, then everything is stopped. Usage: bash deploy/demo_local.sh [WORKDIR]
set -euo pipefail
cd "$(dirname "$0")/.."
W="$(realpath -m "${1:-runs/deploy-demo-$(date +%Y%m%d-%H%M%S)}")"
mkdir -p "$W"
PIDS=()
cleanup() { for p in "${PIDS[@]}"; do kill -TERM -- "-$p" 2>/dev/null || true; done; wait 2>/dev/null || true; }
trap cleanup EXIT

# 1. the same non-IID split of the demo data as `fedtune simulate` (seed 0): one file per bank
python - "$W" <<'PY'
import sys
from pathlib import Path
from common.config import resolve
from common.data.load import load_table
from common.partition import partition
cfg = resolve("configs/demo.toml")
w = Path(sys.argv[1])
pooled = load_table(cfg.simulation.data).frame
names = sorted(pooled[cfg.data.label_column].unique())
(w / "labels.txt").write_text("\n".join(names) + "\n")
for i, part in enumerate(partition(pooled, scheme=cfg.simulation.partition, num_sites=3,
                                   label_column="label", seed=cfg.train.seed)):
    part.to_csv(w / f"bank-{i}.csv", index=False)
PY

# 2. keys and certificates; 3. the coordinator; 4. enrol and start three sites
fedtune certs --out "$W/certs" --sites bank-0,bank-1,bank-2 --san 127.0.0.1,localhost
PORT=$(python -c 'from fedtune.flower import free_port; print(free_port())')
setsid fedtune coordinator start --certs "$W/certs/coordinator" --port "$PORT" --state "$W/coordinator/state.db" > "$W/coordinator.log" 2>&1 &
PIDS+=($!)
until grep -q "coordinator listening" "$W/coordinator.log"; do sleep 0.5; done
for i in 0 1 2; do
  fedtune coordinator enroll --certs "$W/certs/coordinator" --site "bank-$i" --coordinator "127.0.0.1:$PORT"
  SITEPORT=$(python -c 'from fedtune.flower import free_port; print(free_port())')
  setsid fedtune site start --coordinator "127.0.0.1:$PORT" --ca "$W/certs/site-bank-$i/ca.crt" \
      --key "$W/certs/site-bank-$i/bank-$i.key" --data "$W/bank-$i.csv" --site-dir "$W/site-bank-$i" \
      --name "bank-$i" --index "$i" --port "$SITEPORT" > "$W/site-$i.log" 2>&1 &
  PIDS+=($!)
done
for i in 0 1 2; do until grep -q "connected to coordinator" "$W/site-$i.log"; do sleep 0.5; done; done

# 5. the run, streamed; the run directory is written by the coordinator
time fedtune run --config configs/demo.toml --coordinator "127.0.0.1:$PORT" \
    --ca "$W/certs/site-bank-0/ca.crt" --out "$W/run" --set "task.labels=@$W/labels.txt" \
    --set federation.min-sites=3 --set train.threads=1
