#!/usr/bin/env bash
# The measurements that wait for a GPU, prepared so that a session lent one spends its device minutes measuring.
#
#   bash benchmarks/gpu_session.sh PART [PART ...]
#
# PART, in the order the developers' brief asks for them (a lent machine gives ~15 minutes in all, one command at
# most 10: run one or two parts a call, and check the time each took in its log):
#   tests   the CUDA tests: beam search, prefix tables, k-means and SASRec on the GPU against the CPU, and the
#           CUDA-graph decode step (generate.compile on a GPU) against the eager one (~1-2 min)
#   mfu     training throughput, peak memory and MFU at bf16 of the 0.015B / 0.121B (DDP) and 0.935B (FSDP)
#           presets under torchrun over every GPU: benchmarks/distributed.py --parts gpu (issue 38; ~5 min)
#   amazon  the generator at a size a CPU cannot train, on Amazon 2014 (issue 37): SEEDS in parallel on the one
#           GPU, the TIGER protocol of `onerec bench amazon`, each run capped at BUDGET seconds of training
#   scaling the lazy decoder's scaling curve on the 10M-event world (issue 37): SIZES trained one epoch each on the
#           GPU, valid loss against parameters and the fitted L(N) (benchmarks/scaling.py; the world is built there
#           first, ~2 min of CPU; --resume continues an interrupted call on the same machine)
#   decode  Pass@512 over 1M items with CUDA graphs and bf16 against eager (issue 43): benchmarks/pass512.py
#   decode-aot  the same in fp32 with generate.compile=aot (AOTInductor's CUDA packages) and CUDA graphs against
#           eager, interleaved (issue 43; the packages compile first, ~1 min a preset)
#
# Everything a part measures is copied to $OUT (on the device machine: the folder that comes back; at most 8
# files), with a log per part. Environment (defaults in brackets):
#   OUT [runs/gpu-session]   PYTHON [python3]
#   DEVICE [cuda]            cpu: a smoke run of the parts' commands on a machine without a GPU (tests skip, amazon
#                            trains on the CPU: use a tiny BUDGET; mfu, decode and decode-aot need CUDA and are
#                            refused)
#   DATASETS [.gpudata]      amazon: a folder holding amazon2014_s3rec/ and amazon2014_text/. ../shared does not
#                            travel to the device machine; copy them into the checkout first, ignored by git:
#                              mkdir -p .gpudata && cp -r ../shared/datasets/amazon2014_s3rec \
#                                ../shared/datasets/amazon2014_text .gpudata/ && echo /.gpudata/ >> .git/info/exclude
#                            and name .gpudata in the device call's carry.
#   CATEGORY [toys]  SEEDS ["0 1 2"]  BUDGET [420]  THREADS [4]
#   MODEL ["model.arch=lazy model.dec_layers=4 model.d_model=256 model.dropout=0.25 train.valid_every=5"]
#                            amazon: the overrides (the lazy decoder at width 256 with dropout 0.25: what helped the
#                            encoder-decoder on Scientific's GPU study; valid scored every 5th epoch and the last)
#   SIZES ["lazy-0.1m,lazy-0.3m,lazy-1m,lazy-3m,lazy-10m"]  SCALING_ARGS ["--n-events 10000000 --n-users 100000
#                            --epochs 1"]  scaling: the presets and the world (--quick: a tiny world, for a smoke run)
#   PRESETS ["onerec-0.015b onerec-0.121b lazy-10m onerec-v2-0.1b"]  decode, decode-aot: the presets
#
# A device call (the `device` tool), for example:
#   run(command="bash benchmarks/gpu_session.sh tests mfu", timeout_s=540)
#   run(command="bash benchmarks/gpu_session.sh amazon", carry=[".gpudata"], timeout_s=580)
# then, here: onerec bench merge OUT/amazon-toys.gpu-seed*.json --out benchmarks/results/amazon2014/<name>.json
# Without a GPU every part says so and exits 3, measuring nothing.
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-runs/gpu-session}
PY=${PYTHON:-python3}
export PYTHONPATH=$PWD/src${PYTHONPATH:+:$PYTHONPATH} PYTHONUNBUFFERED=1
mkdir -p "$OUT"

stamp() { date -u +%H:%M:%S; }
[ $# -gt 0 ] || { awk 'NR > 1 && /^#/ { print; next } NR > 1 { exit }' "$0"; exit 2; }
DEVICE=${DEVICE:-cuda}
for part in "$@"; do
  case $part in tests|mfu|amazon|scaling|decode|decode-aot) ;;
    *) echo "unknown part '$part': choose tests, mfu, amazon, scaling, decode, decode-aot" >&2; exit 2;; esac
done
if [ "$DEVICE" = cpu ]; then
  for part in "$@"; do
    case $part in mfu|decode|decode-aot) echo "$part needs CUDA: not run with DEVICE=cpu" >&2; exit 2;; esac
  done
elif ! "$PY" -c 'import sys, torch; sys.exit(0 if torch.cuda.is_available() else 3)'; then
  echo "no CUDA device here: nothing measured (these parts need a GPU; DEVICE=cpu for a smoke run)" >&2
  exit 3
fi
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader 2>/dev/null | tee "$OUT/device.txt"
"$PY" -c 'import torch; print("torch", torch.__version__, "cuda", torch.version.cuda)' | tee -a "$OUT/device.txt"
git log -1 --format='commit %h (%cI)' 2>/dev/null | tee -a "$OUT/device.txt"

status=0
for part in "$@"; do
  echo "[$(stamp)] $part"
  t0=$SECONDS
  case $part in
    tests)
      "$PY" -m pytest -q -rs -p no:cacheprovider -k "cuda or CUDA" tests/generate/test_compiled.py tests/generate/test_aot.py \
        tests/generate/test_beam.py tests/tokenizer/test_constraints.py tests/tokenizer/test_kmeans.py \
        tests/baselines/test_sasrec.py 2>&1 | tee "$OUT/tests.log" || status=1
      ;;
    mfu)
      "$PY" benchmarks/distributed.py --parts gpu --gpu-steps "${GPU_STEPS:-40}" --work runs/gpu-distributed \
        2>&1 | tee "$OUT/mfu.log" || status=1
      cp benchmarks/results/distributed.json "$OUT/" 2>/dev/null
      ;;
    amazon)
      data=${DATASETS:-.gpudata}
      [ -d "$data/amazon2014_s3rec" ] || { echo "amazon: $data/amazon2014_s3rec not found (see DATASETS above)" >&2; status=1; continue; }
      cat=${CATEGORY:-toys}
      model=${MODEL:-model.arch=lazy model.dec_layers=4 model.d_model=256 model.dropout=0.25 train.valid_every=5}
      pids=()
      for s in ${SEEDS:-0 1 2}; do
        # shellcheck disable=SC2086  # MODEL holds several overrides
        "$PY" -m onerec bench amazon --category "$cat" --seeds "$s" --models onerec --datasets "$data" \
          --out "runs/gpu-$cat" --results "$OUT/amazon-$cat.gpu-seed$s.json" --budget-s "${BUDGET:-420}" \
          --note "gpu_session.sh amazon: ${SEEDS:-0 1 2} in parallel on one GPU" \
          train.threads="${THREADS:-4}" train.device="$DEVICE" $model > "$OUT/amazon-seed$s.log" 2>&1 &
        pids+=($!)
      done
      for p in "${pids[@]}"; do wait "$p" || status=1; done
      tail -n 3 "$OUT"/amazon-seed*.log
      ;;
    scaling)
      # shellcheck disable=SC2086  # SCALING_ARGS holds several options
      "$PY" benchmarks/scaling.py ${SCALING_ARGS:---n-events 10000000 --n-users 100000 --epochs 1} --resume \
        --sizes "${SIZES:-lazy-0.1m,lazy-0.3m,lazy-1m,lazy-3m,lazy-10m}" --workdir runs/gpu-scaling --device "$DEVICE" \
        --out "$OUT/scaling.$DEVICE.json" 2>&1 | tee "$OUT/scaling.log" || status=1
      ;;
    decode)
      # shellcheck disable=SC2086
      "$PY" benchmarks/pass512.py --device cuda --compile --precision bf16 --batches 1 8 --reps 5 \
        --presets ${PRESETS:-onerec-0.015b onerec-0.121b lazy-10m onerec-v2-0.1b} --out "$OUT/pass512.cuda.json" \
        2>&1 | tee "$OUT/decode.log" || status=1
      ;;
    decode-aot)
      # shellcheck disable=SC2086
      "$PY" benchmarks/pass512.py --device cuda --compile --aot --batches 1 8 --reps 5 \
        --presets ${PRESETS:-onerec-0.015b onerec-0.121b lazy-10m onerec-v2-0.1b} --out "$OUT/pass512.cuda-aot.json" \
        2>&1 | tee "$OUT/decode-aot.log" || status=1
      ;;
  esac
  echo "[$(stamp)] $part done in $((SECONDS - t0)) s"
done
exit $status
