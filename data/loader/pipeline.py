"""The streaming loader: shards -> uint8 image batches + label index lists, the same count per rank.

Per DataLoader worker, the stream is (docs/loader.md has the full picture)::

    shard order ─▶ tar members ─▶ shuffle (raw bytes) ─▶ parse json labels ─▶ resample + shuffle
       (optional) ─▶ decode + crop ─▶ batch (inside the worker) ─▶ DataLoader(batch_size=None)

- ``mode="train"``: shards drawn with replacement for ever (:mod:`data.loader.order`), seeded by
  (seed, rank, worker, epoch); for a mixture of weighted shard sets (``source`` a list of
  ``{"path", "weight"}``, :func:`data.shards.directory.resolve_shards`) drawn so that set i
  supplies weight_i / Σ weight of the images, with hashtag resampling normalised per set
  (:mod:`data.loader.resampling`) so that it keeps those proportions; an epoch is
  ``epoch_images`` images, cut into
  ``batches_per_epoch = ceil(epoch_images / (batch_size * world_size))`` batches, rounded up to a
  multiple of ``num_workers``; every worker of every rank yields exactly its share, whatever the
  shard sizes, so no rank waits on another in an all-reduce.
- ``mode="eval"``: one pass; a seeded shard permutation split by rank and worker, no shuffle, no
  resampling, the eval transform; every sample is seen exactly once across ranks. Ranks may then
  yield different numbers of batches, and each worker's last batch may be short: the trainer must
  not run a collective per batch in eval (sum the metrics, all-reduce once at the end).

A shard whose bytes differ from the sha256 info.json records is skipped and counted
(:mod:`data.loader.shard_digests`). Bad samples are skipped and counted by reason
(:mod:`data.loader.skips`); ``Loader.skip_counts()`` gives the running totals of all workers of
this rank, ``Loader.dropped_labels()`` the label ids outside the vocabulary that were removed from
samples. The epoch lives in shared memory so that
persistent workers see ``set_epoch`` without being restarted.
"""
from __future__ import annotations

import math
import multiprocessing
import random
from dataclasses import dataclass
from itertools import islice
from typing import Any, Callable, Iterable, Iterator

import numpy as np
import torch
import webdataset as wds
from torch.utils.data import DataLoader, IterableDataset, get_worker_info

from data.errors import UserError
from data.images.decode import DEFAULT_MAX_PIXELS
from data.loader.labels import pack_labels
from data.loader.resampling import DRAWN_KEY, LabelResampler
from data.loader.order import finite_shards, resampled_shards
from data.shards.directory import ShardSource, resolve_shards
from data.loader.shared_counts import SharedCounts
from data.loader.shard_digests import ShardDigests
from data.loader.skips import SkipCounter
from data.loader.samples import boxed_samples, decoded_samples, labelled_samples
from data.loader.tar_samples import tar_samples
from data.loader.transforms import EvalTransform, TrainTransform, stack_images

MODES = ("train", "eval")
DECODERS = ("cpu", "cuda", "auto")
# Seed streams of one worker: separate generators, so turning resampling on does not change the
# crops, and a longer shuffle buffer does not change the shard order.
_SHARDS, _SHUFFLE, _SAMPLING, _AUGMENT, _RESHUFFLE = range(5)


@dataclass(frozen=True)
class LoaderConfig:
    """Options of :func:`create_loader`; ``batch_size`` is per rank."""

    batch_size: int = 256
    num_workers: int = 4
    seed: int = 0
    image_size: int = 224  # output side: the train crop and the eval centre crop
    resize_size: int | None = None  # eval short side before the crop; default image_size * 256/224
    crop_scale: tuple[float, float] = (0.08, 1.0)
    crop_ratio: tuple[float, float] = (3 / 4, 4 / 3)
    flip: bool = True
    epoch_images: int | None = None  # train epoch size in images; default the shards' sample count
    shuffle_buffer: int = 2000  # raw samples held per worker (train)
    shuffle_initial: int = 500  # samples buffered before the first is emitted
    sampling_q: float | None = None  # hashtag resampling exponent (train); None: no resampling
    sampling_cap: float | None = None
    split: str | None = None  # shard-directory split; default train for train, val for eval
    decode: str = "cpu"  # "cpu", "cuda" (device decode, needs CUDA), "auto" (cuda when present)
    max_pixels: int = DEFAULT_MAX_PIXELS
    log_every_s: float = 60.0  # at most one skip log line per reason and worker in this period
    prefetch_factor: int = 2
    pin_memory: bool = False
    verify_shards: bool = True  # hash each drawn shard against info.json's sha256 before reading it
    multiprocessing_context: str | None = None  # DataLoader's; None: torch's default (fork)

    def validate(self) -> None:
        positive = {"batch_size": self.batch_size, "image_size": self.image_size,
                    "shuffle_buffer": self.shuffle_buffer, "prefetch_factor": self.prefetch_factor,
                    "max_pixels": self.max_pixels}
        for name, value in positive.items():
            if not isinstance(value, int) or value < 1:
                raise UserError(f"loader.{name} must be a positive integer, got {value!r}")
        if not isinstance(self.num_workers, int) or self.num_workers < 0:
            raise UserError(f"loader.num_workers must be >= 0, got {self.num_workers!r}")
        if not isinstance(self.seed, int) or self.seed < 0:
            raise UserError(f"loader.seed must be a non-negative integer, got {self.seed!r}")
        if self.epoch_images is not None and (not isinstance(self.epoch_images, int) or self.epoch_images < 1):
            raise UserError(f"loader.epoch_images must be a positive integer, got {self.epoch_images!r}")
        if self.resize_size is not None and self.resize_size < self.image_size:
            raise UserError(f"loader.resize_size ({self.resize_size}) must be >= loader.image_size "
                            f"({self.image_size}): the eval crop is taken from the resized image")
        lo, hi = self.crop_scale
        if not 0 < lo <= hi <= 1:
            raise UserError(f"loader.crop_scale must be (min, max) with 0 < min <= max <= 1, got {self.crop_scale}")
        if not 0 < self.crop_ratio[0] <= self.crop_ratio[1]:
            raise UserError(f"loader.crop_ratio must be (min, max) with 0 < min <= max, got {self.crop_ratio}")
        if self.decode not in DECODERS:
            raise UserError(f"loader.decode must be one of {', '.join(DECODERS)}, got {self.decode!r}")
        if self.decode == "cuda" and not torch.cuda.is_available():
            raise UserError("loader.decode='cuda' needs a CUDA device, and none is available; use "
                            "'cpu' or 'auto'")

    def eval_resize(self) -> int:
        return self.resize_size or round(self.image_size * 256 / 224)

    def device_decode(self) -> bool:
        return self.decode == "cuda" or (self.decode == "auto" and torch.cuda.is_available())


def stream_seed(*parts: int) -> int:
    """A well-mixed 64-bit seed from (seed, rank, worker, epoch, stage): nearby tuples give
    unrelated streams, unlike ``seed + rank + worker``."""
    return int(np.random.SeedSequence(list(parts)).generate_state(1, dtype=np.uint64)[0])


class SharedEpoch:
    """The epoch number in shared memory: persistent workers read it at each epoch's start."""

    def __init__(self, epoch: int = 0) -> None:
        self._value = multiprocessing.Value("q", epoch, lock=False)

    def get(self) -> int:
        return int(self._value.value)

    def set(self, epoch: int) -> None:
        self._value.value = epoch


@dataclass(frozen=True)
class StreamPlan:
    """What one rank's stream needs to know besides the shards."""

    mode: str
    rank: int
    world_size: int
    worker_batches: int | None  # train: batches per worker per epoch; eval: None (one pass)
    num_labels: int | None


class ShardStream(IterableDataset):
    """One rank's stream; each DataLoader worker iterates its own copy."""

    def __init__(self, source: ShardSource, config: LoaderConfig, plan: StreamPlan) -> None:
        super().__init__()
        self.source, self.config, self.plan = source, config, plan
        # One counter row per worker, plus one for the training process (device-decode skips).
        slots = max(1, config.num_workers) + 1
        self.epoch = SharedEpoch()
        self.skips = SkipCounter(slots, config.log_every_s)
        self.label_counts = SharedCounts(slots, plan.num_labels) if plan.num_labels else None
        resampled = plan.mode == "train" and config.sampling_q is not None
        self.drawn_counts = SharedCounts(slots, plan.num_labels) if plan.num_labels and resampled else None
        self.transform = _transform(config, plan.mode)
        self._resampler: Any = None
        self._shard_weights = source.shard_weights()
        self._progress = _Progress(self.skips)
        digests = zip(source.urls, source.sha256 or ()) if config.verify_shards else ()
        self.digests = ShardDigests({url: digest for url, digest in digests if digest is not None})

    def __iter__(self) -> Iterator[dict[str, Any]]:
        worker, num_workers = _worker()
        epoch = self.epoch.get()
        self.skips.bind(worker)
        config, plan = self.config, self.plan

        def seed(stage: int) -> int:
            return stream_seed(config.seed, plan.rank, worker, epoch, stage)

        samples = tar_samples(self._shards(worker, num_workers, epoch, seed(_SHARDS)), self.skips,
                              self._progress.on_shard, self.digests.mismatch if self.digests.digests else None)
        if plan.mode == "train":
            samples = wds.shuffle(config.shuffle_buffer, config.shuffle_initial,
                                  rng=random.Random(seed(_SHUFFLE)))(samples)
        samples = labelled_samples(samples, plan.num_labels, self.skips)
        if plan.mode == "train" and config.sampling_q is not None:
            samples = self._resample(samples, seed(_SAMPLING))
            # The resampler emits an image's copies back to back; a second buffer (still encoded
            # bytes) spreads them over different batches.
            samples = wds.shuffle(max(1, config.shuffle_buffer // 2), max(1, config.shuffle_initial // 2),
                                  rng=random.Random(seed(_RESHUFFLE)))(samples)
        rng = np.random.default_rng(seed(_AUGMENT))
        if config.device_decode():
            samples = boxed_samples(samples, self.transform, rng, self.skips)
        else:
            samples = decoded_samples(samples, self.transform, rng, self.skips)
        samples = self._progress.watch(samples)
        batches = wds.batched(config.batch_size, collation_fn=self._collate, partial=True)(samples)
        if plan.worker_batches is not None:
            batches = islice(batches, plan.worker_batches)
        for batch in batches:
            self._count_labels(worker, batch["labels"], batch.pop("drawn_labels", None))
            yield batch

    def _shards(self, worker: int, num_workers: int, epoch: int, seed: int) -> Iterable[str]:
        urls = self.source.urls
        if self.plan.mode == "train":
            self._progress.arm(10_000 + 3 * len(urls), self.source.description)
            return resampled_shards(urls, seed, self._shard_weights)
        return finite_shards(urls, stream_seed(self.config.seed, epoch), self.plan.rank,
                             self.plan.world_size, worker, num_workers)

    def _resample(self, samples: Iterable[dict], seed: int) -> Iterator[dict]:
        if self._resampler is None:  # once per worker: its counters outlive epochs
            self._resampler = LabelResampler(self.source.label_counts, q=self.config.sampling_q,
                                             cap=self.config.sampling_cap,
                                             num_images=self.source.num_samples, set_means=self._set_means())
        self._resampler.reseed(seed)
        return self._resampler(samples)

    def _set_means(self) -> dict[str, float] | None:
        """A mixture's mean image weight per set, by shard URL (None for one set)."""
        parts = self.source.parts
        if not parts:
            return None
        from data.loader.resampling import set_mean_weights  # noqa: PLC0415 - only when resampling

        means = set_mean_weights([p.label_counts for p in parts], [p.num_samples for p in parts],
                                 self.config.sampling_q)
        return {url: float(mean) for part, mean in zip(parts, means) for url in part.urls}

    def _collate(self, samples: list[dict[str, Any]]) -> dict[str, Any]:
        batch: dict[str, Any] = {"keys": [s["__key__"] for s in samples],
                                 "labels": pack_labels([s["labels"] for s in samples])}
        # The hashtag each sample was drawn for (-1 when not resampled); counted and dropped by __iter__.
        batch["drawn_labels"] = np.array([s.get(DRAWN_KEY, -1) for s in samples], dtype=np.int64)
        if "pixels" in samples[0]:
            batch["image"] = stack_images([s["pixels"] for s in samples])
        else:
            batch.update(jpeg=[s["jpeg"] for s in samples], boxes=[s["box"] for s in samples],
                         flips=[s["flip"] for s in samples])
        return batch

    def _count_labels(self, worker: int, labels: torch.Tensor, drawn: np.ndarray | None) -> None:
        if self.label_counts is not None:
            ids = labels[labels >= 0].numpy()
            np.add.at(self.label_counts.row(worker), ids[ids < self.label_counts.columns], 1)
        if self.drawn_counts is not None and drawn is not None:
            np.add.at(self.drawn_counts.row(worker), drawn[(drawn >= 0) & (drawn < self.drawn_counts.columns)], 1)


class _Progress:
    """Stops an endless resampled stream that reads shard after shard without one usable sample
    (all shards missing, empty or corrupt): an error beats a silent hang. Progress is measured in
    shards opened plus samples skipped since the last usable sample, so a shuffle buffer filling
    up from tiny shards is not mistaken for a dead stream."""

    def __init__(self, skips: SkipCounter) -> None:
        self.skips = skips
        self.limit: int | None = None
        self.description = ""
        self.shards = 0
        self.skips_at_sample = 0

    def arm(self, limit: int, description: str) -> None:
        self.limit, self.description, self.shards = limit, description, 0
        self.skips_at_sample = self.skips.own_total()

    def on_shard(self) -> None:
        self.shards += 1
        events = self.shards + self.skips.own_total() - self.skips_at_sample
        if self.limit is not None and events > self.limit:
            raise UserError(f"read {self.shards} shards of {self.description} and skipped "
                            f"{events - self.shards} samples without one usable sample; check the "
                            "shards (the skip log above names the reasons)")

    def watch(self, samples: Iterable[dict]) -> Iterator[dict]:
        for sample in samples:
            self.shards, self.skips_at_sample = 0, self.skips.own_total()
            yield sample


def _worker() -> tuple[int, int]:
    info = get_worker_info()
    return (0, 1) if info is None else (info.id, info.num_workers)


def _transform(config: LoaderConfig, mode: str) -> TrainTransform | EvalTransform:
    if mode == "train":
        return TrainTransform(config.image_size, config.crop_scale, config.crop_ratio, config.flip,
                              config.max_pixels)
    return EvalTransform(config.image_size, config.eval_resize(), config.max_pixels)


class Loader:
    """Iterate for batches ``{"image": uint8 N x 3 x S x S (channels-last memory), "labels": int64
    N x L (-1 padded), "keys": [str]}``. Call :meth:`set_epoch` before each epoch (an epoch iterated
    twice without it moves on to the next epoch by itself, so a forgotten call never repeats an order)."""

    def __init__(self, stream: ShardStream, dataloader: DataLoader,
                 device_decode: Callable[[dict[str, Any]], dict[str, Any]] | None) -> None:
        self.stream, self.dataloader = stream, dataloader
        self._device_decode = device_decode
        self._last_iterated: int | None = None

    @property
    def mode(self) -> str:
        return self.stream.plan.mode

    @property
    def epoch(self) -> int:
        return self.stream.epoch.get()

    def set_epoch(self, epoch: int) -> None:
        self.stream.epoch.set(epoch)
        self._last_iterated = None  # an explicit epoch is iterated as asked, even a repeated one

    @property
    def batches_per_epoch(self) -> int | None:
        """Train: the exact count, equal on every rank. Eval: this rank's count for the current
        epoch if no sample were skipped (None when the shard sizes are unknown)."""
        plan, config = self.stream.plan, self.stream.config
        if plan.worker_batches is not None:
            return plan.worker_batches * max(1, config.num_workers)
        sizes = self.stream.source.samples_per_shard
        if sizes is None:
            return None
        size_of = dict(zip(self.stream.source.urls, sizes))
        total = 0
        workers = max(1, config.num_workers)
        for worker in range(workers):
            shards = finite_shards(self.stream.source.urls, stream_seed(config.seed, self.epoch),
                                   plan.rank, plan.world_size, worker, workers)
            total += math.ceil(sum(size_of[u] for u in shards) / config.batch_size)
        return total

    def __len__(self) -> int:
        count = self.batches_per_epoch
        if count is None:
            raise TypeError("the number of eval batches is unknown without info.json")
        return count

    def __iter__(self) -> Iterator[dict[str, Any]]:
        if self._last_iterated == self.epoch:
            self.stream.epoch.set(self.epoch + 1)
        self._last_iterated = self.epoch
        for batch in self.dataloader:
            yield self._device_decode(batch) if self._device_decode else batch

    def skip_counts(self) -> dict[str, int]:
        """Skipped samples by reason, all workers of this rank, since the loader was made."""
        return self.stream.skips.counts()

    def dropped_labels(self) -> int:
        """Label ids outside the vocabulary dropped from samples, all workers of this rank."""
        return self.stream.skips.dropped_labels()

    def realised_label_counts(self) -> np.ndarray | None:
        """Per label, the images carrying it delivered so far by this rank (after resampling)."""
        counts = self.stream.label_counts
        return None if counts is None else counts.totals()

    def drawn_label_counts(self) -> np.ndarray | None:
        """Per label, the delivered samples drawn for it by the resampler (data/loader/resampling.py:
        what the sampler controls, p_h ∝ n_h^q); None when not resampling."""
        counts = self.stream.drawn_counts
        return None if counts is None else counts.totals()


def create_loader(source: Any, config: LoaderConfig = LoaderConfig(), *, mode: str = "train",
                  rank: int | None = None, world_size: int | None = None) -> Loader:
    """The loader of one rank over ``source`` (a shard directory, a brace pattern, a URL or a list
    of them, or a list of weighted shard directories ``[{"path": a, "weight": 3}, ...]``);
    ``rank``/``world_size`` default to torch.distributed's when it is initialised."""
    if mode not in MODES:
        raise UserError(f"loader mode must be one of {', '.join(MODES)}, got {mode!r}")
    config.validate()
    rank, world_size = _rank_and_size(rank, world_size)
    if mode == "eval" and config.sampling_q is not None:
        raise UserError("loader.sampling_q applies to training only; unset it for mode='eval'")
    shards = resolve_shards(source, config.split or ("train" if mode == "train" else "val"))
    plan = StreamPlan(mode, rank, world_size, _worker_batches(shards, config, world_size) if mode == "train"
                      else None, shards.num_labels)
    if config.sampling_q is not None and shards.label_counts is None:
        raise UserError(f"loader.sampling_q needs per-label counts, and {shards.description} has no "
                        "info.json with label_counts; build the shards with scripts/build_shards.py")
    stream = ShardStream(shards, config, plan)
    workers = config.num_workers
    dataloader = DataLoader(stream, batch_size=None, num_workers=workers, persistent_workers=workers > 0,
                            prefetch_factor=config.prefetch_factor if workers else None,
                            pin_memory=config.pin_memory,
                            multiprocessing_context=config.multiprocessing_context if workers else None)
    return Loader(stream, dataloader, _device_decoder(config, stream) if config.device_decode() else None)


def _rank_and_size(rank: int | None, world_size: int | None) -> tuple[int, int]:
    if rank is None or world_size is None:
        initialised = torch.distributed.is_available() and torch.distributed.is_initialized()
        rank = rank if rank is not None else (torch.distributed.get_rank() if initialised else 0)
        world_size = world_size if world_size is not None else (
            torch.distributed.get_world_size() if initialised else 1)
    if not 0 <= rank < world_size:
        raise UserError(f"rank {rank} is outside 0..{world_size - 1} (world size {world_size})")
    return rank, world_size


def _worker_batches(shards: ShardSource, config: LoaderConfig, world_size: int) -> int:
    images = config.epoch_images or shards.num_samples
    if images is None:
        raise UserError(f"{shards.description} has no info.json with sample counts; set "
                        "loader.epoch_images (images per epoch, all ranks together)")
    batches = math.ceil(images / (config.batch_size * world_size))
    return math.ceil(batches / max(1, config.num_workers))


def _device_decoder(config: LoaderConfig, stream: ShardStream) -> Callable[[dict[str, Any]], dict[str, Any]]:
    from data.loader.gpu_decode import decode_batch  # noqa: PLC0415 - torchvision.io only on this path

    device = torch.device("cuda")  # the current device when a batch is decoded
    stream.skips.bind(stream.skips.slots - 1)  # the training process's own row

    def decode(batch: dict[str, Any]) -> dict[str, Any]:
        images, kept, skipped = decode_batch(batch.pop("jpeg"), batch.pop("boxes"), batch.pop("flips"),
                                             config.image_size, device, config.max_pixels)
        for skip in skipped:
            stream.skips.add(skip.reason, "(device decode)", skip.detail)
        if len(kept) < len(batch["keys"]):
            batch = {**batch, "keys": [batch["keys"][i] for i in kept], "labels": batch["labels"][kept]}
        return {**batch, "image": images}

    return decode

