"""Initial weights for transfer: read any supported weights file, load it into the target model,
and decide what happens to the classifier head.

Accepted ``init`` values:

- ``None`` / ``"random"``: the random-init baseline (the model as :func:`pretrain.model.create_model`
  builds it);
- an openwsl pretraining checkpoint (``checkpoint-*.pt``, or a run directory holding
  ``checkpoint-latest.pt``): its ``model`` state;
- an openwsl trunk export or any ``.safetensors`` state dict;
- an official WSL / torchvision / timm ``.pth`` / ``.pt`` / ``.bin`` file: a plain state dict, optionally
  wrapped in ``state_dict`` / ``model`` / ``module`` and with DDP's ``module.`` prefixes. Read with
  ``torch.load(weights_only=True)``: pickled code is refused, never run.

Loading is by name with shapes checked first: any trunk tensor whose shape differs from the
model's stops with ONE line naming the first such key and both shapes (a 32x16d file into a 32x8d
model); missing and unexpected keys are reported, and a file sharing no key with the model is an
error. The head (``fc`` for ResNets) is loaded when the file has one of exactly the target's shape
and ``head="keep"`` (evaluating an IN-1k fine-tuned model); otherwise it is replaced by a fresh
``num_classes``-way head.
"""
from __future__ import annotations

import hashlib
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal, Mapping

import torch
from torch import nn

from data.errors import UserError
from pretrain.checkpoint import (FORMAT, checked_checkpoint, clean_state_keys, given_checkpoint, load_trunk,
                                 safe_torch_load)
from pretrain.divergence import nonfinite_tensors
from pretrain.model import create_model, head_name, reset_head

HeadPolicy = Literal["keep", "replace"]
# Wrappers official and third-party files put around the state dict.
_WRAPPER_KEYS = ("state_dict", "model", "module", "model_state", "net")


@dataclass
class InitReport:
    """What :func:`initialise` did, for logs and result files."""

    source: str
    kind: str
    loaded: int = 0
    missing: list[str] = field(default_factory=list)
    unexpected: list[str] = field(default_factory=list)
    head: str = "new"  # "loaded" (from the file) or "new" (fresh N(0, 0.01^2) head)
    head_not_loaded: list[str] = field(default_factory=list)  # the file's head tensors left out
    weights_sha256: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def summary(self) -> str:
        if self.kind == "random":
            return "init: random (no weights file)"
        return (f"init: {self.source} ({self.kind}): {self.loaded} tensors loaded, {len(self.missing)} missing"
                f"{_examples(self.missing)}, {len(self.unexpected)} unexpected{_examples(self.unexpected)}, "
                f"head {self.head}"
                f"{' (file head ' + ', '.join(self.head_not_loaded) + ' not loaded)' if self.head_not_loaded else ''}")


def _examples(keys: list[str]) -> str:
    return f" ({', '.join(keys[:3])}{', …' if len(keys) > 3 else ''})" if keys else ""


def read_weights(path: str | Path) -> tuple[dict[str, torch.Tensor], str]:
    """(state dict with clean torchvision-style keys, kind of file) for any supported file."""
    path = given_checkpoint(path)
    if not path.is_file():
        raise UserError(f"init={path}: no such file; pass a checkpoint, a .safetensors / .pth file, a run "
                        "directory, or init=null for random init")
    if path.suffix == ".safetensors":
        state, metadata = load_trunk(path)
        kind = "openwsl trunk export" if metadata.get("format") == "openwsl-trunk" else "safetensors"
        return _finite(clean_state_keys(state), path), kind
    loaded = safe_torch_load(path, "cpu")
    if isinstance(loaded, dict) and loaded.get("format") == FORMAT:
        return clean_state_keys(checked_checkpoint(loaded, path)["model"]), "openwsl checkpoint"
    return _finite(clean_state_keys(_unwrap(loaded, path)), path), "state dict"


def _finite(state: dict[str, torch.Tensor], path: Path) -> dict[str, torch.Tensor]:
    nonfinite = nonfinite_tensors(state)
    if nonfinite:
        raise UserError(f"init={path}: holds non-finite weights (NaN or inf in {len(nonfinite)} tensors, e.g. "
                        f"{nonfinite[0]}); training or evaluating from them cannot give anything finite")
    return state


def _unwrap(obj: Any, path: Path) -> Mapping[str, torch.Tensor]:
    for _ in range(3):  # e.g. {"model": {"state_dict": {...}}}
        if isinstance(obj, Mapping) and not _is_state_dict(obj):
            inner = next((obj[k] for k in _WRAPPER_KEYS if isinstance(obj.get(k), Mapping)), None)
            if inner is None:
                break
            obj = inner
    if not isinstance(obj, Mapping) or not _is_state_dict(obj):
        raise UserError(f"{path}: no state dict of tensors found (looked at the top level and under "
                        f"{', '.join(_WRAPPER_KEYS)}); save the weights with torch.save(model.state_dict())")
    return {k: v for k, v in obj.items() if isinstance(v, torch.Tensor)}


def _is_state_dict(obj: Mapping) -> bool:
    return bool(obj) and all(isinstance(k, str) for k in obj) and any(isinstance(v, torch.Tensor) for v in obj.values())


def file_sha256(path: str | Path) -> str:
    """Content hash of a weights file (keys the feature cache)."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(16 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def load_into(model: nn.Module, state: Mapping[str, torch.Tensor], *, source: str, kind: str,
              head: HeadPolicy = "replace") -> InitReport:
    """Load ``state`` into ``model`` by name (see the module doc); the head's fate by ``head``."""
    own = model.state_dict()
    prefix = f"{head_name(model)}."
    head_keys = [k for k in own if k.startswith(prefix)]
    head_fits = head == "keep" and bool(head_keys) and all(
        k in state and state[k].shape == own[k].shape for k in head_keys)
    usable = {k: v for k, v in state.items() if k in own and (head_fits or not k.startswith(prefix))}
    for key, value in usable.items():
        if value.shape != own[key].shape:
            raise UserError(f"{source}: {key} has shape {tuple(value.shape)} in the file but "
                            f"{tuple(own[key].shape)} in the model; the file is another architecture "
                            "than model.name (e.g. 32x16d weights into a 32x8d model)")
    if not usable:
        raise UserError(f"{source}: no tensor name matches the model (file keys like {next(iter(state), '?')!r}, "
                        f"model keys like {next(iter(own))!r}); it is another architecture or naming")
    model.load_state_dict(usable, strict=False)
    # BN's num_batches_tracked counters are absent from many official files and unused in eval.
    missing = [k for k in own if k not in usable and not k.startswith(prefix)
               and not k.endswith("num_batches_tracked")]
    unexpected = [k for k in state if k not in own]
    dropped = [k for k in state if k in own and k not in usable]
    return InitReport(source, kind, len(usable), missing, unexpected, "loaded" if head_fits else "new", dropped)


def build_model(name: str, num_classes: int, init: str | None, *, head: HeadPolicy = "replace",
                seed: int = 0) -> tuple[nn.Module, InitReport]:
    """A ``num_classes``-way ``name`` model initialised from ``init`` (None/"random": random).

    Random draws (the whole random-init model, a fresh head) come from ``seed`` alone, not from the
    per-rank seeds: every rank builds the same model, so features and scores do not depend on the
    world size, and "random-seed<seed>" names the weights."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = create_model(name, num_classes)
        if init in (None, "", "random", "none"):
            return model, InitReport("random", "random")
        state, kind = read_weights(init)
        path = given_checkpoint(init)
        report = load_into(model, state, source=str(path), kind=kind, head=head)
        if report.head == "new":
            reset_head(model, num_classes)
    report.weights_sha256 = file_sha256(path)
    return model, report
