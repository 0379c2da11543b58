"""Runs and images for the export / predict / torch.hub tests: pretraining run directories written by
the project's own checkpoint and config writers (a real training run where the test is about one),
and real image bytes of awkward sizes and kinds written with PIL."""
from __future__ import annotations

import io
import struct
import zlib
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from pretrain.checkpoint import save_checkpoint
from pretrain.config import PretrainConfig, config_to_dict, save_resolved
from pretrain.model import create_model


def randomise(model: torch.nn.Module, seed: int = 0) -> torch.nn.Module:
    """Give every BN layer and the head non-trivial values (a fresh model's zero-initialised residual
    BNs make most blocks the identity, which would let a wrong block layout pass a logits check)."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, torch.nn.BatchNorm2d):
                module.weight.copy_(torch.rand(module.weight.shape, generator=generator) + 0.5)
                module.bias.copy_(torch.randn(module.bias.shape, generator=generator) * 0.1)
                module.running_mean.copy_(torch.randn(module.running_mean.shape, generator=generator) * 0.1)
                module.running_var.copy_(torch.rand(module.running_var.shape, generator=generator) + 0.5)
            elif isinstance(module, torch.nn.Linear):
                module.weight.copy_(torch.randn(module.weight.shape, generator=generator) * 0.05)
                module.bias.copy_(torch.randn(module.bias.shape, generator=generator) * 0.5)
    return model


def pretraining_run(run_dir: Path, model_name: str, tags: list[str], *, image_size: int = 224,
                    loss: str = "softmax", shards: Path | None = None, images_seen: int = 1000,
                    seed: int = 0) -> torch.nn.Module:
    """A pretraining run directory as training leaves it (config.yaml, checkpoint-<n>.pt and
    checkpoint-latest.pt through pretrain.checkpoint.save_checkpoint), holding a randomised
    ``model_name`` with a ``len(tags)``-way hashtag head; returns that model (eval mode)."""
    config = PretrainConfig()
    config.model.name, config.loss.name = model_name, loss
    config.data.image_size, config.data.train = image_size, str(shards) if shards else None
    config.run.dir, config.run.name = str(run_dir.parent), run_dir.name
    torch.manual_seed(seed)
    model = randomise(create_model(model_name, len(tags)), seed).eval()
    state = {"model": model.state_dict(), "step": 1, "config": config_to_dict(config), "vocab_tags": list(tags)}
    save_checkpoint(run_dir, state, images_seen, keep_last=1)
    save_resolved(config, run_dir)
    return model


def photo(width: int, height: int, seed: int, mode: str = "RGB", fmt: str = "JPEG") -> bytes:
    """A smooth random picture with texture noise, encoded as ``fmt``."""
    rng = np.random.default_rng(seed)
    base = Image.fromarray(rng.integers(0, 256, (5, 7, 3), dtype=np.uint8)).resize((width, height),
                                                                                  Image.Resampling.BICUBIC)
    pixels = np.clip(np.asarray(base, dtype=np.float64) + rng.normal(0, 12, (height, width, 3)), 0, 255)
    out = io.BytesIO()
    Image.fromarray(pixels.astype(np.uint8)).convert(mode).save(out, fmt, **({"quality": 90} if fmt == "JPEG" else {}))
    return out.getvalue()


def png_header_only(width: int, height: int) -> bytes:
    """A PNG whose header claims ``width x height`` pixels and whose data is a few bytes: a
    decompression bomb for any decoder that does not check the size first."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(b"\0" * 16)) + chunk(b"IEND", b"")


def image_files(folder: Path) -> list[Path]:
    """Real images of the sizes and kinds the eval transform has to get right: landscape, portrait,
    odd sizes, smaller than the resize (upscaled), grayscale JPEG, palette PNG, RGB PNG."""
    folder.mkdir(parents=True, exist_ok=True)
    specs = [("wide.jpg", 500, 333, "RGB", "JPEG"), ("tall.jpg", 301, 467, "RGB", "JPEG"),
             ("odd.jpg", 257, 259, "RGB", "JPEG"), ("small.jpg", 120, 90, "RGB", "JPEG"),
             ("gray.jpg", 320, 240, "L", "JPEG"), ("palette.png", 200, 260, "P", "PNG"),
             ("plain.png", 640, 480, "RGB", "PNG")]
    paths = []
    for seed, (name, width, height, mode, fmt) in enumerate(specs):
        path = folder / name
        path.write_bytes(photo(width, height, seed, mode, fmt))
        paths.append(path)
    return paths
