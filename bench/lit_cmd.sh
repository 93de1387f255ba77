#!/usr/bin/env bash
# lit-swift as the third contender of the shared peer benchmark (LIT_CMD_FILE of run_peers.sh).
#
#   LIT_CMD_FILE=$PWD/bench/lit_cmd.sh LIT_REPO=$PWD BS=4 STEPS=10 DPO_STEPS=5 \
#     bash ../shared/bench/run_peers.sh trl-sft-padfree lit-sft-pack lit-sft-pad trl-dpo lit-dpo
#   LIT_DRY_RUN=1 BENCH_TASK=sft BENCH_MODE=pack ... bash bench/lit_cmd.sh     # print the command only
#
# Maps the harness's BENCH_* variables (see /work/shared/bench/README.md, "Adding a third contender") onto
# `lit-swift fit --config bench/configs/<task>.yaml` plus overrides:
#   mode     pad      padded rows, BENCH_BS samples per step (as the peers' padded runs)
#            pack     first-fit-decreasing packing into rows of BENCH_MAX_LEN, BENCH_BS (= PACK_BS) rows per step
#            padfree  lit-swift has no "flatten the batch into one row" collator; its zero-pad path is packing.
#                     So padfree = packing into rows of BENCH_MAX_LEN with ceil(BENCH_BS * BENCH_MEAN_TOKENS /
#                     BENCH_MAX_LEN) rows per step: about the tokens of the peers' BENCH_BS-sample padding-free
#                     step (BENCH_MEAN_TOKENS [193] = the mean sample length of data/sft.jsonl in SmolLM2 tokens).
#   precision fp32    dtype float32,  trainer precision 32-true
#             amp     dtype float32,  trainer precision bf16-mixed (fp32 weights + bf16 autocast)
#             bf16    dtype bfloat16, trainer precision bf16-mixed (bf16 weights + autocast). Not bf16-true:
#                     Lightning's bf16-true casts the whole module, LoRA adapters included, to bf16, while the
#                     peers keep the adapters and the optimizer state in fp32 (PEFT's autocast_adapter_dtype).
# Fixed settings (the peers' own): LoRA on all linear layers, constant LR without warmup or weight decay, grad-norm
# clip 1.0 (HF Trainer default), no validation, no checkpointing, log every step, CSV logger in BENCH_RUN_DIR.
# Knobs: LIT_REPO [the checkout holding this file], LIT_PY [$LIT_REPO/.venv/bin/python],
#        LIT_EXTRA_ARGS (more CLI overrides, word-split), LIT_DRY_RUN=1 (print, do not run).
set -eu

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
LIT_REPO="${LIT_REPO:-$(dirname "$HERE")}"
LIT_PY="${LIT_PY:-$LIT_REPO/.venv/bin/python}"
: "${BENCH_TASK:?BENCH_TASK (sft|dpo|kto|rm) is required}" "${BENCH_MODEL:?}" "${BENCH_DATA:?}" "${BENCH_RUN_DIR:?}"
MODE="${BENCH_MODE:-pad}"; PRECISION="${BENCH_PRECISION:-fp32}"
BS="${BENCH_BS:-4}"; MAX_LEN="${BENCH_MAX_LEN:-1024}"; SEED="${BENCH_SEED:-42}"
MEAN_TOKENS="${BENCH_MEAN_TOKENS:-193}"

case "$PRECISION" in
  fp32) DTYPE=float32;  PREC=32-true ;;
  amp)  DTYPE=float32;  PREC=bf16-mixed ;;
  bf16) DTYPE=bfloat16; PREC=bf16-mixed ;;
  *) echo "lit_cmd.sh: bad BENCH_PRECISION '$PRECISION' (fp32|amp|bf16)" >&2; exit 2 ;;
esac

M=--model.init_args; D=--data.init_args
ARGS=(fit --config "$LIT_REPO/bench/configs/$BENCH_TASK.yaml"
  "$M.model" "$BENCH_MODEL" "$M.dtype" "$DTYPE" --trainer.precision "$PREC"
  "$D.dataset" "$BENCH_DATA" "$D.max_length" "$MAX_LEN" "$D.seed" "$SEED" --seed_everything "$SEED"
  --trainer.max_steps "${BENCH_STEPS:-10}" --trainer.default_root_dir "$BENCH_RUN_DIR"
  "$M.optimizer.init_args.lr" "${BENCH_LR:-0.001}"
  "$M.tuner.init_args.r" "${BENCH_LORA_R:-8}" "$M.tuner.init_args.alpha" "${BENCH_LORA_ALPHA:-32}"
  "$M.tuner.init_args.dropout" "${BENCH_LORA_DROPOUT:-0.05}")

case "$BENCH_TASK" in
  sft)
    case "$MODE" in
      pad)     ARGS+=("$D.packing" false "$D.batch_size" "$BS") ;;
      pack)    ARGS+=("$D.packing" true "$D.batch_size" "$BS") ;;
      padfree) ARGS+=("$D.packing" true "$D.batch_size" "$(( (BS * MEAN_TOKENS + MAX_LEN - 1) / MAX_LEN ))") ;;
      *) echo "lit_cmd.sh: bad BENCH_MODE '$MODE' (pad|padfree|pack)" >&2; exit 2 ;;
    esac ;;
  dpo|kto)  # kto: bench/kto_data.py rows; beta from BENCH_DPO_BETA as for DPO (bench/run_objectives.sh)
    ARGS+=("$D.batch_size" "$BS" "$M.loss.init_args.beta" "${BENCH_DPO_BETA:-0.1}") ;;
  rm)
    ARGS+=("$D.batch_size" "$BS") ;;
  *) echo "lit_cmd.sh: bad BENCH_TASK '$BENCH_TASK' (sft|dpo|kto|rm)" >&2; exit 2 ;;
esac
# shellcheck disable=SC2206  # word splitting of the extra overrides is intended
[ -n "${LIT_EXTRA_ARGS:-}" ] && ARGS+=(${LIT_EXTRA_ARGS})

# The probe keeps only this logged name as the loss (DPO also logs other names containing "loss" in validation).
export BENCH_LOSS_NAME="${BENCH_LOSS_NAME:-train/loss}"
export HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false

if [ "${LIT_DRY_RUN:-0}" = 1 ]; then
  printf '%q ' "$LIT_PY" -m lit_swift "${ARGS[@]}"; echo
  exit 0
fi
exec "$LIT_PY" -m lit_swift "${ARGS[@]}"   # exec: the probe and `time -v` must see the trainer itself
