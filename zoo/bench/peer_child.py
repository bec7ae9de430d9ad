"""One peer train step timing in a process of its own, so that its memory high-water mark is its own.

    python -m zoo.bench.peer_child '{"backend": "hf-torch", "family_name": "gpt", "cfg_hf": {...},
                                     "shapes": {...}, "steps": 5, "dtype": "float32"}'

The one argument is the JSON of `peers.time_train_step`'s keyword arguments; the figures come back
as the JSON on the last stdout line that starts with `RESULT_MARK`. `run` is the parent's side.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from typing import Any

from zoo.bench import measure, peers

RESULT_MARK = "ZOO_BENCH_RESULT "
_ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def run(**request: Any) -> dict[str, Any]:
    """`peers.time_train_step(**request)`, run in a fresh `python -m zoo.bench.peer_child` process."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [_ROOT, os.environ.get("PYTHONPATH")]))}
    proc = subprocess.run([sys.executable, "-m", "zoo.bench.peer_child", json.dumps(request)],
                          capture_output=True, text=True, env=env, cwd=_ROOT)
    lines = [line for line in proc.stdout.splitlines() if line.startswith(RESULT_MARK)]
    if proc.returncode != 0 or not lines:
        tail = (proc.stderr.strip() or proc.stdout.strip() or f"exit status {proc.returncode}").splitlines()[-1]
        raise RuntimeError(f"{request.get('backend')} train step failed in its subprocess: {tail}")
    return json.loads(lines[-1][len(RESULT_MARK):])


def main(argv: list[str]) -> int:
    """Time the requested peer train step and print its figures after `RESULT_MARK`."""
    request = json.loads(argv[0])
    peers.peer_available(request["backend"])  # import the peer stack first: its memory is not the step's
    before = measure.proc_status_bytes("VmRSS")
    result = peers.time_train_step(**request)
    after = measure.proc_status_bytes("VmHWM")
    if result["mem_source"] == "rss" and before is not None and after is not None:
        result["peak_mem_bytes"], result["mem_source"] = max(0, after - before), "rss (VmHWM)"
    print("\n" + RESULT_MARK + json.dumps(result), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
