"""Models out: a run (or a trunk) as a folder in timm's Hugging Face layout, and that folder read back.

``python -m transfer export <run dir | model file> --out <folder>`` writes::

    <folder>/model.safetensors   the weights (torchvision / timm ResNet names: conv1, layer1.0.conv1, fc, …)
    <folder>/config.json         timm's layout: architecture, num_classes, num_features, label_names,
                                 model_args, pretrained_cfg, plus an ``openwsl`` section (see below)
    <folder>/README.md           a model card (timm's generate_readme)

The folder is written by timm's own ``save_for_hf`` from a timm model that holds our weights, so it
is exactly what ``timm.create_model("local-dir:<folder>", pretrained=True)`` (and, once uploaded,
``hf-hub:<repo>``) reads. Before writing, the timm rebuild and our model are run on the same random
batch; the export stops unless their logits agree to :data:`CHECK_TOLERANCE`.

Architectures: a model built from a timm name is that timm architecture. The built-in ResNeXts are
torchvision's ResNet layout, which timm's ``ResNet`` shares key for key: ``resnext101_32x{4,8,16,32}d``
are timm's entry points of the same names, and the others are a timm ResNeXt entry point with
``model_args`` (``layers``, ``cardinality``, ``base_width``, ``channels``), e.g. ``resnext101_32x48d``
is ``resnext101_32x4d`` with ``base_width: 48``. timm's plain stem is fixed at 64 channels, so
``resnext_micro`` (a 16-channel stem) cannot be built by timm: its export stops with that reason,
unless ``--allow-openwsl-only`` asks for a folder in the same layout that openwsl loads (torch.hub's
``openwsl_model``, ``python -m transfer predict``) and timm does not.

What the folder says about the model:

- ``label_names``: the hashtags in vocabulary order (a pretraining run) or the class names / wnids
  (a fine-tuning run or a linear probe); absent with ``--trunk-only`` or for a trunk file, whose
  export has no classifier (``num_classes`` 0: the model returns pooled features).
- ``pretrained_cfg``: ``input_size``, ``interpolation`` (bilinear), ``crop_pct``, ``crop_mode``
  (center), ``mean`` / ``std`` (ImageNet), i.e. the run's own eval transform (resize the short side
  to ``floor(size / crop_pct)``, centre-crop ``size``), ``license`` (the training corpus's licence,
  where the shards' info.json tells it) and ``description``.
- ``openwsl``: the factory name, how logits become probabilities (``softmax`` or ``sigmoid``: the
  pretraining loss; fine-tuned and probe heads are softmax), the source, the vocab (path, sha256),
  the corpus, the run's resolved config and the timm check. These live outside ``pretrained_cfg``
  because timm builds a closed ``PretrainedCfg`` dataclass from it: an unknown key there would make
  ``create_model("local-dir:…")`` fail.
"""
from __future__ import annotations

import contextlib
import json
import math
import os
import shutil
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Callable

import timm
import torch
import yaml
from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD
from torch import nn

from data.atomic_write import fsync_dir
from data.corpus.yfcc import LICENSE_FAMILIES
from data.errors import UserError
from data.loader.pipeline import LoaderConfig
from data.shards.directory import INFO_FILE
from data.synthetic.world import FORMAT as WORLD_FORMAT, WORLD_JSON_NAME
from pretrain.checkpoint import LATEST, TRUNK_FILE, TRUNK_FORMAT, given_checkpoint, load_checkpoint, load_trunk
from pretrain.config import CONFIG_FILE as RUN_CONFIG_FILE
from pretrain.model import BUILTIN_ARCHITECTURES, create_model, head_name
from transfer.finetune import LAST_MODEL
from transfer.linear import MODEL_FILE as LINEAR_MODEL

FORMAT = "openwsl-export"
VERSION = 1
CONFIG_FILE = "config.json"
WEIGHTS_FILE = "model.safetensors"
README_FILE = "README.md"
#: largest |logit| difference accepted between timm's rebuild and our model (fp32, eval mode)
CHECK_TOLERANCE = 1e-5
#: side of the random batch the check runs at (at most the model's input size): ResNets are fully
#: convolutional, so every weight takes part at 64 px already, at a fraction of a 224 px pass
CHECK_SIZE = 64
PROBABILITIES = ("softmax", "sigmoid")


class NotForTimm(Exception):
    """The model cannot be expressed as a timm architecture; the message says why."""


# ---------------------------------------------------------------------------------------------
# Preprocessing: the run's eval transform, in timm's terms
# ---------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Preprocessing:
    """Resize the short side to ``resize`` (bilinear, antialiased), centre-crop ``size``, normalise
    with ImageNet mean/std: the eval transform of pretraining and transfer."""

    size: int = 224
    resize: int = 256

    def crop_pct(self) -> float:
        """The ``crop_pct`` for which timm's ``floor(size / crop_pct)`` is exactly ``resize``."""
        pct = self.size / self.resize
        while math.floor(self.size / pct) < self.resize:  # size/resize rounded up: step below it
            pct = math.nextafter(pct, 0.0)
        return pct

    def timm_config(self) -> dict[str, Any]:
        return {"input_size": (3, self.size, self.size), "interpolation": "bilinear", "crop_pct": self.crop_pct(),
                "crop_mode": "center", "mean": IMAGENET_DEFAULT_MEAN, "std": IMAGENET_DEFAULT_STD}

    @classmethod
    def from_timm_config(cls, cfg: dict[str, Any], where: str) -> "Preprocessing":
        """Read back what :meth:`timm_config` wrote; anything else is one error naming the key."""
        size = cfg.get("input_size")
        if not (isinstance(size, (list, tuple)) and len(size) == 3 and size[0] == 3 and size[1] == size[2]
                and isinstance(size[1], int) and size[1] > 0):
            raise UserError(f"{where}: pretrained_cfg.input_size must be [3, S, S], got {size!r}")
        expected = {"interpolation": "bilinear", "crop_mode": "center"}
        for key, value in expected.items():
            if cfg.get(key, value) != value:
                raise UserError(f"{where}: pretrained_cfg.{key} is {cfg[key]!r}; openwsl models are evaluated with "
                                f"{key} {value!r} (re-export the run)")
        for key, value in (("mean", IMAGENET_DEFAULT_MEAN), ("std", IMAGENET_DEFAULT_STD)):
            given = cfg.get(key, value)
            if not isinstance(given, (list, tuple)) or len(given) != 3 or not all(math.isclose(a, b, abs_tol=1e-9) for a, b in zip(given, value)):
                raise UserError(f"{where}: pretrained_cfg.{key} is {given!r}; openwsl models normalise with "
                                f"ImageNet's {value}")
        crop_pct = cfg.get("crop_pct", 0.875)
        if not isinstance(crop_pct, (int, float)) or not 0 < crop_pct <= 1:
            raise UserError(f"{where}: pretrained_cfg.crop_pct must be in (0, 1], got {crop_pct!r}")
        return cls(size[1], math.floor(size[1] / crop_pct))  # timm's transforms_imagenet_eval rule


def run_preprocessing(config: dict[str, Any] | None) -> Preprocessing:
    """The eval transform a run's resolved config describes (224 / 256 when there is no config)."""
    data = (config or {}).get("data") or {}
    size = data.get("image_size")
    if not isinstance(size, int):
        return Preprocessing()
    # transfer configs name the resize; pretraining evaluates at image_size * 256/224 (the loader's rule)
    return Preprocessing(size, data.get("resize_size") or LoaderConfig(image_size=size).eval_resize())


# ---------------------------------------------------------------------------------------------
# Reading what a run wrote
# ---------------------------------------------------------------------------------------------

@dataclass
class ModelSource:
    """A network as a run left it: weights, factory name, head labels and provenance."""

    path: Path
    kind: str  # "pretraining checkpoint", "fine-tuned model", "linear probe", "trunk"
    model_name: str
    state: dict[str, torch.Tensor]
    head: str | None  # "hashtags", "classes", or None (no classifier)
    labels: list[str] | None
    probabilities: str | None  # "softmax" / "sigmoid" (None: no classifier)
    preprocessing: Preprocessing
    run_config: dict[str, Any] | None = None
    provenance: dict[str, Any] = field(default_factory=dict)  # vocab, corpus, licence of the pretraining data
    images_seen: int | None = None

    def without_head(self) -> "ModelSource":
        return replace(self, head=None, labels=None, probabilities=None)


def read_source(path: str | os.PathLike) -> ModelSource:
    """The model in a run directory or file: a pretraining run (checkpoint-latest.pt: hashtag head,
    vocabulary, loss), a fine-tuning run (model-last.safetensors: class head and names), a linear
    probe (linear_model.safetensors), a ``checkpoint-*.pt``, a ``model-*.safetensors`` or a trunk."""
    path = Path(path)
    if path.is_dir():
        if (path / CONFIG_FILE).is_file() and not (path / RUN_CONFIG_FILE).is_file():
            raise UserError(f"{path} is already an export ({CONFIG_FILE}); load it with timm, torch.hub or "
                            "`python -m transfer predict --model`, or pass the run directory it came from")
        for name in (LAST_MODEL, LINEAR_MODEL, LATEST, TRUNK_FILE):
            if (path / name).is_file():
                return read_source(path / name)
        raise UserError(f"{path} is not a run directory: it holds none of {LATEST} (pretraining), {LAST_MODEL} "
                        f"(fine-tuning), {LINEAR_MODEL} (linear probe) or {TRUNK_FILE}")
    if not path.is_file():
        raise UserError(f"{path}: no such run directory or model file; pass a pretraining or fine-tuning run "
                        f"directory, a checkpoint-*.pt, a model-*.safetensors or a {TRUNK_FILE}")
    if path.suffix == ".safetensors":
        return _from_safetensors(path)
    if path.suffix == ".pt":
        return _from_checkpoint(path)
    raise UserError(f"{path}: not a model file openwsl writes (a checkpoint-*.pt or a .safetensors file)")


def _from_checkpoint(path: Path) -> ModelSource:
    state = load_checkpoint(path, mmap=True)  # the optimiser state is never read
    config = state.get("config") or {}
    if "loss" not in config:
        raise UserError(f"{path} is a fine-tuning checkpoint, which does not name its classes; export the run "
                        f"directory or its {LAST_MODEL} / model-best.safetensors instead")
    provenance = _pretraining_provenance(config)
    labels = state.get("vocab_tags") or (provenance.get("vocab") or {}).get("tags")
    return ModelSource(path, "pretraining checkpoint", config["model"]["name"], state["model"], "hashtags",
                       list(labels) if labels else None, config["loss"]["name"], run_preprocessing(config), config,
                       _without_tags(provenance), state.get("images_seen"))


def _from_safetensors(path: Path) -> ModelSource:
    state, metadata = load_trunk(path)
    kind = metadata.get("format")
    config = _sibling_config(path)
    if kind == TRUNK_FORMAT:
        name = metadata.get("architecture", "")
        config = config if _config_model(config) == name else None  # a config.yaml of another run
        images = metadata.get("images_seen")
        return ModelSource(path, "trunk", name, state, None, None, None, run_preprocessing(config), config,
                           _without_tags(_pretraining_provenance(config)), int(images) if images else None)
    if kind in ("openwsl-finetuned", "openwsl-linear-probe"):
        name = metadata.get("model") or _config_model(config)
        if not name:
            raise UserError(f"{path}: the model name is not recorded; keep the file next to its run's "
                            f"{RUN_CONFIG_FILE}")
        try:
            classes = json.loads(metadata["classes"])
        except (KeyError, json.JSONDecodeError):
            raise UserError(f"{path}: its metadata lacks the class list (classes)") from None
        kind_name = "fine-tuned model" if kind == "openwsl-finetuned" else "linear probe"
        return ModelSource(path, kind_name, name, state, "classes", classes, "softmax", run_preprocessing(config),
                           config, _without_tags(_transfer_provenance(config)))
    raise UserError(f"{path}: not a model file openwsl writes (safetensors metadata format={kind!r}; expected "
                    f"{TRUNK_FORMAT}, openwsl-finetuned or openwsl-linear-probe)")


def _sibling_config(path: Path) -> dict[str, Any] | None:
    config_path = path.parent / RUN_CONFIG_FILE
    if not config_path.is_file():
        return None
    try:
        config = yaml.safe_load(config_path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, yaml.YAMLError):
        return None
    return config if isinstance(config, dict) else None


def _config_model(config: dict[str, Any] | None) -> str | None:
    return ((config or {}).get("model") or {}).get("name")


def _pretraining_provenance(config: dict[str, Any] | None) -> dict[str, Any]:
    """The vocab and corpus of a pretraining config's shards, from their info.json (when still there)."""
    train = ((config or {}).get("data") or {}).get("train")
    info_path = Path(str(train)) / INFO_FILE if train else None
    if info_path is None or not info_path.is_file():
        return {}
    try:
        info = json.loads(info_path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        return {}
    vocab, corpus = info.get("vocab") or {}, info.get("corpus") or {}
    return {"shards": str(info_path.parent), "vocab": vocab, "corpus": corpus or None,
            "licence": corpus_licence(corpus)}


def _transfer_provenance(config: dict[str, Any] | None) -> dict[str, Any]:
    """A transfer run's pretraining provenance, through its ``init`` (a trunk or checkpoint in a
    pretraining run directory)."""
    init = (config or {}).get("init")
    if not init:
        return {}
    return _pretraining_provenance(_sibling_config(given_checkpoint(str(init))))


def _without_tags(provenance: dict[str, Any]) -> dict[str, Any]:
    """The provenance to record: the vocab's tags are label_names already."""
    vocab = provenance.get("vocab")
    if isinstance(vocab, dict):
        provenance = {**provenance, "vocab": {k: v for k, v in vocab.items() if k != "tags"}}
    return provenance


def corpus_licence(corpus: dict[str, Any]) -> str | None:
    """The licence of the pretraining images, where the corpus description tells it."""
    source, where = corpus.get("source"), corpus.get("input")
    world = Path(str(where)).parent / WORLD_JSON_NAME if where else None
    if world is not None and world.is_file():
        with contextlib.suppress(OSError, ValueError):
            if json.loads(world.read_text(encoding="utf-8")).get("format") == WORLD_FORMAT:
                return "synthetic images drawn by openwsl (data/synthetic); no third-party content"
    if source == "yfcc100m":
        families = corpus.get("licenses")
        if families:
            names = ", ".join(LICENSE_FAMILIES.get(f, f) for f in families)
            return f"YFCC100M photos under: {names}; each photo keeps its own licence"
        return ("YFCC100M photos, each under its own Creative Commons licence (every family, NonCommercial and "
                "NoDerivs included)")
    return None


# ---------------------------------------------------------------------------------------------
# Our model, and timm's rebuild of it
# ---------------------------------------------------------------------------------------------

def source_model(source: ModelSource) -> nn.Module:
    """The project's model with the source's weights loaded strictly, in eval mode (no head when the
    source has none)."""
    num_classes = len(source.labels) if source.labels is not None else 0
    model = create_model(source.model_name, num_classes)
    state = source.state
    if source.head is None:
        prefix = f"{head_name(model)}."
        state = {k: v for k, v in state.items() if not k.startswith(prefix)}
    _load_strictly(model, state, f"{source.path} ({source.kind} of {source.model_name})")
    return model.eval()


def _load_strictly(model: nn.Module, state: dict[str, torch.Tensor], what: str) -> None:
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as err:
        detail = " ".join(str(err).split("\n")[1:3]).strip()
        raise UserError(f"{what}: the weights do not fit the model ({detail[:300]})") from None


def timm_architecture(model_name: str) -> tuple[str, dict[str, Any]]:
    """(timm entry point, model_args) that build ``model_name``'s layout; :class:`NotForTimm` when
    timm has none."""
    arch = BUILTIN_ARCHITECTURES.get(model_name)
    if arch is None:
        return model_name, {}  # built by timm in the first place
    if arch.planes[0] != 64:
        raise NotForTimm(f"{model_name} has a {arch.planes[0]}-channel stem and timm's ResNet fixes its stem at 64 "
                         "channels, so no timm architecture holds these weights")
    if timm.is_model(model_name):
        return model_name, {}  # resnext101_32x{4,8,16,32}d: timm's entry points share the layout
    base = "resnext101_32x4d" if arch.blocks == (3, 4, 23, 3) else "resnext50_32x4d"
    return base, {"layers": list(arch.blocks), "cardinality": arch.groups, "base_width": arch.width_per_group,
                  "channels": list(arch.planes)}


@dataclass
class TimmRebuild:
    model: nn.Module
    architecture: str
    model_args: dict[str, Any]
    max_abs_diff: float  # largest |logit| difference from our model on a seeded random batch


def timm_rebuild(model: nn.Module, model_name: str, pretrained_cfg: dict[str, Any]) -> TimmRebuild:
    """timm's model of ``model``'s architecture holding its weights, checked against ``model`` on a
    seeded random batch; :class:`NotForTimm` when it cannot be built or its logits differ."""
    architecture, model_args = timm_architecture(model_name)
    structure = timm.models.get_pretrained_cfg(architecture)
    cfg = {**{k: getattr(structure, k) for k in ("first_conv", "classifier") if structure is not None},
           **pretrained_cfg}
    rebuilt = timm.create_model(architecture, pretrained=False, pretrained_cfg=cfg, num_classes=model.num_classes,
                                **model_args)
    try:
        rebuilt.load_state_dict(model.state_dict(), strict=True)
    except RuntimeError as err:
        raise NotForTimm(f"timm's {architecture} {model_args or ''} has other parameters than {model_name} "
                         f"({' '.join(str(err).splitlines()[1:2])[:200]})") from None
    rebuilt.eval()
    size = min(CHECK_SIZE, pretrained_cfg["input_size"][1])
    batch = torch.randn(2, 3, size, size, generator=torch.Generator().manual_seed(0))
    with torch.inference_mode():
        ours, theirs = model(batch), rebuilt(batch)
    diff = float((ours - theirs).abs().max()) if ours.shape == theirs.shape else math.inf
    if not diff <= CHECK_TOLERANCE:
        raise NotForTimm(f"timm's {architecture} rebuild of {model_name} gives other logits (max |difference| "
                         f"{diff:.3g} > {CHECK_TOLERANCE:g})")
    return TimmRebuild(rebuilt, architecture, model_args, diff)


# ---------------------------------------------------------------------------------------------
# Writing the folder
# ---------------------------------------------------------------------------------------------

@dataclass
class ExportResult:
    folder: Path
    architecture: str
    model_args: dict[str, Any]
    timm: bool
    max_abs_diff: float | None
    num_classes: int


def export(source: ModelSource, out: str | os.PathLike, *, trunk_only: bool = False,
           allow_openwsl_only: bool = False, say: Callable[[str], None] = print) -> ExportResult:
    """Write ``source`` to the new folder ``out`` (see the module doc); nothing is written to ``out``
    unless the whole export succeeds."""
    out = Path(out)
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise UserError(f"--out {out}: exists and is not an empty folder; pass a new folder (an export is "
                        "never written over other files)")
    if trunk_only or source.head is None:
        source = source.without_head()
    elif source.labels is None:
        raise UserError(f"{source.path}: the {source.head} of the head are not recorded (no vocab tags in the "
                        "checkpoint or the shards' info.json); export with --trunk-only")
    say(f"export: {source.kind} {source.path} ({source.model_name}, "
        f"{f'{len(source.labels)} {source.head}' if source.labels else 'no classifier'})")
    model = source_model(source)
    pretrained_cfg = {**source.preprocessing.timm_config(), **_describe(source, model)}
    try:
        rebuild = timm_rebuild(model, source.model_name, pretrained_cfg)
        target, diff, architecture, model_args = rebuild.model, rebuild.max_abs_diff, rebuild.architecture, \
            rebuild.model_args
        say(f"export: timm's {architecture}{f' {model_args}' if model_args else ''} holds the weights; "
            f"max |logit difference| {diff:.3g} on a random batch")
    except NotForTimm as reason:
        if not allow_openwsl_only:
            raise UserError(f"cannot export {source.model_name} for timm: {reason}; pass --allow-openwsl-only to "
                            "write the folder anyway for openwsl's loaders (torch.hub openwsl_model, `python -m "
                            "transfer predict`)") from None
        say(f"export: {reason}; writing a folder that openwsl loads and timm does not (--allow-openwsl-only)")
        target, diff, architecture, model_args = model, None, source.model_name, {}
        target.pretrained_cfg = {**pretrained_cfg, "architecture": source.model_name}
    openwsl = _openwsl_section(source, timm_ok=diff is not None, diff=diff)
    _write_folder(target, out, source, model_config={
        **({"label_names": source.labels} if source.labels else {}), "openwsl": openwsl},
        data_config=source.preprocessing.timm_config())
    say(f"export: wrote {out / WEIGHTS_FILE}, {out / CONFIG_FILE} and {out / README_FILE}")
    return ExportResult(out, architecture, model_args, diff is not None, diff, model.num_classes)


def _describe(source: ModelSource, model: nn.Module) -> dict[str, Any]:
    vocab = source.provenance.get("vocab") or {}
    if source.kind == "pretraining checkpoint" and source.labels:
        seen = f", {source.images_seen:,} images seen" if source.images_seen is not None else ""
        text = (f"openwsl hashtag pretraining of {source.model_name}: {source.probabilities} over "
                f"{len(source.labels):,} hashtags{seen}")
    elif source.labels:
        text = f"openwsl {source.kind} of {source.model_name} for {len(source.labels):,} classes"
    else:
        text = f"openwsl {source.model_name} trunk without a classifier ({model.num_features} pooled features)"
    if vocab.get("sha256"):
        text += f"; pretraining vocabulary sha256 {vocab['sha256']}"
    licence = source.provenance.get("licence")
    return {"description": text, **({"license": licence} if licence else {})}


def _openwsl_section(source: ModelSource, *, timm_ok: bool, diff: float | None) -> dict[str, Any]:
    return {
        "format": FORMAT, "version": VERSION, "model": source.model_name, "head": source.head,
        "probabilities": source.probabilities, "timm": timm_ok,
        "timm_check": {"max_abs_logit_diff": diff, "tolerance": CHECK_TOLERANCE} if timm_ok else None,
        "source": {"kind": source.kind, "path": str(source.path.resolve()), "images_seen": source.images_seen},
        **{key: source.provenance.get(key) for key in ("vocab", "corpus", "shards")},
        "run_config": source.run_config,
    }


def _write_folder(model: nn.Module, out: Path, source: ModelSource, model_config: dict[str, Any],
                  data_config: dict[str, Any]) -> None:
    """timm's save_for_hf into a temp folder beside ``out``, a model card, fsync, then one rename."""
    from timm.models import save_for_hf

    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.parent / f".{out.name}.export-{os.getpid()}.tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        save_for_hf(model, str(tmp), model_config=model_config, data_config=data_config, safe_serialization=True)
        (tmp / README_FILE).write_text(_model_card(out.name, source, model_config["openwsl"],
                                                         model.pretrained_cfg.get("description", "")), encoding="utf-8")
        for path in tmp.iterdir():
            with open(path, "rb") as f:
                os.fsync(f.fileno())
        if out.is_dir():
            out.rmdir()  # empty, checked above
        os.replace(tmp, out)
        fsync_dir(out.parent)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _model_card(name: str, source: ModelSource, openwsl: dict[str, Any], description: str) -> str:
    from timm.models._hub import generate_readme

    usage = ("```python\nimport timm\nmodel = timm.create_model(\"local-dir:<this folder>\", pretrained=True)  "
             "# or \"hf-hub:<repo>\"\n```\n" if openwsl["timm"] else "")
    usage += ("```python\nimport torch\nmodel = torch.hub.load(\"<openwsl checkout>\", \"openwsl_model\", "
              "source=\"local\", folder=\"<this folder>\")\n```\n"
              "```bash\npython -m transfer predict --model <this folder> photo.jpg --top-k 5\n```\n")
    details = {"Architecture": f"{source.model_name} ({'timm' if openwsl['timm'] else 'openwsl only'})",
               "Head": (f"{len(source.labels):,} {source.head}, {source.probabilities}" if source.labels
                        else "none (pooled features)"),
               "Input": f"{source.preprocessing.size} px centre crop of the image resized to "
                        f"{source.preprocessing.resize} px, ImageNet mean/std",
               "Source": f"{source.kind} {source.path.name}"}
    licence = source.provenance.get("licence")
    if licence:
        details["Training images"] = licence
    card = {"description": ("Exported by openwsl (weakly-supervised hashtag pretraining after Mahajan et al., "
                            f"ECCV 2018): {description}."), "details": details, "usage": usage, "license": "other",
            "tags": ["image-classification", *(["timm"] if openwsl["timm"] else []), "openwsl"],
            **({} if openwsl["timm"] else {"library_name": "openwsl"})}
    return generate_readme(card, name)


def push_to_hub(folder: Path, repo: str) -> str:
    """Upload the export folder as it is to the Hugging Face Hub repo ``repo`` (created if needed)."""
    from huggingface_hub import HfApi

    try:
        api = HfApi(library_name="openwsl")
        repo_id = api.create_repo(repo, exist_ok=True).repo_id
        commit = api.upload_folder(repo_id=repo_id, folder_path=str(folder), commit_message="openwsl export")
    except (OSError, ValueError) as err:  # huggingface_hub's HTTP and offline errors are OSErrors
        reason = str(err).splitlines()[0] if str(err) else type(err).__name__
        raise UserError(f"upload of {folder} to the Hugging Face Hub repo {repo} failed ({reason}); the export is "
                        f"complete in {folder}: upload it later with `hf upload {repo} {folder}`") from None
    return getattr(commit, "commit_url", None) or f"https://huggingface.co/{repo_id}"


# ---------------------------------------------------------------------------------------------
# Reading an export (or a run) back for openwsl's own loaders
# ---------------------------------------------------------------------------------------------

@dataclass
class LoadedModel:
    """A model ready to score images: eval mode, its labels, how logits become probabilities, and the
    preprocessing its export prescribes."""

    model: nn.Module
    labels: list[str] | None
    probabilities: str | None
    preprocessing: Preprocessing
    description: str

    def probabilities_of(self, logits: torch.Tensor) -> torch.Tensor:
        logits = logits.float()
        return torch.sigmoid(logits) if self.probabilities == "sigmoid" else torch.softmax(logits, dim=1)


def load_export(folder: str | os.PathLike) -> LoadedModel:
    """An export folder as the project's model (any architecture, timm-loadable or not). The model
    carries the folder's ``pretrained_cfg`` (with ``label_names``), so timm's
    ``resolve_data_config(model=...)`` gives its preprocessing."""
    folder = Path(folder)
    config_path = folder / CONFIG_FILE
    if not config_path.is_file():
        raise UserError(f"{folder}: not an export folder (no {CONFIG_FILE}); make one with `python -m transfer "
                        "export <run dir> --out <folder>`")
    try:
        config = json.loads(config_path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise UserError(f"{config_path}: not readable JSON ({err})") from None
    openwsl = config.get("openwsl") if isinstance(config, dict) else None
    if not isinstance(openwsl, dict) or openwsl.get("format") != FORMAT:
        raise UserError(f"{config_path}: not an openwsl export (no openwsl.format={FORMAT!r}); openwsl loads the "
                        "folders `python -m transfer export` writes (use timm for other timm folders)")
    if openwsl.get("version", 0) > VERSION:
        raise UserError(f"{config_path}: export version {openwsl['version']} is newer than this code reads "
                        f"({VERSION}); update openwsl")
    pretrained_cfg = config.get("pretrained_cfg") or {}
    labels = config.get("label_names")
    model = create_model(str(openwsl.get("model")), int(config.get("num_classes", 0)))
    state, _ = load_trunk(folder / WEIGHTS_FILE)
    _load_strictly(model, state, str(folder / WEIGHTS_FILE))
    model.pretrained_cfg = {**pretrained_cfg, "label_names": labels,  # JSON lists back to timm's tuples
                            **{k: tuple(pretrained_cfg[k]) for k in ("input_size", "mean", "std") if k in pretrained_cfg}}
    probabilities = openwsl.get("probabilities")
    if labels is not None and probabilities not in PROBABILITIES:
        raise UserError(f"{config_path}: openwsl.probabilities must be one of {', '.join(PROBABILITIES)}, "
                        f"got {probabilities!r}")
    return LoadedModel(model.eval(), labels, probabilities,
                       Preprocessing.from_timm_config(pretrained_cfg, str(config_path)), f"export {folder}")


def load_model(path: str | os.PathLike) -> LoadedModel:
    """An export folder, or a run directory / model file read as :func:`export` would read it."""
    path = Path(path)
    if path.is_dir() and (path / CONFIG_FILE).is_file() and not (path / RUN_CONFIG_FILE).is_file():
        return load_export(path)
    source = read_source(path)
    return LoadedModel(source_model(source), source.labels, source.probabilities, source.preprocessing,
                       f"{source.kind} {source.path}")


# ---------------------------------------------------------------------------------------------
# The command
# ---------------------------------------------------------------------------------------------

def add_arguments(parser: Any) -> None:
    parser.add_argument("source", metavar="RUN",
                        help="a pretraining run directory (hashtag head + vocabulary), a fine-tuning or linear-probe "
                             "run directory (class head + class names), a checkpoint-*.pt, a model-*.safetensors or "
                             f"a {TRUNK_FILE}")
    parser.add_argument("--out", required=True, type=Path, metavar="FOLDER", help="the export folder (new or empty)")
    parser.add_argument("--trunk-only", action="store_true",
                        help="leave the classifier out: the model returns pooled features (num_classes 0)")
    parser.add_argument("--allow-openwsl-only", action="store_true",
                        help="when timm has no architecture for the model (resnext_micro), write the folder for "
                             "openwsl's loaders instead of stopping")
    parser.add_argument("--push-to-hub", metavar="REPO",
                        help="then upload the folder to this Hugging Face Hub repo (user/name; `hf auth login` first)")


def run_export(args: Any) -> ExportResult:
    """The ``export`` command."""
    source = read_source(args.source)
    result = export(source, args.out, trunk_only=args.trunk_only, allow_openwsl_only=args.allow_openwsl_only)
    if result.timm:
        print(f"load it with timm: timm.create_model(\"local-dir:{result.folder}\", pretrained=True)")
    if result.num_classes:
        print(f"tag images with it: python -m transfer predict --model {result.folder} <images or folders>")
    if args.push_to_hub:
        print(f"export: uploading {result.folder} to the Hugging Face Hub repo {args.push_to_hub}", flush=True)
        print(f"export: uploaded: {push_to_hub(result.folder, args.push_to_hub)}")
    return result
