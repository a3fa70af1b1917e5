#!/usr/bin/env python3
"""The chat page in a real browser: headless Chromium loads `ember serve`'s `/`, sends a
message, waits for the streamed answer to finish, checks it against the API's own answer, and
saves a screenshot.

    apt-get install chromium            # Debian's package: /usr/bin/chromium
    python3 -m venv /tmp/venv && /tmp/venv/bin/pip install playwright   # the driver only
    ember serve --model runs/pipeline/ppo/model &
    /tmp/venv/bin/python scripts/serve/browser_check.py --out docs/images/chat-page.png

Exits non-zero if the page does not show a streamed answer.
"""

import argparse
import json
import sys
import urllib.request

from playwright.sync_api import sync_playwright

# What Chromium needs on a machine with no network and no display.
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync"]


def api_answer(url: str, text: str, max_tokens: int) -> str:
    body = json.dumps({"messages": [{"role": "user", "content": text}], "temperature": 0,
                       "max_tokens": max_tokens}).encode()
    request = urllib.request.Request(url + "/v1/chat/completions", data=body,
                                     headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request) as response:
        return json.load(response)["choices"][0]["message"]["content"]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--url", default="http://127.0.0.1:8000")
    parser.add_argument("--chromium", default="/usr/bin/chromium")
    parser.add_argument("--out", default="chat-page.png")
    parser.add_argument("--messages", nargs="+",
                        default=["Reverse the word: garden", "Spell the word: lantern"])
    args = parser.parse_args()

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=args.chromium, args=FLAGS)
        page = browser.new_page(viewport={"width": 900, "height": 620})
        page.goto(args.url + "/")
        page.wait_for_function("document.getElementById('model').textContent !== 'connecting…'")
        print("model shown:", page.inner_text("#model"))
        # Greedy, so the page's answer can be checked against the API's.
        page.click("summary")
        page.eval_on_selector("#temperature", "e => { e.value = '0'; "
                              "e.dispatchEvent(new Event('input')); }")
        page.fill("#max-tokens", "48")
        page.click("summary")
        pieces_seen = []
        for i, text in enumerate(args.messages):
            page.fill("#input", text)
            page.press("#input", "Enter")
            answer = page.locator(".msg.assistant").nth(i)
            # Watch the answer grow while it streams.
            lengths = []
            while answer.get_attribute("data-state") == "streaming":
                lengths.append(len(answer.inner_text()))
                page.wait_for_timeout(15)
            state = answer.get_attribute("data-state")
            shown = answer.evaluate("e => e.firstChild ? e.firstChild.textContent : ''")
            print(f"turn {i + 1}: {text!r} → {shown!r} ({state}; "
                  f"{len(set(lengths))} distinct lengths seen while streaming)")
            if state != "done" or not shown:
                print("the page shows no finished answer", file=sys.stderr)
                return 1
            pieces_seen.append(len(set(lengths)))
        # The first turn has no history: the API gives the same greedy answer.
        expected = api_answer(args.url, args.messages[0], 48)
        first = page.locator(".msg.assistant").nth(0)
        shown = first.evaluate("e => e.firstChild.textContent")
        if shown != expected:
            print(f"page {shown!r} != API {expected!r}", file=sys.stderr)
            return 1
        page.screenshot(path=args.out, full_page=True)
        print(f"screenshot: {args.out}")
        browser.close()
    print("ok: streamed answers appeared; partial answers were seen in",
          sum(1 for n in pieces_seen if n > 1), "of", len(pieces_seen), "turns")
    return 0


if __name__ == "__main__":
    sys.exit(main())
