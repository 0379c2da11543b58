"""Pooled trunk features, extracted once per (weights, model, transform, dataset) and cached on disk.

The cache directory for one split is ``<cache_dir>/<split>-<key>``, where ``key`` hashes the
settings that made the features: the weights file's sha256 (or "random" + seed), the model name,
the eval transform (crop, resize, interpolation, pixel limit) and the dataset listing (every image's
name, class and byte size). Identical settings reuse the cache; any change extracts again.

Under torchrun each rank extracts its exact share (:class:`transfer.datasets.ExactShardSampler`) and
writes ``part-<rank>-of-<world>.safetensors`` (features, targets, dataset indices) with its skips;
rank 0 writes ``settings.json`` last, after a barrier, which marks the cache complete. Loading
merges the parts in dataset-index order and checks every index appears exactly once (scored or
skipped), whatever world size wrote them.
"""
from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import safetensors.torch
import torch
from torch import nn
from tqdm import tqdm

from data.atomic_write import write_bytes, write_json
from data.errors import UserError
from pretrain.checkpoint import unwrap_model
from pretrain.distributed import barrier
from pretrain.engine import Normalizer
from pretrain.model import pooled_features
from transfer.datasets import LabelledImages, skip_report
from transfer.evaluate import eval_loader

SETTINGS_FILE = "settings.json"


@dataclass
class FeatureSet:
    features: torch.Tensor  # N x D float32, the usable samples in dataset-index order
    targets: torch.Tensor  # N int64
    indices: torch.Tensor  # N int64: dataset indices
    skips: dict[str, Any]  # SkipReport.to_dict() of the samples that could not be read
    directory: Path
    reused: bool


def cache_key(settings: dict[str, Any], dataset: LabelledImages) -> str:
    digest = hashlib.sha256(json.dumps(settings, sort_keys=True).encode())
    digest.update(json.dumps(dataset.listing()).encode())
    return digest.hexdigest()[:20]


def features_for(model: nn.Module, dataset: LabelledImages, split: str, cache_dir: Path, settings: dict[str, Any], *,
                 device: torch.device, rank: int = 0, world_size: int = 1, batch_size: int = 64, workers: int = 0,
                 channels_last: bool = False, autocast_dtype: torch.dtype | None = None) -> FeatureSet:
    """The cached features of ``dataset`` (extracting them first when absent); every rank calls it."""
    directory = Path(cache_dir) / f"{split}-{cache_key(settings, dataset)}"
    reused = (directory / SETTINGS_FILE).is_file()
    barrier()  # every rank has decided before rank 0 may write settings.json
    if not reused:
        if rank == 0:
            directory.mkdir(parents=True, exist_ok=True)
            for stale in directory.glob("part-*.safetensors"):  # a crashed run's parts
                stale.unlink()
        barrier()
        _extract_part(model, dataset, directory / f"part-{rank}-of-{world_size}.safetensors", device=device,
                      rank=rank, world_size=world_size, batch_size=batch_size, workers=workers,
                      channels_last=channels_last, autocast_dtype=autocast_dtype)
        barrier()
        if rank == 0:
            write_json(directory / SETTINGS_FILE, {**settings, "split": split, "dataset": dataset.description,
                                                   "num_images": len(dataset), "world_size": world_size})
        barrier()
    return _load(directory, dataset, reused)


@torch.inference_mode()
def _extract_part(model: nn.Module, dataset: LabelledImages, path: Path, *, device: torch.device, rank: int,
                  world_size: int, batch_size: int, workers: int, channels_last: bool,
                  autocast_dtype: torch.dtype | None) -> None:
    model.eval()
    normalise = Normalizer(device, channels_last)
    features, targets, indices, skipped = [], [], [], []
    loader = eval_loader(dataset, batch_size, workers, rank, world_size)
    for batch in tqdm(loader, desc=f"features {path.parent.name}", disable=rank != 0, unit="batch"):
        skipped.extend(batch.skipped)
        if len(batch.indices) == 0:
            continue
        with torch.autocast(device.type, dtype=autocast_dtype, enabled=autocast_dtype is not None):
            pooled = pooled_features(model, normalise(batch.images))
        features.append(pooled.float().cpu())
        targets.append(batch.targets)
        indices.append(batch.indices)
    width = _width(model)
    tensors = {"features": torch.cat(features) if features else torch.zeros(0, width),
               "targets": torch.cat(targets) if targets else torch.zeros(0, dtype=torch.int64),
               "indices": torch.cat(indices) if indices else torch.zeros(0, dtype=torch.int64)}
    write_bytes(path, safetensors.torch.save(tensors, metadata={"skipped": json.dumps(skipped)}))


def _width(model: nn.Module) -> int:
    return int(unwrap_model(model).num_features)


def _load(directory: Path, dataset: LabelledImages, reused: bool) -> FeatureSet:
    parts = sorted(directory.glob("part-*.safetensors"))
    features, targets, indices, skipped = [], [], [], []
    for part in parts:
        with safetensors.safe_open(str(part), framework="pt") as f:
            skipped.extend(tuple(item) for item in json.loads((f.metadata() or {}).get("skipped", "[]")))
            features.append(f.get_tensor("features"))
            targets.append(f.get_tensor("targets"))
            indices.append(f.get_tensor("indices"))
    if not parts:
        raise UserError(f"feature cache {directory} holds no part files; delete the directory to extract again")
    index = torch.cat(indices)
    covered = torch.cat([index, torch.tensor([i for i, _ in skipped], dtype=torch.int64)])
    if len(covered) != len(dataset) or len(torch.unique(covered)) != len(dataset):
        raise UserError(f"feature cache {directory} covers {len(torch.unique(covered))} distinct of {len(dataset)} "
                        "images (incomplete or mixed runs); delete the directory to extract again")
    order = torch.argsort(index)
    return FeatureSet(torch.cat(features)[order], torch.cat(targets)[order], index[order],
                      skip_report(skipped, dataset.names).to_dict(), directory, reused)
