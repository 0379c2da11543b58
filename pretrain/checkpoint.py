"""Checkpoints: atomic writes, keep-last-K, resume, RNG state, and the trunk export for transfer.

Layout in a run directory::

    checkpoint-<images>.pt     numbered, complete files only (temp files start with '.')
    checkpoint-latest.pt       a hard link to (or, where links fail, an atomic copy of) the newest
    trunk.safetensors          the network without its hashtag head (export_trunk)

A checkpoint is a plain dict (model, optimizer, scheduler, scaler, step, rng, config, vocab tags;
:func:`save_checkpoint` adds ``format`` and ``images_seen``) of tensors, lists, numbers and strings,
so it loads with ``torch.load(weights_only=True)``: a file carrying pickled code is refused, never run.

Checksums: ``torch.save`` writes a zip archive in which every record (the pickle, each tensor's
bytes) carries its CRC-32, computed as it was written; torch.load does not check them, so
:func:`safe_torch_load` does, record by record, before loading (with the checks of
:func:`checked_checkpoint`, 0.4 s of CPU per GiB: scripts/bench/checkpoint_verify.py): a file
changed on disk after it was written (a disk, copy or transfer fault, bytes overwritten in place)
is refused with one line, and ``checkpoint.resume: auto`` falls back to the newest intact
checkpoint, saying so. ``unzip -t checkpoint-latest.pt`` runs the same check by hand.
"""
from __future__ import annotations

import contextlib
import os
import pickle
import random
import re
import shutil
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Mapping

import numpy as np
import safetensors
import safetensors.torch
import torch
import torch.distributed as dist

from data.atomic_write import atomic_open, fsync_dir, write_bytes
from data.errors import UserError
from pretrain.divergence import nonfinite_tensors

FORMAT = "openwsl-checkpoint"
VERSION = 1
TRUNK_FORMAT = "openwsl-trunk"
LATEST = "checkpoint-latest.pt"
TRUNK_FILE = "trunk.safetensors"
_NUMBERED = re.compile(r"^checkpoint-(\d+)\.pt$")
# Wrappers that prefix state-dict keys: DDP (module.) and torch.compile (_orig_mod.).
_WRAPPER_PREFIXES = ("module.", "_orig_mod.")


def checkpoint_path(run_dir: str | os.PathLike, images_seen: int) -> Path:
    return Path(run_dir) / f"checkpoint-{images_seen}.pt"


def given_checkpoint(given: str | os.PathLike) -> Path:
    """The file a user's checkpoint argument names: a file as given, a run directory's checkpoint-latest.pt."""
    path = Path(given)
    return path / LATEST if path.is_dir() else path


def numbered_checkpoints(run_dir: str | os.PathLike) -> list[tuple[int, Path]]:
    """(images seen, path) of the complete numbered checkpoints in ``run_dir``, oldest first."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        return []
    found = [(int(m.group(1)), run_dir / name) for name in os.listdir(run_dir)
             if (m := _NUMBERED.match(name))]
    return sorted(found)


def save_checkpoint(run_dir: str | os.PathLike, state: Mapping[str, Any], images_seen: int,
                    keep_last: int) -> Path:
    """Write ``checkpoint-<images_seen>.pt`` atomically, point checkpoint-latest.pt at it, prune.

    Call on rank 0 only. Older numbered checkpoints beyond the newest ``keep_last`` (>= 1: the
    schema checks checkpoint.keep_last and finetune.keep_last) are deleted; ones numbered above
    ``images_seen`` (an abandoned branch after resuming from an older file) are left for the user
    to judge."""
    if not isinstance(images_seen, int) or images_seen < 0:
        raise ValueError(f"images_seen must be a non-negative int, got {images_seen!r}")
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    _remove_stale_temps(run_dir)
    path = checkpoint_path(run_dir, images_seen)
    payload = {**state, "format": FORMAT, "version": VERSION, "images_seen": images_seen}
    computes_crc = torch.serialization.get_crc32_options()
    torch.serialization.set_crc32_options(True)  # the checksums every read verifies
    try:
        with atomic_open(path, "wb") as f:
            torch.save(payload, f)
    finally:
        torch.serialization.set_crc32_options(computes_crc)
    _point_latest(run_dir / LATEST, path)
    _prune(run_dir, images_seen, keep_last)
    return path


def _remove_stale_temps(run_dir: Path) -> None:
    # A writer killed mid-save leaves its '.checkpoint-…tmp' behind; only rank 0 ever writes here,
    # so any such file is dead, and it may be gigabytes.
    for name in os.listdir(run_dir):
        if name.startswith(".checkpoint-") and name.endswith(".tmp"):
            with contextlib.suppress(FileNotFoundError):
                os.unlink(run_dir / name)


def _point_latest(latest: Path, target: Path) -> None:
    """Replace ``latest`` by ``target``'s content in one rename: never missing, never partial."""
    tmp = latest.with_name(f".{latest.name}.link.tmp")
    with contextlib.suppress(FileNotFoundError):
        os.unlink(tmp)
    try:
        os.link(target, tmp)
    except OSError:
        # No hard links on this filesystem (some network mounts): an atomic full copy instead.
        with atomic_open(latest, "wb") as f, open(target, "rb") as src:
            shutil.copyfileobj(src, f, length=16 << 20)
        return
    os.replace(tmp, latest)
    fsync_dir(latest.parent)


def _prune(run_dir: Path, images_seen: int, keep_last: int) -> None:
    older = [path for images, path in numbered_checkpoints(run_dir) if images < images_seen]
    for path in older[:max(0, len(older) - (keep_last - 1))]:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(path)


def safe_torch_load(path: str | os.PathLike, map_location: Any = "cpu", mmap: bool = False) -> Any:
    """``torch.load(weights_only=True)`` with one clear UserError line for a missing, corrupt or unsafe
    file; a zip-format file's records are first checked against their CRC-32s (legacy pickle files
    carry none). Transfer uses this for official .pth files too."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"checkpoint {path} not found")
    damaged = _damaged_record(path)
    if damaged:
        raise UserError(f"{path}: damaged: {damaged} (its bytes changed after it was written: a disk, copy or "
                        "transfer fault)")
    try:
        return torch.load(path, map_location=map_location, weights_only=True, mmap=mmap)
    except pickle.UnpicklingError as err:
        raise UserError(f"{path}: {_unpickling_problem(str(err))}") from None
    except (RuntimeError, EOFError, OSError, ValueError, zipfile.BadZipFile) as err:
        reason = str(err).split("\n")[0]
        raise UserError(f"{path}: not a readable torch checkpoint; it is truncated, corrupt or another "
                        f"format ({reason})") from None


def _damaged_record(path: Path) -> str | None:
    """What fails the archive's own checksums, or None (intact, or not a zip archive)."""
    if not zipfile.is_zipfile(path):
        return None
    try:
        with zipfile.ZipFile(path) as archive:
            bad = archive.testzip()  # reads every record and compares its CRC-32
    except (zipfile.BadZipFile, OSError, EOFError, ValueError, NotImplementedError) as err:
        return f"its zip structure is broken ({str(err).splitlines()[0]})"
    return f"record {bad} fails the CRC-32 check written with it" if bad else None


def _unpickling_problem(message: str) -> str:
    code = re.search(r"GLOBAL (\S+)", message)
    if code:
        return (f"refused to load: the file carries pickled Python code ({code.group(1)}), which a weights-only "
                "load never runs; only tensors, numbers, strings, lists and dicts are accepted (re-save it as a "
                "plain state dict from a trusted source)")
    detail = re.search(r"Unsupported operand \d+|WeightsUnpickler error: (\S.*)", message)
    stop = f" (the safe unpickler stopped at: {detail.group(0).splitlines()[0]})" if detail else ""
    return (f"refused to load: not a plain weights-only torch file{stop}; it is another format, corrupt, or "
            "carries pickled Python objects")


def load_checkpoint(path: str | os.PathLike, map_location: Any = "cpu", mmap: bool = False) -> dict[str, Any]:
    """An openwsl checkpoint written by :func:`save_checkpoint`: its checksums verified, loaded without
    running pickled code, its entries of the expected types and its weights finite; UserError else."""
    return checked_checkpoint(safe_torch_load(path, map_location, mmap), path)


def checked_checkpoint(state: Any, path: str | os.PathLike) -> dict[str, Any]:
    """``state``, loaded from ``path``, if it is an openwsl checkpoint fit to train from; UserError else."""
    path = Path(path)
    if not isinstance(state, dict) or state.get("format") != FORMAT:
        raise UserError(f"{path}: not an openwsl checkpoint (no format={FORMAT!r} entry); to start from "
                        "a plain model state dict use transfer's init, or point checkpoint.resume at a "
                        "checkpoint-*.pt written by pretraining")
    if not isinstance(state.get("version", 0), int) or state.get("version", 0) > VERSION:
        raise UserError(f"{path}: checkpoint version {state['version']!r} is newer than this code "
                        f"understands ({VERSION}); update openwsl")
    if not zipfile.is_zipfile(path):
        raise UserError(f"{path}: not a zip archive, so it carries no checksums; save_checkpoint always writes "
                        "one: the file was made by something else")
    model = state.get("model")
    if not isinstance(model, dict) or not all(isinstance(k, str) and isinstance(v, torch.Tensor)
                                              for k, v in model.items()):
        raise UserError(f"{path}: its 'model' entry is {_kind_of(model)}, not a state dict of named tensors; the "
                        "file was not written by save_checkpoint")
    for key in ("step", "images_seen"):
        if not isinstance(state.get(key), int) or isinstance(state.get(key), bool) or state[key] < 0:
            raise UserError(f"{path}: its {key!r} entry is {_kind_of(state.get(key))}, not a count; the file was "
                            "not written by save_checkpoint")
    nonfinite = nonfinite_tensors(model)
    if nonfinite:
        raise UserError(f"{path}: holds non-finite weights (NaN or inf in {len(nonfinite)} tensors, e.g. "
                        f"{nonfinite[0]}); training from them cannot produce anything finite")
    return state


def _kind_of(value: Any) -> str:
    if isinstance(value, dict):
        return "a dict holding non-tensor values" if all(isinstance(k, str) for k in value) else "a dict"
    return "missing" if value is None else f"a {type(value).__name__}"


@dataclass(frozen=True)
class Resumed:
    """The checkpoint a run continues from, loaded."""

    path: Path
    state: dict[str, Any]


def load_resume(run_dir: str | os.PathLike, resume: str,
                say: Callable[[str], None] | None = None) -> Resumed | None:
    """The checkpoint to resume from, loaded (:func:`load_checkpoint`): ``none`` -> None; a path -> that
    file, or a run directory's checkpoint-latest.pt; ``auto`` -> the newest intact checkpoint of
    ``run_dir``: checkpoint-latest.pt, else the numbered ones newest first. Passing over a damaged or
    unreadable one is said in one line through ``say``; None when there is no checkpoint at all;
    UserError when there are checkpoints and none loads (starting over would silently overwrite a run
    the user may want back)."""
    if resume == "none":
        return None
    if resume != "auto":
        path = given_checkpoint(resume)
        if not path.is_file():
            raise UserError(f"checkpoint.resume={resume}: no such checkpoint; use auto, none, or the path of a "
                            "checkpoint-*.pt (or of a run directory holding checkpoint-latest.pt)")
        return Resumed(path, load_checkpoint(path))
    run_dir = Path(run_dir)
    candidates = [p for p in [run_dir / LATEST] + [p for _, p in reversed(numbered_checkpoints(run_dir))]
                  if p.is_file()]
    passed: list[tuple[Path, str]] = []  # (checkpoint, its problem)
    problems: dict[tuple[int, int], str] = {}  # by file: checkpoint-latest.pt is a hard link to the newest
    for path in candidates:
        stat = path.stat()
        inode = (stat.st_dev, stat.st_ino)
        if inode not in problems:
            try:
                state = load_checkpoint(path)
            except UserError as err:
                problems[inode] = str(err).removeprefix(f"{path}: ")
            else:
                if passed and say is not None:
                    say(f"{', '.join(p.name for p, _ in passed)}: {passed[0][1]}; resuming from {path}, the newest "
                        "intact checkpoint")
                return Resumed(path, state)
        passed.append((path, problems[inode]))
    if passed:
        raise UserError(f"{run_dir} holds checkpoints but none loads ({', '.join(p.name for p, _ in passed)}: "
                        f"{passed[0][1]}); pass checkpoint.resume=none to start this run over, or a path to resume "
                        "from")
    return None


# ---------------------------------------------------------------------------------------------
# RNG state as tensors and ints (weights_only-loadable)
# ---------------------------------------------------------------------------------------------

def rng_state() -> dict[str, Any]:
    """This process's python, numpy, torch CPU and CUDA generator states, as tensors and ints."""
    version, internal, gauss = random.getstate()
    name, keys, pos, has_gauss, cached = np.random.get_state(legacy=True)
    return {
        "python": {"version": version, "state": torch.tensor(internal, dtype=torch.int64),
                   "gauss_next": gauss},
        "numpy": {"name": name, "keys": torch.from_numpy(keys.astype(np.int64)), "pos": int(pos),
                  "has_gauss": int(has_gauss), "cached_gaussian": float(cached)},
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
    }


def set_rng_state(state: Mapping[str, Any]) -> None:
    """Restore what :func:`rng_state` captured."""
    py = state["python"]
    random.setstate((py["version"], tuple(py["state"].tolist()), py["gauss_next"]))
    nps = state["numpy"]
    np.random.set_state((nps["name"], nps["keys"].numpy().astype(np.uint32), nps["pos"], nps["has_gauss"],
                         nps["cached_gaussian"]))
    torch.set_rng_state(state["torch"].cpu())
    if state["cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all([s.cpu() for s in state["cuda"]][:torch.cuda.device_count()])


def gather_rng_states() -> list[dict[str, Any]]:
    """Every rank's :func:`rng_state`, indexed by rank (a collective: call on all ranks)."""
    mine = rng_state()
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return [mine]
    states: list[Any] = [None] * dist.get_world_size()
    dist.all_gather_object(states, mine)
    return [_to_cpu(s) for s in states]


def restore_rng_states(states: list[Mapping[str, Any]], rank: int, world_size: int) -> bool:
    """Restore this rank's saved RNG state; False (nothing restored) when the world size changed,
    in which case the caller keeps its fresh per-rank seeds."""
    if len(states) != world_size:
        return False
    set_rng_state(states[rank])
    return True


def _to_cpu(obj: Any) -> Any:
    if isinstance(obj, torch.Tensor):
        return obj.cpu()
    if isinstance(obj, dict):
        return {k: _to_cpu(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_to_cpu(v) for v in obj]
    return obj


# ---------------------------------------------------------------------------------------------
# The training state (pretraining and transfer fine-tuning share it)
# ---------------------------------------------------------------------------------------------

def unwrap_model(model: torch.nn.Module) -> torch.nn.Module:
    """The network inside DDP (``.module``) and torch.compile (``._orig_mod``) wrappers."""
    while True:
        if isinstance(model, (torch.nn.parallel.DistributedDataParallel, torch.nn.DataParallel)):
            model = model.module
        elif isinstance(getattr(model, "_orig_mod", None), torch.nn.Module):
            model = model._orig_mod
        else:
            return model


def training_state(model: torch.nn.Module, optimizer: torch.optim.Optimizer, scheduler: Any = None,
                   scaler: Any = None, *, step: int, config: Mapping[str, Any],
                   vocab_tags: list[str] | None = None) -> dict[str, Any]:
    """What a checkpoint holds, ready for :func:`save_checkpoint`. Gathers every rank's RNG state,
    so call it on ALL ranks (then save on rank 0 only)."""
    return {"model": unwrap_model(model).state_dict(), "optimizer": optimizer.state_dict(),
            "scheduler": scheduler.state_dict() if scheduler is not None else None,
            "scaler": scaler.state_dict() if scaler is not None else None,
            "step": int(step), "rng": gather_rng_states(), "config": dict(config),
            "vocab_tags": list(vocab_tags) if vocab_tags is not None else None}


def restore_training_state(state: Mapping[str, Any], model: torch.nn.Module,
                           optimizer: torch.optim.Optimizer | None = None, scheduler: Any = None,
                           scaler: Any = None, *, rank: int = 0, world_size: int = 1) -> bool:
    """Load a :func:`load_checkpoint` result into the live objects (strict model keys); True when
    this rank's RNG state was restored too (False after a world-size change)."""
    unwrap_model(model).load_state_dict(state["model"])
    for name, target in (("optimizer", optimizer), ("scheduler", scheduler), ("scaler", scaler)):
        if target is not None and state.get(name) is not None:
            target.load_state_dict(state[name])
    return restore_rng_states(state.get("rng") or [], rank, world_size)


# ---------------------------------------------------------------------------------------------
# Trunk export (safetensors, no head)
# ---------------------------------------------------------------------------------------------

def clean_state_keys(state: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Strip DDP's ``module.`` and torch.compile's ``_orig_mod.`` so keys follow torchvision naming."""
    cleaned = {}
    for key, value in state.items():
        while key.startswith(_WRAPPER_PREFIXES):
            key = key.split(".", 1)[1]
        cleaned[key] = value
    return cleaned


def export_trunk(model_state: Mapping[str, torch.Tensor], path: str | os.PathLike, *,
                 architecture: str, head_prefix: str = "fc.", source_checkpoint: str | None = None,
                 images_seen: int | None = None) -> Path:
    """Write the model without its head (keys starting ``head_prefix``) to a safetensors file, atomically.

    Metadata: format, architecture, num_features (the head's input width), head_prefix,
    source_checkpoint, images_seen."""
    state = clean_state_keys(model_state)
    head = {k: v for k, v in state.items() if k.startswith(head_prefix)}
    if not head:
        raise UserError(f"no parameters start with {head_prefix!r} in the model state; pass the head's "
                        "prefix (head_prefix=...) so it is left out of the trunk")
    trunk = {k: v.detach().to("cpu").contiguous() for k, v in state.items() if not k.startswith(head_prefix)}
    nonfinite = nonfinite_tensors(trunk)
    if nonfinite:
        raise UserError(f"not exporting {path}: the weights hold NaN or inf ({len(nonfinite)} tensors, e.g. "
                        f"{nonfinite[0]}); resume from an earlier checkpoint with a lower learning rate")
    head_weight = head.get(f"{head_prefix}weight")
    metadata = {"format": TRUNK_FORMAT, "architecture": architecture, "head_prefix": head_prefix,
                "num_features": str(head_weight.shape[1]) if head_weight is not None else "",
                "source_checkpoint": source_checkpoint or "",
                "images_seen": "" if images_seen is None else str(images_seen)}
    path = Path(path)
    write_bytes(path, safetensors.torch.save(trunk, metadata=metadata))
    return path


def load_trunk(path: str | os.PathLike) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """(state dict, metadata) of a trunk export; UserError for a missing or malformed file."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"trunk file {path} not found")
    try:
        with safetensors.safe_open(str(path), framework="pt") as f:
            metadata = dict(f.metadata() or {})
            state = {key: f.get_tensor(key) for key in f.keys()}
    except (safetensors.SafetensorError, OSError, ValueError) as err:
        raise UserError(f"{path}: not a readable safetensors file ({str(err).splitlines()[0]})") from None
    return state, metadata
