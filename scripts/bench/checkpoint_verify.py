"""Benchmark: what verifying a checkpoint's checksums adds to reading it.

Input: a real pretraining checkpoint written by ``save_checkpoint`` (a ResNeXt ``--model``'s
weights, SGD momentum for every parameter, RNG state and config: the file a resume reads), in a
temporary directory, read once before timing so that every round reads from the page cache.

Timed, best of --repeats rounds with the two interleaved (the machine may be shared):

- baseline: ``torch.load(path, weights_only=True)``, what resuming cost before the checksums;
- ours: ``load_checkpoint(path)``: every zip record's CRC-32 compared (Python's zipfile), then the
  same torch.load, then the entries' types and the weights' finiteness checked.

The last line is {"bench": "checkpoint_verify", "ours": s, "baseline": s, "unit": "s per checkpoint",
"ratio": ours / baseline, "file_gib": ..., "verify_s_per_gib": ..., "cpu_s": {...}}.
"""
from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import torch

from data.errors import cli_main
from pretrain.checkpoint import load_checkpoint, save_checkpoint, training_state
from pretrain.model import create_model, param_groups


def _write(directory: Path, model_name: str) -> Path:
    torch.manual_seed(0)
    model = create_model(model_name, 1000)
    optimizer = torch.optim.SGD(param_groups(model, 1e-4), lr=0.1, momentum=0.9)
    for p in model.parameters():
        p.grad = torch.randn_like(p) * 1e-3
    optimizer.step()  # momentum buffers for every parameter, as in a real checkpoint
    state = training_state(model, optimizer, step=1, config={"model": {"name": model_name}})
    return save_checkpoint(directory, state, 256, keep_last=1)


def _timed(read, path: Path) -> tuple[float, float]:
    start, cpu = time.perf_counter(), time.process_time()
    read(path)
    return time.perf_counter() - start, time.process_time() - cpu


@cli_main
def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="resnext101_32x8d", help="model factory name (pretrain/model.py)")
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory() as scratch:
        path = _write(Path(scratch), args.model)
        gib = path.stat().st_size / 2**30
        path.read_bytes()  # into the page cache: both sides read from memory
        readers = {"baseline": lambda p: torch.load(p, weights_only=True), "ours": load_checkpoint}
        best = {name: (float("inf"), float("inf")) for name in readers}
        for _ in range(args.repeats):
            for name, read in readers.items():
                best[name] = min(best[name], _timed(read, path))
    ours, baseline = best["ours"][0], best["baseline"][0]
    print(f"{args.model} checkpoint {gib:.2f} GiB: torch.load {baseline:.2f} s, load_checkpoint {ours:.2f} s")
    print(json.dumps({"bench": "checkpoint_verify", "ours": round(ours, 3), "baseline": round(baseline, 3),
                      "unit": "s per checkpoint", "ratio": round(ours / baseline, 3), "file_gib": round(gib, 3),
                      "verify_s_per_gib": round((ours - baseline) / gib, 3), "model": args.model,
                      "cpu_s": {"ours": round(best["ours"][1], 3), "baseline": round(best["baseline"][1], 3)}}))


if __name__ == "__main__":
    main()
