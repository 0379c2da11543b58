"""The shard builder: corpus records + vocab.json + images -> labelled WebDataset shards.

Three steps (docs/shards.md has the full picture):

1. **Plan** (:mod:`data.shards.plan`): stream the corpus in order; labels, keys, image sources, exact
   duplicates and the train/val split are decided here; records are grouped into units, one unit
   per output shard.
2. **Build** (:mod:`data.shards.unit`): a process pool converts each unit's images and writes its
   shard and manifest. Units already complete from an earlier run are kept. With
   ``num_nodes > 1`` this node builds the units with ``order % num_nodes == node_rank``.
3. **Finalize** (:func:`finalize`): once every unit's manifest is present, write ``info.json``,
   ``report.json`` and ``label_histogram.png``. The plan (``.build/plan.json``) carries what
   finalize needs, so any node, or a later ``--finalize`` run, can do it.

The output bytes depend only on the inputs and settings: never on the worker count, the node split,
the order in which units finish, or interruptions.
"""
from __future__ import annotations

import hashlib
import json
import multiprocessing
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

from tqdm import tqdm

from data.atomic_write import write_json
from data.corpus.record import CorpusReader
from data.errors import UserError
from data.images.sources import ImageResolver
from data.images.decode import ImageSettings
from data.shards.histogram import plot_label_histogram
from data.images.near_duplicates import DEFAULT_THRESHOLD, EvalIndex, build_eval_index
from data.shards.directory import SPLITS
from data.shards.plan import Planner, Unit
from data.shards.unit import (BUILD_DIR, UnitContext, build_unit, build_unit_in_worker, init_worker,
                             is_complete, read_manifest, remove_temporary_files)
from data.skip_report import SkipReport
from data.vocab.vocabulary import Vocabulary

FORMAT_VERSION = 1
DEFAULT_SHARD_SIZE = 1000
DEFAULT_VAL_FRACTION = 0.02
PLAN_FILE = "plan.json"
MAX_NEAR_DUPLICATES_LISTED = 100_000
# Files every node may write: a temp file of theirs younger than this may be another node's write.
SHARED_TEMP_MIN_AGE_S = 600.0
SHARED_OUTPUTS = ("info.json", "report.json", "label_histogram.png", f"{BUILD_DIR}/{PLAN_FILE}")


@dataclass(frozen=True)
class BuildConfig:
    out: Path
    vocab: Path
    images: str | None = None
    shard_size: int = DEFAULT_SHARD_SIZE
    val_fraction: float = DEFAULT_VAL_FRACTION
    image: ImageSettings = field(default_factory=ImageSettings)
    workers: int = 1
    exclude_near: str | None = None
    near_threshold: int = DEFAULT_THRESHOLD
    node_rank: int = 0
    num_nodes: int = 1

    def validate(self) -> None:
        if self.shard_size < 1:
            raise UserError(f"--shard-size must be >= 1, got {self.shard_size}")
        if not 0.0 <= self.val_fraction < 1.0:
            raise UserError(f"--val-fraction must be in [0, 1), got {self.val_fraction}")
        if self.workers < 1:
            raise UserError(f"--workers must be >= 1, got {self.workers}")
        if self.num_nodes < 1 or not 0 <= self.node_rank < self.num_nodes:
            raise UserError(f"--node-rank must be in 0..--num-nodes-1 (got rank {self.node_rank} of "
                            f"{self.num_nodes} nodes)")
        if not 0 <= self.near_threshold < 64:
            raise UserError(f"--near-threshold must be in 0..63 bits, got {self.near_threshold}")


@dataclass
class BuildResult:
    built: int = 0  # units built by this run
    kept: int = 0  # units of this node found complete from an earlier run
    other_nodes: int = 0  # units left to the other nodes
    info: dict[str, Any] | None = None  # info.json's content once finalized

    @property
    def finalized(self) -> bool:
        return self.info is not None


class _ProgressBar(tqdm):
    # No monitor thread: worker processes may be forked while a bar is open.
    monitor_interval = 0


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _load_vocab(path: Path) -> tuple[Vocabulary, str]:
    vocab = Vocabulary.load(path)
    if len(vocab) == 0:
        raise UserError(f"vocabulary {path} has no labels; rebuild it with scripts/build_vocab.py")
    return vocab, _sha256(path)


def _executor(workers: int, context: UnitContext | None = None) -> ProcessPoolExecutor:
    """A started process pool. Where the platform has fork, workers are forked at once, before the
    planning threads and the progress bar's monitor thread exist (forking a threaded process is
    unsafe): no re-import of the caller's modules, so a worker costs milliseconds to start."""
    methods = multiprocessing.get_all_start_methods()
    method = "fork" if "fork" in methods else "spawn"
    pool = ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context(method),
                               initializer=init_worker if context else None,
                               initargs=(context,) if context else ())
    # With fork, the first submit starts every worker; do it now, while this process has one thread.
    pool.submit(int).result()
    return pool


def _eval_index(config: BuildConfig, progress: bool) -> EvalIndex | None:
    if config.exclude_near is None:
        return None
    pool = _executor(config.workers) if config.workers > 1 else None
    bar = _ProgressBar(desc="hashing eval images", unit="img", disable=not progress)
    try:
        return build_eval_index(config.exclude_near, config.image, config.near_threshold, pool,
                                progress=bar.update)
    finally:
        bar.close()
        if pool is not None:
            pool.shutdown()


def _plan_header(config: BuildConfig, reader: CorpusReader, resolver: ImageResolver, vocab: Vocabulary,
                 vocab_sha: str, eval_index: EvalIndex | None) -> dict[str, Any]:
    """Everything info.json records about the inputs and settings (no results yet)."""
    near = None
    if eval_index is not None:
        near = {**eval_index.describe(),
                "hashes_sha256": hashlib.sha256(eval_index.hashes.tobytes()).hexdigest()}
    return {
        "format": "openwsl-shards", "version": FORMAT_VERSION,
        "vocab": {"path": str(config.vocab), "sha256": vocab_sha, "num_labels": len(vocab),
                  "tags": vocab.tags},
        "corpus": reader.describe(),
        "images": resolver.describe(),
        "image_settings": config.image.to_dict(),
        "split": {"val_fraction": config.val_fraction,
                  "rule": "val when blake2b-64(record key) / 2**64 < val_fraction"},
        "shard_size": config.shard_size,
        "exact_duplicates": "blake2b-128 of the source image bytes; first in corpus order kept",
        "near_duplicates": near,
    }


def _digest(header: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps(header, sort_keys=True, ensure_ascii=False).encode()).hexdigest()


def build_shards(reader: CorpusReader, config: BuildConfig, progress: bool = False) -> BuildResult:
    """Plan, build this node's missing units, and finalize when every unit is done."""
    config.validate()
    vocab, vocab_sha = _load_vocab(config.vocab)
    resolver = ImageResolver(config.images)
    eval_index = _eval_index(config, progress)
    header = _plan_header(config, reader, resolver, vocab, vocab_sha, eval_index)
    context = UnitContext(str(config.out), config.image, _digest(header), eval_index)
    try:
        (Path(config.out) / BUILD_DIR).mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise UserError(f"cannot create output directory {config.out}: {err.strerror}; pass a writable "
                        "--out") from None
    planner = Planner(vocab, resolver, config.shard_size, config.val_fraction,
                      hash_threads=max(2, config.workers))
    result = BuildResult()
    fingerprints: dict[str, str] = {}
    _build(planner.units(reader.records()), config, context, fingerprints, result, progress)
    stats = planner.stats
    plan = {**header, "settings_digest": context.settings_digest, "records_read": stats.records,
            "units": stats.units, "fingerprints": fingerprints,
            "planning_skips": stats.skips.to_dict()}
    write_json(Path(config.out) / BUILD_DIR / PLAN_FILE, plan, indent=None)
    if all(_manifest_matches(config.out, name, fp) for name, fp in fingerprints.items()):
        result.info = finalize(config.out)
    return result


def _build(units: Iterator[Unit], config: BuildConfig, context: UnitContext, fingerprints: dict[str, str],
           result: BuildResult, progress: bool) -> None:
    """Build this node's incomplete units, in-process or on a process pool."""
    pool = _executor(config.workers, context) if config.workers > 1 else None
    bar = _ProgressBar(desc="building shards", unit="img", disable=not progress)
    try:
        mine = _mine(units, config, context, fingerprints, result, bar)
        if pool is not None:
            _run_pool(pool, mine, config.workers, result, bar)
            return
        for unit in mine:
            build_unit(unit, context)
            result.built += 1
            bar.update(len(unit.candidates))
    finally:
        bar.close()
        if pool is not None:
            pool.shutdown(cancel_futures=True)


def _mine(units: Iterator[Unit], config: BuildConfig, context: UnitContext,
          fingerprints: dict[str, str], result: BuildResult, bar: tqdm) -> Iterator[Unit]:
    """This node's units that still need building; records every unit's fingerprint."""
    for unit in units:
        fingerprints[unit.name] = unit.fingerprint(context.settings_digest)
        if unit.order % config.num_nodes != config.node_rank:
            result.other_nodes += 1
        elif is_complete(unit, context):
            result.kept += 1
            bar.update(len(unit.candidates))
        else:
            yield unit


def _run_pool(pool: ProcessPoolExecutor, units: Iterator[Unit], workers: int, result: BuildResult,
              bar: tqdm) -> None:
    # Bounded submission: the plan streams, so a huge corpus never sits in the task queue at once.
    in_flight: set[Future] = set()
    for unit in units:
        in_flight.add(pool.submit(build_unit_in_worker, unit))
        if len(in_flight) >= 2 * workers:
            done, in_flight = wait(in_flight, return_when=FIRST_COMPLETED)
            _collect(done, result, bar)
    _collect(wait(in_flight).done, result, bar)


def _collect(done: set[Future], result: BuildResult, bar: tqdm) -> None:
    for future in done:
        manifest = future.result()
        result.built += 1
        bar.update(manifest["candidates"])


def _manifest_matches(out: Path, name: str, fingerprint: str) -> bool:
    manifest = read_manifest(out, name)
    return manifest is not None and manifest.get("fingerprint") == fingerprint


def load_plan(out: str | Path) -> dict[str, Any]:
    path = Path(out) / BUILD_DIR / PLAN_FILE
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise UserError(f"{out} has no build plan ({path}); run scripts/build_shards.py on it first") from None
    except (OSError, ValueError) as err:
        raise UserError(f"cannot read build plan {path}: {err}; rerun scripts/build_shards.py") from None


def finalize(out: str | Path) -> dict[str, Any]:
    """Write info.json, report.json and label_histogram.png from the plan and every manifest."""
    out = Path(out)
    plan = load_plan(out)
    manifests = _all_manifests(out, plan)
    num_labels = plan["vocab"]["num_labels"]
    label_counts = {split: [0] * num_labels for split in SPLITS}
    skips = SkipReport.from_dict(plan["planning_skips"])
    near: list[dict[str, Any]] = []
    shards: dict[str, list[dict[str, Any]]] = {split: [] for split in SPLITS}
    for manifest in manifests:
        shards[manifest["split"]].append({"name": f"{manifest['unit']}.tar", "samples": manifest["samples"],
                                          "sha256": manifest["sha256"]})
        for label, count in manifest["label_counts"].items():
            label_counts[manifest["split"]][int(label)] += count
        skips.merge(SkipReport.from_dict(manifest["skips"]))
        near.extend(manifest["near_duplicates"])
    totals = {split: sum(s["samples"] for s in shards[split]) for split in SPLITS}
    header = {k: v for k, v in plan.items() if k not in ("fingerprints", "planning_skips", "units")}
    info = {**header, "shards": shards,
            "num_samples": {**totals, "total": sum(totals.values())},
            "label_counts": label_counts["train"], "val_label_counts": label_counts["val"],
            "skipped": {"total": skips.total, "counts": dict(sorted(skips.counts.items()))},
            "report": "report.json", "histogram": "label_histogram.png"}
    report = {"records_read": plan["records_read"], "kept": info["num_samples"],
              "skipped": skips.to_dict(),
              "near_duplicates_of_eval": {"count": len(near), "eval_set": plan["near_duplicates"],
                                          "listed": min(len(near), MAX_NEAR_DUPLICATES_LISTED),
                                          "matches": near[:MAX_NEAR_DUPLICATES_LISTED]}}
    _remove_stale_shards(out, plan["units"])
    for name in SHARED_OUTPUTS:
        remove_temporary_files(out / name, SHARED_TEMP_MIN_AGE_S)
    write_json(out / "report.json", report)
    plot_label_histogram(label_counts["train"], plan["vocab"]["tags"], out / "label_histogram.png")
    write_json(out / "info.json", info)
    return info


def _all_manifests(out: Path, plan: dict[str, Any]) -> list[dict[str, Any]]:
    manifests, missing = [], []
    for split in SPLITS:
        for index in range(plan["units"][split]):
            name = f"{split}-{index:06d}"
            manifest = read_manifest(out, name)
            if manifest is None or manifest.get("fingerprint") != plan["fingerprints"].get(name):
                missing.append(name)
            else:
                manifests.append(manifest)
    if missing:
        raise UserError(f"{out}: {len(missing)} shard(s) not built yet (first: {missing[0]}); run "
                        "scripts/build_shards.py for every --node-rank, then --finalize")
    return manifests


def _remove_stale_shards(out: Path, units: dict[str, int]) -> None:
    # Shards past the planned count are left from an earlier build with other settings; a loader
    # globbing train-*.tar must not pick them up.
    for split in SPLITS:
        for tar in out.glob(f"{split}-*.tar"):
            index = tar.stem.rpartition("-")[2]
            if index.isdigit() and int(index) >= units[split]:
                tar.unlink()
                (out / BUILD_DIR / f"{tar.stem}.json").unlink(missing_ok=True)
