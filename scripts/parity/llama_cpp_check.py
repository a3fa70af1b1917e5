"""llama.cpp (through llama-cpp-python) on a GGUF file Ember wrote, against a reference file
of reference.py (transformers on the same GGUF, or on the model it came from):

    python scripts/parity/llama_cpp_check.py MODEL.gguf REFERENCE.json

For each reference prompt: llama.cpp's logits at the last position against the reference's,
and its 32-token greedy continuation. Needs llama-cpp-python (builds llama.cpp from source).
"""
import json
import sys

import numpy as np
from llama_cpp import Llama


def main():
    path, reference = sys.argv[1], json.load(open(sys.argv[2]))
    llm = Llama(model_path=path, n_ctx=512, logits_all=True, verbose=False, n_threads=2)
    worst, same_greedy = 0.0, 0
    for case in reference["cases"]:
        ids = case["ids"]
        llm.reset()
        llm.eval(ids)
        logits = np.array(llm.scores[len(ids) - 1])
        diff = float(np.abs(logits - np.array(case["last_logits"])).max())
        worst = max(worst, diff)
        llm.reset()
        out = []
        for token in llm.generate(ids, temp=0.0, top_k=1, top_p=1.0, repeat_penalty=1.0):
            out.append(token)
            if len(out) == len(case["greedy"]) or token == llm.token_eos():
                break
        equal = out[: len(case["greedy"])] == case["greedy"][: len(out)]
        same_greedy += equal
        print(f"last-position logits max |diff| {diff:.2e}, argmax {int(logits.argmax())} vs "
              f"{int(np.argmax(case['last_logits']))}; greedy equal: {equal}")
        print("  ", repr(llm.detokenize(out).decode("utf-8", "replace")))
    tokens = sum(llm.tokenize(t["text"].encode(), add_bos=False, special=False) == t["ids"]
                 for t in reference["tokens"])
    print(f"worst {worst:.2e}; greedy equal on {same_greedy}/{len(reference['cases'])}; "
          f"tokenisation equal on {tokens}/{len(reference['tokens'])} texts")


if __name__ == "__main__":
    main()
