#!/usr/bin/env bash
# KTO and reward-model jobs, lit-swift against the peers' equivalents, in the shared harness's way: same model,
# data, probe (hook/sitecustomize.py), `time -v`, interleaved repeats and summarize.py as ../shared/bench/run_peers.sh
# (which knows only SFT and DPO).
#
#   bash bench/run_objectives.sh                                  # swift-kto trl-kto lit-kto swift-rm trl-rm lit-rm
#   STEPS=3 REPEATS=1 bash bench/run_objectives.sh lit-kto lit-rm # only these
#   DRY_RUN=1 bash bench/run_objectives.sh                        # print each command, run nothing
#
# Configs <tool>-<task>[-fp32|-amp|-bf16]: tool swift (`swift rlhf --rlhf_type kto|rm`), trl (bench/peers/trl_kto.py,
# trl_rm.py: KTOTrainer, RewardTrainer), lit (bench/lit_cmd.sh with BENCH_TASK=kto|rm). Data: the shared dpo.jsonl
# pairs for rm; for kto, bench/kto_data.py's rows (each pair -> a desirable and an undesirable row), for all tools.
# Shared settings (the DPO job's): LoRA r8/alpha 32/dropout 0.05 on all linear layers, LR 1e-4 constant, no warmup,
# no weight decay, no gradient checkpointing, beta 0.1 (kto), batch BS rows (kto: completions; rm: pairs).
# Knobs [defaults]: BENCH_DIR [/work/shared/bench] (hook, data, summarize.py), BENCH_HOME [~/.cache/lit-swift-bench],
#   BENCH_MODEL [$BENCH_HOME/models/smollm2], SWIFT_VENV, TRL_VENV [$BENCH_HOME/venv-swift|venv-trl],
#   STEPS [5], BS [4], MAX_LEN [1024], REPEATS [2], PRECISION [fp32], OUT [$BENCH_HOME/out/obj-<time>],
#   LIT_REPO [this checkout], LIT_PY [$LIT_REPO/.venv/bin/python], TIME_BIN [GNU time], DRY_RUN [0].
set -u
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
BENCH_DIR="${BENCH_DIR:-/work/shared/bench}"
BENCH_HOME="${BENCH_HOME:-$HOME/.cache/lit-swift-bench}"
BENCH_MODEL="${BENCH_MODEL:-$BENCH_HOME/models/smollm2}"
SWIFT_VENV="${SWIFT_VENV:-$BENCH_HOME/venv-swift}"; TRL_VENV="${TRL_VENV:-$BENCH_HOME/venv-trl}"
STEPS="${STEPS:-5}"; BS="${BS:-4}"; MAX_LEN="${MAX_LEN:-1024}"; REPEATS="${REPEATS:-2}"; PRECISION="${PRECISION:-fp32}"
OUT="${OUT:-$BENCH_HOME/out/obj-$(date +%Y%m%d-%H%M%S)}"
export LIT_REPO="${LIT_REPO:-$(dirname "$HERE")}"
TIME_BIN="${TIME_BIN:-$(type -P time || true)}"
DRY_RUN="${DRY_RUN:-0}"
die() { echo "run_objectives.sh: $*" >&2; exit 1; }
PY3="$(type -P python3 || echo python)"

mkdir -p "$OUT/metrics" "$OUT/data" || die "cannot create $OUT"
OUT="$(cd "$OUT" && pwd)"
DPO_DATA="$BENCH_DIR/data/dpo.jsonl"; KTO_DATA="$OUT/data/kto.jsonl"
[ -f "$DPO_DATA" ] || die "no $DPO_DATA (set BENCH_DIR to the shared bench folder)"
"$PY3" "$HERE/kto_data.py" "$DPO_DATA" "$KTO_DATA" > /dev/null || die "kto_data.py failed"
PAD_ID="$("$PY3" -c "import json,sys; print(json.load(open(sys.argv[1])).get('pad_token_id', 0))" "$BENCH_MODEL/config.json" 2>/dev/null || echo 0)"
export BENCH_METRICS_DIR="$OUT/metrics" BENCH_PAD_ID="$PAD_ID" PYTHONPATH="$BENCH_DIR/hook${PYTHONPATH:+:$PYTHONPATH}"
export TOKENIZERS_PARALLELISM=false HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 TRANSFORMERS_OFFLINE=1 BENCH_LOSS_NAME=train/loss

SWIFT_COMMON=(--model "$BENCH_MODEL" --model_type llama --template chatml
  --tuner_type lora --lora_rank 8 --lora_alpha 32 --lora_dropout 0.05 --target_modules all-linear
  --max_length "$MAX_LEN" --gradient_accumulation_steps 1 --per_device_train_batch_size "$BS" --max_steps "$STEPS"
  --learning_rate 1e-4 --lr_scheduler_type constant --warmup_ratio 0 --weight_decay 0 --gradient_checkpointing false
  --split_dataset_ratio 0 --eval_strategy no --save_strategy no --logging_steps 1
  --dataloader_num_workers 0 --dataset_num_proc 1 --report_to none --seed 42)

cmd_for() {  # sets CMD and LIT_ENV for config $1, scratch dir $2
  local c="$1" od="$2" prec="$PRECISION" SP data
  case "$c" in *-fp32|*-amp|*-bf16) prec="${c##*-}"; c="${c%-*}" ;; esac
  case "$prec" in
    fp32) SP=(--torch_dtype float32) ;;
    amp)  SP=(--torch_dtype float32 --fp16 false --bf16 true --use_cpu true) ;;
    bf16) SP=(--torch_dtype bfloat16 --bf16 true --use_cpu true) ;;
    *) echo "bad precision '$prec' (fp32|amp|bf16)" >&2; return 1 ;;
  esac
  local task="${c#*-}"; data="$DPO_DATA"; [ "$task" = kto ] && data="$KTO_DATA"
  LIT_ENV=()
  case "$c" in
    swift-kto) CMD=("$SWIFT_VENV/bin/swift" rlhf --rlhf_type kto --beta 0.1 --desirable_weight 1 --undesirable_weight 1
                 "${SWIFT_COMMON[@]}" "${SP[@]}" --dataset "$data" --output_dir "$od") ;;
    swift-rm)  CMD=("$SWIFT_VENV/bin/swift" rlhf --rlhf_type rm "${SWIFT_COMMON[@]}" "${SP[@]}" --dataset "$data"
                 --output_dir "$od") ;;
    trl-kto|trl-rm)
               CMD=("$TRL_VENV/bin/python" "$HERE/peers/trl_$task.py" --model "$BENCH_MODEL" --data "$data"
                 --precision "$prec" --bs "$BS" --steps "$STEPS" --max-length "$MAX_LEN" --lr 1e-4 --out "$od") ;;
    lit-kto|lit-rm)
               CMD=(bash "$HERE/lit_cmd.sh")
               LIT_ENV=(BENCH_CONFIG="$1" BENCH_TASK="$task" BENCH_MODE= BENCH_PRECISION="$prec"
                 BENCH_MODEL="$BENCH_MODEL" BENCH_DATA="$data" BENCH_BS="$BS" BENCH_STEPS="$STEPS" BENCH_MAX_LEN="$MAX_LEN"
                 BENCH_LR=1e-4 BENCH_SEED=42 BENCH_LORA_R=8 BENCH_LORA_ALPHA=32 BENCH_LORA_DROPOUT=0.05 BENCH_DPO_BETA=0.1
                 BENCH_RUN_DIR="$od" BENCH_DIR="$BENCH_DIR") ;;
    *) echo "unknown config $1 (swift|trl|lit)-(kto|rm)[-fp32|-amp|-bf16]" >&2; return 1 ;;
  esac
}

if [ "$#" -gt 0 ]; then CONFIGS=("$@"); else CONFIGS=(swift-kto trl-kto lit-kto swift-rm trl-rm lit-rm); fi
if [ "$DRY_RUN" = 1 ]; then
  for c in "${CONFIGS[@]}"; do
    cmd_for "$c" "$OUT/work/$c" || exit 2
    printf '%s: ' "$c"; printf '%q ' env ${LIT_ENV[@]+"${LIT_ENV[@]}"} "${CMD[@]}"; echo
  done
  exit 0
fi
[ -n "$TIME_BIN" ] && "$TIME_BIN" -v true 2>/dev/null || die "needs GNU time (apt-get install time), or set TIME_BIN"
[ -f "$BENCH_MODEL/config.json" ] || die "no model at $BENCH_MODEL (shared bench setup_peers.sh, or set BENCH_MODEL)"
{ echo "date: $(date -Is)"; echo "host: $(nproc) cores, $(free -g | awk '/Mem:/{print $2}') GiB"
  echo "cpu: $(grep -m1 'model name' /proc/cpuinfo | sed 's/.*: //') $(grep -o -m1 'avx512_bf16\|amx_bf16' /proc/cpuinfo | head -1)"
  echo "model: $BENCH_MODEL"; echo "STEPS=$STEPS BS=$BS MAX_LEN=$MAX_LEN REPEATS=$REPEATS PRECISION=$PRECISION"
  echo "configs: ${CONFIGS[*]}"; } > "$OUT/env.txt"
for i in $(seq 1 "$REPEATS"); do
  for c in "${CONFIGS[@]}"; do
    name="$c-r$i"
    cmd_for "$c" "$OUT/work/$name" || continue
    mkdir -p "$OUT/work/$name"
    echo "[$(date +%T)] $name  (load: $(cut -d' ' -f1-3 /proc/loadavg))"
    env ${LIT_ENV[@]+"${LIT_ENV[@]}"} BENCH_LABEL="$name" "$TIME_BIN" -v -o "$OUT/$name.time" "${CMD[@]}" > "$OUT/$name.log" 2>&1
    echo "    rc=$?  $(grep -h 'Elapsed (wall' "$OUT/$name.time" | sed 's/.*: //')"
    rm -rf "$OUT/work/$name"
  done
done
"$PY3" "$BENCH_DIR/summarize.py" "$OUT" && echo "results: $OUT/results.md"
