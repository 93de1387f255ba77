#!/usr/bin/env bash
# GPU rollout check: a short GRPO run (configs/debug/grpo.yaml on the full SmolLM2-135M, 2 steps) with
#   1. the in-process HF engine on CUDA,
#   2. the SGLang `colocate` engine (sglang.Engine in this process, LoRA synced as an adapter),
#   3. the `server` engine against `lit-swift rollout --backend sglang` on the same GPU.
# Runs 2-3 need CUDA and an importable sglang (`pip install 'lit-swift[rollout]'`); without them the
# script says so and skips them.
#   bash bench/gpu_rollout.sh            # run (GPU machine)
#   bash bench/gpu_rollout.sh --dry-run  # print the commands and what would be skipped (any machine)
set -euo pipefail
cd "$(dirname "$0")/.."
DRY=0
[[ "${1:-}" == "--dry-run" ]] && DRY=1
PY=${PYTHON:-python}
OUT=${OUT:-runs/gpu-rollout}
PORT=${PORT:-30123}
FIT=(-m lit_swift fit --config configs/debug/grpo.yaml --trainer.accelerator gpu --trainer.max_steps 2
  --model.init_args.config_overrides null)

run() {
  echo "+ $*"
  if [[ $DRY == 0 ]]; then
    local start=$SECONDS
    "$@"
    echo "  took $((SECONDS - start)) s"
  fi
}

run "$PY" "${FIT[@]}" --trainer.default_root_dir "$OUT/hf"

if ! reason=$("$PY" -c "from lit_swift.rollout import sglang; r = sglang.available(); print(r or ''); raise SystemExit(1 if r else 0)" 2>&1 | tail -1); then
  echo "skip: SGLang colocate and server runs: $reason"
  [[ $DRY == 1 ]] || exit 0
  echo "(dry run: the commands they would run follow)"
fi

colocate='{"class_path": "lit_swift.rollout.sglang.SGLangEngine", "init_args": {"model": "smollm2-135m-instruct", "sync": "adapter", "max_lora_rank": 8, "mem_fraction_static": 0.3}}'
run "$PY" "${FIT[@]}" --trainer.default_root_dir "$OUT/sglang-colocate" --model.init_args.engine "$colocate"

server='{"class_path": "lit_swift.rollout.remote.ServerEngine", "init_args": {"url": "http://127.0.0.1:'$PORT'"}}'
echo "+ $PY -m lit_swift rollout --model smollm2-135m-instruct --backend sglang --port $PORT --max_lora_rank 8 --sglang_args '[--mem-fraction-static, \"0.3\"]' &"
if [[ $DRY == 0 ]]; then
  "$PY" -m lit_swift rollout --model smollm2-135m-instruct --backend sglang --port "$PORT" --max_lora_rank 8 \
    --sglang_args '[--mem-fraction-static, "0.3"]' &
  server_pid=$!
  trap 'kill $server_pid 2>/dev/null || true' EXIT
  for _ in $(seq 300); do curl -sf "http://127.0.0.1:$PORT/health" >/dev/null && break; sleep 1; done
fi
run "$PY" "${FIT[@]}" --trainer.default_root_dir "$OUT/sglang-server" --model.init_args.engine "$server"
