#!/usr/bin/env python
"""The paper's main ablations at demo scale: hashtag resampling q, softmax vs sigmoid loss, label
noise and vocabulary size, each measured as downstream top-1 over several seeds, plus resampling on
a long-tailed world.

    python scripts/ablate.py --out runs/ablate                       # 12 configurations x 5 seeds
    python scripts/ablate.py --only q,loss --seeds 0 1 2 3 --jobs 1

A cell is one configuration at one seed: pretraining with the CPU demo recipe
(configs/pretrain/cpu_demo.yaml) on a synthetic world's shards, then a linear probe of the frozen
trunk on that world's downstream task (configs/transfer/cpu_demo_linear.yaml). The seed is the run
seed of both; the worlds themselves are always seed 0. Configurations (each factor varies one thing
around its world's baseline):

    baseline   q 0.5, softmax, no label noise, full vocabulary (the demo recipe), demo world
    q          natural (no resampling: each image once per pass), q = 1 (a hashtag drawn with
               frequency n_h, then an image carrying it: an image weighted by its label count),
               q = 0 (uniform over hashtags)
    loss       per-hashtag sigmoid + binary cross-entropy (the recipe's default head init)
    noise      25 % and 50 % of each image's labels replaced by draws from the label marginal, on
               the clean world's fixed vocabulary (the paper's protocol; same images, other columns)
    vocab      only the --small-vocab most frequent hashtags
    longtail   natural, q = 1, 0.5, 0 on the long-tailed world (make_synthetic.py --long-tail:
               concept frequencies over a ~2,000:1 range, downstream classes spread over it)

plus a random-init reference per world (the linear probe on an untrained trunk, per seed). Outputs
in --out: ablations.md (tables with 95 % t intervals, hashtag metrics beside their constant-guess
baselines, one verdict per paper claim), ablations.png (one panel per factor), ablations.json (every
cell), and per cell cells/<config>-seed<s>/ (runs, log.txt, result.json with the time it ran).
Rerunning the same command reuses finished inputs and cells and resumes unfinished ones (a
pretraining run resumes from its last checkpoint), so a long run can be done in parts.

Parallelism: --jobs cells run at once, each pretraining on --ranks processes. Measured on this
project's 2-core machine (docs/ablations.md), one cell at a time on two torchrun ranks trained
faster than two cells at once on one process each (303-314 vs 212-252 img/s in total), so the
default is --ranks 2 and --jobs os.cpu_count() // 2. Either way the recipe is the same: on one
rank, gradient accumulation keeps the recipe's global batch (its batch per rank x 2 ranks) and
per-rank BN batch.

Cost: measured on 2 cores in the 2026-12-05 run of the defaults (docs/ablations.md): 1.6 min per
pretraining cell of 60,000 images (including its linear probe; 84-167 s, mean 96 s) and 0.1 min per
random-init cell, scaling with --pretrain-images. The defaults (12 configurations + 2 random-init
references x 5 seeds = 70 cells) come to about 1 h 40 min, plus the worlds, vocabularies and shards
(about 2 min on idle cores, of which 48 s is the 60,000-photo long-tailed world); the command
prints its estimate when it starts.
"""
from __future__ import annotations

import argparse
import datetime
import hashlib
import json
import math
import os
import platform
import shlex
import shutil
import signal
import subprocess
import sys
import tarfile
import threading
import time
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Iterable

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import numpy as np  # noqa: E402
from tqdm import tqdm  # noqa: E402

from data.atomic_write import write_bytes, write_json, write_text  # noqa: E402
from data.errors import UserError, cli_main  # noqa: E402
from data.untrusted_json import parse_json  # noqa: E402
from data.figure_png import save_figure  # noqa: E402
from pretrain.checkpoint import TRUNK_FILE  # noqa: E402
from pretrain.config import PretrainConfig, config_from_dict, config_to_dict, load_config  # noqa: E402
from transfer.config import TransferConfig  # noqa: E402

RECIPES = {"pretrain": REPO / "configs" / "pretrain" / "cpu_demo.yaml",
           "linear": REPO / "configs" / "transfer" / "cpu_demo_linear.yaml",
           "finetune": REPO / "configs" / "transfer" / "cpu_demo_finetune.yaml"}
RECIPE_RANKS = 2  # cpu_demo.yaml's data.batch_size is per rank for two ranks (a global batch of 128)
WORLD_SEED = 0
WORLDS = ("demo", "longtail")  # the demo world (make demo's) and make_synthetic.py --long-tail
FULL_VOCAB_CAP = 1000  # the demo's --top-k: in the default world, min-count binds long before the cap
RESULT_FILE = "result.json"
SETTINGS_FILE = "settings.json"
METRICS = {"linear": "linear probe", "finetune": "fine-tuning"}
# Minutes per cell on the project's 2-core machine at 60,000 pretraining images, one cell at a time
# on 2 ranks: the 2026-12-05 run of the defaults, 60 pretraining cells at a mean of 96 s (probe
# included) and 10 random-init probes at 7 s (docs/ablations.md).
MINUTES_PER_CELL = {"pretrained": 1.6, "random-init": 0.1}
MINUTES_PER_CELL_IMAGES = 60_000
CONFIDENCE = 0.95


# --- the grid ----------------------------------------------------------------------------------

@dataclass(frozen=True)
class Arm:
    """One pretraining configuration (a row of the table); ``pretrained=False`` is the random-init
    reference, which skips pretraining. ``q=None`` streams the natural distribution (no resampling)."""

    name: str
    q: float | None = 0.5
    loss: str = "softmax"
    noise: float = 0.0
    small_vocab: bool = False
    pretrained: bool = True
    world: str = "demo"


BASELINE = Arm("baseline")
LONGTAIL_BASELINE = Arm("lt-baseline", world="longtail")
RANDOM_INIT = {"demo": Arm("random-init", pretrained=False),
               "longtail": Arm("lt-random-init", pretrained=False, world="longtail")}
BASELINES = {"demo": BASELINE, "longtail": LONGTAIL_BASELINE}


@dataclass(frozen=True)
class Level:
    value: str  # as the table shows it
    arm: Arm
    meaning: str  # what the level does, in words (with multi-label images for the sampling levels)


@dataclass(frozen=True)
class Factor:
    key: str  # the --only name
    title: str
    levels: tuple[Level, ...]  # baseline included

    @property
    def world(self) -> str:
        return self.levels[0].arm.world


def _sampling_levels(prefix: str, world: str, baseline: Arm) -> tuple[Level, ...]:
    return (
        Level("natural (no resampling)", Arm(f"{prefix}natural", q=None, world=world),
              "the stored stream: every image once per pass, so a label's share is its image count n_h "
              "times its images' label counts; nothing is resampled"),
        Level("1", Arm(f"{prefix}q1", q=1.0, world=world),
              "a hashtag drawn with frequency ∝ n_h, then an image carrying it: an image is weighted by "
              "its number of labels k (w(I) = k), which is not the natural stream with multi-label images"),
        Level("0.5 (square root)", baseline,
              "a hashtag drawn with frequency ∝ √n_h, then an image carrying it (the paper's default)"),
        Level("0 (uniform)", Arm(f"{prefix}q0", q=0.0, world=world),
              "a hashtag drawn uniformly, then an image carrying it: w(I) = Σ_{h∈I} 1/n_h"),
    )


FACTORS = (
    Factor("q", "resampling exponent q", _sampling_levels("", "demo", BASELINE)),
    Factor("loss", "loss", (
        Level("softmax", BASELINE, "softmax over all K hashtags, target 1/k on each of an image's k labels"),
        Level("sigmoid", Arm("sigmoid", loss="sigmoid"),
              "one sigmoid + binary cross-entropy per hashtag; head bias as the recipe's default (loss.bias_init)"))),
    Factor("noise", "label noise", (
        Level("0 %", BASELINE, "the clean world's labels"),
        Level("25 %", Arm("noise25", noise=0.25),
              "each label of an image replaced with probability 0.25 by a draw from the label marginal (fixed "
              "vocabulary; same images and other columns)"),
        Level("50 %", Arm("noise50", noise=0.5), "the same at probability 0.5"))),
    # level_label spells out the vocabulary levels (rule and size).
    Factor("vocab", "vocabulary", (
        Level("full", BASELINE, "every canonical tag on >= --min-count images"),
        Level("small", Arm("small-vocab", small_vocab=True), "only the --small-vocab most frequent tags"))),
    Factor("longtail", "resampling q, long-tailed world", _sampling_levels("lt-", "longtail", LONGTAIL_BASELINE)),
)
FACTOR_KEYS = tuple(f.key for f in FACTORS)

# The paper's claims, each a comparison of two configurations: (claim, better arm, worse arm).
CLAIMS = (
    ("square-root resampling beats the natural stream (demo world)", "baseline", "natural"),
    ("uniform resampling beats the natural stream (demo world)", "q0", "natural"),
    ("square-root resampling beats the natural stream (long-tailed world)", "lt-baseline", "lt-natural"),
    ("uniform resampling beats the natural stream (long-tailed world)", "lt-q0", "lt-natural"),
    ("softmax beats the per-hashtag sigmoid", "baseline", "sigmoid"),
    ("clean labels beat 25 % label noise (the paper: by little)", "baseline", "noise25"),
    ("clean labels beat 50 % label noise (the paper: by little)", "baseline", "noise50"),
    ("the full vocabulary beats the top-K one", "baseline", "small-vocab"),
)


def selected_factors(only: str | None) -> list[Factor]:
    if not only:
        return list(FACTORS)
    keys = [k.strip() for k in only.split(",") if k.strip()]
    unknown = [k for k in keys if k not in FACTOR_KEYS]
    if unknown or not keys:
        raise UserError(f"--only {only!r}: unknown factor {', '.join(unknown) or '(none given)'}; "
                        f"use a comma-separated subset of {','.join(FACTOR_KEYS)}")
    return [f for f in FACTORS if f.key in keys]


def arms_of(factors: Iterable[Factor]) -> list[Arm]:
    """The configurations to run, each once, baselines first, then each world's random-init reference."""
    factors = list(factors)
    worlds = [w for w in WORLDS if any(f.world == w for f in factors)]
    arms = [BASELINES[w] for w in worlds]
    for factor in factors:
        arms.extend(level.arm for level in factor.levels if level.arm not in arms)
    return arms + [RANDOM_INIT[w] for w in worlds]


# --- settings, recipes and paths ---------------------------------------------------------------

@dataclass(frozen=True)
class Settings:
    """What a cell's result depends on besides its configuration and seed (the recipes resolved, so
    a comment edit is no change). A rerun into the same --out must use the same settings, or finished
    cells would be mixed with different ones."""

    world_images: int
    longtail_images: int
    pretrain_images: int
    image_size: int | None
    min_count: int
    longtail_min_count: int
    small_vocab: int
    finetune: bool
    recipes: dict[str, Any]

    def to_dict(self) -> dict[str, Any]:
        return json.loads(json.dumps(asdict(self), sort_keys=True))

    def digest(self) -> str:
        return hashlib.sha256(json.dumps(self.to_dict(), sort_keys=True).encode()).hexdigest()[:16]

    def world_images_of(self, world: str) -> int:
        return self.longtail_images if world == "longtail" else self.world_images

    def min_count_of(self, world: str) -> int:
        return self.longtail_min_count if world == "longtail" else self.min_count


def resolved_recipes() -> dict[str, Any]:
    transfer = {kind: config_to_dict(load_config(RECIPES[kind], schema=TransferConfig))
                for kind in ("linear", "finetune")}
    return {"pretrain": config_to_dict(load_config(RECIPES["pretrain"])), **transfer}


@dataclass(frozen=True)
class Layout:
    out: Path

    def recipe(self, kind: str) -> Path:
        """The run's own copy: every cell uses the recipes as they were when the run began."""
        return self.out / "recipes" / f"{kind}.yaml"

    def inputs(self) -> Path:
        return self.out / "inputs"

    def world(self, world: str) -> Path:
        """The clean world: metadata, pictures, downstream set (noise levels share its pictures)."""
        return self.inputs() / f"world-{world}"

    def noisy_labels(self, arm: Arm) -> Path:
        """The noisy copy of the clean world's metadata (make_synthetic.py --noisy-copy-of)."""
        return self.inputs() / f"labels-{arm.world}-noise{round(arm.noise * 100)}"

    def metadata(self, arm: Arm) -> Path:
        return (self.noisy_labels(arm) if arm.noise else self.world(arm.world)) / "yfcc100m_dataset.tsv"

    def vocab(self, arm: Arm) -> Path:
        """Built once from the clean world: every noise level uses the same vocabulary."""
        return self.inputs() / f"vocab-{arm.world}-{'small' if arm.small_vocab else 'full'}.json"

    def shards(self, arm: Arm) -> Path:
        return self.inputs() / (f"shards-{arm.world}-noise{round(arm.noise * 100)}-"
                                f"{'small' if arm.small_vocab else 'full'}")

    def downstream(self, world: str) -> Path:
        return self.world(world) / "downstream"

    def cell(self, cell: "Cell") -> Path:
        return self.out / "cells" / cell.name


def claim_out(layout: Layout, settings: Settings) -> None:
    """Refuse an --out whose recorded settings differ; else copy the recipes into it (where missing)
    and record the settings, last."""
    path = layout.out / SETTINGS_FILE
    current = {**settings.to_dict(), "digest": settings.digest()}
    earlier = read_json(path)
    if earlier is not None and earlier.get("digest") != current["digest"]:
        changed = [key for key in settings.to_dict() if earlier.get(key) != current[key]]
        raise UserError(f"{path}: {layout.out} holds cells made with other settings ({', '.join(changed)} "
                        "differ); rerun with the same options and recipes, or pass another --out")
    for kind, source in RECIPES.items():
        if not layout.recipe(kind).is_file():  # same digest: the current recipes resolve to the recorded ones
            write_bytes(layout.recipe(kind), source.read_bytes())
    if earlier is None:
        write_json(path, current)


def read_json(path: Path) -> dict[str, Any] | None:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


# --- running commands --------------------------------------------------------------------------

class Processes:
    """The child processes running now, so that an interrupt can end them (threads cannot be killed)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._running: set[subprocess.Popen] = set()
        self.stopping = False

    def run(self, command: list[str], log: Path, env: dict[str, str]) -> int:
        with self._lock:
            if self.stopping:
                return -1
            log.parent.mkdir(parents=True, exist_ok=True)
            with log.open("a", encoding="utf-8") as handle:
                handle.write(f"\n$ {shlex.join(command)}\n")
                handle.flush()
                process = subprocess.Popen(command, cwd=REPO, env=env, stdout=handle, stderr=subprocess.STDOUT)
            self._running.add(process)
        try:
            return process.wait()
        finally:
            with self._lock:
                self._running.discard(process)

    def stop(self) -> None:
        with self._lock:
            self.stopping = True
            running = list(self._running)
        for process in running:
            process.terminate()
        for process in running:
            try:
                process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                process.kill()


class StageFailed(Exception):
    pass


def child_env(threads: int) -> dict[str, str]:
    env = dict(os.environ)
    env.update(OMP_NUM_THREADS=str(threads), PYTHONPATH=str(REPO), WANDB_SILENT="true",
               TQDM_MININTERVAL="30")  # children log to files: a bar line every 30 s, not every 0.1 s
    return env


def run_stage(processes: Processes, title: str, command: list[str], log: Path, env: dict[str, str]) -> float:
    start = time.perf_counter()
    code = processes.run(command, log, env)
    if code != 0:
        raise StageFailed(f"{title} exited with status {code}; see {log}")
    return time.perf_counter() - start


# --- the run's context --------------------------------------------------------------------------

@dataclass(frozen=True)
class Cell:
    arm: Arm
    seed: int

    @property
    def name(self) -> str:
        return f"{self.arm.name}-seed{self.seed}"


@dataclass(frozen=True)
class Ablation:
    """Everything a cell needs: where things are, the settings, the resolved pretraining recipe,
    how cells share the cores, and the running child processes."""

    layout: Layout
    args: argparse.Namespace
    settings: Settings
    recipe: PretrainConfig
    jobs: int
    ranks: int
    processes: Processes

    def threads_per_cell(self) -> int:
        return max(1, (os.cpu_count() or 1) // self.jobs)


# --- shared inputs: worlds, vocabularies, shards -----------------------------------------------

def build_inputs(arms: list[Arm], ab: Ablation) -> None:
    """Each world, vocabulary, noisy metadata and shard set the arms need, once; a ``<name>.done``
    marker written last says it is complete, so an interrupted build is redone and a finished one
    reused. Vocabularies are built from the clean worlds; the noisy metadata uses the full one."""
    layout, settings = ab.layout, ab.settings
    workers = str(max(1, os.cpu_count() or 1))
    python = sys.executable
    for world in dict.fromkeys(arm.world for arm in arms):
        build_input(layout.world(world), [python, "scripts/make_synthetic.py", "--out", str(layout.world(world)),
                                          "--images", str(settings.world_images_of(world)), "--seed",
                                          str(WORLD_SEED), "--workers", workers, "--no-progress",
                                          *(["--long-tail"] if world == "longtail" else [])], ab.processes)
    for arm in unique_inputs(arms):
        vocab = layout.vocab(arm)
        top_k = settings.small_vocab if arm.small_vocab else FULL_VOCAB_CAP
        build_input(vocab, [python, "scripts/build_vocab.py", "--source", "yfcc100m", "--input",
                            str(layout.world(arm.world) / "yfcc100m_dataset.tsv"), "--top-k", str(top_k),
                            "--min-count", str(settings.min_count_of(arm.world)), "--out", str(vocab),
                            "--workers", workers], ab.processes)
        if arm.noise:
            labels = layout.noisy_labels(arm)
            build_input(labels, [python, "scripts/make_synthetic.py", "--out", str(labels), "--noisy-copy-of",
                                 str(layout.world(arm.world)), "--vocab", str(vocab), "--hashtag-noise",
                                 str(arm.noise), "--seed", str(WORLD_SEED)], ab.processes)
        shards = layout.shards(arm)
        build_input(shards, [python, "scripts/build_shards.py", "--source", "yfcc100m", "--input",
                             str(layout.metadata(arm)), "--images", str(layout.world(arm.world)), "--vocab", str(vocab),
                             "--out", str(shards), "--exclude-near", str(layout.downstream(arm.world) / "val"),
                             "--workers", workers], ab.processes)


def unique_inputs(arms: list[Arm]) -> list[Arm]:
    """One pretrained arm per distinct (world, noise, vocabulary): the shard sets to build."""
    seen: dict[tuple[str, float, bool], Arm] = {}
    for arm in arms:
        if arm.pretrained:
            seen.setdefault((arm.world, arm.noise, arm.small_vocab), arm)
    return list(seen.values())


def build_input(path: Path, command: list[str], processes: Processes) -> None:
    marker = path.with_name(path.name + ".done")
    if marker.is_file():
        tqdm.write(f"input {path.name}: reused")
        return
    if path.name.startswith(("world-", "labels-")) and path.exists():
        shutil.rmtree(path)  # an interrupted world: make_synthetic refuses a directory without world.json
    tqdm.write(f"input {path.name}: building ($ {shlex.join(command[1:])})")
    log = path.with_name(path.name + ".log")
    try:
        seconds = run_stage(processes, f"building {path.name}", command, log, child_env(1))
    except StageFailed as err:
        raise UserError(f"{err}; fix the cause and rerun the same command") from None
    write_json(marker, {"command": shlex.join(command), "seconds": round(seconds, 1)})
    tqdm.write(f"input {path.name}: built in {seconds:.0f} s")


# --- one cell ----------------------------------------------------------------------------------

def pretrain_command(cell: Cell, ab: Ablation) -> list[str]:
    arm, shards, recipe = cell.arm, ab.layout.shards(cell.arm), ab.recipe
    launcher = ([sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={ab.ranks}"]
                if ab.ranks > 1 else [sys.executable])
    # Gradient accumulation keeps the recipe's global batch (and its per-rank BN batch) on fewer ranks.
    accumulation = recipe.optim.grad_accum * RECIPE_RANKS // ab.ranks
    warmup = min(recipe.optim.warmup_images, ab.args.pretrain_images // 4)
    overrides = [f"data.train={shards}", f"data.val={shards}", f"run.dir={ab.layout.cell(cell)}",
                 "run.name=pretrain", f"run.seed={cell.seed}",
                 f"data.sampling.q={'null' if arm.q is None else arm.q}", f"loss.name={arm.loss}",
                 f"optim.total_images={ab.args.pretrain_images}", f"optim.warmup_images={warmup}",
                 f"optim.grad_accum={accumulation}", "eval.every_images=null", "tracking.wandb=disabled"]
    if ab.args.image_size:
        overrides.append(f"data.image_size={ab.args.image_size}")
    return [*launcher, "-m", "pretrain", "--config", str(ab.layout.recipe("pretrain")), *overrides]


def transfer_command(kind: str, cell: Cell, ab: Ablation) -> list[str]:
    layout, size = ab.layout, ab.args.image_size
    trunk = layout.cell(cell) / "pretrain" / TRUNK_FILE if cell.arm.pretrained else "null"
    downstream = layout.downstream(cell.arm.world)
    overrides = [f"init={trunk}", f"data.train={downstream / 'train'}", f"data.val={downstream / 'val'}",
                 f"run.dir={layout.cell(cell)}", f"run.name={kind}",
                 f"run.seed={cell.seed}", f"model.name={ab.recipe.model.name}", "data.workers=1",
                 "tracking.wandb=disabled"]
    if size:
        overrides += [f"data.image_size={size}", f"data.resize_size={round(size * 256 / 224)}"]
    return [sys.executable, "-m", "transfer", kind, "--config", str(layout.recipe(kind)), *overrides]


STAGE_OUTPUT = {"linear": "linear.json", "finetune": "summary.json"}  # written last by each transfer command


def finished_result(cell: Cell, ab: Ablation) -> dict[str, Any] | None:
    result = read_json(ab.layout.cell(cell) / RESULT_FILE)
    if result is None or result.get("settings") != ab.settings.digest():
        return None
    return result


def run_cell(cell: Cell, ab: Ablation) -> dict[str, Any]:
    """Pretrain (unless random-init), probe, optionally fine-tune; a stage whose output is already
    there is reused, so an interrupted cell resumes where it stopped. result.json is written last."""
    directory = ab.layout.cell(cell)
    log = directory / "log.txt"
    seconds: dict[str, float] = {}
    started = utc_now()
    if cell.arm.pretrained and not (directory / "pretrain" / TRUNK_FILE).is_file():
        for kind in STAGE_OUTPUT:  # transfer results of an earlier trunk would pass for this one's
            shutil.rmtree(directory / kind, ignore_errors=True)
        # One intra-op thread per process: the loader's decode worker takes the rest of the cell's share.
        seconds["pretrain"] = run_stage(ab.processes, f"{cell.name}: pretraining", pretrain_command(cell, ab), log,
                                        child_env(1))
    for kind in ("linear", "finetune") if ab.settings.finetune else ("linear",):
        if not (directory / kind / STAGE_OUTPUT[kind]).is_file():
            seconds[kind] = run_stage(ab.processes, f"{cell.name}: {kind}", transfer_command(kind, cell, ab), log,
                                      child_env(ab.threads_per_cell()))
    result = collect_result(cell, ab, seconds)
    result["ran"] = {"started": started, "finished": utc_now()}  # this invocation's part of the cell
    write_json(directory / RESULT_FILE, result)
    return result


def utc_now() -> str:
    return datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def collect_result(cell: Cell, ab: Ablation, seconds: dict[str, float]) -> dict[str, Any]:
    directory = ab.layout.cell(cell)
    linear = read_json(directory / "linear" / "linear.json")
    if linear is None:
        raise StageFailed(f"{cell.name}: {directory / 'linear' / 'linear.json'} is missing or unreadable")
    result: dict[str, Any] = {
        "cell": cell.name, "arm": asdict(cell.arm), "seed": cell.seed, "settings": ab.settings.digest(),
        "linear": {"top1": linear["val"]["top1"], "top5": linear["val"]["top5"],
                   "weight_decay": linear["weight_decay"], "val_images": linear["val_images"]},
        "seconds": {k: round(v, 1) for k, v in seconds.items()},
    }
    if cell.arm.pretrained:
        vocab = read_json(ab.layout.vocab(cell.arm)) or {}
        summary = read_json(directory / "pretrain" / "summary.json") or {}
        result["num_labels"] = vocab.get("num_labels")
        result["pretrain"] = {key: summary[key] for key in ("images_seen", "steps", "eval/precision_at_1",
                                                            "eval/recall_at_5", "eval/mAP", "label_distribution_tv")
                              if key in summary}
        loss = final_training_loss(directory / "pretrain" / "metrics.jsonl")
        if loss is not None:
            result["pretrain"]["final_loss"] = loss
        if cell.arm.noise:
            noise = read_json(ab.layout.noisy_labels(cell.arm) / "noise.json") or {}
            result["realised_noise"] = noise.get("realised_rate")
    if ab.settings.finetune:
        summary = read_json(directory / "finetune" / "summary.json") or {}
        if "last_top1" not in summary:
            raise StageFailed(f"{cell.name}: {directory / 'finetune' / 'summary.json'} has no last_top1")
        result["finetune"] = {"top1": summary["last_top1"], "top5": summary.get("last_top5"),
                              "best_top1": summary.get("best_top1")}
    return result


def final_training_loss(metrics: Path, last: int = 4) -> float | None:
    """The mean training loss of the last ``last`` log steps of a run's metrics.jsonl."""
    try:
        lines = metrics.read_text(encoding="utf-8").splitlines()
    except OSError:
        return None
    losses = []
    for line in lines:
        try:
            record = json.loads(line)
        except ValueError:
            continue
        if isinstance(record, dict) and isinstance(record.get("loss"), (int, float)) and math.isfinite(record["loss"]):
            losses.append(float(record["loss"]))
    return float(np.mean(losses[-last:])) if losses else None


# --- the schedule ------------------------------------------------------------------------------

@dataclass
class Tally:
    total: int
    reused: int
    started: float = field(default_factory=time.perf_counter)
    ran: int = 0
    failed: int = 0
    busy_seconds: float = 0.0

    def elapsed(self) -> str:
        return clock(time.perf_counter() - self.started)

    def eta(self, jobs: int) -> str:
        """Cells left x the mean time of the cells run so far / cells at once."""
        if not self.ran:
            return "?"
        return clock((self.total - self.reused - self.ran - self.failed) * self.busy_seconds / self.ran / jobs)


def clock(seconds: float) -> str:
    minutes, secs = divmod(int(seconds), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h{minutes:02d}m" if hours else f"{minutes}m{secs:02d}s"


def run_cells(cells: list[Cell], ab: Ablation) -> tuple[list[dict], list[str]]:
    """Every cell, finished ones reused, the rest ``ab.jobs`` at a time; (results, failure lines)."""
    results = [r for r in (finished_result(cell, ab) for cell in cells) if r is not None]
    done = {r["cell"] for r in results}
    queue = [cell for cell in cells if cell.name not in done]
    tally = Tally(total=len(cells), reused=len(results))
    tqdm.write(f"{len(cells)} cells: {tally.reused} reused (finished earlier), {len(queue)} to run, "
               f"{ab.jobs} at a time x {ab.ranks} pretraining process(es)")
    failures: list[str] = []
    pending: dict[Future, tuple[Cell, float]] = {}
    with tqdm(total=len(queue), unit="cell", desc="cells", dynamic_ncols=True) as bar, \
            ThreadPoolExecutor(max_workers=ab.jobs) as pool:
        try:
            while queue or pending:
                while queue and len(pending) < ab.jobs:
                    cell = queue.pop(0)
                    tqdm.write(f"[{tally.elapsed()}] start {cell.name}")
                    pending[pool.submit(run_cell, cell, ab)] = (cell, time.perf_counter())
                finished, _ = wait(pending, return_when=FIRST_COMPLETED)
                for future in finished:
                    cell, began = pending.pop(future)
                    report_cell(future, cell, began, tally, ab.jobs, results, failures)
                    bar.update(1)
        except BaseException:
            tqdm.write(f"[{tally.elapsed()}] stopping: ending {len(pending)} running cell(s); rerun the same "
                       "command to resume them")
            ab.processes.stop()  # the worker threads return once their child processes are gone
            raise
    return results, failures


def report_cell(future: Future, cell: Cell, began: float, tally: Tally, jobs: int, results: list[dict],
                failures: list[str]) -> None:
    took = time.perf_counter() - began
    try:
        result = future.result()
    except StageFailed as err:
        tally.failed += 1
        failures.append(str(err))
        tqdm.write(f"[{tally.elapsed()}] FAILED {cell.name}: {err}")
        return
    tally.ran += 1
    tally.busy_seconds += took
    results.append(result)
    extra = f", fine-tune top-1 {result['finetune']['top1']:.2f}%" if "finetune" in result else ""
    tqdm.write(f"[{tally.elapsed()}] done {cell.name}: linear top-1 {result['linear']['top1']:.2f}%{extra} in "
               f"{clock(took)}; {tally.ran + tally.reused}/{tally.total} cells finished, ETA {tally.eta(jobs)}")


# --- statistics --------------------------------------------------------------------------------

def summarise(values: list[float]) -> dict[str, Any]:
    """Mean, sample standard deviation (n - 1) and the half-width of the 95 % t interval of the mean
    (t quantile at n - 1 degrees of freedom x std / sqrt(n)); std and interval None for one seed."""
    arr = np.asarray(values, dtype=float)
    n = len(arr)
    std = float(arr.std(ddof=1)) if n > 1 else None
    half = float(t_quantile(n - 1) * std / math.sqrt(n)) if std is not None else None
    return {"mean": float(arr.mean()), "std": std, "ci95": half, "n": n}


def t_quantile(dof: int) -> float:
    from scipy.stats import t  # noqa: PLC0415 - scipy only where the statistics are written

    return float(t.ppf(0.5 + CONFIDENCE / 2, dof))


def by_arm(results: list[dict], metric: str) -> dict[str, list[tuple[int, float]]]:
    """Arm name -> [(seed, top-1)], sorted by seed."""
    grouped: dict[str, list[tuple[int, float]]] = {}
    for result in results:
        if metric in result:
            grouped.setdefault(result["arm"]["name"], []).append((result["seed"], result[metric]["top1"]))
    return {name: sorted(values) for name, values in grouped.items()}


def verdict(better: list[tuple[int, float]], worse: list[tuple[int, float]]) -> dict[str, Any] | None:
    """The paper's claim "better > worse" against the cells: the difference of means with its 95 %
    t interval, paired by seed over the seeds both arms ran (every cell of a seed shares the run
    seed: initialisation, data order, probe); "holds" when the interval lies above 0, "reversed"
    when below, "not resolved at this scale" when it holds 0. None with fewer than 2 shared seeds."""
    a, b = dict(better), dict(worse)
    seeds = sorted(set(a) & set(b))
    if len(seeds) < 2:
        return None
    stats = summarise([a[s] - b[s] for s in seeds])
    low, high = stats["mean"] - stats["ci95"], stats["mean"] + stats["ci95"]
    word = "holds" if low > 0 else "reversed" if high < 0 else "not resolved at this scale"
    return {"verdict": word, "difference": stats["mean"], "ci95": [low, high], "paired_seeds": seeds}


# --- hashtag metrics and their constant-guess baselines ------------------------------------------

def val_label_rows(shards: Path) -> list[list[int]]:
    """The label ids of every image in a shard directory's val split (val-*.tar, the json members)."""
    rows = []
    for tar in sorted(shards.glob("val-*.tar")):
        with tarfile.open(tar, "r:") as archive:
            for member in archive:
                if member.isfile() and member.name.endswith(".json"):
                    handle = archive.extractfile(member)
                    labels = parse_json(handle.read()).get("labels", []) if handle else []
                    rows.append(sorted({int(x) for x in labels}))
    return rows


def constant_baselines(shards: Path, num_labels: int) -> dict[str, float] | None:
    """What a predictor that knows only the val split's label frequencies scores on it: precision@1
    and recall@5 of always ranking the most frequent tags first (over the images with a label, as
    pretrain/evaluation.py counts them), and the loss of predicting the frequencies themselves, the
    best constant for each loss: softmax, the mean target (1/k on each of an image's k labels),
    averaged over labelled images; sigmoid, each label's share of images, summed over labels and
    averaged over all images (the form of pretrain/loss.py)."""
    rows = val_label_rows(shards)
    labelled = [r for r in rows if r]
    if not labelled:
        return None
    images = np.zeros(num_labels)
    target = np.zeros(num_labels)
    for row in labelled:
        images[row] += 1
        target[row] += 1.0 / len(row)
    top = np.argsort(-images, kind="stable")
    precision = images[top[0]] / len(labelled)
    top5 = set(top[:5].tolist())
    recall = float(np.mean([len(top5 & set(r)) / len(r) for r in labelled]))
    softmax_p = target / len(labelled)
    softmax = -float(np.mean([np.log(softmax_p[r]).mean() for r in labelled]))
    share = np.clip(images / len(rows), 1e-12, 1 - 1e-12)
    sigmoid = -float((images * np.log(share) + (len(rows) - images) * np.log1p(-share)).sum() / len(rows))
    return {"precision_at_1": float(precision), "recall_at_5": recall, "loss_softmax": softmax,
            "loss_sigmoid": sigmoid, "val_images": len(rows), "labelled_val_images": len(labelled)}


def hashtag_baselines(arms: list[Arm], ab: Ablation) -> dict[str, dict[str, float]]:
    """Per shard set (by name), its constant-guess baselines."""
    out: dict[str, dict[str, float]] = {}
    for arm in unique_inputs(arms):
        shards = ab.layout.shards(arm)
        vocab = read_json(ab.layout.vocab(arm)) or {}
        if shards.is_dir() and vocab.get("num_labels"):
            baselines = constant_baselines(shards, int(vocab["num_labels"]))
            if baselines is not None:
                out[shards.name] = baselines
    return out


# --- the table, the plot, the json -------------------------------------------------------------

def level_label(factor: Factor, level: Level, results: list[dict], settings: Settings) -> str:
    """The vocabulary levels say how they were chosen and how many labels they had; the noise levels
    their realised rate."""
    arm = level.arm
    if factor.key == "noise" and arm.noise:
        rates = sorted({round(r["realised_noise"], 4) for r in results
                        if r["arm"]["name"] == arm.name and r.get("realised_noise") is not None})
        return f"{level.value} (realised {'/'.join(f'{100 * x:.1f} %' for x in rates) or '?'})"
    if factor.key != "vocab":
        return level.value
    sizes = sorted({r["num_labels"] for r in results if r["arm"]["name"] == arm.name and r.get("num_labels")})
    rule = (f"top-{settings.small_vocab}" if arm.small_vocab
            else f"full (>= {settings.min_count_of(arm.world)} images)")
    return f"{rule}: {'/'.join(map(str, sizes)) or '?'} labels"


def interval(stats: dict[str, Any], digits: int = 1) -> str:
    return f"{stats['mean']:.{digits}f} ± {stats['ci95']:.{digits}f}" if stats["ci95"] is not None \
        else f"{stats['mean']:.{digits}f} (1 seed)"


def table_lines(factors: list[Factor], results: list[dict], metric: str, settings: Settings) -> list[str]:
    grouped = by_arm(results, metric)
    lines = [f"| factor | value | what it means | {METRICS[metric]} top-1 (%), mean ± 95 % CI | seeds | "
             "per seed (seed: top-1) |", "|---|---|---|---|---|---|"]

    def row(factor: str, value: str, arm: Arm, meaning: str) -> str:
        values = grouped.get(arm.name, [])
        if not values:
            return f"| {factor} | {value} | {meaning} | not run yet | 0 | |"
        mark = " (baseline)" if arm in BASELINES.values() else ""
        return (f"| {factor} | {value}{mark} | {meaning} | {interval(summarise([v for _, v in values]))} | "
                f"{len(values)} | {', '.join(f'{s}: {v:.1f}' for s, v in values)} |")

    worlds = []
    for factor in factors:
        worlds += [factor.world] if factor.world not in worlds else []
        for i, level in enumerate(factor.levels):
            lines.append(row(factor.title if i == 0 else "", level_label(factor, level, results, settings),
                             level.arm, level.meaning))
    for world in worlds:
        lines.append(row("reference", f"random-init trunk, {world} world", RANDOM_INIT[world],
                         "the same probe on an untrained trunk: the floor pretraining has to clear"))
    return lines


def verdict_lines(results: list[dict], metric: str) -> tuple[list[str], list[dict[str, Any]]]:
    grouped = by_arm(results, metric)
    lines = ["| the paper's claim | verdict here | difference (points), 95 % CI | seeds (paired) |",
             "|---|---|---|---|"]
    records = []
    for claim, better, worse in CLAIMS:
        if better not in grouped or worse not in grouped:
            continue
        found = verdict(grouped[better], grouped[worse])
        if found is None:
            lines.append(f"| {claim} | fewer than 2 shared seeds | | |")
            continue
        low, high = found["ci95"]
        lines.append(f"| {claim} | **{found['verdict']}** | {better} − {worse}: {found['difference']:+.1f} "
                     f"[{low:+.1f}, {high:+.1f}] | {' '.join(map(str, found['paired_seeds']))} |")
        records.append({"claim": claim, "better": better, "worse": worse, **found})
    return lines, records


def hashtag_lines(arms: list[Arm], results: list[dict], baselines: dict[str, dict[str, float]],
                  layout: Layout) -> list[str]:
    lines = ["| configuration | loss | precision@1, mean ± 95 % CI | constant guess | final training loss | "
             "frequency-only loss on val | label_distribution_tv | seeds |", "|---|---|---|---|---|---|---|---|"]
    for arm in arms:
        cells = [r for r in results if r["arm"]["name"] == arm.name and "pretrain" in r]
        if not arm.pretrained or not cells:
            continue
        base = baselines.get(layout.shards(arm).name, {})
        precision = [r["pretrain"]["eval/precision_at_1"] for r in cells if "eval/precision_at_1" in r["pretrain"]]
        losses = [r["pretrain"]["final_loss"] for r in cells if "final_loss" in r["pretrain"]]
        tvs = [r["pretrain"]["label_distribution_tv"] for r in cells if "label_distribution_tv" in r["pretrain"]]
        constant = base.get("precision_at_1")
        frequency = base.get(f"loss_{arm.loss}")
        lines.append(
            f"| {arm.name} | {arm.loss} | {interval(summarise(precision), 3) if precision else '?'} | "
            f"{f'{constant:.3f}' if constant is not None else '?'} | "
            f"{interval(summarise(losses), 2) if losses else '?'} | "
            f"{f'{frequency:.2f}' if frequency is not None else '?'} | "
            f"{f'{np.mean(tvs):.3f}' if tvs else 'n/a'} | {len(cells)} |")
    return lines


def header_lines(ab: Ablation, seconds: float, results: list[dict]) -> list[str]:
    args, recipe, settings = ab.args, ab.recipe, ab.settings
    lines = [
        "# Ablations at demo scale", "",
        f"- command: `{shlex.join(['python', 'scripts/ablate.py', *args.argv])}`",
        f"- written: {utc_now()}; wall time of this invocation {clock(seconds)}",
        f"- hardware: {os.cpu_count()} CPU cores (os.cpu_count()), no GPU ({platform.machine()}); "
        f"{ab.jobs} cell(s) at a time, {ab.ranks} pretraining process(es) per cell",
        f"- budget per cell: {settings.pretrain_images:,} pretraining images with {_rel(RECIPES['pretrain'])} "
        f"({recipe.model.name}, {args.image_size or recipe.data.image_size} px, global batch "
        f"{recipe.data.batch_size * RECIPE_RANKS * recipe.optim.grad_accum}, {recipe.optim.schedule} lr; "
        f"copy in {_rel(ab.layout.recipe('pretrain'))}), then {_rel(RECIPES['linear'])}"
        + (f" and {_rel(RECIPES['finetune'])}" if settings.finetune else ""),
    ]
    for world in WORLDS:
        root = ab.layout.downstream(world)
        if not root.is_dir():
            continue
        counts = downstream_counts(root)
        kind = "make_synthetic.py --long-tail" if world == "longtail" else "the demo's defaults"
        lines.append(f"- {world} world: {settings.world_images_of(world):,} photos ({kind}, seed {WORLD_SEED}), "
                     f"vocabulary min-count {settings.min_count_of(world)}; downstream {counts['classes']} classes, "
                     f"{counts['train']} train / {counts['val']} val images")
    lines += [
        "- noise levels: the clean world's pictures and vocabulary, each label of an image replaced with "
        "probability p by a draw from the label marginal (make_synthetic.py --noisy-copy-of)",
        f"- metric: downstream top-1 (%) on the val images, mean ± the half-width of the {CONFIDENCE:.0%} "
        "t interval over seeds (scipy.stats.t, n - 1 degrees of freedom); the seed is the run seed of "
        "pretraining and transfer",
        "",
        "Which parts ran when (UTC, the day each cell finished; a rerun into the same --out resumes):", "",
        *ran_when(results), "",
    ]
    return lines


def ran_when(results: list[dict]) -> list[str]:
    days: dict[str, list[str]] = {}
    for result in sorted(results, key=lambda r: r.get("ran", {}).get("finished", "")):
        day = result.get("ran", {}).get("finished", "unknown")[:10]
        days.setdefault(day, []).append(result["cell"])
    return [f"- {day}: {len(cells)} cell(s): {', '.join(cells)}" for day, cells in days.items()]


def downstream_counts(root: Path) -> dict[str, int]:
    counts = {split: sum(1 for p in (root / split).rglob("*") if p.is_file()) for split in ("train", "val")}
    counts["classes"] = sum(1 for p in (root / "train").iterdir() if p.is_dir())
    return counts


def _rel(path: Path) -> str:
    try:
        return str(Path(path).resolve().relative_to(REPO))
    except ValueError:
        return str(path)


def plot(factors: list[Factor], results: list[dict], metric: str, settings: Settings, path: Path,
         pretrain_images: int) -> None:
    """One panel per factor: mean ± 95 % CI per level, every seed as a dot, the world's random-init
    mean dashed."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    grouped = by_arm(results, metric)
    figure, axes = plt.subplots(1, len(factors), figsize=(3.6 * len(factors), 3.8), sharey=True, squeeze=False)
    for ax, factor in zip(axes[0], factors):
        for x, level in enumerate(factor.levels):
            values = [v for _, v in grouped.get(level.arm.name, [])]
            if not values:
                continue
            stats = summarise(values)
            ax.errorbar([x], [stats["mean"]], yerr=[stats["ci95"] or 0.0], fmt="o", color="C0", capsize=5,
                        markersize=7, label="mean ± 95 % CI" if x == 0 else None)
            offsets = np.linspace(-0.1, 0.1, len(values)) if len(values) > 1 else np.zeros(1)
            ax.scatter(x + 0.25 + offsets, values, s=12, color="C1", zorder=3, label="seeds" if x == 0 else None)
        random_values = [v for _, v in grouped.get(RANDOM_INIT[factor.world].name, [])]
        if random_values:
            ax.axhline(float(np.mean(random_values)), color="grey", linestyle="--", linewidth=1,
                       label="random-init trunk")
        labels = [level_label(factor, level, results, settings).replace(": ", "\n").replace(" (", "\n(")
                  for level in factor.levels]
        ax.set_xticks(range(len(factor.levels)), labels, fontsize=7)
        ax.set_xlim(-0.5, len(factor.levels) - 0.3)
        ax.set_title(factor.title, fontsize=9)
        ax.grid(axis="y", alpha=0.3)
    axes[0][0].set_ylabel(f"downstream {METRICS[metric]} top-1 (%)")
    axes[0][0].legend(fontsize=7, loc="lower left")
    figure.suptitle(f"{pretrain_images:,} pretraining images per cell", fontsize=9)
    figure.tight_layout()
    save_figure(figure, path, dpi=110)
    plt.close(figure)


def write_outputs(factors: list[Factor], arms: list[Arm], results: list[dict], ab: Ablation,
                  seconds: float) -> list[Path]:
    out, settings = ab.layout.out, ab.settings
    metrics = ["linear", "finetune"] if settings.finetune else ["linear"]
    baselines = hashtag_baselines(arms, ab)
    lines = header_lines(ab, seconds, results)
    verdicts: dict[str, list[dict[str, Any]]] = {}
    for metric in metrics:
        claims, verdicts[metric] = verdict_lines(results, metric)
        lines += [f"## Downstream top-1 of the {METRICS[metric]} (higher is better)", "",
                  *table_lines(factors, results, metric, settings), "",
                  f"### The paper's claims against the {METRICS[metric]}", "",
                  "Holds: the 95 % t interval of the seed-paired difference lies above 0; reversed: below 0; "
                  "not resolved at this scale: it holds 0.", "", *claims, ""]
    lines += ["## Hashtag prediction on the held-out shards, beside constant guesses", "",
              "Constant guess: precision@1 of always predicting the val split's most frequent tag. "
              "Frequency-only loss: the loss (of the configuration's loss function) of predicting the val "
              "split's label frequencies for every image; the training loss (mean of the last 4 log steps) "
              "is measured on the training stream, resampled unless natural. label_distribution_tv: the "
              "pretraining run's distance between the sampled and the target label distribution.", "",
              *hashtag_lines(arms, results, baselines, ab.layout), ""]
    pngs = [out / ("ablations.png" if metric == "linear" else f"ablations_{metric}.png") for metric in metrics]
    lines += [f"Plots: {', '.join(f'`{p.name}`' for p in pngs)}; every cell's figures: `ablations.json`.", ""]
    write_text(out / "ablations.md", "\n".join(lines))
    summary = {metric: {name: {**summarise([v for _, v in values]), "values": {str(s): v for s, v in values}}
                        for name, values in by_arm(results, metric).items()} for metric in metrics}
    write_json(out / "ablations.json", {"settings": {**settings.to_dict(), "digest": settings.digest()},
                                        "summary": summary, "verdicts": verdicts,
                                        "hashtag_baselines": baselines,
                                        "cells": sorted(results, key=lambda r: (r["arm"]["name"], r["seed"]))})
    for metric, png in zip(metrics, pngs):
        plot(factors, results, metric, settings, png, settings.pretrain_images)
    return [out / "ablations.md", out / "ablations.json", *pngs]


def estimate_minutes(cells: list["Cell"], pretrain_images: int) -> float:
    """The run's cost on the project's 2-core machine, from the measured minutes per cell."""
    scale = pretrain_images / MINUTES_PER_CELL_IMAGES
    return sum(MINUTES_PER_CELL["pretrained"] * scale if c.arm.pretrained else MINUTES_PER_CELL["random-init"]
               for c in cells)


# --- the command -------------------------------------------------------------------------------

def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    cores = os.cpu_count() or 1
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=REPO / "runs" / "ablate",
                        help="output directory; rerunning into it reuses finished work (default runs/ablate)")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3, 4], help="run seeds (default 0 1 2 3 4)")
    parser.add_argument("--only", metavar="FACTORS",
                        help=f"comma-separated subset of {','.join(FACTOR_KEYS)} (default: all); each world's "
                             "baseline and random-init reference run with its factors")
    parser.add_argument("--pretrain-images", type=int, default=60_000,
                        help="pretraining budget per cell in images, all ranks together (default 60000; the demo trains 150000)")
    parser.add_argument("--world-images", type=int, default=20_000,
                        help="photos in the demo world (default 20000, as make demo)")
    parser.add_argument("--longtail-images", type=int, default=60_000,
                        help="photos in the long-tailed world (make_synthetic.py --long-tail; default 60000, enough "
                             "for ~20 tagged photos of the rarest concept)")
    parser.add_argument("--small-vocab", type=int, default=40, metavar="K",
                        help="size of the vocab factor's small vocabulary: the top-K hashtags (default 40)")
    parser.add_argument("--min-count", type=int, default=20,
                        help="images a hashtag needs to enter the demo world's vocabulary (default 20, as make demo)")
    parser.add_argument("--longtail-min-count", type=int, default=5,
                        help="the same for the long-tailed world (default 5, so that the tail concepts' tags, ~10-20 "
                             "photos each, are labels)")
    parser.add_argument("--image-size", type=int,
                        help="pretraining and probe crop side in pixels (default: the recipes')")
    parser.add_argument("--finetune", action="store_true",
                        help="also fine-tune every trunk (configs/transfer/cpu_demo_finetune.yaml) and report its "
                             "last-epoch top-1 in a second table and plot (several times the probe's time)")
    parser.add_argument("--ranks", type=int, choices=(1, 2), default=2,
                        help="pretraining processes per cell: 2 (torchrun, the default: measured faster on 2 cores "
                             "than two one-process cells at once, docs/ablations.md) or 1 (python -m pretrain); "
                             "the global batch is the recipe's either way")
    parser.add_argument("--jobs", type=int,
                        help=f"cells run at once (default: os.cpu_count() // --ranks, here {max(1, cores // 2)} "
                             "with --ranks 2)")
    args = parser.parse_args(argv)
    args.argv = list(sys.argv[1:] if argv is None else argv)
    return args


def check_args(args: argparse.Namespace) -> int:
    """Validate the options; returns the number of cells to run at once."""
    for flag in ("pretrain_images", "world_images", "longtail_images", "small_vocab", "min_count",
                 "longtail_min_count"):
        if getattr(args, flag) < 1:
            raise UserError(f"--{flag.replace('_', '-')} must be >= 1, got {getattr(args, flag)}")
    if args.image_size is not None and args.image_size < 8:
        raise UserError(f"--image-size must be >= 8, got {args.image_size}")
    if len(set(args.seeds)) != len(args.seeds) or min(args.seeds) < 0:
        raise UserError(f"--seeds must be distinct non-negative integers, got {' '.join(map(str, args.seeds))}")
    jobs = args.jobs if args.jobs is not None else max(1, (os.cpu_count() or 1) // args.ranks)
    if jobs < 1:
        raise UserError(f"--jobs must be >= 1, got {jobs}")
    return jobs


def _terminate(signum: int, frame: Any) -> None:
    raise SystemExit(128 + signum)  # unwinds main(), which ends the cells' child processes first


@cli_main
def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    jobs = check_args(args)
    signal.signal(signal.SIGTERM, _terminate)
    started = time.perf_counter()
    factors = selected_factors(args.only)
    arms = arms_of(factors)
    layout = Layout(args.out.resolve())
    settings = Settings(args.world_images, args.longtail_images, args.pretrain_images, args.image_size,
                        args.min_count, args.longtail_min_count, args.small_vocab, args.finetune, resolved_recipes())
    claim_out(layout, settings)
    recipe = config_from_dict(settings.recipes["pretrain"], source=str(layout.recipe("pretrain")))
    ab = Ablation(layout, args, settings, recipe, jobs, args.ranks, Processes())
    cells = [Cell(arm, seed) for seed in args.seeds for arm in arms]  # seed-major: early results span the arms
    references = sum(not arm.pretrained for arm in arms)
    tqdm.write(f"ablations: {len(arms) - references} configurations + {references} random-init reference(s) x "
               f"{len(args.seeds)} seed(s) = {len(cells)} cells into {layout.out}; on 2 cores, one cell at a time, "
               f"about {clock(60 * estimate_minutes(cells, args.pretrain_images))} for all of them "
               f"({MINUTES_PER_CELL['pretrained']:.1f} min per pretraining cell at "
               f"{MINUTES_PER_CELL_IMAGES:,} images, docs/ablations.md) plus the inputs")
    build_inputs(arms, ab)
    results, failures = run_cells(cells, ab)
    paths = write_outputs(factors, arms, results, ab, time.perf_counter() - started)
    tqdm.write(f"wrote {', '.join(map(str, paths))} in {clock(time.perf_counter() - started)}")
    if failures:
        raise UserError(f"{len(failures)} of {len(cells)} cells failed (first: {failures[0]}); the table holds the "
                        "others; rerun the same command to retry the failed ones")


if __name__ == "__main__":
    main()
