#!/usr/bin/env bash
# The GPU check, one prepared script (issue 30): on a machine with one CUDA GPU and no internet it
# runs the CUDA tests, trains the `gpu` recipe for 3 seeds and the `seed` recipe (ResNet9, 16
# epochs) once, runs airbench94_muon (its original GPU script, unchanged) for 3 runs on the same
# data, and prints one table (also written to $OUT/table.md); last, seed 001 as it ran (the
# seed001_sgd recipe) once, the table printed again. Sized for about 8 minutes on an H100.
#
#   bench/gpu.sh --pack   # here, on the CPU: .gpu/ gets the CIFAR-10 archive and airbench94_muon.py
#   bench/gpu.sh          # there (the device tool: carry .gpu; $OUT comes back)
#   bench/gpu.sh --dry    # anywhere, in CI too: the same steps at toy size on the CPU (the CUDA tests
#                         # skip and airbench94_muon's runs, which need CUDA, are only prepared)
#
# PYTHON (default: .venv/bin/python if present, else python3) runs everything; fitvision is used
# from src/ (PYTHONPATH), so nothing needs installing beyond what the GPU image has.
set -uo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
mode=full
case "${1:-}" in
  --dry) mode=dry ;;
  --pack) mode=pack ;;
  "") ;;
  *) echo "usage: bench/gpu.sh [--dry|--pack]" >&2; exit 2 ;;
esac
SHARED=${SHARED:-$ROOT/../shared}

if [ "$mode" = pack ]; then
  mkdir -p .gpu
  grep -qx '/.gpu/' .git/info/exclude 2>/dev/null || echo '/.gpu/' >> .git/info/exclude
  cp "$SHARED/datasets/cifar10-jpeg.tgz" "$SHARED/peers/airbench94_muon.py" .gpu/
  du -sh .gpu
  echo "now: device run, carry [\".gpu\"], command: bash bench/gpu.sh"
  exit 0
fi

PY=${PYTHON:-$( [ -x .venv/bin/python ] && echo .venv/bin/python || echo python3 )}
OUT=${OUT:-runs/gpu-$mode}
mkdir -p "$OUT"
RESULTS=$OUT/results.jsonl
rm -f "$RESULTS"
export PYTHONPATH=$ROOT/src:$ROOT/tests${PYTHONPATH:+:$PYTHONPATH}
export PYTHONUNBUFFERED=1
export FITVISION_CACHE_DIR=${FITVISION_CACHE_DIR:-/tmp/fitvision-gpu-cache}
if [ -f .gpu/cifar10-jpeg.tgz ]; then
  export FITVISION_DATA_DIR=$ROOT/.gpu
elif [ -z "${FITVISION_DATA_DIR:-}" ] && [ -d "$SHARED/datasets" ]; then
  export FITVISION_DATA_DIR=$SHARED/datasets
fi
PEER=$( [ -f .gpu/airbench94_muon.py ] && echo .gpu/airbench94_muon.py || echo "$SHARED/peers/airbench94_muon.py" )

if [ "$mode" = dry ]; then
  TOY=(--device cpu --precision fp32 --epochs 1 --train-limit 500 --valid-limit 200 --bs 100 --no-compile)
  SEED_TOY=(--width 0.25)
  PEER_TOY=(--limit 500)
else
  TOY=() SEED_TOY=() PEER_TOY=()
fi
status=0
step() { echo; echo "== $*"; }

step "environment"
"$PY" -c "import torch, platform; print('python', platform.python_version(), 'torch', torch.__version__, \
'cuda', torch.cuda.get_device_name() if torch.cuda.is_available() else 'none')" || status=1
[ "$mode" = full ] && { nvidia-smi -L || true; }

step "CUDA tests (pytest -m cuda)"
"$PY" -m pytest -q -p no:cacheprovider -m cuda tests/test_cuda.py -rs 2>&1 | tail -12 || status=1

step "gpu recipe, 3 seeds"
for seed in 0 1 2; do
  "$PY" bench/gpu.py train --label "fitvision, gpu recipe" --results "$RESULTS" -- \
    --recipe gpu --seed "$seed" --out "$OUT/gpu-s$seed" "${TOY[@]}" || status=1
done

step "seed recipe (ResNet9, 16 epochs), once"
"$PY" bench/gpu.py train --label "fitvision, seed recipe" --results "$RESULTS" -- \
  --recipe seed --out "$OUT/seed" "${TOY[@]}" "${SEED_TOY[@]}" || status=1

step "airbench94_muon (original GPU script), 3 runs"
"$PY" bench/gpu.py peer --script "$PEER" --runs 3 --results "$RESULTS" --work "$OUT/peer" "${PEER_TOY[@]}" || status=1

step "table"
"$PY" bench/gpu.py table "$RESULTS" | tee "$OUT/table.md" || status=1

# Last, so that the table above stands if the time runs out: seed 001 as it ran (momentum SGD), the
# ResNet9 row of docs/seeds/index.md that costs over an hour on a 2-core CPU.
step "seed 001 as run (seed001_sgd, ResNet9, 16 epochs), once"
"$PY" bench/gpu.py train --label "fitvision, seed001_sgd recipe" --results "$RESULTS" -- \
  --recipe seed001_sgd --out "$OUT/seed001_sgd" "${TOY[@]}" "${SEED_TOY[@]}" || status=1
"$PY" bench/gpu.py table "$RESULTS" | tee "$OUT/table.md" || status=1
exit $status
