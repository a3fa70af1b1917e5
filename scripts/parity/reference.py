"""Reference logits, greedy continuations and token ids from Hugging Face `transformers`.

Loads a GGUF file (or a Hugging Face folder) with transformers in float32, the independent
implementation Ember is compared against, and writes what it computes as JSON:

    python scripts/parity/reference.py MODEL.gguf OUT.json
    python scripts/parity/reference.py HF_FOLDER OUT.json

Then `cargo run --release -p ember-models --example parity -- MODEL OUT.json` loads the same
model in Ember and reports the differences. Needs: torch, transformers (5.x), gguf,
accelerate.
"""
import json
import os
import sys
import time

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

PROMPTS = [
    [{"role": "user", "content": "What is the capital of France?"}],
    [{"role": "user", "content": "Write a haiku about rust and burn."}],
    [{"role": "system", "content": "Answer in one word."},
     {"role": "user", "content": "What colour is the sky on a clear day?"}],
    [{"role": "user", "content": "Translate into English: 无监督训练。"}],
]

TEXTS = [
    "Hello, world! This is a test.",
    "def fibonacci(n):\n    return n if n < 2 else fibonacci(n - 1) + fibonacci(n - 2)\n",
    "无监督训练。机器学习很有趣。日本語のテキストも。",
    "Emoji: 🦀🔥👍🏽 and a flag 🇫🇷.",
    "   leading spaces,\ttabs\t\tand\n\n\nnewlines   ",
    "Numbers 1234567890 and 3.14159, dates 2026-12-01.",
    "<|im_start|>user\nliteral markers are plain text<|im_end|>",
    "Ünïcödé àccents — dashes – and “quotes”.",
]


def main():
    source, out = sys.argv[1], sys.argv[2]
    started = time.time()
    if os.path.isdir(source):
        kwargs = {}
        folder = source
    else:
        folder, name = os.path.split(os.path.abspath(source))
        kwargs = {"gguf_file": name}
    tokenizer = AutoTokenizer.from_pretrained(folder, **kwargs)
    model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32, **kwargs)
    model.eval()
    loaded = time.time() - started
    cases = []
    for conversation in PROMPTS:
        text = tokenizer.apply_chat_template(conversation, tokenize=False, add_generation_prompt=True)
        ids = tokenizer(text, add_special_tokens=False)["input_ids"]
        with torch.no_grad():
            logits = model(torch.tensor([ids])).logits[0]
            generated = model.generate(
                torch.tensor([ids]), max_new_tokens=32, do_sample=False,
                attention_mask=torch.ones(1, len(ids), dtype=torch.long),
                pad_token_id=tokenizer.pad_token_id or 0,
            )[0, len(ids):].tolist()
        cases.append({
            "conversation": conversation,
            "text": text,
            "ids": ids,
            # Every position's logits would be large: the last position's in full, and every
            # position's maximum and argmax.
            "last_logits": logits[-1].tolist(),
            "argmax": logits.argmax(-1).tolist(),
            "max": logits.max(-1).values.tolist(),
            "greedy": generated,
            "greedy_text": tokenizer.decode(generated, skip_special_tokens=True),
        })
    # Ember encodes text as plain text always: a marker's string written in a message is never
    # the marker (a user cannot forge a turn). transformers does that with
    # split_special_tokens=True; its default would turn "<|im_end|>" in text into the token.
    tokens = [{"text": t, "ids": tokenizer(t, add_special_tokens=False, split_special_tokens=True)["input_ids"],
               "ids_default": tokenizer(t, add_special_tokens=False)["input_ids"]} for t in TEXTS]
    with open(out, "w") as f:
        json.dump({"source": os.path.basename(source), "load_seconds": loaded,
                   "cases": cases, "tokens": tokens}, f)
    for case in cases:
        print(repr(case["greedy_text"]))


if __name__ == "__main__":
    main()
