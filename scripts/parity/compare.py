"""Compares two reference files of reference.py (for example transformers on the original
GGUF and transformers on the folder Ember exported from it):

    python scripts/parity/compare.py A.json B.json
"""
import json
import sys

import numpy as np


def main():
    a, b = (json.load(open(p)) for p in sys.argv[1:3])
    worst = 0.0
    for x, y in zip(a["cases"], b["cases"]):
        same_ids = x["ids"] == y["ids"]
        diff = float(np.abs(np.array(x["last_logits"]) - np.array(y["last_logits"])).max()) if same_ids else float("nan")
        worst = max(worst, diff)
        print(f"prompt ids equal: {same_ids}; last-position logits max |diff| {diff:.2e}; "
              f"argmax equal: {x['argmax'] == y['argmax']}; greedy equal: {x['greedy'] == y['greedy']}")
    tokens = sum(x["ids"] == y["ids"] for x, y in zip(a["tokens"], b["tokens"]))
    print(f"worst {worst:.2e}; tokenisation equal on {tokens}/{len(a['tokens'])} texts")


if __name__ == "__main__":
    main()
