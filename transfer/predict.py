"""Tag images: the top-k labels of an export (or a run) for image files and folders.

``python -m transfer predict --model <export folder | run dir> <images or folders...> [--top-k 5] [--json]``

Preprocessing is the one the export's ``pretrained_cfg`` prescribes (resize the short side to
``floor(size / crop_pct)``, bilinear, centre-crop ``size``, ImageNet mean/std), done with the very
torchvision calls timm's ``create_transform(**resolve_data_config(model=...))`` makes, so both give
the same pixels and the same probabilities. (The pipeline's own EvalTransform crops and resizes in
one step from the image header, within a grey level of this; predict takes the exact path.) Logits
become probabilities by the loss the head was trained with: a softmax for the paper's multi-label
softmax and for class heads, a per-label sigmoid for a sigmoid-trained run.

Images are decoded as the shard builder decodes corpus images (data/images/decode.py): an allowlist
of formats, the pixel count checked from the header before decoding, corrupt and truncated files
named, EXIF orientation applied and transparency composited on white, so a photo is seen upright as
the training images were. (timm's loader applies neither: only such images can differ from it.) An
image that cannot be used is skipped with its reason, counted and reported; it never stops the
command.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Sequence

import torch
from torch.utils.data import DataLoader
from tqdm import tqdm

from torchvision.transforms import InterpolationMode
from torchvision.transforms import functional as TF

from data.errors import UserError
from data.images.decode import DEFAULT_MAX_PIXELS, ImageSettings, decode
from data.tar_member import IMAGE_SUFFIXES, is_image_file
from pretrain.engine import Normalizer
from transfer.datasets import LabelledImages, collate, skip_report
from transfer.export import LoadedModel, Preprocessing, load_model


@dataclass(frozen=True)
class ExportTransform:
    """Bytes -> the ``3 x size x size`` uint8 input: the guarded decode, then torchvision's
    ``Resize(resize)`` + ``CenterCrop(size)`` on the PIL image, as timm's eval transform."""

    preprocessing: Preprocessing
    max_pixels: int = DEFAULT_MAX_PIXELS

    def __call__(self, data: bytes, rng: object = None) -> torch.Tensor:
        # short side unbounded: decode never resizes, so the only resize is the one below
        image, _ = decode(data, ImageSettings(short_side=sys.maxsize, max_pixels=self.max_pixels))
        image = TF.resize(image, self.preprocessing.resize, InterpolationMode.BILINEAR)
        return TF.pil_to_tensor(TF.center_crop(image, self.preprocessing.size))


@dataclass
class Prediction:
    image: str
    top: list[tuple[str, float]] | None  # None: skipped
    skipped: str | None = None  # the skip reason

    def to_dict(self) -> dict:
        if self.top is None:
            return {"image": self.image, "skipped": self.skipped}
        return {"image": self.image, "top": [[label, probability] for label, probability in self.top]}

    def text(self) -> str:
        if self.top is None:
            return f"{self.image}: skipped ({self.skipped})"
        return "\n".join([self.image, *(f"  {probability:7.4f}  {label}" for label, probability in self.top)])


def collect_images(inputs: Sequence[str | os.PathLike]) -> list[Path]:
    """Files as given (whatever their name: a non-image is skipped later, with its reason) and the
    image files under folders (by extension, recursively, sorted; hidden files left out)."""
    images: list[Path] = []
    for given in map(Path, inputs):
        if given.is_dir():
            images.extend(sorted(p for p in given.rglob("*") if p.is_file() and is_image_file(p.name)
                                 and not any(part.startswith(".") for part in p.relative_to(given).parts)))
        elif given.is_file():
            images.append(given)
        else:
            raise UserError(f"{given}: no such image file or folder")
    if not images:
        raise UserError(f"no image files found in {', '.join(map(str, inputs))} (extensions: "
                        f"{', '.join(IMAGE_SUFFIXES)})")
    return images


def default_device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


@torch.inference_mode()
def predict(loaded: LoadedModel, images: Sequence[Path], *, top_k: int = 5, batch_size: int = 32, workers: int = 0,
            device: torch.device | None = None, max_pixels: int = DEFAULT_MAX_PIXELS,
            progress: bool = True) -> Iterator[Prediction]:
    """The top-``top_k`` (label, probability) of each image, in input order, batch by batch."""
    if loaded.labels is None:
        raise UserError(f"{loaded.description} has no classifier head (a trunk-only export or a trunk): there "
                        "are no labels to predict; export a run with its head")
    device = device or default_device()
    model = loaded.model.to(device)
    normalise = Normalizer(device)
    k = min(top_k, len(loaded.labels))
    dataset = LabelledImages(list(images), [-1] * len(images), loaded.labels, "images",
                             ExportTransform(loaded.preprocessing, max_pixels))
    loader = DataLoader(dataset, batch_size=batch_size, num_workers=workers, collate_fn=collate,
                        pin_memory=device.type == "cuda")
    names = [str(path) for path in images]
    # No bar when stderr is not a terminal (disable=None): logs and captured output stay clean.
    for batch in tqdm(loader, desc="predict", unit="batch", disable=None if progress else True):
        done: dict[int, Prediction] = {i: Prediction(names[i], None, reason) for i, reason in batch.skipped}
        if len(batch.indices):
            probabilities = loaded.probabilities_of(model(normalise(batch.images))).cpu()
            values, indices = probabilities.topk(k, dim=1)
            for i, row_values, row_indices in zip(batch.indices.tolist(), values.tolist(), indices.tolist()):
                done[i] = Prediction(names[i], [(loaded.labels[j], p) for j, p in zip(row_indices, row_values)])
        yield from (done[i] for i in sorted(done))


def run_predict(args: argparse.Namespace) -> list[Prediction]:
    """The ``predict`` command: print each image's top-k (text or JSON lines) and a skip summary."""
    images = collect_images(args.images)
    loaded = load_model(args.model)
    device = default_device() if args.device == "auto" else _device(args.device)
    results: list[Prediction] = []
    for prediction in predict(loaded, images, top_k=args.top_k, batch_size=args.batch_size, workers=args.workers,
                              device=device):
        tqdm.write(json.dumps(prediction.to_dict()) if args.json else prediction.text(), file=sys.stdout)
        results.append(prediction)
    skipped = [(i, r.skipped) for i, r in enumerate(results) if r.top is None]
    summary = f"predict: {len(results) - len(skipped)} of {len(results)} images tagged on {device.type}"
    if skipped:
        report = skip_report(skipped, [r.image for r in results])
        summary += f"; {report.total} skipped ({', '.join(f'{n} {reason}' for reason, n in sorted(report.counts.items()))})"
    print(summary, file=sys.stderr, flush=True)
    return results


def _device(name: str) -> torch.device:
    try:
        device = torch.device(name)
    except RuntimeError:
        raise UserError(f"--device {name}: not a device (use auto, cpu, cuda or cuda:N)") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise UserError(f"--device {name}: no CUDA device is available here; use cpu or auto")
    return device


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", required=True, metavar="PATH",
                        help="an export folder (python -m transfer export), or a run directory / model file as "
                             "export reads it")
    parser.add_argument("images", nargs="+", metavar="IMAGE", help="image files and folders (searched recursively)")
    parser.add_argument("--top-k", type=int, default=5, help="labels printed per image (default 5)")
    parser.add_argument("--json", action="store_true",
                        help='one JSON object per line: {"image": path, "top": [[label, probability], ...]} '
                             '(a skipped image: {"image": path, "skipped": reason})')
    parser.add_argument("--batch-size", type=int, default=32, help="images per forward pass (default 32)")
    parser.add_argument("--workers", type=int, default=min(4, os.cpu_count() or 1),
                        help="decoding worker processes (default: up to 4)")
    parser.add_argument("--device", default="auto", help="auto (CUDA when present), cpu, cuda or cuda:N")


def check_arguments(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    for flag in ("top_k", "batch_size"):
        if getattr(args, flag) < 1:
            parser.error(f"--{flag.replace('_', '-')} must be at least 1, got {getattr(args, flag)}")
    if args.workers < 0:
        parser.error(f"--workers must be >= 0, got {args.workers}")
