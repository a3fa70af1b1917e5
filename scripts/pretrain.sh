#!/usr/bin/env bash
# The main job (until `ember pipeline` exists): pretrain a tiny decoder on Shakespeare on the CPU
# and print a sample. Extra arguments go to `ember pretrain` (for example --steps 1000).
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/fetch-shakespeare.sh data/shakespeare
ember() { cargo run --quiet --release -p ember-cli -- "$@"; }
ember pretrain --data data/shakespeare --run runs/shakespeare "$@"
ember generate --model runs/shakespeare/model --prompt "ROMEO:" \
  --max-new-tokens 120 --top-k 40 --temperature 0.8 --seed 1
