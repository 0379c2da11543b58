"""One rank of the torchrun test (tests/data/loader/test_pipeline_ddp.py): gloo on CPU, 2 DataLoader workers.
With ``--mix DIR``, train and eval read a mixture: the shards weighted 3 and DIR weighted 1.

Train: two epochs over uneven shards, with an all-reduce after every batch as DDP's gradient sync
does; a rank with fewer batches would leave the others waiting in that all-reduce (the test's
timeout catches the hang). Eval: one pass; each rank writes the keys it saw. Writes
<out>/rank<r>.json.
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch
import torch.distributed as dist

from data.loader.pipeline import LoaderConfig, create_loader


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("shards", type=Path)
    parser.add_argument("out", type=Path)
    parser.add_argument("--mix", type=Path, help="a second shard directory, mixed in with weight 1 (shards: 3)")
    args = parser.parse_args()
    source = args.shards if args.mix is None else [{"path": str(args.shards), "weight": 3},
                                                   {"path": str(args.mix), "weight": 1}]
    dist.init_process_group("gloo")
    rank = dist.get_rank()
    config = LoaderConfig(batch_size=4, num_workers=2, image_size=16, shuffle_buffer=20, shuffle_initial=4)
    train = create_loader(source, config)  # rank and world size from torch.distributed
    batches = []
    for epoch in range(2):
        train.set_epoch(epoch)
        count = 0
        for batch in train:
            step = torch.tensor([float(batch["image"].float().mean())])
            dist.all_reduce(step)
            count += 1
        batches.append(count)
    counts = [torch.zeros(2, dtype=torch.long) for _ in range(dist.get_world_size())]
    dist.all_gather(counts, torch.tensor(batches))
    evaluation = create_loader(source, LoaderConfig(batch_size=4, num_workers=2, image_size=16,
                                                         split="train"), mode="eval")
    keys = [key for batch in evaluation for key in batch["keys"]]
    result = {"rank": rank, "batches": batches, "all_batches": [c.tolist() for c in counts],
              "batches_per_epoch": train.batches_per_epoch, "eval_keys": keys,
              "eval_batches_expected": evaluation.batches_per_epoch}
    (args.out / f"rank{rank}.json").write_text(json.dumps(result))
    dist.barrier()
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
