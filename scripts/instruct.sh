#!/usr/bin/env bash
# The main job until `ember pipeline` exists: stages 1 to 3 on the built-in tasks, on the CPU.
# Writes the tasks' data, pretrains a tiny model on their corpus, tunes it on their
# conversations, scores the pretrained and the tuned model on the held-out prompts, and trains
# and evaluates a reward model on rankings of the tuned model's answers.
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
# Stage 3: K = 6 answers per prompt from the tuned model, ranked by the tasks' judge, and a
# reward model trained on them; evaluated on rankings of held-out prompts.
[ -f "$RUN/rankings/train.jsonl" ] ||
  ember reward collect --model "$RUN/sft/model" -o "$RUN/rankings/train.jsonl" --per-family 200 --k 6
[ -f "$RUN/rankings/heldout.jsonl" ] ||
  ember reward collect --model "$RUN/sft/model" -o "$RUN/rankings/heldout.jsonl" --split heldout \
    --per-family 40 --k 6
[ -f "$RUN/reward/model/reward.json" ] ||
  ember reward train --model "$RUN/sft/model" --data "$RUN/rankings/train.jsonl" --run "$RUN/reward"
echo "== the reward model on held-out rankings"
ember reward eval --model "$RUN/reward/model" --data "$RUN/rankings/heldout.jsonl"
