"""Run by tests/test_trainer.py under torchrun: a tiny text model trained on JSONL shards through
ExampleStream with data-loading workers; every example a process encodes is logged."""

import json
import os
import sys
from pathlib import Path


from fusion_core import FusionModel, TransformerArgs, Trainer, TrainArgs, interleave
from fusion_core.engine.data import ExampleStream
from fusion_core.engine.distributed import init_distributed, shutdown
from fusion_core.modalities.text import TextAdapter
from fusion_core.engine.trainer import OptimArgs, seed_everything

shards, run_dir, steps, workers = sys.argv[1], Path(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
info = init_distributed("cpu")
seed_everything(0)
model = FusionModel(TransformerArgs(dim=32, n_layers=1, n_heads=4), [TextAdapter(32, markers=())])


def encode(record):
    with open(run_dir / f"seen-{os.getpid()}.jsonl", "a") as f:
        f.write(json.dumps({"id": record["id"], "rank": info.rank}) + "\n")
    return interleave(model, [record["text"]])


stream = ExampleStream.jsonl(shards, encode)
args = TrainArgs(steps=steps, batch_size=8, ckpt_every=100, log_every=1, progress=False, workers=workers,
                 optim=OptimArgs(warmup=0))
Trainer(model, stream, lambda m, ex, seeds: m.collate(ex, seeds=seeds), args, run_dir, dist_info=info).fit()
shutdown(info)
