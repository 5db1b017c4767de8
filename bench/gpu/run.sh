#!/usr/bin/env bash
# The FracAtlas federated benchmark (bench/fracatlas_federated.py) in one device call, sized to the call's time.
#
#   bash bench/gpu/run.sh [--smoke] [benchmark arguments, e.g. --extra "train.workers=12" --arms central,fedavg]
#
# On a lent GPU machine: unpack .gpu/ (made by bench/gpu/bundle.py, carried with the call), check the imports and the
# GPU, then run the benchmark with --time-limit set so that everything, this script's own unpacking and packing
# included, ends within BUDGET seconds (default 500, under the call's 600): the benchmark probes this machine's speed
# first and sizes the epochs to the time left. --smoke runs the same path on a CPU in a few minutes (tiny images,
# 2 epochs, the packages already installed, no unpacking; set PYTHON to the interpreter, BUDGET default 240).
#
# First, on a GPU, bench/train_throughput.py's breakdown (loader, forward+backward, step, DP step, evaluation) for at
# most THROUGHPUT_S seconds (default 70; 0 skips it).
# $OUT (at most 8 files of 16 MiB, flat): results.md, results.tgz (results.json with the probe figures and the plan,
# bench.log, throughput.log, env.txt, gpu.csv, each arm's logs and records), bench.log, and <arm>.fp16.safetensors (15.5 MiB each)
# for the arms in --weights (default central, fedavg, fedavg_gn, fedavg_dp: five would exceed the 64 MiB in all).
set -uo pipefail
T0=$SECONDS
cd "$(dirname "$0")/../.."
OUT=${OUT:-$PWD/gpu-out}
PY=${PYTHON:-python3}
RESERVE=25  # seconds kept for stopping the last arm, packing and copying
WORK=$(mktemp -d /tmp/fracfl-gpu.XXXXXX)
META=$WORK/meta
mkdir -p "$OUT" "$META"
trap 'rm -rf "$WORK"' EXIT  # everything worth keeping is in $OUT by then

if [ "${1:-}" = "--smoke" ]; then
  shift
  MODE=(--smoke)
  BUDGET=${BUDGET:-240}
  export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
else
  MODE=(--device cuda)
  BUDGET=${BUDGET:-500}
  for f in .gpu/site.tar.xz .gpu/fracatlas.tar.gz; do
    [ -f "$f" ] || { echo "missing $f: run bench/gpu/bundle.py on the CPU machine and carry .gpu"; exit 2; }
  done
  mkdir -p "$WORK/site"
  "$PY" -c 'import sys, tarfile; [tarfile.open(f).extractall(d, filter="tar") for f, d in zip(sys.argv[1::2], sys.argv[2::2])]' \
    .gpu/site.tar.xz "$WORK/site" .gpu/fracatlas.tar.gz "$WORK" || exit 2
  export PYTHONPATH="$WORK/site:$PWD" FRACATLAS_DIR=$WORK/fracatlas FRACFL_CACHE_DIR=$WORK/cache
fi
export PYTHONUNBUFFERED=1
REQUIRE_GPU=$([ "${MODE[0]}" = "--smoke" ] && echo 0 || echo 1) "$PY" - > "$META/env.txt" 2>&1 <<'EOF' || { cat "$META/env.txt"; cp "$META/env.txt" "$OUT/"; exit 2; }
import os, platform, torch, flwr, ray, ultralytics, opacus, hydra, omegaconf
print("python", platform.python_version(), "torch", torch.__version__, "flwr", flwr.__version__, "ray", ray.__version__,
      "ultralytics", ultralytics.__version__, "opacus", opacus.__version__, "hydra", hydra.__version__,
      "cores", os.cpu_count())
assert torch.cuda.is_available() or os.environ["REQUIRE_GPU"] == "0", "torch sees no GPU"
print("gpu", torch.cuda.get_device_name(0) if torch.cuda.is_available() else "none")
EOF
cat "$META/env.txt"
SMI=
if command -v nvidia-smi > /dev/null; then
  nvidia-smi --query-gpu=timestamp,utilization.gpu,memory.used --format=csv -l 5 > "$META/gpu.csv" 2>/dev/null &
  SMI=$!
fi

# Where a training step's time goes on this card (issue 13's breakdown), bounded: THROUGHPUT_S seconds (0: skip).
if [ "${MODE[0]}" != "--smoke" ] && [ "${THROUGHPUT_S:-70}" -gt 0 ]; then
  timeout "${THROUGHPUT_S:-70}" "$PY" bench/train_throughput.py --devices cuda --batch 128 --seconds 3 \
    --data "$FRACATLAS_DIR" 2>&1 | grep -v Warning | tee "$META/throughput.log"
fi

LIMIT=$(( BUDGET - (SECONDS - T0) - RESERVE ))
echo "setup took $(( SECONDS - T0 )) s; the benchmark gets $LIMIT s of the $BUDGET s budget"
"$PY" bench/fracatlas_federated.py "${MODE[@]}" --out "$WORK/bench" --pack "$OUT" --time-limit "$LIMIT" "$@" \
  2>&1 | tee "$META/bench.log"
code=${PIPESTATUS[0]}
[ -n "$SMI" ] && kill "$SMI" 2>/dev/null

(cd "$WORK" && find meta bench \( -name results.json -o -name bench.log -o -name records.jsonl -o -name job.yaml \
  -o -name metrics.json -o -name history.csv -o -name sites.md -o -name privacy-ledger.jsonl -o -name summary.md \
  -o -name '*.log' -o -name env.txt -o -name gpu.csv -o -name checkpoint.json \) -print0 \
  | tar czf "$OUT/results.tgz" --null -T -)
cp "$META/bench.log" "$OUT/bench.log"
# What a device call brings back: at most 8 files of at most 16 MiB, 64 MiB in all. Say so loudly rather than lose
# files silently (bench/outbox.py already keeps the weights within these).
n=$(find "$OUT" -type f | wc -l)
big=$(find "$OUT" -type f -size +16777216c)
total=$(find "$OUT" -type f -printf '%s\n' | awk '{s += $1} END {print s + 0}')
if [ "$n" -gt 8 ] || [ -n "$big" ] || [ "$total" -gt 67108864 ]; then
  echo "OUT BREAKS THE DEVICE LIMITS: $n files (at most 8), $total bytes (at most 67108864); over 16 MiB: ${big:-none}"
  code=3
fi
ls -l "$OUT"
echo "run.sh: $(( SECONDS - T0 )) s in all, exit $code"
exit "$code"
