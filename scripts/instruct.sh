#!/usr/bin/env bash
# The main job until `ember pipeline` exists: stages 1 and 2 on the built-in tasks, on the CPU.
# Writes the tasks' data, pretrains a tiny model on their corpus, tunes it on their
# conversations, and scores the pretrained and the tuned model on the held-out prompts.
# Everything lands in runs/tasks/; an interrupted run resumes where it stopped.
set -euo pipefail
cd "$(dirname "$0")/.."
RUN=${RUN:-runs/tasks}
ember() { cargo run --quiet --release -p ember-cli -- "$@"; }
[ -f "$RUN/data/heldout.jsonl" ] || ember tasks export --out "$RUN/data"
[ -f "$RUN/base/model/model.mpk" ] ||
  ember pretrain --data "$RUN/data/corpus.txt" --run "$RUN/base" --config configs/tasks-pretrain.toml
[ -f "$RUN/sft/model/model.mpk" ] ||
  ember sft --model "$RUN/base/model" --data "$RUN/data/sft.jsonl" --run "$RUN/sft" \
    --config configs/tasks-sft.toml
echo "== held-out judge scores of the pretrained model"
ember eval --model "$RUN/base/model" --output "$RUN/eval-base.jsonl"
echo "== held-out judge scores of the tuned model"
ember eval --model "$RUN/sft/model" --output "$RUN/eval-sft.jsonl"
