"""The bodies of the transfer subcommands (``evaluate``, ``linear``): wiring datasets, initial
weights, evaluation / feature extraction and result files together. Every rank runs them; only rank
0 writes files."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import safetensors.torch
import torch
from torch import nn

from data.atomic_write import write_bytes, write_json
from data.errors import UserError
from data.vocab.vocabulary import Vocabulary
from pretrain.model import head_name
from transfer.config import TransferConfig
from transfer.datasets import LabelledImages
from transfer.evaluate import evaluate_model, write_results
from transfer.features import FeatureSet, features_for
from transfer.init import InitReport, build_model
from transfer.linear import MODEL_FILE, RESULT_FILE, probe
from transfer.session import Session, session
from transfer.zero_shot import SynsetHead, class_mapping


def _prepare(model: nn.Module, s: Session) -> nn.Module:
    memory_format = torch.channels_last if s.config.model.channels_last else torch.contiguous_format
    return model.to(s.dist.device, memory_format=memory_format)


def run_evaluate(config: TransferConfig) -> dict[str, Any]:
    """Score ``init``'s classifier on ``data.val`` (or, with ``eval.zero_shot_vocab``, its hashtag
    classifier mapped to the classes through synsets); returns the result dict."""
    with session(config, "evaluate") as s:
        dataset = s.val_dataset()
        model, report, head, extra = _model_to_evaluate(config, dataset.classes, s)
        s.log(report.summary())
        s.log(f"evaluate: {dataset.description}, {len(dataset)} images, {len(dataset.classes)} classes, "
              f"world size {s.dist.world_size}")
        result = evaluate_model(_prepare(model, s), dataset, device=s.dist.device, rank=s.dist.rank,
                                world_size=s.dist.world_size, batch_size=config.data.batch_size,
                                workers=config.data.workers, channels_last=config.model.channels_last,
                                autocast_dtype=s.autocast_dtype, head=head)
        settings = {"transform": s.transform_settings(), "model": config.model.name, "init": report.to_dict(),
                    "world_size": s.dist.world_size, **extra}
        if s.dist.is_main:
            path = write_results(result, dataset, s.run_dir, settings, plot=config.eval.plot,
                                 predictions=config.eval.predictions)
            s.tracker.log(0, {"eval/top1": result.top1, "eval/top5": result.top5, "eval/skipped": result.skips["total"]})
            s.tracker.summary({"eval/top1": result.top1, "eval/top5": result.top5})
            s.log(f"top-1 {result.top1:.2f}%  top-5 {result.top5:.2f}%  on {result.scored} images "
                  f"({result.skips['total']} skipped); wrote {path}")
        return result.to_dict()


def _model_to_evaluate(config: TransferConfig, classes: list[str],
                       s: Session) -> tuple[nn.Module, InitReport, nn.Module | None, dict[str, Any]]:
    """(model, init report, head mapping its outputs to class scores or None, settings to record)."""
    vocab_path = config.eval.zero_shot_vocab
    if not vocab_path:
        model, report = build_model(config.model.name, len(classes), config.init, head="keep", seed=config.run.seed)
        _require_head(report, len(classes), f"classifier for the {len(classes)} classes")
        return model, report, None, {}
    vocab = Vocabulary.load(vocab_path)
    mapping = class_mapping(vocab, classes, vocab_path)
    model, report = build_model(config.model.name, len(vocab), config.init, head="keep", seed=config.run.seed)
    _require_head(report, len(vocab), "hashtag classifier of the vocabulary")
    if mapping.unmapped:
        s.log(f"zero-shot: {len(mapping.unmapped)} of {len(classes)} classes carry no hashtag (scored -inf): "
              f"{', '.join(mapping.unmapped[:10])}")
    head = SynsetHead(mapping, len(vocab), config.eval.zero_shot_reduce).to(s.dist.device)
    extra = {"zero_shot": {**mapping.to_dict(), "vocab": vocab_path, "reduce": config.eval.zero_shot_reduce}}
    return model, report, head, extra


def _require_head(report: InitReport, width: int, what: str) -> None:
    if report.head != "loaded":
        raise UserError(f"init={report.source}: the file has no {width}-way {what} (its head is missing or "
                        "another shape); evaluate scores a trained classifier: run `linear` or `finetune` first "
                        "and evaluate their model file, or set eval.zero_shot_vocab for a hashtag model")


def run_linear(config: TransferConfig) -> dict[str, Any]:
    """Extract (or reuse) pooled features of data.train and data.val, fit the probe on rank 0,
    write linear.json and linear_model.safetensors; returns the result dict (on rank 0)."""
    with session(config, "linear") as s:
        train = s.train_dataset()
        val = s.val_dataset(train.classes)
        model, report = build_model(config.model.name, len(train.classes), config.init, head="replace",
                                    seed=config.run.seed)
        s.log(report.summary())
        model = _prepare(model, s)
        settings = {"weights": report.weights_sha256 or f"random-seed{config.run.seed}", "model": config.model.name,
                    "transform": s.transform_settings()}
        features = {split: _features(model, dataset, split, settings, s)
                    for split, dataset in (("train", train), ("val", val))}
        if not s.dist.is_main:
            return {}
        fit, outcome = probe(features["train"].features, features["train"].targets, features["val"].features,
                             features["val"].targets, len(train.classes), config.linear.weight_decays,
                             config.linear.holdout_fraction, config.linear.max_iter, config.run.seed, s.dist.device)
        model_path = _save_probe_model(model, fit, s.run_dir / MODEL_FILE, train.classes)
        result = {**outcome, "classes": train.classes, "init": report.to_dict(), "settings": settings,
                  "features": {split: _feature_info(f) for split, f in features.items()}, "model_file": str(model_path)}
        write_json(s.run_dir / RESULT_FILE, result)
        for row in outcome["grid"]:
            s.log(f"  weight decay {row['weight_decay']:g}: held-out top-1 {row['top1']:.2f}%")
        s.tracker.summary({"linear/top1": outcome["val"]["top1"], "linear/top5": outcome["val"]["top5"],
                           "linear/weight_decay": outcome["weight_decay"]})
        s.log(f"linear probe (weight decay {outcome['weight_decay']:g}): val top-1 {outcome['val']['top1']:.2f}%  "
              f"top-5 {outcome['val']['top5']:.2f}%; wrote {s.run_dir / RESULT_FILE}")
        return result


def _features(model: nn.Module, dataset: LabelledImages, split: str, settings: dict[str, Any],
              s: Session) -> FeatureSet:
    config = s.config
    cache = Path(config.linear.cache_dir) if config.linear.cache_dir else s.run_dir / "features"
    features = features_for(model, dataset, split, cache, settings, device=s.dist.device, rank=s.dist.rank,
                            world_size=s.dist.world_size, batch_size=config.data.batch_size,
                            workers=config.data.workers, channels_last=config.model.channels_last,
                            autocast_dtype=s.autocast_dtype)
    s.log(f"features {split}: {len(features.targets)} images x {features.features.shape[1]} "
          f"({'reused' if features.reused else 'extracted'}; {features.skips['total']} skipped) in {features.directory}")
    return features


def _feature_info(features: FeatureSet) -> dict[str, Any]:
    return {"directory": str(features.directory), "reused": features.reused, "images": len(features.targets),
            "skipped": features.skips}


def _save_probe_model(model: nn.Module, fit: Any, path: Path, classes: list[str]) -> Path:
    """The trunk with the probe folded into its head: a complete model file ``evaluate`` loads."""
    state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    weight, bias = fit.folded()
    prefix = head_name(model)
    state[f"{prefix}.weight"], state[f"{prefix}.bias"] = weight.contiguous(), bias.contiguous()
    write_bytes(path, safetensors.torch.save(state, metadata={"format": "openwsl-linear-probe",
                                                              "classes": json.dumps(classes)}))
    return path
