"""The shard builder: corpus records + vocab.json + images -> labelled WebDataset shards.

Four phases (docs/shards.md has the full picture); with ``--num-nodes N`` every node runs the same
command and the nodes meet through files in ``<out>/.build``:

1. **Scan** (:mod:`data.shards.scan`): node ``r`` scans the corpus chunks ``i % N == r`` on its
   process pool: each row is parsed and labelled, and its image read and hashed, by one worker of
   one node. Each chunk becomes a manifest part, ``.build/scan-<digest>/part-NNNNNN.parquet``.
2. **Plan** (:mod:`data.shards.plan`): node 0, once every part is there, decides exact duplicates
   (first in corpus order kept, across all nodes), skips and units from the parts' fixed-width
   columns, and writes ``.build/plan.json``. The other nodes wait for it.
3. **Build** (:mod:`data.shards.unit`): every node builds its units (``order % N == r``) on its
   pool: convert, check against the eval set, write the tar (hashed while written) and its
   manifest. A unit found complete from an earlier run (its tar still has the recorded sha256) is
   kept; one whose tar was damaged since is rebuilt.
4. **Finalize** (:func:`finalize`): once every unit's manifest is present, write ``info.json``,
   ``report.json`` and ``label_histogram.png``: the last node to finish does it, or ``--finalize``.

Every file a phase writes is written atomically and is found again by a rerun, so a node that
restarts resumes after its last finished part or unit. The output bytes depend only on the inputs
and settings: never on the number of nodes or workers, the order in which work finishes, or
interruptions. Each node records what each phase cost it in ``.build/node-<rank>.json``.
"""
from __future__ import annotations

import contextlib
import hashlib
import json
import resource
import shutil
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator, TypeVar

from tqdm import tqdm

from data.atomic_write import write_json
from data.corpus.lines import LineBlock
from data.corpus.record import CorpusReader
from data.errors import UserError
from data.images.decode import ImageSettings
from data.images.near_duplicates import DEFAULT_THRESHOLD, EvalIndex, build_eval_index
from data.images.sources import MAX_IMAGE_BYTES, ImageResolver
from data.shards.directory import SPLITS
from data.shards.histogram import plot_label_histogram
from data.shards.plan import PLAN_FILE, Plan, Unit, make_plan, read_plan
from data.shards.scan import SCAN_FORMAT, Scanner, part_name
from data.shards.unit import (BUILD_DIR, UnitContext, check_unit, ensure_unit, ensure_unit_in_worker, init_worker,
                              read_manifest, rebuild_unit_in_worker, remove_temporary_files,
                              remove_units_temporary_files)
from data.skip_report import SkipReport
from data.vocab.vocabulary import Vocabulary
from data.worker_pool import ordered_map, start_pool

FORMAT_VERSION = 1
DEFAULT_SHARD_SIZE = 1000
DEFAULT_VAL_FRACTION = 0.02
MAX_NEAR_DUPLICATES_LISTED = 100_000
EVAL_INDEX_FILE = "eval_index.npz"
# Files every node may write: a temp file of theirs younger than this may be another node's write.
SHARED_TEMP_MIN_AGE_S = 600.0
SHARED_OUTPUTS = ("info.json", "report.json", "label_histogram.png")
# Tasks handed to a pool ahead of the one being collected, per worker.
AHEAD_PER_WORKER = 2
# A waiting node looks for what it waits for at most this often, and says what it waits for at
# least this often.
POLL_MAX_S = 2.0
WAIT_REPORT_S = 60.0

T = TypeVar("T")


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
    damaged: list[str] = field(default_factory=list)  # units rebuilt because their tar changed
    other_nodes: int = 0  # units left to the other nodes
    image_bytes: int = 0  # source image bytes this run read to build its units
    info: dict[str, Any] | None = None  # info.json's content once finalized
    phases: dict[str, dict[str, float]] = field(default_factory=dict)  # CPU and wall seconds per phase

    @property
    def finalized(self) -> bool:
        return self.info is not None


class _ProgressBar(tqdm):
    # No monitor thread: worker processes may be forked while a bar is open.
    monitor_interval = 0


def _cpu_seconds() -> float:
    """CPU time of this process and of its children that ended (each phase's pool is joined)."""
    own, children = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime


class _NodeStatus:
    """This node's ``.build/node-<rank>.json``: the phase it is in, and the CPU and wall seconds
    each phase has cost it so far (rewritten as each phase begins and once more at the end)."""

    def __init__(self, config: BuildConfig) -> None:
        self.config = config
        self.phases: dict[str, dict[str, float]] = {}
        self.path: Path | None = None
        self.extra: dict[str, Any] = {}

    @contextlib.contextmanager
    def __call__(self, name: str) -> Iterator[None]:
        self.write(name)
        cpu, wall = _cpu_seconds(), time.perf_counter()
        try:
            yield
        finally:
            entry = self.phases.setdefault(name, {"cpu_s": 0.0, "wall_s": 0.0})
            entry["cpu_s"] = round(entry["cpu_s"] + _cpu_seconds() - cpu, 3)
            entry["wall_s"] = round(entry["wall_s"] + time.perf_counter() - wall, 3)

    def write(self, phase: str) -> None:
        if self.path is not None:
            write_json(self.path, {"node_rank": self.config.node_rank, "num_nodes": self.config.num_nodes,
                                   "workers": self.config.workers, "phase": phase, "phases": self.phases,
                                   **self.extra}, indent=1)


@contextlib.contextmanager
def _pool(workers: int, initializer: Callable[..., None] | None = None, initargs: tuple = ()) -> Iterator[Any]:
    """A worker pool for one phase, joined at its end (so its CPU time is counted in the phase)."""
    pool = start_pool(workers, initializer, initargs)
    try:
        yield pool
        pool.close()
    finally:
        pool.terminate()
        pool.join()


def _map(workers: int, fn: Callable[[T], Any], worker_fn: Callable[[T], Any], items: Iterator[T],
         initializer: Callable[..., None], initargs: tuple) -> Iterator[Any]:
    """``fn`` over ``items`` in this process (one worker), or ``worker_fn`` on a pool whose workers
    ran ``initializer(*initargs)``; results in order."""
    if workers == 1:
        yield from map(fn, items)
        return
    with _pool(workers, initializer, initargs) as pool:
        yield from ordered_map(pool, worker_fn, items, AHEAD_PER_WORKER * workers)


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _load_vocab(path: Path) -> tuple[Vocabulary, str]:
    vocab = Vocabulary.load(path)
    if len(vocab) == 0:
        raise UserError(f"vocabulary {path} has no labels; rebuild it with scripts/build_vocab.py")
    return vocab, _sha256(path)


def _eval_index(config: BuildConfig, progress: bool) -> EvalIndex | None:
    if config.exclude_near is None:
        return None
    bar = _ProgressBar(desc="hashing eval images", unit="img", disable=not progress)
    try:
        if config.workers == 1:
            return build_eval_index(config.exclude_near, config.image, config.near_threshold, progress=bar.update)
        with _pool(config.workers) as pool:
            return build_eval_index(config.exclude_near, config.image, config.near_threshold, pool,
                                    progress=bar.update)
    finally:
        bar.close()


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


def _scan_settings(config: BuildConfig, reader: CorpusReader, resolver: ImageResolver,
                   vocab_sha: str) -> dict[str, Any]:
    """Everything a scan part depends on besides its chunk: a part found in the scan directory of
    the same settings is kept. The corpus input's size and modification time are included, so
    an edited or regrown input is scanned again."""
    corpus = reader.describe()
    stamp = None
    with contextlib.suppress(OSError, TypeError):
        stat = Path(corpus.get("input")).stat()
        stamp = [stat.st_size, stat.st_mtime_ns]
    return {"format": SCAN_FORMAT, "corpus": corpus, "input_stamp": stamp, "images": resolver.describe(),
            "vocab_sha256": vocab_sha, "val_fraction": config.val_fraction, "max_image_bytes": MAX_IMAGE_BYTES}


def _digest(obj: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True, ensure_ascii=False).encode()).hexdigest()


def _say(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def build_shards(reader: CorpusReader, config: BuildConfig, progress: bool = False) -> BuildResult:
    """Run this node's part of every phase; finalize when every unit is done."""
    config.validate()
    clock = _NodeStatus(config)
    result = BuildResult()
    rank = config.node_rank
    with clock("setup"):
        vocab, vocab_sha = _load_vocab(config.vocab)
        resolver = ImageResolver(config.images)
        build_dir = _build_dir(config.out)
        clock.path = build_dir / f"node-{rank}.json"
        eval_index = _eval_index(config, progress)
        header = _plan_header(config, reader, resolver, vocab, vocab_sha, eval_index)
        settings_digest = _digest(header)
        scan_digest = _digest(_scan_settings(config, reader, resolver, vocab_sha))
        scan_dir = build_dir / f"scan-{scan_digest[:16]}"
        scan_dir.mkdir(exist_ok=True)
        if eval_index is not None and rank == 0:
            eval_index.save(build_dir / EVAL_INDEX_FILE)
    with clock("scan"):
        scanner = Scanner(reader, vocab, resolver, config.val_fraction, scan_dir)
        parts, scanned = _scan(reader, scanner, config, scan_dir, progress)
        clock.extra["scanned"] = scanned
    if rank == 0:
        with clock("wait"):
            _wait(lambda: _missing_parts(scan_dir, parts, config.num_nodes), rank)
        with clock("plan"):
            plan = read_plan(build_dir)
            if plan is None or (plan.settings_digest, plan.scan_digest) != (settings_digest, scan_digest):
                plan = _make_plan(scan_dir, parts, config, header, settings_digest, scan_digest, build_dir, progress)
    else:
        with clock("wait"):
            plan = _wait_for_plan(build_dir, settings_digest, scan_digest, rank)
    with clock("build"):
        context = UnitContext(str(config.out), config.image, plan, str(scan_dir), eval_index)
        _build(plan, config, context, result, progress)
    with clock("finalize"):
        if all(_manifest_matches(config.out, unit) for unit in plan.units):
            result.info = finalize(config.out)
    result.phases = clock.phases
    clock.extra.update(built=result.built, kept=result.kept, damaged=result.damaged, other_nodes=result.other_nodes,
                       built_image_bytes=result.image_bytes, finalized=result.finalized)
    clock.write("done")
    return result


def _build_dir(out: Path) -> Path:
    try:
        (Path(out) / BUILD_DIR).mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise UserError(f"cannot create output directory {out}: {err.strerror}; pass a writable "
                        "--out") from None
    return Path(out) / BUILD_DIR


# ------------------------------------------------------------------------------------------ scan

_SCANNER: Scanner | None = None


def _init_scanner(scanner: Scanner) -> None:
    global _SCANNER
    _SCANNER = scanner


def _scan_in_worker(task: tuple[int, Any]):
    return _SCANNER(task)


def _scan(reader: CorpusReader, scanner: Scanner, config: BuildConfig, scan_dir: Path,
          progress: bool) -> tuple[int, dict[str, int]]:
    """Scan this node's chunks that have no part yet; returns the number of chunks of the corpus
    and what this run scanned (chunks, records)."""
    done = {p.name for p in scan_dir.glob("part-*.parquet")}
    chunks = 0
    scanned = {"chunks": 0, "records": 0, "image_bytes": 0}
    bar = _ProgressBar(desc=f"scan (node {config.node_rank})", unit=" rows", unit_scale=True, disable=not progress)

    def mine() -> Iterator[tuple[int, Any]]:
        nonlocal chunks
        for index, chunk in enumerate(reader.chunks()):
            chunks = index + 1
            if index == 0 and config.num_nodes > 1 and isinstance(chunk, LineBlock) and chunk.data is not None:
                _say(f"node {config.node_rank}: {reader.describe().get('input')} is compressed: every node "
                     "decompresses all of it to find its share of the rows; decompress it once (e.g. "
                     "lbzip2 -dk) and pass the plain file for a multi-node build")
            if index % config.num_nodes == config.node_rank and part_name(index) not in done:
                remove_temporary_files(scan_dir / part_name(index))  # only this node writes this part
                yield index, chunk

    try:
        for summary in _map(config.workers, scanner, _scan_in_worker, mine(), _init_scanner, (scanner,)):
            bar.update(summary.records)
            scanned["chunks"] += 1
            scanned["records"] += summary.records
            scanned["image_bytes"] += summary.image_bytes
    finally:
        bar.close()
    return chunks, scanned


def _missing_parts(scan_dir: Path, parts: int, num_nodes: int) -> str | None:
    present = {p.name for p in scan_dir.glob("part-*.parquet")}
    missing = [i for i in range(parts) if part_name(i) not in present]
    if not missing:
        return None
    nodes = sorted({i % num_nodes for i in missing})
    return f"{len(missing)} of {parts} scan parts, from node(s) {', '.join(map(str, nodes))}"


# ------------------------------------------------------------------------------------------ plan

def _make_plan(scan_dir: Path, parts: int, config: BuildConfig, header: dict[str, Any], settings_digest: str,
               scan_digest: str, build_dir: Path, progress: bool) -> Plan:
    for temp in build_dir.glob(".candidates-*.tmp"):
        temp.unlink(missing_ok=True)  # only node 0 writes the plan files
    remove_temporary_files(build_dir / PLAN_FILE)
    say = _say if progress else (lambda _: None)
    say(f"plan: reading {parts} scan parts")
    plan = make_plan(scan_dir, parts, config.shard_size, header, settings_digest, scan_digest, build_dir,
                     progress=lambda line: say(f"plan: {line}"))
    counts = plan.unit_counts()
    say(f"plan: {counts['train']} train and {counts['val']} val units; skipped so far "
        f"{dict(sorted(plan.skips.counts.items()))}")
    return plan


def _wait(missing: Callable[[], str | None], rank: int) -> None:
    """Sleep until ``missing()`` is None, saying now and then what is still missing."""
    delay, said = 0.02, time.monotonic()
    while (still := missing()) is not None:
        if time.monotonic() - said >= WAIT_REPORT_S:
            _say(f"node {rank}: waiting for {still}")
            said = time.monotonic()
        time.sleep(delay)
        delay = min(2 * delay, POLL_MAX_S)


def _wait_for_plan(build_dir: Path, settings_digest: str, scan_digest: str, rank: int) -> Plan:
    """The plan node 0 writes for these settings (an older plan.json may be there meanwhile)."""
    found: list[Plan] = []
    seen: list[tuple[int, int]] = [(-1, -1)]

    def missing() -> str | None:
        try:
            stat = (build_dir / PLAN_FILE).stat()
        except OSError:
            return "node 0's plan"
        if (stat.st_mtime_ns, stat.st_size) != seen[0]:
            seen[0] = (stat.st_mtime_ns, stat.st_size)
            plan = read_plan(build_dir)
            if plan is not None and (plan.settings_digest, plan.scan_digest) == (settings_digest, scan_digest):
                found.append(plan)
                return None
        return "node 0's plan (the one there is for other settings or inputs)"

    _wait(missing, rank)
    return found[0]


# ----------------------------------------------------------------------------------------- build

def _build(plan: Plan, config: BuildConfig, context: UnitContext, result: BuildResult, progress: bool) -> None:
    """Build this node's units that are not complete (checking those that seem to be)."""
    mine = [unit for unit in plan.units if unit.order % config.num_nodes == config.node_rank]
    result.other_nodes = len(plan.units) - len(mine)
    bar = _ProgressBar(desc=f"build (node {config.node_rank})", unit="img", total=sum(u.count for u in mine),
                       disable=not progress)
    try:
        found = _map(config.workers, lambda unit: ensure_unit(unit, context), ensure_unit_in_worker, iter(mine),
                     init_worker, (context,))
        for unit, (state, count, image_bytes) in zip(mine, found):
            result.image_bytes += image_bytes
            if state == "done":
                result.kept += 1
            else:
                result.built += 1
                if state == "damaged":
                    result.damaged.append(unit.name)
            bar.update(count)
    except BaseException:
        found.close()  # stops the pool: no worker is still writing
        remove_units_temporary_files(context.out_dir, mine)
        raise
    finally:
        bar.close()


def _manifest_matches(out: Path, unit: Unit) -> bool:
    manifest = read_manifest(out, unit.name)
    return manifest is not None and manifest.get("fingerprint") == unit.fingerprint


def load_plan(out: str | Path) -> Plan:
    path = Path(out) / BUILD_DIR / PLAN_FILE
    if not path.is_file():
        raise UserError(f"{out} has no build plan ({path}); run scripts/build_shards.py on it first")
    plan = read_plan(path.parent)
    if plan is None:
        raise UserError(f"cannot read build plan {path}; rerun scripts/build_shards.py")
    return plan


# -------------------------------------------------------------------------------------- finalize

def finalize(out: str | Path, verify: bool = False, workers: int = 1, progress: bool = False) -> dict[str, Any]:
    """Write info.json, report.json and label_histogram.png from the plan and every manifest.

    With ``verify`` (``--finalize``), every shard is first read back and compared with the sha256
    its manifest recorded; a shard that differs is rebuilt from the plan (its images must still be
    where the scan found them)."""
    out = Path(out)
    plan = load_plan(out)
    repaired: list[str] = []
    if verify:
        repaired = _repair(out, plan, workers, progress)
    manifests = _all_manifests(out, plan)
    header = plan.header
    num_labels = header["vocab"]["num_labels"]
    label_counts = {split: [0] * num_labels for split in SPLITS}
    skips = SkipReport.from_dict(plan.skips.to_dict())
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
    info = {**header, "settings_digest": plan.settings_digest, "records_read": plan.records_read,
            "shards": shards, "num_samples": {**totals, "total": sum(totals.values())},
            "label_counts": label_counts["train"], "val_label_counts": label_counts["val"],
            "skipped": {"total": skips.total, "counts": dict(sorted(skips.counts.items()))},
            "report": "report.json", "histogram": "label_histogram.png"}
    report = {"records_read": plan.records_read, "kept": info["num_samples"],
              "skipped": skips.to_dict(),
              "near_duplicates_of_eval": {"count": len(near), "eval_set": header["near_duplicates"],
                                          "listed": min(len(near), MAX_NEAR_DUPLICATES_LISTED),
                                          "matches": near[:MAX_NEAR_DUPLICATES_LISTED]}}
    _remove_stale(out, plan)
    for name in SHARED_OUTPUTS:
        remove_temporary_files(out / name, SHARED_TEMP_MIN_AGE_S)
    write_json(out / "report.json", report)
    plot_label_histogram(label_counts["train"], header["vocab"]["tags"], out / "label_histogram.png")
    write_json(out / "info.json", info)
    if repaired:
        _say(f"rebuilt {len(repaired)} shard(s) whose bytes no longer matched their recorded sha256: "
             f"{', '.join(repaired[:10])}{' ...' if len(repaired) > 10 else ''}")
    return info


def _repair(out: Path, plan: Plan, workers: int, progress: bool) -> list[str]:
    """Rebuild the units whose manifest matches the plan but whose tar does not match the manifest."""
    built = [unit for unit in plan.units if _manifest_matches(out, unit)]
    bar = _ProgressBar(desc="verifying shards", unit=" shards", total=len(built), disable=not progress)
    damaged = []
    try:
        states = _map(workers, lambda unit: check_unit(unit, out), _check_in_worker, iter(built), _set_out, (out,))
        for unit, state in zip(built, states):
            if state != "done":
                damaged.append(unit)
            bar.update()
    finally:
        bar.close()
    if damaged:
        context = _rebuild_context(out, plan)
        for _ in _map(workers, lambda unit: ensure_unit(unit, context, check=False), rebuild_unit_in_worker,
                      iter(damaged), init_worker, (context,)):
            pass
    return [unit.name for unit in damaged]


_OUT: Path | None = None


def _set_out(out: Path) -> None:
    global _OUT
    _OUT = out


def _check_in_worker(unit: Unit) -> str:
    return check_unit(unit, _OUT)


def _rebuild_context(out: Path, plan: Plan) -> UnitContext:
    settings = plan.header["image_settings"]
    image = ImageSettings(settings["short_side"], settings["quality"], settings["max_pixels"], settings["resample"])
    scan_dir = out / BUILD_DIR / f"scan-{plan.scan_digest[:16]}"
    if not scan_dir.is_dir():
        raise UserError(f"cannot rebuild damaged shards: {scan_dir} is gone; rerun scripts/build_shards.py "
                        "with the build's arguments")
    eval_index = None
    if plan.header["near_duplicates"] is not None:
        try:
            eval_index = EvalIndex.load(out / BUILD_DIR / EVAL_INDEX_FILE)
        except (OSError, ValueError, KeyError):
            raise UserError(f"cannot rebuild damaged shards: {out / BUILD_DIR / EVAL_INDEX_FILE} is missing or "
                            "damaged; rerun scripts/build_shards.py with the build's arguments") from None
    return UnitContext(str(out), image, plan, str(scan_dir), eval_index)


def _all_manifests(out: Path, plan: Plan) -> list[dict[str, Any]]:
    manifests, missing = [], []
    for unit in sorted(plan.units, key=lambda u: (SPLITS.index(u.split), u.index)):
        manifest = read_manifest(out, unit.name)
        if manifest is None or manifest.get("fingerprint") != unit.fingerprint:
            missing.append(unit.name)
        else:
            manifests.append(manifest)
    if missing:
        raise UserError(f"{out}: {len(missing)} shard(s) not built yet (first: {missing[0]}); run "
                        "scripts/build_shards.py for every --node-rank, then --finalize")
    return manifests


def _remove_stale(out: Path, plan: Plan) -> None:
    # Shards past the planned count are left from an earlier build with other settings; a loader
    # globbing train-*.tar must not pick them up. Scan parts and candidate lists of other settings
    # are of no further use.
    units = plan.unit_counts()
    for split in SPLITS:
        for tar in out.glob(f"{split}-*.tar"):
            index = tar.stem.rpartition("-")[2]
            if index.isdigit() and int(index) >= units[split]:
                tar.unlink()
                (out / BUILD_DIR / f"{tar.stem}.json").unlink(missing_ok=True)
    build_dir = out / BUILD_DIR
    for scan_dir in build_dir.glob("scan-*"):
        if scan_dir.name != f"scan-{plan.scan_digest[:16]}":
            shutil.rmtree(scan_dir, ignore_errors=True)
    for candidates in build_dir.glob("candidates-*.arrow"):
        if candidates.name != plan.candidates:
            candidates.unlink(missing_ok=True)
