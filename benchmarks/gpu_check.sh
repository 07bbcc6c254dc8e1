#!/usr/bin/env bash
# GPU check, ready for whoever holds a CUDA machine (fits 10 minutes on one GPU):
#   1. the tests marked `cuda` (tests/test_cuda.py: shared scoring routes = repeated in float32
#      and bf16, with and without gradient checkpointing; a short SFT -> mult run in bf16);
#   2. bench_scoring.py --sections routes: one training step per route (cache, packed, packed
#      with checkpointing, repeated, repeated with checkpointing) at 1+3, 1+19, 1+99 candidates,
#      bf16 weights: seconds, tokens/s, contexts/s, peak memory, MFU against the device's peak;
#   3. bench_training.py: the real PreferenceTrainer (Mult-DPO, 1+19, bf16 autocast), shared /
#      repeated x precomputed reference x checkpointing: contexts/s, tokens/s, peak memory, MFU;
#   4. vllm_check.py: a `setdpo export` of a lab run loaded in vLLM, candidates scored from its
#      prompt log-probs against setdpo's scores (skipped, with the reason, without vLLM or CUDA).
# Everything goes to benchmarks/results/<UTC time>-<device>/ (test log, JSON rows, printouts).
#
#   benchmarks/gpu_check.sh                     # on the GPU machine
#   benchmarks/gpu_check.sh --device cpu --quick   # dry run of the script itself on a CPU
#
# PYTHON (default .venv/bin/python) must have torch with CUDA and the `dev` extras installed.
set -euo pipefail
cd "$(dirname "$0")/.."

device=cuda
quick=0
while [ $# -gt 0 ]; do
    case "$1" in
        --device) device="$2"; shift 2 ;;
        --quick) quick=1; shift ;;
        *) echo "usage: $0 [--device cuda|cpu] [--quick]" >&2; exit 2 ;;
    esac
done
python=${PYTHON:-.venv/bin/python}
out="benchmarks/results/$(date -u +%Y%m%dT%H%M%SZ)-$device"
mkdir -p "$out"
export PYTHONPATH="$PWD/src${PYTHONPATH:+:$PYTHONPATH}"
start=$SECONDS
echo "writing to $out"

if [ "$device" = cuda ]; then
    "$python" -c 'import torch, sys; sys.exit(0 if torch.cuda.is_available() else "no CUDA device: use --device cpu --quick for a dry run")'
    nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv > "$out/device.csv"
    scoring=(--dtype bf16 --train-repeats 3 --skip)  # every route and size fits a GPU
    training=(--bf16 --steps 6 --batch 4 --negatives 19 --candidates 20)
    limits=(200 120 150 120)  # seconds per stage: 590 s in all, within the 10 minutes
else
    export OMP_NUM_THREADS=1 MKL_NUM_THREADS=1
    scoring=(--dtype float32 --train-repeats 1 --threads 1)
    training=(--steps 2 --batch 1 --negatives 1 --candidates 4 --threads 1)
    if [ "$quick" = 1 ]; then
        scoring+=(--route-negatives 3 --routes cache packed+ckpt)
    fi
    limits=(0 0 0 0)  # no limit: a CPU run takes what it takes
fi
failed=0
stage() {  # stage NAME: report a failed or timed-out stage, go on with the next
    local status=$?
    if [ "$status" != 0 ]; then
        echo "stage $1 failed (exit status $status; 124 = timed out)" | tee -a "$out/failures.txt"
        failed=1
    fi
}

# 1. tests (skipped with a reason where CUDA is absent)
timeout "${limits[0]}" "$python" -m pytest tests/test_cuda.py -m cuda -q -p no:randomly \
    -p no:cacheprovider -rs 2>&1 | tee "$out/tests.txt" || stage tests

# 2. scoring routes
timeout "${limits[1]}" "$python" benchmarks/bench_scoring.py --sections routes --device "$device" \
    --no-trl "${scoring[@]}" --json "$out/scoring.json" 2>&1 | tee "$out/scoring.txt" \
    || stage scoring

# 3. training throughput
timeout "${limits[2]}" "$python" benchmarks/bench_training.py --device "$device" --checkpointing \
    --no-write "${training[@]}" --json "$out/training.json" 2>&1 | tee "$out/training.txt" \
    || stage training

# 4. vLLM loads an export and scores it as setdpo does (skipped with the reason without vLLM)
timeout "${limits[3]}" "$python" benchmarks/vllm_check.py --json "$out/vllm.json" 2>&1 \
    | tee "$out/vllm.txt" || stage vllm

echo "done in $((SECONDS - start)) s: $out"
exit "$failed"
