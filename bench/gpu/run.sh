#!/usr/bin/env bash
# On a lent GPU machine: unpack .gpu/ (made by bench/gpu/bundle.py, carried with the call), run the FracAtlas
# federated benchmark (bench/fracatlas_federated.py) on the GPU, and leave its results in $OUT:
# results.md, results.json, bench.log, env.txt, gpu.csv (utilisation every 5 s), runs.tgz (each arm's logs and records).
# Extra arguments go to the benchmark (e.g. --epochs 4). TIME_LIMIT (seconds, default 480) stops arms still running,
# so a 600 s device command always ends with whatever finished written out.
set -uo pipefail
cd "$(dirname "$0")/../.."
OUT=${OUT:-$PWD/gpu-out}
mkdir -p "$OUT"
for f in .gpu/site.tar.xz .gpu/fracatlas.tar.gz; do
  [ -f "$f" ] || { echo "missing $f: run bench/gpu/bundle.py on the CPU machine and carry .gpu"; exit 2; }
done
SITE=/tmp/fracfl-site
rm -rf "$SITE" /tmp/fracatlas /tmp/fracfl-bench && mkdir -p "$SITE"
python3 -c 'import sys, tarfile; [tarfile.open(f).extractall(d, filter="tar") for f, d in zip(sys.argv[1::2], sys.argv[2::2])]' \
  .gpu/site.tar.xz "$SITE" .gpu/fracatlas.tar.gz /tmp || exit 2
export PYTHONPATH="$SITE:$PWD" FRACATLAS_DIR=/tmp/fracatlas FRACFL_CACHE_DIR=/tmp/fracfl-cache PYTHONUNBUFFERED=1
python3 - > "$OUT/env.txt" 2>&1 <<'EOF' || { cat "$OUT/env.txt"; exit 2; }
import platform, torch, flwr, ray, ultralytics, opacus, hydra, omegaconf
print("python", platform.python_version(), "torch", torch.__version__, "flwr", flwr.__version__, "ray", ray.__version__,
      "ultralytics", ultralytics.__version__, "opacus", opacus.__version__, "hydra", hydra.__version__)
assert torch.cuda.is_available(), "torch sees no GPU"
print("gpu", torch.cuda.get_device_name(0))
EOF
cat "$OUT/env.txt"
nvidia-smi --query-gpu=timestamp,utilization.gpu,memory.used --format=csv -l 5 > "$OUT/gpu.csv" 2>/dev/null &
SMI=$!
python3 bench/fracatlas_federated.py --device cuda --out /tmp/fracfl-bench --time-limit "${TIME_LIMIT:-480}" "$@" \
  2>&1 | tee "$OUT/bench.log"
code=${PIPESTATUS[0]}
kill "$SMI" 2>/dev/null
cp /tmp/fracfl-bench/results.json /tmp/fracfl-bench/results.md "$OUT/" 2>/dev/null
(cd /tmp/fracfl-bench && find . \( -name bench.log -o -name records.jsonl -o -name job.yaml -o -name metrics.json \
  -o -name history.csv -o -name sites.md -o -name privacy-ledger.jsonl -o -name summary.md -o -name '*.log' \) \
  -print0 | tar czf "$OUT/runs.tgz" --null -T -)
exit "$code"
