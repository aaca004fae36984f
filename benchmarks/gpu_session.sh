#!/usr/bin/env bash
# Everything this project asks of a GPU session, as one command (for the `device` tool):
#   1. rebuild the shipped models on corpus v2: `python -m dllm_lesson build-models`
#      (tiny-bert, tiny-dllm, tiny-ar, tiny-duo, tiny-duo-dcd; cards, metrics);
#   2. the full preset's training throughput and MFU (benchmarks/full_preset_throughput.py);
#   3. decoding speed of the rebuilt tiny-dllm on the GPU (`python -m dllm_lesson bench`).
# Each result lands in $OUT as at most 8 files (the tool's limit): one .tgz per model
# (a shipped folder each, under the tool's 16 MiB per file), session.log, results.json.
#
#   bash benchmarks/gpu_session.sh              # on the GPU machine, OUT set by the tool
#   BUILD_ARGS="--scale 4 --corpus-version 3" bash benchmarks/gpu_session.sh
#                                               # longer stages, another corpus (build-models options)
#   SMOKE=1 OUT=/tmp/out bash benchmarks/gpu_session.sh   # CPU, toy scale: checks the script
#
# The GPU image has no `datasets`: carry its wheels in `.whl` (git-ignored; then `carry`
# names it) and the script installs them first. Fetched here with
#   python3 -m pip download --no-deps --only-binary=:all: --python-version 3.12 \
#     --implementation cp --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 \
#     -d .whl datasets==5.2.0 dill==0.4.1 multiprocess==0.70.19
# (datasets 5.2 needs pyarrow >= 24: check `pip show pyarrow` there, or carry it too). Unpack the models here with
#   for f in <files_at>/*.tgz; do tar xzf "$f" -C dllm_lesson/checkpoints; done
set -euo pipefail
export PYTHONUNBUFFERED=1 TOKENIZERS_PARALLELISM=false
OUT=${OUT:?set OUT to a folder for the results}
mkdir -p "$OUT"
PY=${PYTHON:-python3}
if compgen -G ".whl/*.whl" > /dev/null; then
  $PY -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
      --target /tmp/site .whl/*.whl
  export PYTHONPATH=/tmp/site:$PWD
else
  export PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH}
fi
log="$OUT/session.log"
work=${WORK:-runs/gpu-build}
if [[ -n "${SMOKE:-}" ]]; then
  scale=(--scale 0.002 --eval-limit 8); smoke=(--cpu-smoke); bench=(--prompts 4 --lengths 64)
else
  scale=(); smoke=(--batch-size 16 32 64); bench=(--prompts 64 --batch-size 32)
fi
{
  echo "== $(date -u +%FT%TZ) $(hostname) $($PY -c 'import torch; print(torch.__version__, torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu")')"
  start=$(date +%s)
  # shellcheck disable=SC2086  # BUILD_ARGS is a list of options, split on purpose
  $PY -m dllm_lesson build-models --work-dir "$work" --dest "$work/shipped" "${scale[@]}" \
      ${BUILD_ARGS:-}
  echo "== build-models: $(( $(date +%s) - start )) s"
  for d in "$work"/shipped/*/; do
    name=$(basename "$d")
    tar czf "$OUT/$name.tgz" -C "$work/shipped" "$name"
  done
  $PY benchmarks/full_preset_throughput.py "${smoke[@]}" --json "$work/throughput.json"
  dev=$($PY -c 'import torch; print("cuda" if torch.cuda.is_available() else "cpu")')
  $PY -m dllm_lesson bench --model "$work/shipped/tiny-dllm" --device "$dev" "${bench[@]}" \
      --json "$work/bench.json"
  $PY - "$work" "$OUT/results.json" <<'PYEOF'
import json, sys
from pathlib import Path
work = Path(sys.argv[1])
res = {"throughput": json.loads((work / "throughput.json").read_text()),
       "bench": json.loads((work / "bench.json").read_text()),
       "stages": {p.parent.name: json.loads(p.read_text())
                  for p in sorted(work.glob("*/build_run.json"))}}
Path(sys.argv[2]).write_text(json.dumps(res, indent=1))
PYEOF
  echo "== done in $(( $(date +%s) - start )) s"
} 2>&1 | tr '\r' '\n' | awk 'NF && (!/%\|/ || /100%\|/)' > "$log"
