#!/usr/bin/env bash
# The one prepared run for a lent GPU machine: everything in this project that only a GPU can show.
#
#   1. the CUDA test of the profiler (pytest -m gpu)
#   2. measured bf16 profiles of Llama-3.1-8B and Llama-3.1-70B (distinct units only) written to
#      profiler/data/profiles/MODEL.bf16.GPU.json, with the wall time of each
#   3. the executor on CUDA: an uneven PP=2 plan of Llama-3.1-8B shapes (scripts/run_gpu_executor.py),
#      predicted vs measured per stage, checked against the unsplit model
#   4. while time is left (DEADLINE_S): profiles of more architectures (EXTRA_MODELS)
#
# Everything lands in $OUT (or ./gpu-out): session.log and results.tgz (profiles/ and exec/, the executor's
# report). Commit the profiles under profiler/data/profiles/.
# The calibration analysis of the profiles needs no GPU: run scripts/calibration_report.py on them.
#
# Missing Python packages can travel as wheels in .whl/ (installed into /tmp/site first).
# Rehearsal without a GPU: DEVICE=cpu MODELS="tiny-llama tiny-moe" EXEC_ARGS="--base tiny-llama --device cpu
#   --dtype float32" PPPLAN_PROFILE_GRID="prefill=16,64;batch=1,4;context=64" scripts/gpu_session.sh
set -uo pipefail
cd "$(dirname "$0")/.."
export PYTHONUNBUFFERED=1
RES="${OUT:-$PWD/gpu-out}"
mkdir -p "$RES"
DEVICE="${DEVICE:-cuda}"
MODELS="${MODELS-llama-3.1-8b llama-3.1-70b}"
EXTRA_MODELS="${EXTRA_MODELS-mixtral-8x7b qwen2.5-72b}"
DEADLINE_S="${DEADLINE_S:-330}"  # no extra profile starts after this many seconds
HARD_S="${HARD_S:-500}"          # every step ends by this many seconds (results are packed after)
EXEC_ARGS="${EXEC_ARGS:-}"
EXEC_DTYPES="${EXEC_DTYPES-float32 bfloat16}"  # the executor check runs once per dtype
RUN_TEST="${RUN_TEST:-1}"
if compgen -G ".whl/*.whl" >/dev/null; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
    || { echo "error: could not install the carried wheels" >&2; exit 1; }
  export PYTHONPATH="$PWD:/tmp/site"
else
  export PYTHONPATH="$PWD"
fi
ppplan() { python3 -c 'import sys; sys.argv[0] = "ppplan"; from ppplan.api.cli import main; main()' "$@"; }
step() {  # step NAME TIMEOUT_S CMD...: run with a timeout, report rc and seconds, never stop the session
  local name=$1 limit=$2 start=$SECONDS rc
  shift 2
  if (( HARD_S - SECONDS < limit )); then limit=$((HARD_S - SECONDS)); fi
  if (( limit < 10 )); then echo "=== skipped $name: past ${HARD_S} s"; return; fi
  echo "=== $name (at most $limit s)"
  timeout "$limit" "$@"
  rc=$?
  echo "=== $name: rc=$rc in $((SECONDS - start)) s"
}
export -f ppplan

{
  date -u +"start %FT%TZ"
  nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.max.sm --format=csv 2>/dev/null || echo "no nvidia-smi"
  python3 -c "import torch, transformers; print('torch', torch.__version__, '| CUDA', torch.version.cuda, \
'| transformers', transformers.__version__, '| GPU', torch.cuda.get_device_name() if torch.cuda.is_available() else None)"
  if [[ "$DEVICE" == cpu ]]; then
    GPU=CPU
  else
    GPU="$(python3 -c 'import torch; from ppplan.profiler.measure import resolve_cuda_gpu; print(resolve_cuda_gpu(torch.cuda.get_device_name()).name)')" \
      || { echo "error: no CUDA GPU the catalog knows"; exit 2; }
    if [[ "$RUN_TEST" == 1 ]]; then
      step "CUDA test" 150 python3 -m pytest -q -m gpu tests/test_profiler_measure.py -p no:cacheprovider
    fi
  fi
  echo "catalog GPU: $GPU"
  mkdir -p "$RES/profiles"
  for m in $MODELS; do
    step "profile $m" 200 bash -c "ppplan profile $m --device $DEVICE --weight-dtype bf16 --kv-dtype bf16 \
      --out $RES/profiles/$m.bf16.$GPU.json"
  done
  for dt in $EXEC_DTYPES; do
    # shellcheck disable=SC2086
    step "executor $dt" 150 python3 scripts/run_gpu_executor.py --out "$RES/exec/$dt" --dtype "$dt" $EXEC_ARGS
  done
  for m in $EXTRA_MODELS; do
    if (( SECONDS > DEADLINE_S )); then echo "=== skipped profile $m: past ${DEADLINE_S} s"; continue; fi
    step "profile $m" 150 bash -c "ppplan profile $m --device $DEVICE --weight-dtype bf16 --kv-dtype bf16 \
      --out $RES/profiles/$m.bf16.$GPU.json"
  done
  date -u +"end %FT%TZ"
} 2>&1 | tee "$RES/session.log"
# one tarball (the way back takes at most 8 files); a run killed before this line still returns the
# log, the profiles and the executor report as loose files
rm -rf "$RES"/exec/*/run  # rank scratch files; the report keeps what matters
(cd "$RES" && tar czf results.tgz profiles exec && rm -rf profiles exec)
ls -la "$RES"
