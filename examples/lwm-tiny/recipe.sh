#!/usr/bin/env bash
# lwm-tiny, end to end with `lwm` commands: data, tokenizer, VQGAN, stage 1 text, extend-context,
# stage 2 (images, then videos, then chat QA, with vision/text order swapped for generation).
#
#   bash examples/lwm-tiny/recipe.sh runs/lwm-tiny            # every step, in order
#   bash examples/lwm-tiny/recipe.sh runs/lwm-tiny vqgan      # one step (the ones before must be done)
#
# Each finished step leaves RUN/done/STEP and is skipped on a rerun; RUN/times.tsv gets one line per
# step (name, wall seconds) and each step's output is in RUN/logs/STEP.log. Steps: data tokenizer
# vqgan tokens text long images videos chat export. Everything is seeded: a rerun remakes the same data.
set -euo pipefail

RUN=${1:?usage: recipe.sh RUN_FOLDER [STEP...]}
shift || true
HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
MODEL_JSON="$HERE/model.json"
LWM=${LWM:-lwm}
PY=${PYTHON:-python}
mkdir -p "$RUN/done" "$RUN/logs"
TOK="$RUN/tokenizer.model"
VQ="$RUN/vqgan.safetensors"
D="$RUN/data"

step() {  # step NAME COMMAND...: run once, time it, log it
  local name=$1; shift
  if [[ -e "$RUN/done/$name" ]]; then echo "== $name: done already"; return; fi
  echo "== $name: $*"
  local t0; t0=$(date +%s.%N)
  "$@" 2>&1 | tee "$RUN/logs/$name.log"
  local t1; t1=$(date +%s.%N)
  printf '%s\t%.0f\n' "$name" "$(echo "$t1 - $t0" | bc)" >> "$RUN/times.tsv"
  touch "$RUN/done/$name"
}

make_data() {
  local mk="$PY $HERE/../make_shapes.py"
  $mk "$D/videos" --split train --n 1500 --frames 8 --text-docs 4000 --overwrite
  $mk "$D/images" --split train --seed 1500 --n 1500 --frames 1 --overwrite
  $mk "$D/gen_videos" --split train --seed 3000 --n 600 --frames 8 --num-shapes 1 --event-prob 0 --overwrite
  $mk "$D/gen_images" --split train --seed 3600 --n 800 --frames 1 --num-shapes 1 --overwrite
  $mk "$D/long" --split train --seed 5000 --n 10 --frames 1 --text-docs 10 --needles 600 --needle-length 1600 \
      --overwrite
  $mk "$D/long_short" --split train --seed 6000 --n 10 --frames 1 --text-docs 10 --needles 600 --needle-length 500 \
      --overwrite
  # many short needle documents: retrieval is learnt from the number of examples more than their length
  $mk "$D/needles_short" --split train --seed 7000 --n 10 --frames 1 --text-docs 10 --needles 4000 \
      --needle-length 120 --overwrite
}

tokenize_all() {
  for part in videos images gen_videos gen_images; do
    $LWM tokenize-video "$D/$part/clips" --out "$D/$part/tokens" --vqgan "$VQ"
  done
}

stage2() {  # stage2 NAME STEPS LR SCHEDULE INIT JSONL[:FIELDS]...: one shuffled mix, packed rows of 2,048
  local name=$1 steps=$2 lr=$3 schedule=$4 init=$5; shift 5
  $PY "$HERE/mix_jsonl.py" "$D/$name.mix.jsonl" "$@"
  $LWM train --stage 2 --init "$init" --data "$D/$name.mix.jsonl" --tokenizer "$TOK" --vqgan-config lwm-tiny \
      --seq-len 2048 --batch-size 4 --steps "$steps" --lr "$lr" --schedule "$schedule" --warmup 10 --remat "" \
      --save-every "$steps" --keep 1 --out "$RUN/$name"
}

export_model() {
  local dst="$RUN/lwm-tiny"
  mkdir -p "$dst"
  $LWM convert "$RUN/chat" "params::$dst/params.msgpack" --overwrite
  cp "$RUN/chat/lwm_config.json" "$dst/config.json"
  cp "$TOK" "$dst/tokenizer.model"
  cp "$VQ" "$dst/vqgan.safetensors"
  $PY - "$dst/haystack.jsonl" <<'PYEOF'
import json, sys
from lwm_core.data.shapes import scene_seed
from lwm_core.data.shapes_text import corpus_document
# needle haystacks: stories and descriptions of test-split scenes (never trained on); `lwm needle`
# concatenates the lines as LWM does, so each ends with a space
with open(sys.argv[1], "w") as f:
    for k in range(1000):
        f.write(json.dumps({"text": corpus_document(scene_seed("test", k)).strip() + " "}) + "\n")
PYEOF
  ls -l "$dst"
}

run_step() {
  case $1 in
    data) step data make_data ;;
    tokenizer) step tokenizer $LWM train --stage tokenizer --data "$D/videos/text.jsonl" --data "$D/videos/qa.jsonl" \
        --data "$D/videos/captions.jsonl" --data "$D/long/needle.jsonl" --vocab-size 768 --out "$TOK" ;;
    vqgan) step vqgan $LWM train --stage vqgan --data "$D/images/clips" --data "$D/videos/clips" \
        --vqgan-config lwm-tiny --steps 3000 --batch-size 16 --lr 1e-3 --warmup 20 --log-every 50 --save-every 500 \
        --out "$VQ" ;;
    tokens) step tokens tokenize_all ;;
    # stage 1: text at 512 tokens
    text) step text $LWM train --stage 1 --data "$D/videos/text.jsonl" --data "$D/images/text.jsonl" --tokenizer "$TOK" \
        --config "$MODEL_JSON" --seq-len 512 --batch-size 16 --steps 200 --lr 1e-3 --warmup 20 --remat "" \
        --save-every 200 --keep 1 --out "$RUN/text" ;;
    # 4x the context (2,048 tokens) with a 10x RoPE theta, on needle documents and the text corpus
    long) step long $LWM extend-context "$RUN/text" --schedule "2K:1e5" --data "$D/long/needle.jsonl" \
        --data "$D/long_short/needle.jsonl" --data "$D/videos/text.jsonl" --tokenizer "$TOK" --steps-per-stage 250 \
        --batch-size 4 --lr 5e-4 --warmup 10 --save-every 250 --out "$RUN/long" ;;
    # stage 2 from the long-context text model: images, then videos, then chat QA (captions and
    # generation records carry both orders, LWM's per-record swap; `:vision` records are unconditional)
    images) step images stage2 images 60 1e-3 constant "$RUN/long" \
        "$D/images/captions.jsonl" "$D/gen_images/generation.jsonl" "$D/images/generation.jsonl" \
        "$D/images/captions.jsonl:vision" ;;
    videos) step videos stage2 videos 150 1e-3 constant "$RUN/images" \
        "$D/videos/captions.jsonl" "$D/gen_videos/captions.jsonl" "$D/gen_videos/generation.jsonl" \
        "$D/videos/generation.jsonl" "$D/gen_videos/captions.jsonl:vision" ;;
    chat) step chat stage2 chat 500 1e-3 cosine "$RUN/videos" \
        "$D/videos/chat.jsonl" "$D/images/chat.jsonl" "$D/gen_videos/chat.jsonl" "$D/gen_images/chat.jsonl" \
        "$D/videos/generation.jsonl" "$D/gen_videos/generation.jsonl" "$D/gen_images/generation.jsonl" \
        "$D/images/generation.jsonl" "$D/long/needle.jsonl" "$D/long_short/needle.jsonl" \
        "$D/needles_short/needle.jsonl" ;;
    # the files the package ships: weights (LWM streaming msgpack), config, tokenizer, VQGAN, haystack
    export) step export export_model ;;
    *) echo "unknown step $1" >&2; exit 2 ;;
  esac
}

main() {
  local steps=("$@")
  [[ ${#steps[@]} -gt 0 ]] || steps=(data tokenizer vqgan tokens text long images videos chat export)
  for s in "${steps[@]}"; do run_step "$s"; done
}

main "$@"; exit $?
