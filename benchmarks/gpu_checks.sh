#!/usr/bin/env bash
# The search's GPU checks in one command, sized for one device call (under 10 minutes):
#   1. exactness on the device: the pruned search against the full search, 64 grids (benchmarks/search_device_check.py)
#   2. the IMO protocol's time: seed 1 of the 330 Tip-X searches, every row (×3 for all seeds; imo_protocol.py)
# Results go to benchmarks/results/ and, where $OUT is set (the device tool's output folder), are copied there.
#   bash benchmarks/gpu_checks.sh [cuda]   # PYTHON=interpreter, PROTOCOL_TIMEOUT=seconds (default 390)
# imo_protocol.py writes its JSON after every dataset: a step cut by its timeout keeps the datasets it finished.
set -uo pipefail
cd "$(dirname "$0")/.."
device="${1:-cuda}"
py="${PYTHON:-python}"
"$py" -c "import torch; print(torch.__version__, torch.cuda.get_device_name(0) if torch.cuda.is_available() else 'no CUDA')"
timeout 150 "$py" benchmarks/search_device_check.py --device "$device"; check=$?
timeout ${PROTOCOL_TIMEOUT:-390} "$py" benchmarks/imo_protocol.py --device "$device" --rows 0 --seeds 1; protocol=$?
if [ -n "${OUT:-}" ]; then
  cp benchmarks/results/search_device_check.json benchmarks/results/imo_protocol.json "$OUT"/ 2>/dev/null
fi
echo "search_device_check exit $check, imo_protocol exit $protocol (124: timed out)"
exit $(( check != 0 || protocol != 0 ))
