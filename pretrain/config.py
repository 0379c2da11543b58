"""Typed run configuration: dataclass schema, YAML file, ``section.key=value`` overrides, validation.

A schema is a tree of dataclasses whose fields are declared with :func:`option` (default, help text,
range, aliases). :func:`load_config` reads a YAML file with ``yaml.safe_load`` semantics, applies
command-line overrides (each value parsed as YAML, then type-checked like the file) and builds the
schema, so that every mistake is ONE :class:`~data.errors.UserError` line naming the source (file or
override), the full dotted key, and the closest valid spelling::

    configs/pretrain/x.yaml: unknown key optim.lerning_rate (did you mean optim.base_lr?)

The machinery is schema-agnostic: transfer passes its own dataclasses as ``schema``. A section may
define ``validate(self)`` for checks that involve several keys; it raises :class:`InvalidValue`
naming the key at fault, which is reported with the source that set that key.

``python -m pretrain.config`` prints the key reference that docs/config.md carries.
"""
from __future__ import annotations

import dataclasses
import difflib
import math
import re
import reprlib
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, TypeVar

import yaml

from data.atomic_write import write_text
from data.errors import UserError

C = TypeVar("C")
CONFIG_FILE = "config.yaml"
_MISSING = dataclasses.MISSING


class InvalidValue(Exception):
    """Raised by a section's ``validate``: ``key`` (relative to the section) holds a bad value."""

    def __init__(self, key: str, message: str) -> None:
        super().__init__(message)
        self.key = key
        self.message = message


def option(default: Any = _MISSING, help: str = "", *, min: float | None = None, max: float | None = None,
           why: str = "", above: float | None = None, aliases: tuple[str, ...] = (), factory: Any = _MISSING) -> Any:
    """A schema field: ``help`` feeds docs/config.md; ``min``/``max`` are inclusive bounds (``why``: the
    reason for ``max``, said when a value exceeds it), ``above`` an exclusive lower bound; ``aliases``
    are other spellings users type (suggested, never accepted)."""
    meta = {"help": help, "min": min, "max": max, "why": why, "above": above, "aliases": aliases}
    if factory is not _MISSING:
        return field(default_factory=factory, metadata=meta)
    return field(default=default, metadata=meta)


def section(cls: type, help: str = "") -> Any:
    """A nested section field (its default is the section's own defaults)."""
    return field(default_factory=cls, metadata={"help": help, "section": True})


# Upper bounds of the sizes that allocate memory or processes, shared by pretraining and transfer. A
# value past them never trains: it allocates until memory runs out, or starts processes for minutes.
BATCH_MAX = 4096
BATCH_WHY = ("a per-rank batch beyond it fits no accelerator at ResNeXt scale (a few hundred 224 px images "
             "fill 80 GB); grow the global batch with more ranks (or optim.grad_accum in pretraining)")
WORKERS_MAX = 64
WORKERS_WHY = ("DataLoader processes per rank, each with its own decoder and buffers; more outnumber the cores "
               "of any node (one node's ranks together should not exceed its cores)")
IMAGE_SIDE_MAX = 1024
IMAGE_SIDE_WHY = ("classification crops are 224-480 px; at 1024 px one image is already 3 MiB and a batch's "
                  "activations outgrow any accelerator")
RESIZE_SIDE_MAX = 2048
SHUFFLE_MAX = 100_000
SHUFFLE_WHY = "raw samples (tens of kB each) every worker holds in memory: 100,000 is already gigabytes per worker"


# ---------------------------------------------------------------------------------------------
# The pretraining schema. Counts of the schedule are in IMAGES (all ranks together), never epochs.
# ---------------------------------------------------------------------------------------------

@dataclass
class SamplingConfig:
    q: float | None = option(0.5, "hashtag resampling exponent: target p_h ∝ n_h^q (1 natural, 0.5 square "
                             "root, the paper's default, 0 uniform); null streams the natural distribution",
                             min=0.0, max=1.0)
    cap: float | None = option(None, "most copies expected of one image per pass; null: no cap",
                               min=1.0)


@dataclass
class ShardSetConfig:
    """One entry of a data.train list: a shard set and its weight."""

    path: str = option("", "a shard directory built by scripts/build_shards.py (with info.json)")
    weight: float = option(1.0, "the set's share of the training images is weight / the sum of the weights",
                           above=0.0)

    def validate(self) -> None:
        if not self.path:
            raise InvalidValue("path", "is required: the shard directory of this set")


@dataclass
class DataConfig:
    train: str | list[ShardSetConfig] | None = option(
        None, "training shards: a shard directory (with info.json), a brace pattern or a URL list joined with "
        "'::'; or weighted shard directories mixed at shard level, [{path: <dir>, weight: 3}, {path: <dir>, "
        "weight: 1}], each set giving weight / sum of weights of the images (docs/loader.md) (required)",
        aliases=("shards", "train_shards"))
    val: str | None = option(None, "held-out hashtag shards for evaluation; null: no evaluation",
                             aliases=("val_shards", "eval_shards"))
    batch_size: int = option(32, "images per GPU (per rank) per step; the paper used 24",
                             min=1, max=BATCH_MAX, why=BATCH_WHY, aliases=("batch", "batch_size_per_gpu"))
    workers: int = option(8, "DataLoader worker processes per rank", min=0, max=WORKERS_MAX, why=WORKERS_WHY,
                          aliases=("num_workers",))
    image_size: int = option(224, "train crop side and eval centre-crop side in pixels", min=8,
                             max=IMAGE_SIDE_MAX, why=IMAGE_SIDE_WHY, aliases=("resolution", "img_size", "crop_size"))
    crop_scale_min: float = option(0.08, "RandomResizedCrop's smallest area fraction (0.08: the ImageNet "
                                   "recipe; raise it when objects are small in the frame)", above=0.0, max=1.0)
    shuffle_buffer: int = option(2000, "raw samples held per worker for shuffling", min=1, max=SHUFFLE_MAX,
                                 why=SHUFFLE_WHY)
    epoch_images: int | None = option(None, "images per loader epoch (all ranks); null: the shards' sample "
                                      "count from info.json (required for shards without info.json)", min=1)
    num_labels: int | None = option(None, "hashtags in the vocabulary (the classifier's width); null: from the "
                                    "shards' info.json (required for shards without info.json, e.g. a brace "
                                    "pattern or pipe: URLs)", min=1, aliases=("num_classes",))
    decode: Literal["cpu", "cuda", "auto"] = option("cpu", "JPEG decoding: cpu (workers), cuda (on the "
                                                    "device), auto (cuda when present)")
    pin_memory: bool = option(True, "pinned host batches, copied to the GPU without blocking")
    sampling: SamplingConfig = section(SamplingConfig, "hashtag-frequency resampling")

    def validate(self) -> None:
        if isinstance(self.train, list):
            if not self.train:
                raise InvalidValue("train", "is an empty list: give a shard directory, or a list of "
                                   "{path: <shard directory>, weight: <number>} entries")
            paths = [str(Path(entry.path)) for entry in self.train]
            twice = next((p for i, p in enumerate(paths) if p in paths[:i]), None)
            if twice is not None:
                raise InvalidValue("train", f"lists {twice} twice; list each shard set once, with the weights "
                                   "added up")


@dataclass
class ModelConfig:
    name: str = option("resnext101_32x8d", "model factory name: resnext101_32x{4,8,16,32,48}d, a small "
                       "variant such as resnext_tiny, or a timm model name", aliases=("arch", "architecture"))
    zero_init_residual: bool = option(True, "zero-init the last BN gamma of each residual block",
                                      aliases=("zero_init",))
    channels_last: bool = option(True, "NHWC memory format (faster convolutions on tensor cores)")
    compile: bool = option(False, "torch.compile the model")


@dataclass
class LossConfig:
    name: Literal["softmax", "sigmoid"] = option("softmax", "softmax: cross-entropy against 1/k on each of an "
                                                 "image's k hashtags (the paper); sigmoid: per-hashtag BCE",
                                                 aliases=("type", "kind"))
    bias_init: Literal["auto", "prior", "zero"] = option(
        "auto", "the hashtag classifier's starting bias: prior (sigmoid only: the logit of each hashtag's "
        "expected frequency in the training stream after data.sampling, from info.json's label_counts; "
        "-log(K-1) without them), zero (the paper's), auto (prior for sigmoid, zero for softmax). A fresh "
        "run sets it; a resumed one keeps the checkpoint's", aliases=("head_bias", "bias"))

    def starts_at_prior(self) -> bool:
        """Whether a fresh run starts the classifier's bias at the label prior (pretrain/label_prior.py)."""
        return self.bias_init == "prior" or (self.bias_init == "auto" and self.name == "sigmoid")

    def validate(self) -> None:
        if self.bias_init == "prior" and self.name != "sigmoid":
            raise InvalidValue("bias_init", f"must be auto or zero with loss.name={self.name}, got prior: the prior "
                               "is the sigmoid's; the softmax keeps the paper's zero bias (one constant added to "
                               "every logit changes no softmax output, and at zero bias it already predicts 1/K "
                               "per hashtag)")


@dataclass
class OptimConfig:
    base_lr: float = option(0.1, "learning rate per reference_batch images: peak lr = base_lr x global batch / "
                            "reference_batch", above=0.0, aliases=("lr", "learning_rate"))
    reference_batch: int = option(256, "the batch size base_lr is quoted for", min=1)
    momentum: float = option(0.9, "SGD momentum", min=0.0, max=1.0)
    nesterov: bool = option(True, "Nesterov momentum")
    weight_decay: float = option(1e-4, "L2 weight decay", min=0.0, aliases=("wd",))
    decay_bn_bias: bool = option(False, "apply weight decay to BN parameters and biases too (the recipe: no)",
                                 aliases=("bn_weight_decay",))
    warmup_images: int = option(0, "linear warm-up from 0 to the peak lr over this many images", min=0,
                                aliases=("warmup",))
    schedule: Literal["step", "cosine"] = option("step", "after warm-up: step (x decay_factor at decay_steps "
                                                 "equally spaced points) or cosine (to 0 at total_images)",
                                                 aliases=("lr_schedule", "scheduler"))
    decay_steps: int = option(13, "number of step decays, equally spaced over the post-warm-up images "
                              "(schedule: step)", min=0, aliases=("steps", "num_decays"))
    decay_factor: float = option(0.5, "lr multiplier at each step decay", above=0.0, max=1.0)
    total_images: int = option(1_000_000, "training length in images processed, all ranks together",
                               min=1, aliases=("images", "max_images", "budget"))
    grad_accum: int = option(1, "micro-batches accumulated per optimiser step (global batch = batch_size x "
                             "world size x grad_accum)", min=1, aliases=("accumulate", "gradient_accumulation"))
    clip_grad: float | None = option(None, "clip the global gradient L2 norm to this value; null: no clipping",
                                     above=0.0, aliases=("grad_clip", "max_grad_norm"))
    max_nonfinite_steps: int = option(20, "a step with a non-finite loss or gradient is skipped and counted; "
                                      "after this many in a row (checked at log steps) the run writes a "
                                      "checkpoint and stops with an error", min=1,
                                      aliases=("max_nan_steps", "max_skipped_steps"))

    def peak_lr(self, global_batch: int) -> float:
        """The linear scaling rule (Goyal et al.): lr grows with the global batch."""
        return self.base_lr * global_batch / self.reference_batch

    def validate(self) -> None:
        if self.warmup_images >= self.total_images:
            raise InvalidValue("warmup_images", f"must be smaller than optim.total_images "
                               f"({self.total_images}), got {self.warmup_images}")


@dataclass
class PrecisionConfig:
    autocast: bool = option(True, "mixed precision autocast (CUDA and CPU)", aliases=("amp", "bf16"))
    dtype: Literal["bfloat16", "float16"] = option("bfloat16", "autocast dtype; float16 adds a gradient "
                                                   "scaler (CUDA only)")


@dataclass
class DistConfig:
    backend: Literal["auto", "nccl", "gloo"] = option("auto", "process-group backend: auto (nccl on CUDA, "
                                                      "gloo on CPU), nccl, gloo")
    sync_bn: bool = option(False, "synchronised BN across ranks (the recipe: per-GPU BN)")
    timeout_s: int = option(1800, "collective timeout in seconds (a hung rank fails after this)", min=1)


@dataclass
class CheckpointConfig:
    every_images: int = option(10_000_000, "write a checkpoint every this many images (and at the end)",
                               min=1, aliases=("every", "interval"))
    keep_last: int = option(3, "numbered checkpoints kept (checkpoint-latest.pt always points at the newest)",
                            min=1, aliases=("keep",))
    resume: str = option("auto", "auto (continue from <run dir>/checkpoint-latest.pt when present), none, "
                         "or a checkpoint path / run directory")
    export_trunk: bool = option(True, "write trunk.safetensors (no hashtag head) at the end, for transfer")

    def validate(self) -> None:
        if not self.resume:
            raise InvalidValue("resume", "must be auto, none or a checkpoint path, got an empty string")


@dataclass
class EvalConfig:
    every_images: int | None = option(None, "evaluate on data.val every this many images (and at the end); "
                                      "null: only at the end", min=1, aliases=("every", "interval"))
    shards: int | None = option(None, "evaluate on the first N shards of data.val; null: all", min=1)
    batch_size: int | None = option(None, "eval images per rank per batch; null: data.batch_size", min=1,
                                    max=BATCH_MAX, why=BATCH_WHY)


@dataclass
class TrackingConfig:
    wandb: Literal["online", "offline", "disabled"] = option("disabled", "Weights & Biases mode (offline: "
                                                             "logged under <run dir>/wandb, `wandb sync` later)",
                                                             aliases=("mode", "wandb_mode"))
    project: str = option("openwsl", "wandb project")
    entity: str | None = option(None, "wandb entity (team or user); null: your default")
    name: str | None = option(None, "wandb run name; null: run.name")
    tags: list[str] = option(factory=list, help="wandb run tags")
    log_every_steps: int = option(50, "optimiser steps between metric log lines", min=1,
                                  aliases=("log_every", "log_interval"))


@dataclass
class RunConfig:
    dir: str = option("runs", "parent directory of run directories", aliases=("root", "output_dir"))
    name: str = option("pretrain", "run name: the run directory is <dir>/<name>")
    seed: int = option(0, "base seed; rank r uses seed + r", min=0)

    def run_dir(self) -> Path:
        return Path(self.dir) / self.name

    def validate(self) -> None:
        if not self.name or Path(self.name).name != self.name or self.name in (".", ".."):
            raise InvalidValue("name", f"must be a plain directory name (no '/'), got {self.name!r}")


@dataclass
class PretrainConfig:
    data: DataConfig = section(DataConfig, "shards and the streaming loader")
    model: ModelConfig = section(ModelConfig, "the network")
    loss: LossConfig = section(LossConfig, "the training loss")
    optim: OptimConfig = section(OptimConfig, "SGD and the learning-rate schedule, counted in images")
    precision: PrecisionConfig = section(PrecisionConfig, "mixed precision")
    dist: DistConfig = section(DistConfig, "torch.distributed")
    checkpoint: CheckpointConfig = section(CheckpointConfig, "checkpoints and resume")
    eval: EvalConfig = section(EvalConfig, "evaluation on held-out hashtag shards")
    tracking: TrackingConfig = section(TrackingConfig, "metrics.jsonl and wandb")
    run: RunConfig = section(RunConfig, "the run directory and seed")

    def validate(self) -> None:
        if not self.data.train:
            raise InvalidValue("data.train", "is required: set it in the config file or pass "
                               "data.train=<shard directory>")
        if self.eval.every_images is not None and not self.data.val:
            raise InvalidValue("eval.every_images", "needs data.val (held-out shards); set data.val or "
                               "eval.every_images=null")


# ---------------------------------------------------------------------------------------------
# Loading
# ---------------------------------------------------------------------------------------------

# Values a config document may hold once its aliases are expanded: recipes hold a few hundred. A
# "billion laughs" file nests aliases of aliases to expand a few lines into 10^9 values.
MAX_CONFIG_VALUES = 100_000


class _UniqueKeyLoader(yaml.SafeLoader):
    """safe_load semantics, plus: a key given twice in one mapping is an error, not a silent overwrite,
    and a document that expands through anchors and aliases past MAX_CONFIG_VALUES values (or into
    itself) is refused before it is built."""

    def construct_document(self, node: yaml.Node) -> Any:
        _check_expansion(node)
        return super().construct_document(node)

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict:
        seen: set = set()
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=True)
            if key in seen:
                raise yaml.constructor.ConstructorError(
                    None, None, f"key {key!r} appears twice in one mapping", key_node.start_mark)
            seen.add(key)
        return super().construct_mapping(node, deep=deep)


def _check_expansion(root: yaml.Node) -> None:
    """Count the values ``root`` expands to, each aliased node once per reference, without building
    them; a ConstructorError past MAX_CONFIG_VALUES or for a node that contains itself."""
    sizes: dict[int, int] = {}
    open_nodes: set[int] = set()

    def size(node: yaml.Node) -> int:
        if id(node) in sizes:
            return sizes[id(node)]
        if id(node) in open_nodes:
            raise yaml.constructor.ConstructorError(None, None, "an alias refers to a node that contains it "
                                                    "(a document that expands into itself)", node.start_mark)
        open_nodes.add(id(node))
        children = ([n for pair in node.value for n in pair] if isinstance(node, yaml.MappingNode)
                    else node.value if isinstance(node, yaml.SequenceNode) else [])
        total = 1
        for child in children:
            total += size(child)
            if total > MAX_CONFIG_VALUES:
                raise yaml.constructor.ConstructorError(
                    None, None, f"the document expands to more than {MAX_CONFIG_VALUES:,} values through anchors "
                    "and aliases (&name, *name); a config holds a few hundred, so it is refused unread (a "
                    "'billion laughs' file)", node.start_mark)
        open_nodes.discard(id(node))
        sizes[id(node)] = total
        return total

    size(root)


def _parse_yaml(text: str, source: str) -> Any:
    try:
        return yaml.load(text, Loader=_UniqueKeyLoader)  # noqa: S506 - a SafeLoader subclass
    except RecursionError:
        raise UserError(f"{source}: not valid YAML: nested deeper than the parser can follow; a config is a "
                        "few levels of sections") from None
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        where = f" (line {mark.line + 1}, column {mark.column + 1})" if mark else ""
        problem = getattr(err, "problem", None) or str(err).splitlines()[0]
        hint = ("; python tags are refused: only plain YAML (mappings, lists, numbers, strings) is accepted"
                if "python/" in str(err) else "")
        raise UserError(f"{source}: not valid YAML{where}: {problem}{hint}") from None


def _read_file(path: str | Path) -> dict[str, Any]:
    path = Path(path)
    if not path.is_file():
        raise UserError(f"config file {path} not found; pass an existing YAML file to --config "
                        "(recipes live in configs/)")
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as err:
        raise UserError(f"{path}: cannot read the config file ({err})") from None
    data = _parse_yaml(text, str(path))
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise UserError(f"{path}: a config file must be a mapping of sections (data:, optim:, ...), "
                        f"got a {type(data).__name__}")
    return data


def _apply_override(data: dict[str, Any], override: str, sources: dict[str, str]) -> None:
    key, sep, text = override.partition("=")
    key = key.strip()
    source = f"override {override!r}"
    if not sep or not key:
        raise UserError(f"{source}: overrides look like section.key=value (e.g. optim.base_lr=0.2)")
    parts = key.split(".")
    if any(not p for p in parts):
        raise UserError(f"{source}: {key!r} is not a dotted key like section.key")
    value = _parse_yaml(text, source)
    node = data
    for depth, part in enumerate(parts[:-1]):
        child = node.setdefault(part, {})
        if child is None:
            child = node[part] = {}
        if not isinstance(child, dict):
            parent = ".".join(parts[:depth + 1])
            raise UserError(f"{source}: cannot set {key}: {parent} holds {_describe(child)}, not a section")
        node = child
    if isinstance(value, dict) and isinstance(node.get(parts[-1]), dict):
        _merge(node[parts[-1]], value)  # section=value overrides only the keys it names
    else:
        node[parts[-1]] = value
    for leaf in _leaf_keys(value, key):
        sources[leaf] = source


def _leaf_keys(value: Any, key: str) -> list[str]:
    if isinstance(value, dict) and value:
        return [leaf for name, item in value.items() for leaf in _leaf_keys(item, f"{key}.{name}")]
    return [key]


def _merge(target: dict[str, Any], update: dict[str, Any]) -> None:
    for name, value in update.items():
        if isinstance(value, dict) and isinstance(target.get(name), dict):
            _merge(target[name], value)
        else:
            target[name] = value


def _source_of(key: str, sources: dict[str, str], default: str) -> str:
    """The override that set ``key`` (or one of its parent sections), else the file; list items
    (``data.train[0].weight``) belong to the list's key."""
    parts = re.sub(r"\[\d+\]", "", key).split(".")
    for end in range(len(parts), 0, -1):
        found = sources.get(".".join(parts[:end]))
        if found:
            return found
    return default


class _Builder:
    """Turns a nested dict into a schema instance, reporting the first problem as a UserError."""

    def __init__(self, root: type, sources: dict[str, str], default_source: str) -> None:
        self.root = root
        self.sources = sources
        self.default_source = default_source

    def fail(self, key: str, message: str) -> UserError:
        return UserError(f"{_source_of(key, self.sources, self.default_source)}: {message}")

    def build(self, schema: type[C], data: Any, prefix: str = "") -> C:
        if not isinstance(data, dict):
            name = prefix.rstrip(".") or "the config"
            raise self.fail(prefix.rstrip("."), f"{name} must be a mapping of keys, got {_describe(data)}")
        fields = {f.name: f for f in dataclasses.fields(schema)}
        hints = typing.get_type_hints(schema)
        for key in data:
            if not isinstance(key, str) or key not in fields:
                raise self.fail(f"{prefix}{key}",
                                f"unknown key {prefix}{key}{_suggestion(self.root, schema, key, prefix)}")
        values = {name: self.convert(hints[name], data[name], f"{prefix}{name}", fields[name].metadata)
                  for name in fields if name in data}
        instance = schema(**values)
        self._validate(instance, prefix)
        return instance

    def _validate(self, instance: Any, prefix: str) -> None:
        validate = getattr(instance, "validate", None)
        if validate is None:
            return
        try:
            validate()
        except InvalidValue as err:
            key = f"{prefix}{err.key}"
            raise self.fail(key, f"{key} {err.message}") from None

    def convert(self, hint: Any, value: Any, key: str, meta: typing.Mapping[str, Any]) -> Any:
        if dataclasses.is_dataclass(hint):
            return self.build(hint, value, f"{key}.")
        origin, args = typing.get_origin(hint), typing.get_args(hint)
        if origin in (typing.Union, types.UnionType):
            if value is None and type(None) in args:
                return None
            members = [a for a in args if a is not type(None)]
            inner = members[0] if len(members) == 1 else _member_for(members, value)
            if inner is None:
                raise self.fail(key, f"{key} must be {_type_name(hint)}, got {_describe(value)}")
            return self.convert(inner, value, key, meta)
        if origin is Literal:
            if value not in args:
                close = difflib.get_close_matches(str(value), [str(a) for a in args], n=1)
                hint_text = f" (did you mean {close[0]}?)" if close else ""
                raise self.fail(key, f"{key} must be one of {', '.join(map(str, args))}, got {value!r}{hint_text}")
            return value
        if origin in (list, tuple):
            if not isinstance(value, (list, tuple)):
                raise self.fail(key, f"{key} must be a list, got {_describe(value)}")
            items = [self.convert(args[0], item, f"{key}[{i}]", {}) for i, item in enumerate(value)]
            return items if origin is list else tuple(items)
        converted = self._scalar(hint, value, key)
        self._check_range(converted, key, meta)
        return converted

    def _scalar(self, hint: Any, value: Any, key: str) -> Any:
        if hint is bool:
            if isinstance(value, bool):
                return value
            raise self.fail(key, f"{key} must be true or false, got {_describe(value)}")
        if hint is int:
            number = _as_number(value)
            if number is not None and float(number).is_integer() and math.isfinite(number):
                return int(number)
            raise self.fail(key, f"{key} must be an integer, got {_describe(value)}")
        if hint is float:
            number = _as_number(value)
            if number is not None:
                return float(number)
            raise self.fail(key, f"{key} must be a number, got {_describe(value)}")
        if hint is str:
            if isinstance(value, str):
                return value
            raise self.fail(key, f"{key} must be a string, got {_describe(value)} (quote it in YAML)")
        raise TypeError(f"config schema field {key} has an unsupported type {hint!r}")

    def _check_range(self, value: Any, key: str, meta: typing.Mapping[str, Any]) -> None:
        low, high, above = meta.get("min"), meta.get("max"), meta.get("above")
        if not isinstance(value, (int, float)) or isinstance(value, bool):
            return
        if not math.isfinite(value):
            raise self.fail(key, f"{key} must be finite, got {value}")
        why = f": {meta['why']}" if meta.get("why") and high is not None and value > high else ""
        if low is not None and high is not None and not low <= value <= high:
            raise self.fail(key, f"{key} must be in [{_num(low)}, {_num(high)}], got {value}{why}")
        if low is not None and value < low:
            raise self.fail(key, f"{key} must be >= {_num(low)}, got {value}")
        if high is not None and value > high:
            raise self.fail(key, f"{key} must be <= {_num(high)}, got {value}{why}")
        if above is not None and value <= above:
            raise self.fail(key, f"{key} must be > {_num(above)}, got {value}")


def _member_for(members: list[Any], value: Any) -> Any:
    """The member of a union (str | list[...], say) whose shape ``value`` has, or None."""
    def shape(hint: Any) -> str:
        if dataclasses.is_dataclass(hint):
            return "mapping"
        return "list" if typing.get_origin(hint) in (list, tuple) else "scalar"

    wanted = ("mapping" if isinstance(value, dict) else "list" if isinstance(value, (list, tuple)) else "scalar")
    return next((m for m in members if shape(m) == wanted), None)


def _num(x: float) -> str:
    return str(int(x)) if float(x).is_integer() else str(x)


def _as_number(value: Any) -> float | int | None:
    """Numbers, and numeric strings: YAML 1.1 (PyYAML) reads ``1e-4`` (no dot) as a string."""
    if isinstance(value, bool):
        return None
    if isinstance(value, (int, float)):
        return value
    if isinstance(value, str):
        try:
            return float(value.replace("_", ""))
        except ValueError:
            return None
    return None


def _short_repr() -> reprlib.Repr:
    short = reprlib.Repr()  # (keyword arguments only from Python 3.12)
    short.maxlevel, short.maxlist, short.maxdict, short.maxstring, short.maxother = 3, 8, 8, 120, 120
    return short


_SHORT = _short_repr()


def _describe(value: Any) -> str:
    """A value for an error line: its repr cut short (a list of a million items is not printed)."""
    if value is None:
        return "null"
    return f"{_SHORT.repr(value)} ({type(value).__name__})"


def _suggestion(root: type, schema: type, key: Any, prefix: str) -> str:
    """' (did you mean optim.base_lr?)': the closest field name or alias in the section, else the same
    name in another section of ``root``."""
    candidates: dict[str, str] = {}
    for f in dataclasses.fields(schema):
        candidates[f.name] = f.name
        for alias in f.metadata.get("aliases", ()):
            candidates.setdefault(alias, f.name)
    close = difflib.get_close_matches(str(key), list(candidates), n=1, cutoff=0.6)
    if close:
        return f" (did you mean {prefix}{candidates[close[0]]}?)"
    elsewhere = [k for k in all_keys(root) if k.rsplit(".", 1)[-1] == str(key)]
    return f" (did you mean {elsewhere[0]}?)" if elsewhere else ""


def all_keys(schema: type, prefix: str = "") -> list[str]:
    """Every leaf key of ``schema`` as a dotted path, in declaration order."""
    keys: list[str] = []
    hints = typing.get_type_hints(schema)
    for f in dataclasses.fields(schema):
        if dataclasses.is_dataclass(hints[f.name]):
            keys.extend(all_keys(hints[f.name], f"{prefix}{f.name}."))
        else:
            keys.append(f"{prefix}{f.name}")
    return keys


def config_from_dict(data: dict[str, Any], schema: type[C] = PretrainConfig, source: str = "config") -> C:
    """Build and validate ``schema`` from a plain dict (e.g. the config stored in a checkpoint)."""
    return _Builder(schema, {}, source).build(schema, data)


def load_config(path: str | Path | None, overrides: list[str] | tuple[str, ...] = (),
                schema: type[C] = PretrainConfig) -> C:
    """The validated config: ``schema``'s defaults <- the YAML file at ``path`` <- ``overrides``.

    Raises UserError with one line naming the source, the dotted key and a suggestion."""
    data = _read_file(path) if path is not None else {}
    sources: dict[str, str] = {}
    for override in overrides:
        _apply_override(data, override, sources)
    default_source = str(path) if path is not None else "config (defaults and overrides)"
    return _Builder(schema, sources, default_source).build(schema, data)


def config_to_dict(config: Any) -> dict[str, Any]:
    """The config as plain dicts, lists and scalars (for YAML, JSON, wandb and checkpoints)."""
    return dataclasses.asdict(config)


def save_resolved(config: Any, run_dir: str | Path) -> Path:
    """Write the resolved config to ``<run_dir>/config.yaml`` atomically; loading it gives ``config`` back."""
    path = Path(run_dir) / CONFIG_FILE
    header = (f"# Resolved configuration of this run (every key, defaults filled in).\n"
              f"# Re-run with: --config {path}\n")
    write_text(path, header + yaml.safe_dump(config_to_dict(config), sort_keys=False, allow_unicode=True))
    return path


# ---------------------------------------------------------------------------------------------
# Reference (docs/config.md)
# ---------------------------------------------------------------------------------------------

def _type_name(hint: Any) -> str:
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):
        inner = [_type_name(a) for a in args if a is not type(None)]
        return " or ".join(inner) + (" or null" if type(None) in args else "")
    if origin is Literal:
        return " \\| ".join(str(a) for a in args)
    if origin in (list, tuple):
        return f"list of {_type_name(args[0])}"
    if dataclasses.is_dataclass(hint):
        return "{" + ", ".join(f.name for f in dataclasses.fields(hint)) + "}"
    return getattr(hint, "__name__", str(hint))


def _default_text(f: dataclasses.Field) -> str:
    value = f.default_factory() if f.default_factory is not _MISSING else f.default  # type: ignore[misc]
    return "`" + yaml.safe_dump(value, default_flow_style=True).strip().removesuffix("...").strip() + "`"


def config_reference(schema: type = PretrainConfig, prefix: str = "") -> str:
    """A markdown table per section: key, type, default, meaning, range."""
    hints = typing.get_type_hints(schema)
    blocks: list[str] = []
    rows: list[str] = []
    for f in dataclasses.fields(schema):
        hint = hints[f.name]
        if dataclasses.is_dataclass(hint):
            title = f"### `{prefix}{f.name}` — {f.metadata.get('help', '')}\n"
            blocks.append(title + "\n" + config_reference(hint, f"{prefix}{f.name}."))
            continue
        rows.append(f"| `{prefix}{f.name}` | {_type_name(hint)} | {_default_text(f)} | "
                    f"{f.metadata.get('help', '')}{_range_text(f.metadata)} |")
    table = ("| key | type | default | meaning |\n|---|---|---|---|\n" + "\n".join(rows) + "\n") if rows else ""
    return "\n".join(([table] if table else []) + blocks)


def _range_text(meta: typing.Mapping[str, Any]) -> str:
    parts = []
    if meta.get("min") is not None:
        parts.append(f">= {_num(meta['min'])}")
    if meta.get("above") is not None:
        parts.append(f"> {_num(meta['above'])}")
    if meta.get("max") is not None:
        parts.append(f"<= {_num(meta['max'])}")
    return f" ({', '.join(parts)})" if parts else ""


if __name__ == "__main__":
    print(config_reference(PretrainConfig), end="")
