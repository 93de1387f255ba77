#!/usr/bin/env bash
# One-GPU check of lit-swift's packed bf16 path: ~1B SmolLM2-architecture model, random weights, LoRA and
# full fine-tuning, with and without Liger; prints tokens/s, MFU, peak GPU memory, packed == padded loss.
#
#   bash bench/gpu_check.sh --prepare        # on the CPU host: tokenizer (+ liger-kernel wheel) -> runs/gpu_assets
#   bash bench/gpu_check.sh --dry-run        # anywhere: syntax, imports, arguments, tokenizer, data; no training
#   bash bench/gpu_check.sh [ARGS...]        # on the GPU machine (< 8 min on one H200); ARGS go to gpu_check.py
#
# The GPU machine has torch, transformers, lightning, peft and triton but no network: wheels carried in
# runs/gpu_assets/wheels are installed with --no-deps, then the project itself with --no-deps, and the
# imports are checked before anything runs. $PYTHON picks the interpreter (default: python).
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
ASSETS=${GPU_CHECK_ASSETS:-$ROOT/runs/gpu_assets}
PY=${PYTHON:-python}
MODE=run
ARGS=()
for arg in "$@"; do
  case $arg in
    --prepare) MODE=prepare ;;
    --dry-run) MODE=dry; ARGS+=("$arg") ;;
    *) ARGS+=("$arg") ;;
  esac
done

if [[ $MODE == prepare ]]; then
  SRC=${LIT_SWIFT_CACHE:-$HOME/.cache/lit-swift}/models/smollm2-135m-instruct
  [[ -f $SRC/tokenizer.json ]] || { echo "no tokenizer in $SRC: run any lit-swift command on smollm2-135m-instruct once" >&2; exit 2; }
  mkdir -p "$ASSETS/tokenizer" "$ASSETS/wheels"
  cp "$SRC"/tokenizer.json "$SRC"/tokenizer_config.json "$ASSETS/tokenizer/"
  [[ -f $SRC/chat_template.jinja ]] && cp "$SRC/chat_template.jinja" "$ASSETS/tokenizer/"
  "$PY" -m pip download --no-deps --only-binary=:all: -d "$ASSETS/wheels" liger-kernel \
    || echo "liger-kernel wheel not downloaded: the check then runs without Liger" >&2
  du -sh "$ASSETS"
  echo "carry runs/gpu_assets to the GPU machine (64 MiB limit)"
  exit 0
fi

if [[ $MODE == run ]]; then
  shopt -s nullglob
  wheels=("$ASSETS"/wheels/*.whl)
  if (( ${#wheels[@]} )); then "$PY" -m pip install -q --no-deps --no-index "${wheels[@]}"; fi
  "$PY" -m pip install -q --no-deps --no-build-isolation --no-index -e "$ROOT" \
    || { echo "project install failed; using PYTHONPATH=$ROOT" >&2; export PYTHONPATH=$ROOT${PYTHONPATH:+:$PYTHONPATH}; }
fi

# imports first: a missing package fails here in seconds, not after the model is written
"$PY" - <<'PYEOF'
import importlib.util
import torch, transformers, lightning, peft
import lit_swift.attention, lit_swift.data.datamodule, lit_swift.objectives.sft, lit_swift.kernels
print(f"torch {torch.__version__}, transformers {transformers.__version__}, lightning {lightning.__version__}, "
      f"peft {peft.__version__}; cuda {torch.cuda.is_available()}; triton "
      f"{importlib.util.find_spec('triton') is not None}; flash_attn {importlib.util.find_spec('flash_attn') is not None}; "
      f"liger_kernel {importlib.util.find_spec('liger_kernel') is not None}")
PYEOF

TOKENIZER=$ASSETS/tokenizer
if [[ ! -f $TOKENIZER/tokenizer.json ]]; then
  TOKENIZER=${LIT_SWIFT_CACHE:-$HOME/.cache/lit-swift}/models/smollm2-135m-instruct
fi
cd "$ROOT"
exec "$PY" bench/gpu_check.py --tokenizer "$TOKENIZER" ${ARGS[@]+"${ARGS[@]}"}
