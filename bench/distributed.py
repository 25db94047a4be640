"""One process against two (gloo on the CPU; DDP and FSDP2) on the toy recipe, same global batch:
the per-step losses should agree to float summation order. Prints a table and a JSON line.

    python bench/distributed.py [--steps 8]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

from common import print_json, print_table
from fusion_core.engine.recipe import machine_description


def run(folder: Path, steps: int, nproc: int, strategy: str) -> dict[int, float]:
    args = ["run", "toy", "--preset", "tiny", f"run_dir={folder}", f"train.steps={steps}",
            f"train.ckpt_every={steps}", "train.progress=false", f"train.strategy={strategy}"]
    if nproc > 1:
        cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}",
               "-m", "fusion_core.engine.cli", *args]
    else:
        cmd = [sys.executable, "-m", "fusion_core.engine.cli", *args]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    subprocess.run(cmd, check=True, env=env, capture_output=True)
    recs = [json.loads(x) for x in (folder / "metrics.jsonl").read_text().splitlines()]
    return {r["step"]: r["loss"] for r in recs}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--steps", type=int, default=8)
    a = p.parse_args()
    with tempfile.TemporaryDirectory() as d:
        one = run(Path(d) / "one", a.steps, 1, "ddp")
        rows = []
        for strategy in ("ddp", "fsdp"):
            two = run(Path(d) / strategy, a.steps, 2, strategy)
            diff = max(abs(one[s] - two[s]) for s in one)
            rows.append({"setup": f"2 processes, {strategy}", "steps": len(two), "max |loss diff|": diff,
                         "relative": diff / max(abs(v) for v in one.values())})
    machine = machine_description()
    print_table(rows, f"toy recipe, {a.steps} steps, 1 process vs 2 (gloo), same global batch; {machine}")
    print_json("distributed_equality", rows, machine=machine)


if __name__ == "__main__":
    main()
