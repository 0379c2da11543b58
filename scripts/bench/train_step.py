"""Benchmark: our training step (pretrain/engine.py) vs a bare PyTorch loop, same model, batch,
precision and synthetic input, in one process.

- ours: ``Engine.step`` as pretraining runs it: uint8 batch -> device, normalised there, label index
  lists -> multi-hot targets by one scatter, forward + multi-label softmax under the configured
  autocast, backward, global grad norm + device-side non-finite skip flag, fused SGD (Nesterov,
  no weight decay on BN/bias), lr from the image-counted schedule, device-side loss accumulation.
- bare (the ratio's baseline): the loop a user writes by hand: the same uint8 batch converted and
  normalised inline, the dense target precomputed once, forward + the same loss under the same
  autocast, backward, ``torch.optim.SGD`` (default implementation, same groups), zero_grad.

Both start from the same weights. Steps are timed after --warmup untimed steps, best of --repeats
rounds with the two interleaved (the machine may be shared); the device is synchronised at the end
of each timed block only. Defaults: CPU: resnext_tiny, 64 px, batch 32, fp32 (a ~1-2 minute run);
CUDA: ResNeXt-101 32x8d, 224 px, batch 64, bf16 + channels_last, plus the same bare loop in fp32
NCHW eager as the reference for the speed-up (``--compile`` adds torch.compile to ours).

The last line is {"bench": "train_step", "ours": img/s, "baseline": bare img/s, "unit": "img/s",
"ratio": ours/bare, "cpu_time_ratio": the same in images per CPU second of the process, which a
shared machine disturbs less, ...} (on CUDA also "fp32_eager" img/s and "speedup" = ours/fp32_eager).
"""
from __future__ import annotations

import argparse
import copy
import json
import sys
import time
from pathlib import Path
from typing import Callable

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from data.errors import cli_main  # noqa: E402
from data.loader.labels import multi_hot_targets, pack_labels  # noqa: E402
from pretrain.engine import MEAN_255, STD_255, Engine, Progress, StepSettings  # noqa: E402
from pretrain.loss import create_loss  # noqa: E402
from pretrain.model import create_model, param_groups  # noqa: E402
from pretrain.schedule import ImageScheduler, LRSchedule  # noqa: E402

DTYPES = {"fp32": None, "bf16": torch.bfloat16}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    cuda = torch.cuda.is_available()
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="resnext101_32x8d" if cuda else "resnext_tiny")
    parser.add_argument("--image-size", type=int, default=224 if cuda else 64)
    parser.add_argument("--batch-size", type=int, default=64 if cuda else 32)
    parser.add_argument("--classes", type=int, default=1500, help="hashtags (the IN-1k-aligned vocabulary size)")
    parser.add_argument("--precision", choices=sorted(DTYPES), default="bf16" if cuda else "fp32")
    parser.add_argument("--channels-last", action=argparse.BooleanOptionalAction, default=cuda)
    parser.add_argument("--compile", action="store_true", help="torch.compile our model")
    parser.add_argument("--steps", type=int, default=20 if cuda else 8, help="timed steps per round")
    parser.add_argument("--warmup", type=int, default=5 if cuda else 2, help="untimed steps before timing")
    parser.add_argument("--repeats", type=int, default=5, help="rounds; the best is reported")
    parser.add_argument("--threads", type=int, default=None, help="intra-op threads (default: 1 on CPU, where a shared machine stalls multi-threaded "
                             "steps at random; torch's default on CUDA)")
    parser.add_argument("--seed", type=int, default=0)
    return parser.parse_args(argv)


def synthetic_batch(args: argparse.Namespace) -> dict:
    rng = np.random.default_rng(args.seed)
    images = torch.from_numpy(rng.integers(0, 256, (args.batch_size, 3, args.image_size, args.image_size),
                                           dtype=np.uint8))
    labels = [rng.choice(args.classes, size=rng.integers(1, 4), replace=False).tolist()
              for _ in range(args.batch_size)]
    batch = {"image": images, "labels": pack_labels(labels), "keys": [str(i) for i in range(args.batch_size)]}
    if torch.cuda.is_available():
        batch["image"] = batch["image"].pin_memory()
    return batch


def build_ours(model: torch.nn.Module, args: argparse.Namespace, device: torch.device,
               autocast: torch.dtype | None, channels_last: bool) -> Callable[[], None]:
    optimizer = torch.optim.SGD(param_groups(model, 1e-4), lr=0.0, momentum=0.9, nesterov=True, fused=True)
    scheduler = ImageScheduler(optimizer, LRSchedule(peak_lr=0.1, total_images=10**9, warmup_images=10**6))
    network = torch.compile(model) if args.compile else model
    engine = Engine(network, optimizer, create_loss("softmax"),
                    StepSettings(args.classes, autocast_dtype=autocast, channels_last=channels_last),
                    device, scheduler)
    batch, progress = synthetic_batch(args), Progress()

    def step() -> None:
        engine.step([batch], progress, args.batch_size)

    step.sync = engine.read_stats  # type: ignore[attr-defined]
    return step


def build_bare(model: torch.nn.Module, args: argparse.Namespace, device: torch.device,
               autocast: torch.dtype | None, channels_last: bool) -> Callable[[], None]:
    optimizer = torch.optim.SGD(param_groups(model, 1e-4), lr=1e-4, momentum=0.9, nesterov=True)
    loss_fn = create_loss("softmax")
    batch = synthetic_batch(args)
    targets = multi_hot_targets(batch["labels"], args.classes, device)
    mean = torch.tensor(MEAN_255, device=device).view(1, 3, 1, 1)
    std = torch.tensor(STD_255, device=device).view(1, 3, 1, 1)
    memory_format = torch.channels_last if channels_last else torch.contiguous_format

    def step() -> None:
        images = batch["image"].to(device, non_blocking=True).to(memory_format=memory_format)
        images = (images.float() - mean) / std
        with torch.autocast(device.type, dtype=autocast, enabled=autocast is not None):
            loss = loss_fn(model(images), targets)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    step.sync = lambda: torch.cuda.synchronize() if device.type == "cuda" else None  # type: ignore[attr-defined]
    return step


def images_per_second(step: Callable[[], None], steps: int, batch_size: int) -> tuple[float, float]:
    """(images per wall-clock second, images per CPU second of this process)."""
    start, cpu_start = time.perf_counter(), time.process_time()
    for _ in range(steps):
        step()
    step.sync()  # type: ignore[attr-defined]
    images = steps * batch_size
    return images / (time.perf_counter() - start), images / max(time.process_time() - cpu_start, 1e-9)


def fresh_model(template: torch.nn.Module, device: torch.device, channels_last: bool) -> torch.nn.Module:
    model = copy.deepcopy(template).to(device)
    return model.to(memory_format=torch.channels_last) if channels_last else model


@cli_main
def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    threads = args.threads or (None if device.type == "cuda" else 1)
    if threads:
        torch.set_num_threads(threads)
    torch.manual_seed(args.seed)
    template = create_model(args.model, args.classes)
    autocast = DTYPES[args.precision]
    contenders = {"ours": build_ours(fresh_model(template, device, args.channels_last), args, device, autocast,
                                     args.channels_last),
                  "bare": build_bare(fresh_model(template, device, args.channels_last), args, device, autocast,
                                     args.channels_last)}
    if device.type == "cuda":
        contenders["fp32_eager"] = build_bare(fresh_model(template, device, False), args, device, None, False)
    print(f"{args.model} at {args.image_size} px, batch {args.batch_size}, {args.classes} classes, {args.precision}"
          f"{', channels_last' if args.channels_last else ''}{', compiled' if args.compile else ''} on {device} "
          f"({torch.get_num_threads()} threads)", flush=True)
    for name, step in contenders.items():
        for _ in range(args.warmup):
            step()
        step.sync()  # type: ignore[attr-defined]
    best = {name: 0.0 for name in contenders}
    best_cpu = {name: 0.0 for name in contenders}
    for round_ in range(args.repeats):
        for name, step in contenders.items():
            rate, cpu_rate = images_per_second(step, args.steps, args.batch_size)
            best[name], best_cpu[name] = max(best[name], rate), max(best_cpu[name], cpu_rate)
            print(f"round {round_ + 1}: {name}: {rate:.1f} img/s ({cpu_rate:.1f} per CPU second)", flush=True)
    result = {"bench": "train_step", "ours": round(best["ours"], 2), "baseline": round(best["bare"], 2),
              "unit": "img/s", "ratio": round(best["ours"] / best["bare"], 4), "model": args.model,
              "image_size": args.image_size, "batch_size": args.batch_size, "precision": args.precision,
              "channels_last": args.channels_last, "compile": args.compile, "device": str(device),
              "threads": torch.get_num_threads(),
              "cpu_time_ratio": round(best_cpu["ours"] / best_cpu["bare"], 4)}
    if "fp32_eager" in best:
        result.update(fp32_eager=round(best["fp32_eager"], 2), speedup=round(best["ours"] / best["fp32_eager"], 3))
    else:
        result["gpu"] = "not measured on GPU"
    print(json.dumps(result))


if __name__ == "__main__":
    main()
