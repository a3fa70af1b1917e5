#!/usr/bin/env python3
"""Kill -9 harness for `ember pipeline` (issue 16): a tiny pipeline killed with SIGKILL at many
points spread over its stages, resumed each time; every resume must finish, and the final
evaluation (`eval/summary.json`, every `eval/*.jsonl`) and the report's tables must equal those
of an uninterrupted run.

    cargo build --release -p ember-cli
    python3 scripts/kill9.py --ember $CARGO_TARGET_DIR/release/ember --config configs/toy.toml

Kill points are of two kinds:
- events: the moment a file appears, polled every 0.2 ms — each stage's record
  (`stages/{name}.json`), each model file in a model folder being written
  (`.model.partial/{model.mpk,model.json,manifest.json,tokenizer.json}`), checkpoints being
  written (`checkpoints/.step-*.tmp/…`), the rankings, the evaluation's files;
- times: fractions of the uninterrupted run's wall time.
Each point gets a fresh run folder: run, kill at the point, resume until done. A last case
kills one folder again and again at successive points (a resume itself killed), then resumes.
Only Python's standard library; prints one line per point and exits 1 on any difference.
"""
import argparse
import glob
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time

STAGES = ["data", "pretrain", "sft", "sft_flawless", "collect", "reward", "ppo", "ppo_judge", "eval"]
MODEL_DIRS = ["base", "sft", "sft_flawless", "reward", "ppo", "ppo_judge"]


def events():
    """(name, glob pattern relative to the run folder) of the moments to kill at."""
    out = []
    for stage in STAGES:
        out.append((f"record of {stage} appears", f"stages/{stage}.json"))
    for folder in MODEL_DIRS:
        for name in ["model.mpk", "model.json", "manifest.json", "tokenizer.json"]:
            out.append((f"{folder}: {name} written", f"{folder}/.model.partial/{name}"))
    for folder in ["base", "sft", "reward", "ppo"]:
        out.append((f"{folder}: a checkpoint being written", f"{folder}/checkpoints/.step-*.tmp/model.mpk"))
        out.append((f"{folder}: a checkpoint in place", f"{folder}/checkpoints/step-*/manifest.json"))
    out.append(("rankings: train.jsonl", "rankings/train.jsonl"))
    out.append(("eval: sft.jsonl", "eval/sft.jsonl"))
    out.append(("eval: summary.json", "eval/summary.json"))
    return out


def start(ember, run, config):
    args = [ember, "pipeline", "--run", run]
    if config:
        args += ["--config", config]
    return subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)


def finish(ember, run, config=None):
    """Runs (resumes) to the end; returns the exit code and stderr."""
    p = start(ember, run, config)
    _, err = p.communicate()
    return p.returncode, err.decode(errors="replace")


def kill_when(proc, run, pattern=None, after=None, timeout=120.0):
    """SIGKILLs `proc` once `pattern` matches a file in `run` or `after` seconds passed.
    Returns whether it was killed (False: it ended first)."""
    began = time.monotonic()
    while proc.poll() is None:
        if pattern and glob.glob(os.path.join(run, pattern)):
            break
        if after is not None and time.monotonic() - began >= after:
            break
        if time.monotonic() - began > timeout:
            break
        time.sleep(0.0002)
    if proc.poll() is not None:
        return False
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    return True


def tables(report):
    """The report without its one section that differs between identical runs: the time per
    stage (and the line of the total time, if any)."""
    text = re.sub(r"(?s)^## Time per stage\n.*?(?=^## |\Z)", "", report, flags=re.M)
    return "\n".join(l for l in text.splitlines() if "minutes of stages" not in l)


def results(run):
    out = {}
    for path in sorted(glob.glob(os.path.join(run, "eval", "*"))):
        with open(path, encoding="utf-8") as f:
            out[os.path.basename(path)] = f.read()
    with open(os.path.join(run, "report.md"), encoding="utf-8") as f:
        out["report tables"] = tables(f.read())
    return out


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--ember", required=True)
    parser.add_argument("--config", required=True, help="a tiny pipeline config (seconds per run)")
    parser.add_argument("--times", type=int, default=8, help="kill points at fractions of the run's time")
    parser.add_argument("--keep", help="keep the run folders here")
    args = parser.parse_args()
    root = args.keep or tempfile.mkdtemp(prefix="kill9-")
    os.makedirs(root, exist_ok=True)
    ember, config = os.path.abspath(args.ember), os.path.abspath(args.config)

    reference = os.path.join(root, "reference")
    shutil.rmtree(reference, ignore_errors=True)
    began = time.monotonic()
    code, err = finish(ember, reference, config)
    wall = time.monotonic() - began
    if code != 0:
        sys.exit(f"the uninterrupted run failed: {err}")
    expected = results(reference)
    print(f"uninterrupted run: {wall:.1f} s, {len(expected)} result files")

    points = [(name, pattern, None) for name, pattern in events()]
    points += [(f"at {k}/{args.times + 1} of the run's time", None, wall * k / (args.times + 1))
               for k in range(1, args.times + 1)]
    failures, killed_points = 0, 0
    for i, (name, pattern, after) in enumerate(points):
        run = os.path.join(root, f"point-{i:02d}")
        shutil.rmtree(run, ignore_errors=True)
        proc = start(ember, run, config)
        killed = kill_when(proc, run, pattern, after)
        if not killed:
            print(f"  -- {name}: the run ended before the point (not counted)")
            continue
        killed_points += 1
        code, err = finish(ember, run)
        if code != 0:
            failures += 1
            print(f"FAIL {name}: the resume exited {code}: {err.strip()[-400:]}")
            continue
        got = results(run)
        diff = [k for k in expected if got.get(k) != expected[k]]
        if diff:
            failures += 1
            print(f"FAIL {name}: differs in {diff}")
        else:
            print(f"  ok {name}")
        if not args.keep:
            shutil.rmtree(run, ignore_errors=True)

    # One folder killed again and again, each resume itself killed at the next point.
    chain = os.path.join(root, "chain")
    shutil.rmtree(chain, ignore_errors=True)
    kills = 0
    for name, pattern, _ in points:
        # Only the points still ahead of this folder: a file already there would kill the
        # resume at once, testing nothing.
        if pattern is None or glob.glob(os.path.join(chain, pattern)):
            continue
        proc = start(ember, chain, config if kills == 0 else None)
        if kill_when(proc, chain, pattern):
            kills += 1
        else:
            break
    code, err = finish(ember, chain)
    chained_ok = code == 0 and results(chain) == expected
    print(f"{'  ok' if chained_ok else 'FAIL'} one folder killed {kills} times in a row, then resumed")
    failures += not chained_ok

    print(f"{killed_points} kill points (+ a chain of {kills}); {failures} failure(s); folders in {root}")
    sys.exit(1 if failures or killed_points < 20 else 0)


if __name__ == "__main__":
    main()
