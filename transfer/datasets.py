"""Labelled image datasets for transfer: every sample addressed by index, so each rank can take an
exact share (no padding, no duplicates) and a result can name every image it scored.

Layouts (``kind``; ``auto`` picks from what is on disk):

- ``imagefolder``: ``<root>/<class>/<image>``, classes are the sub-folder names in sorted order
  (ImageNet's ``train/<wnid>/…`` and ``val/<wnid>/…``, hymenoptera's ``ants``/``bees``, …).
- ``imagenet_val``: ImageNet's flat validation folder (``ILSVRC2012_val_00000001.JPEG`` …) labelled
  by either

  * ``val_labels``: a text file of ``<filename> <wnid>`` lines, or
  * the devkit's ``ILSVRC2012_validation_ground_truth.txt`` (one 1-based ILSVRC2012_ID per line, in
    file-name order) plus ``synsets``: the 1,000 wnids in ILSVRC2012_ID order, one per line (the
    order of the devkit's ``meta.mat``; note that ``LOC_synset_mapping.txt`` is in *sorted* wnid
    order, which is the class-index order, not the ILSVRC2012_ID order).

  Classes are the sorted wnids, the same indices as ``train/<wnid>/`` folders, so a model
  fine-tuned on the ImageFolder train split scores the flat val folder directly.
- ``wds``: labelled WebDataset tars (``<key>.cls`` holding the integer class + ``<key>.jpg`` …), the
  common imagenet-1k layout; ``_info.json`` beside the tars (optional) names the classes. The tars
  are indexed once (member offsets from their headers, no image read), so samples are read by
  offset like files.

Images are decoded through :mod:`data.loader.transforms` (pixel-count limit checked from the header before
any pixel is decoded); an image that cannot be used comes back as a named skip, never an exception,
and the collate function carries the skips up to the caller, which counts and reports them.
"""
from __future__ import annotations

import json
import os
import re
import tarfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator, Literal, Sequence

import numpy as np
import torch
from torch.utils.data import Dataset, Sampler

from data.errors import UserError
from data.images.decode import ImageSkip
from data.skip_report import SkipReport
from data.loader.transforms import Transform
from data.tar_member import IMAGE_SUFFIXES, TarMember, is_image_file, split_member_name

GROUND_TRUTH_FILE = "ILSVRC2012_validation_ground_truth.txt"
_WNID = re.compile(r"^n\d{8}$")
Kind = Literal["auto", "imagefolder", "imagenet_val", "wds"]


Source = Path | TarMember


@dataclass
class LabelledImages(Dataset):
    """``(source, class index)`` pairs; ``__getitem__`` gives ``(index, pixels | ImageSkip, target)``."""

    sources: list[Source]
    targets: list[int]
    classes: list[str]
    description: str
    transform: Transform | None = None
    names: list[str] = field(default_factory=list)  # a human-readable name per sample
    seed: int = 0  # random crops and flips depend on (seed, epoch, index) only, not on workers
    epoch: int = 0

    def __post_init__(self) -> None:
        if not self.names:
            self.names = [_name(source) for source in self.sources]

    def __len__(self) -> int:
        return len(self.sources)

    def __getitem__(self, index: int) -> tuple[int, torch.Tensor | ImageSkip, int]:
        if self.transform is None:
            raise RuntimeError("LabelledImages needs a transform before it is read (with_transform)")
        source = self.sources[index]
        try:
            data = source.read() if isinstance(source, TarMember) else source.read_bytes()
        except OSError as err:
            return index, ImageSkip("unreadable", f"{type(err).__name__}: {err}"), self.targets[index]
        try:
            rng = np.random.default_rng([self.seed, self.epoch, index])
            return index, self.transform(data, rng), self.targets[index]
        except ImageSkip as skip:
            return index, skip, self.targets[index]

    def with_transform(self, transform: Transform, seed: int = 0) -> "LabelledImages":
        return LabelledImages(self.sources, self.targets, self.classes, self.description, transform, self.names,
                              seed)

    def listing(self) -> list[tuple[str, int, int]]:
        """(name, target, byte size) per sample: what a feature cache is keyed on."""
        sizes = [s.size if isinstance(s, TarMember) else _file_size(s) for s in self.sources]
        return list(zip(self.names, self.targets, sizes))


def _name(source: Source) -> str:
    return f"{source.tar}@{source.offset}" if isinstance(source, TarMember) else str(source)


def _file_size(path: Path) -> int:
    try:
        return path.stat().st_size
    except OSError:
        return -1


@dataclass
class Batch:
    """A collated batch: the usable images, and the skips (index, reason) among the requested ones."""

    indices: torch.Tensor
    images: torch.Tensor
    targets: torch.Tensor
    skipped: list[tuple[int, str]]


def collate(items: Sequence[tuple[int, torch.Tensor | ImageSkip, int]]) -> Batch:
    kept = [(i, pixels, t) for i, pixels, t in items if not isinstance(pixels, ImageSkip)]
    skipped = [(i, pixels.reason) for i, pixels, _ in items if isinstance(pixels, ImageSkip)]
    if not kept:
        return Batch(torch.zeros(0, dtype=torch.int64), torch.zeros(0, 3, 1, 1, dtype=torch.uint8),
                     torch.zeros(0, dtype=torch.int64), skipped)
    return Batch(torch.tensor([i for i, _, _ in kept]), torch.stack([p for _, p, _ in kept]),
                 torch.tensor([t for _, _, t in kept]), skipped)


class ExactShardSampler(Sampler[int]):
    """Rank ``r`` of ``w`` takes indices ``r, r + w, r + 2w, …`` (of a seeded permutation when
    ``shuffle``): every index exactly once across ranks. Unlike torch's DistributedSampler nothing
    is padded, so with uneven splits ranks differ by at most one sample; callers must not run a
    collective per batch (sum locally, reduce once)."""

    def __init__(self, size: int, rank: int, world_size: int, shuffle: bool = False, seed: int = 0) -> None:
        if not 0 <= rank < world_size:
            raise ValueError(f"rank {rank} outside 0..{world_size - 1}")
        self.size, self.rank, self.world_size = size, rank, world_size
        self.shuffle, self.seed, self.epoch = shuffle, seed, 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def _order(self) -> np.ndarray:
        if not self.shuffle:
            return np.arange(self.size)
        return np.random.default_rng([self.seed, self.epoch]).permutation(self.size)

    def __iter__(self) -> Iterator[int]:
        return iter(self._order()[self.rank::self.world_size].tolist())

    def __len__(self) -> int:
        return len(range(self.rank, self.size, self.world_size))


# ---------------------------------------------------------------------------------------------
# Opening a dataset
# ---------------------------------------------------------------------------------------------

def open_dataset(root: str | os.PathLike, kind: Kind = "auto", *, val_labels: str | None = None,
                 synsets: str | None = None, classes: Sequence[str] | None = None) -> LabelledImages:
    """The dataset at ``root``. ``classes``: the class list to index targets by (a val split must
    use its train split's classes); UserError for a missing folder, an empty dataset, a class the
    list lacks, or label files that do not match the images."""
    root = Path(root)
    if not root.exists():
        raise UserError(f"dataset {root} not found; pass an existing directory (data.train / data.val)")
    kind = _detect_kind(root, val_labels) if kind == "auto" else kind
    if kind == "imagefolder":
        dataset = _image_folder(root, classes)
    elif kind == "imagenet_val":
        dataset = _imagenet_val(root, val_labels, synsets, classes)
    else:  # "wds": data.kind is one of the schema's choices
        dataset = _wds(root, classes)
    if len(dataset) == 0:
        raise UserError(f"dataset {root} ({kind}) holds no images; expected {_LAYOUT_HINT[kind]}")
    return dataset


_LAYOUT_HINT = {
    "imagefolder": f"<root>/<class>/<image> with extensions {', '.join('.' + s for s in IMAGE_SUFFIXES)}",
    "imagenet_val": "image files next to labels (val_labels or the devkit ground truth + synsets)",
    "wds": "*.tar shards of <key>.cls + <key>.jpg samples",
}


def _detect_kind(root: Path, val_labels: str | None) -> str:
    if root.is_file() and root.suffix == ".tar":
        return "wds"
    if not root.is_dir():
        raise UserError(f"dataset {root} is neither a directory nor a .tar shard")
    if val_labels or (root / GROUND_TRUTH_FILE).is_file():
        return "imagenet_val"
    entries = list(root.iterdir())
    if any(e.is_file() and e.suffix == ".tar" for e in entries):
        return "wds"
    if any(e.is_dir() and not e.name.startswith(".") for e in entries):
        return "imagefolder"
    if any(e.is_file() and is_image_file(e.name) for e in entries):
        raise UserError(f"dataset {root} is a flat folder of images with no labels: for ImageNet's "
                        f"val folder pass data.val_labels=<file of '<filename> <wnid>' lines>, or put "
                        f"{GROUND_TRUTH_FILE} there and pass data.synsets=<wnids in ILSVRC2012_ID order>")
    raise UserError(f"dataset {root} holds no class folders, images or .tar shards")


def _is_image(path: Path) -> bool:
    return is_image_file(path.name) and not path.name.startswith(".")


def _image_folder(root: Path, classes: Sequence[str] | None) -> LabelledImages:
    found = sorted(e.name for e in root.iterdir() if e.is_dir() and not e.name.startswith("."))
    if not found:
        raise UserError(f"dataset {root} has no class folders; an ImageFolder is <root>/<class>/<image>")
    class_list = list(classes) if classes is not None else found
    index = {name: i for i, name in enumerate(class_list)}
    unknown = [name for name in found if name not in index]
    if unknown:
        raise UserError(f"dataset {root}: class folder {unknown[0]!r} is not among the {len(class_list)} "
                        f"training classes; the train and val splits must have the same class folders")
    sources: list[Source] = []
    targets: list[int] = []
    for name in found:
        files = sorted(p for p in (root / name).rglob("*") if p.is_file() and _is_image(p))
        sources.extend(files)
        targets.extend([index[name]] * len(files))
    return LabelledImages(sources, targets, class_list, f"ImageFolder {root}")


def _read_lines(path: str | Path, what: str) -> list[str]:
    path = Path(path)
    if not path.is_file():
        raise UserError(f"{what} file {path} not found")
    try:
        return [line.strip() for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    except (OSError, UnicodeDecodeError) as err:
        raise UserError(f"{path}: cannot read the {what} file ({err})") from None


def _imagenet_val(root: Path, val_labels: str | None, synsets: str | None,
                  classes: Sequence[str] | None) -> LabelledImages:
    images = sorted(p for p in root.iterdir() if p.is_file() and _is_image(p))
    labels = _val_labels_file(val_labels) if val_labels else _devkit_labels(root, images, synsets)
    by_name = {p.name: p for p in images}
    missing = [name for name in labels if name not in by_name]
    if missing:
        raise UserError(f"{val_labels or root / GROUND_TRUTH_FILE}: {len(missing)} labelled image(s) are not in "
                        f"{root}, e.g. {missing[0]!r}; point data.val at the folder holding them")
    unlabelled = [p.name for p in images if p.name not in labels]
    if unlabelled:
        raise UserError(f"{root}: {len(unlabelled)} image(s) have no label, e.g. {unlabelled[0]!r}; the label "
                        "file must name every image of the folder")
    class_list = list(classes) if classes is not None else sorted(set(labels.values()))
    index = {name: i for i, name in enumerate(class_list)}
    unknown = sorted({wnid for wnid in labels.values() if wnid not in index})
    if unknown:
        raise UserError(f"{root}: class {unknown[0]!r} of the labels is not among the {len(class_list)} "
                        "training classes")
    names = sorted(labels)
    return LabelledImages([by_name[n] for n in names], [index[labels[n]] for n in names], class_list,
                          f"ImageNet val {root}")


def _val_labels_file(path: str) -> dict[str, str]:
    labels: dict[str, str] = {}
    for number, line in enumerate(_read_lines(path, "val_labels"), 1):
        parts = line.replace(",", " ").split()
        if len(parts) != 2:
            raise UserError(f"{path}: line {number} is {line!r}; expected '<filename> <wnid>'")
        name, wnid = parts
        if name in labels:
            raise UserError(f"{path}: line {number} labels {name!r} a second time")
        labels[name] = wnid
    return labels


def _devkit_labels(root: Path, images: list[Path], synsets: str | None) -> dict[str, str]:
    truth = root / GROUND_TRUTH_FILE
    if synsets is None:
        raise UserError(f"{truth} holds ILSVRC2012_IDs: pass data.synsets=<file of the 1,000 wnids in "
                        "ILSVRC2012_ID order (the devkit's meta.mat order)>, or data.val_labels instead")
    wnids = _read_lines(synsets, "synsets")
    bad = next((w for w in wnids if not _WNID.match(w.split()[0])), None)
    if bad is not None:
        raise UserError(f"{synsets}: {bad!r} is not a WordNet id like n01440764; one wnid per line")
    wnids = [w.split()[0] for w in wnids]
    ids = _read_lines(truth, "ground-truth")
    if len(ids) != len(images):
        raise UserError(f"{truth} has {len(ids)} labels but {root} holds {len(images)} images; they are "
                        "matched in file-name order, so the folder must hold exactly the labelled images")
    labels = {}
    for image, text in zip(images, ids):
        if not text.isdigit() or not 1 <= int(text) <= len(wnids):
            raise UserError(f"{truth}: {text!r} is not an ILSVRC2012_ID in 1..{len(wnids)}")
        labels[image.name] = wnids[int(text) - 1]
    return labels


def _wds(root: Path, classes: Sequence[str] | None) -> LabelledImages:
    tars = [root] if root.is_file() else sorted(p for p in root.iterdir() if p.suffix == ".tar")
    if not tars:
        raise UserError(f"dataset {root} holds no .tar shards")
    class_list = list(classes) if classes is not None else _wds_classes(root if root.is_dir() else root.parent)
    sources: list[Source] = []
    targets: list[int] = []
    names: list[str] = []
    for tar in tars:
        for key, member, target in _index_tar(tar):
            if class_list and not 0 <= target < len(class_list):
                raise UserError(f"{tar}: sample {key!r} has class {target}, outside 0..{len(class_list) - 1}")
            sources.append(member)
            targets.append(target)
            names.append(f"{tar.name}/{key}")
    if not class_list:
        class_list = [str(i) for i in range(max(targets, default=-1) + 1)]
    return LabelledImages(sources, targets, class_list, f"WebDataset {root}", names=names)


def _wds_classes(directory: Path) -> list[str]:
    """Class names from ``_info.json`` (a ``classes``/``class_names`` list, or ``num_classes``);
    empty when there is none (then classes are 0..max(cls))."""
    path = directory / "_info.json"
    if not path.is_file():
        return []
    try:
        info = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as err:
        raise UserError(f"{path}: not readable JSON ({err})") from None
    names = info.get("classes") or info.get("class_names") if isinstance(info, dict) else None
    if isinstance(names, list) and names:
        return [str(name) for name in names]
    count = info.get("num_classes") if isinstance(info, dict) else None
    if isinstance(count, int) and count > 0:
        return [str(i) for i in range(count)]
    return []


def _index_tar(tar: Path) -> Iterator[tuple[str, TarMember, int]]:
    """(key, image member, class) per complete sample of ``tar``, from the headers alone; samples
    lacking an image or a readable ``.cls`` are an error naming the key (a labelled set with holes
    would silently shift accuracy)."""
    images: dict[str, TarMember] = {}
    labels: dict[str, int] = {}
    try:
        with tarfile.open(tar, "r:") as archive:
            for info in archive:
                named = split_member_name(info.name) if info.isfile() else None
                if named is None:
                    continue
                key, suffix = named
                if suffix in IMAGE_SUFFIXES:
                    images[key] = TarMember.of(tar, info)
                elif suffix == "cls":
                    labels[key] = _read_cls(archive, info, tar)
    except (tarfile.TarError, OSError) as err:
        raise UserError(f"{tar}: not a readable tar shard ({err})") from None
    for key in sorted(set(images) | set(labels)):
        if key not in labels or key not in images:
            part = "'.cls' label" if key not in labels else "image"
            raise UserError(f"{tar}: sample {key!r} has no {part}; a labelled shard holds <key>.cls + "
                            "<key>.jpg per sample")
        yield key, images[key], labels[key]


def _read_cls(archive: tarfile.TarFile, info: tarfile.TarInfo, tar: Path) -> int:
    text = archive.extractfile(info).read().decode("utf-8", "replace").strip()
    try:
        return int(text)
    except ValueError:
        raise UserError(f"{tar}: {info.name} holds {text[:20]!r}, not an integer class") from None


def skip_report(skipped: Sequence[tuple[int, str]], names: Sequence[str]) -> SkipReport:
    """Skipped samples counted by reason, with example names, in index order (rank-independent)."""
    report = SkipReport()
    for index, reason in sorted(skipped):
        report.add(reason, names[index])
    return report
