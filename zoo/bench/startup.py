"""`python -m zoo.bench.startup`: what a run costs before it trains, as the data grows.

For each size it writes (once, then reuses) a JSONL corpus of that many MB made of the embedded
corpus's documents, each copy numbered so that no two records are equal, then runs
`train.py --model gpt-tiny --steps 1 --data text:FILE` in a fresh workdir and reports the wall time
of the whole run (tokenizer training on the bounded sample, indexing, compilation, one step, the
closing evaluation and checkpoint) and the peak resident memory of its process.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time

from zoo import corpus

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def make_corpus(path: str, megabytes: int) -> None:
    """A JSONL file of about `megabytes` MB of numbered copies of the embedded corpus's documents."""
    docs = corpus.builtin_documents()
    target, written, copy = megabytes * 1_000_000, 0, 0
    with open(path + ".tmp", "w", encoding="utf-8") as f:
        while written < target:
            for doc in docs:
                line = json.dumps({"text": f"[{copy}] {doc}"}) + "\n"
                f.write(line)
                written += len(line.encode("utf-8"))
                if written >= target:
                    break
            copy += 1
    os.replace(path + ".tmp", path)


def measure_run(data: str, workdir: str, extra: list[str]) -> dict[str, float]:
    """Wall seconds and peak RSS (MB) of one `train.py --steps 1` run, in a child of a fresh process."""
    command = [sys.executable, "train.py", "--model", "gpt-tiny", "--steps", "1", "--data", data,
               "--workdir", workdir, "--set", "train.sample_tokens=0", "--set", "train.eval_batches=1", *extra]
    probe = ("import resource, subprocess, sys, time; t = time.perf_counter(); "
             "subprocess.run(sys.argv[1:], check=True, stdout=subprocess.DEVNULL); "
             "print(time.perf_counter() - t, resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss)")
    out = subprocess.run([sys.executable, "-c", probe, *command], cwd=ROOT, check=True, capture_output=True,
                         text=True).stdout.split()
    return {"seconds": float(out[0]), "peak_rss_mb": float(out[1]) / 1024}


def main(argv: list[str] | None = None) -> int:
    """Measure each size and print a table (and JSON with --json)."""
    p = argparse.ArgumentParser(prog="python -m zoo.bench.startup", description=__doc__.splitlines()[0])
    p.add_argument("--sizes", default="10,100,500", help="comma-separated corpus sizes in MB")
    p.add_argument("--corpus-dir", default=os.path.join(tempfile.gettempdir(), "zoo-startup-corpora"))
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="passed on to train.py")
    p.add_argument("--json", default=None, metavar="PATH")
    args = p.parse_args(argv)
    os.makedirs(args.corpus_dir, exist_ok=True)
    rows = []
    for size in (int(s) for s in args.sizes.split(",")):
        path = os.path.join(args.corpus_dir, f"corpus-{size}mb.jsonl")
        if not os.path.exists(path):
            make_corpus(path, size)
        workdir = tempfile.mkdtemp(prefix="zoo-startup-")
        try:
            row = {"megabytes": size, "load": os.getloadavg()[0],
                   **measure_run(f"text:{path}", workdir, [f"--set={s}" for s in args.set])}
        finally:
            shutil.rmtree(workdir, ignore_errors=True)
        rows.append(row)
        print(f"{size:>6} MB  {row['seconds']:7.1f} s  {row['peak_rss_mb']:8.0f} MB peak RSS  (load {row['load']:.1f})",
              flush=True)
    base = rows[0]
    for row in rows[1:]:
        print(f"{row['megabytes']} MB / {base['megabytes']} MB: time {row['seconds'] / base['seconds']:.2f}x, "
              f"memory {row['peak_rss_mb'] / base['peak_rss_mb']:.2f}x")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"when": time.strftime("%Y-%m-%d %H:%M"), "rows": rows}, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
