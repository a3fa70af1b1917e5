#!/usr/bin/env python3
"""The official `openai` Python client against `ember serve`: the model list, one completion,
one stream, and an error the API contract names.

    python3 -m venv /tmp/venv && /tmp/venv/bin/pip install openai
    ember serve --model runs/pipeline/ppo/model &
    /tmp/venv/bin/python scripts/serve/openai_client.py [--base-url http://127.0.0.1:8000/v1]

Exits non-zero if anything is not as the API promises.
"""

import argparse
import sys
import time

import openai
from openai import OpenAI


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--base-url", default="http://127.0.0.1:8000/v1")
    parser.add_argument("--api-key", default="unused", help="the server's --api-key, if it has one")
    parser.add_argument("--prompt", default="Reverse the word: garden")
    args = parser.parse_args()

    client = OpenAI(base_url=args.base_url, api_key=args.api_key)
    print(f"openai {openai.__version__} → {args.base_url}")

    models = client.models.list()
    model = models.data[0].id
    print(f"models: {[m.id for m in models.data]}")

    completion = client.chat.completions.create(
        model=model,
        messages=[{"role": "user", "content": args.prompt}],
        temperature=0,
        max_tokens=32,
    )
    choice = completion.choices[0]
    print(f"completion: {choice.message.content!r} (finish_reason={choice.finish_reason}, "
          f"usage={completion.usage.prompt_tokens}+{completion.usage.completion_tokens}"
          f"={completion.usage.total_tokens})")
    assert choice.message.role == "assistant"
    assert completion.usage.total_tokens == (
        completion.usage.prompt_tokens + completion.usage.completion_tokens)

    started = time.perf_counter()
    first = None
    pieces = []
    finish = None
    usage = None
    stream = client.chat.completions.create(
        model=model,
        messages=[{"role": "user", "content": args.prompt}],
        temperature=0,
        max_tokens=32,
        stream=True,
        stream_options={"include_usage": True},
    )
    for chunk in stream:
        if chunk.usage is not None:
            usage = chunk.usage
        for c in chunk.choices:
            if c.delta.content:
                if first is None:
                    first = time.perf_counter() - started
                pieces.append(c.delta.content)
            if c.finish_reason:
                finish = c.finish_reason
    text = "".join(pieces)
    print(f"stream: {len(pieces)} pieces {pieces[:8]}{' …' if len(pieces) > 8 else ''}")
    print(f"stream text: {text!r} (finish_reason={finish}, first token after "
          f"{1000 * (first or 0):.0f} ms, usage={usage.completion_tokens} tokens)")
    assert text == choice.message.content, "greedy: the stream gives the completion's text"
    assert finish == choice.finish_reason
    assert usage.completion_tokens == completion.usage.completion_tokens

    try:
        client.chat.completions.create(model="no-such-model",
                                       messages=[{"role": "user", "content": "hi"}])
        raise AssertionError("an unknown model was accepted")
    except openai.NotFoundError as error:
        print(f"unknown model: {error.status_code} {error.code}: {error.message}")
    try:
        client.chat.completions.create(model=model, messages=[])
        raise AssertionError("empty messages were accepted")
    except openai.BadRequestError as error:
        print(f"empty messages: {error.status_code} param={error.param}: {error.message}")
    print("ok")
    return 0


if __name__ == "__main__":
    sys.exit(main())
