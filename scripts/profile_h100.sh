#!/usr/bin/env bash
# Profile Llama-3.1-8B and Llama-3.1-70B (distinct units only: embedding, one decoder layer, head)
# in bf16 on one H100 and write the profile files to profiler/data/profiles/. Then calibrate the
# H100 from the 8B profile and check how well that predicts the 70B's measured units.
#
#   scripts/profile_h100.sh            # default CUDA grid, a few minutes
#   BUDGET=120 scripts/profile_h100.sh # coarser grid to stay within 120 s per model
#
# Needs a CUDA GPU; exits 2 with a clear message otherwise. Never fakes data.
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=profiler/data/profiles
mkdir -p "$OUT"
BUDGET_ARGS=()
if [[ -n "${BUDGET:-}" ]]; then BUDGET_ARGS=(--budget-seconds "$BUDGET"); fi
python3 -c "import torch,sys; sys.exit(0 if torch.cuda.is_available() else 2)" || {
  echo "error: device: no CUDA GPU visible to torch; this script measures on an H100" >&2; exit 2; }
python3 -c "import torch; print('device:', torch.cuda.get_device_name(), '| torch', torch.__version__, '| CUDA', torch.version.cuda)"
for m in llama-3.1-8b llama-3.1-70b; do
  /usr/bin/time -f "$m: %e s wall" ppplan profile "$m" --device cuda --weight-dtype bf16 --kv-dtype bf16 \
    "${BUDGET_ARGS[@]}" --out "$OUT/$m.bf16.H100-SXM-80GB.json"
done
ppplan calibrate "$OUT/llama-3.1-8b.bf16.H100-SXM-80GB.json" --model llama-3.1-70b \
  --out "$OUT/llama-3.1-70b.bf16.analytic-calibrated-from-8b.H100-SXM-80GB.json"
python3 - <<'PY'
import numpy as np
from profiler.calibrate import points_from_profile, predict_points
from profiler.profile import load_profile
d = "profiler/data/profiles/"
m70 = load_profile(d + "llama-3.1-70b.bf16.H100-SXM-80GB.json")
cal = load_profile(d + "llama-3.1-70b.bf16.analytic-calibrated-from-8b.H100-SXM-80GB.json")
pts = points_from_profile(m70)
pred = predict_points(cal, "H100-SXM-80GB", pts)
meas = np.array([p.seconds for p in pts])
for phase in ("prefill", "decode"):
    sel = [k for k, p in enumerate(pts) if p.phase == phase]
    print(f"70B {phase}: median |error| of the 8B-calibrated roofline {np.median(np.abs(pred[sel] / meas[sel] - 1)):.1%}")
print("profile seconds:", m70.provenance["profile_seconds"], "distinct units:", m70.provenance["distinct_units"])
PY
