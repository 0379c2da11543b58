"""Hashtag pretraining: ``torchrun --nproc_per_node=N -m pretrain --config <recipe>.yaml [section.key=value ...]``.

Examples::

    python -m pretrain --config configs/pretrain/cpu_demo.yaml                      # one process
    torchrun --nproc_per_node=8 -m pretrain --config configs/pretrain/resnext101_32x8d_yfcc_in1k.yaml \\
        data.train=/data/yfcc_in1k_shards optim.total_images=300_000_000
    sbatch scripts/slurm/pretrain.sbatch configs/pretrain/resnext101_32x8d_yfcc_in1k.yaml   # multi-node

A run writes <run.dir>/<run.name>/: config.yaml, metrics.jsonl, checkpoint-*.pt, trunk.safetensors,
label_distribution.png, run.json (docs/pretraining.md), and run.lock while it runs: one run at a time.
Restarting the same command (or a torchrun --max-restarts restart) resumes from checkpoint-latest.pt.
Config keys: docs/config.md.
"""
from __future__ import annotations

import argparse
import os

from data.atomic_write import disk_full_error
from data.errors import UserError, cli_main
from pretrain.config import load_config
from pretrain.train import DebugOptions, train


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m pretrain", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", required=True, help="recipe YAML file (configs/pretrain/*.yaml)")
    parser.add_argument("overrides", nargs="*", metavar="section.key=value",
                        help="config overrides, each value parsed as YAML (e.g. optim.total_images=1e6)")
    debug = parser.add_argument_group("debugging and tests (not part of a recipe)")
    debug.add_argument("--stop-after-images", type=int, metavar="N",
                       help="write a checkpoint and stop cleanly once N images are processed")
    debug.add_argument("--check-replicas", action="store_true",
                       help="all-gather a parameter checksum after every step and fail if ranks differ")
    debug.add_argument("--crash-rank", type=int, metavar="R",
                       help="rank R kills itself with SIGKILL (first torchrun attempt only), with --crash-after-images")
    debug.add_argument("--crash-after-images", type=int, metavar="N", help="see --crash-rank")
    debug.add_argument("--max-nonfinite-steps", type=int, metavar="N",
                       help="override optim.max_nonfinite_steps: stop with an error (after a checkpoint) once N "
                            "consecutive steps had a non-finite gradient; such steps are skipped and counted")
    args = parser.parse_intermixed_args(argv)  # overrides may come before or after the flags
    if (args.crash_rank is None) != (args.crash_after_images is None):
        parser.error("--crash-rank and --crash-after-images go together")
    for name in ("stop_after_images", "crash_after_images", "max_nonfinite_steps"):
        value = getattr(args, name)
        if value is not None and value < 1:
            parser.error(f"--{name.replace('_', '-')} must be >= 1, got {value}")
    return args


@cli_main
def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    config = load_config(args.config, args.overrides)
    debug = DebugOptions(stop_after_images=args.stop_after_images, check_replicas=args.check_replicas,
                         crash_rank=args.crash_rank, crash_after_images=args.crash_after_images,
                         max_nonfinite_steps=args.max_nonfinite_steps)
    try:
        train(config, debug)
    except Exception as err:
        # Checkpoints are written atomically and say so themselves; this is for every other write
        # (metrics.jsonl, plots, wandb): one line, and the rerun resumes from the last checkpoint.
        full = disk_full_error(err)
        if full is None:
            raise
        raise UserError(f"{full.filename or 'a write of the run'}: {os.strerror(full.errno)}; free space and "
                        "rerun the same command: it resumes from the last checkpoint") from None


if __name__ == "__main__":
    main()
