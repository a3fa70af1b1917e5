"""The PyTorch peer of `ember bench --model`: greedy generation tokens/s of `transformers`
on the same model (a GGUF file or a Hugging Face folder), batch 1 and 8, the same chat prompt
in every row, exactly N new tokens, float32, on this machine's cores.

    python scripts/parity/generate_bench.py MODEL [NEW_TOKENS]
"""
import os
import sys
import time

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer


def main():
    source = sys.argv[1]
    new_tokens = int(sys.argv[2]) if len(sys.argv) > 2 else 64
    if os.path.isdir(source):
        folder, kwargs = source, {}
    else:
        folder, name = os.path.split(os.path.abspath(source))
        kwargs = {"gguf_file": name}
    tokenizer = AutoTokenizer.from_pretrained(folder, **kwargs)
    model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32, **kwargs).eval()
    text = tokenizer.apply_chat_template([{"role": "user", "content": "Tell me about the history of Paris."}],
                                         tokenize=False, add_generation_prompt=True)
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads; {len(ids)}-token prompt, "
          f"{new_tokens} new tokens, greedy")
    print(f"{'batch':<8} {'tokens/s':>14} {'seconds':>10}")
    for batch in [1, 8]:
        inputs = torch.tensor([ids] * batch)
        mask = torch.ones_like(inputs)
        kwargs = dict(do_sample=False, attention_mask=mask, pad_token_id=0, eos_token_id=None)
        with torch.no_grad():
            model.generate(inputs, max_new_tokens=2, min_new_tokens=2, **kwargs)
            started = time.time()
            out = model.generate(inputs, max_new_tokens=new_tokens, min_new_tokens=new_tokens, **kwargs)
            seconds = time.time() - started
        produced = (out.shape[1] - len(ids)) * batch
        print(f"{batch:<8} {produced / seconds:>14.1f} {seconds:>10.2f}")


if __name__ == "__main__":
    main()
