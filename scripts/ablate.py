#!/usr/bin/env python
"""The paper's main ablations at demo scale: hashtag resampling q, softmax vs sigmoid loss, label
noise and vocabulary size, each measured as downstream top-1 over several seeds.

    python scripts/ablate.py --out runs/ablate                       # 7 configurations x 3 seeds
    python scripts/ablate.py --only q,loss --seeds 0 1 2 3 --jobs 1

A cell is one configuration at one seed: pretraining with the CPU demo recipe
(configs/pretrain/cpu_demo.yaml) on the synthetic world's shards, then a linear probe of the frozen
trunk on the world's downstream task (configs/transfer/cpu_demo_linear.yaml). The seed is the run
seed of both; the world itself is always seed 0. Configurations (the baseline is shared by every
factor):

    baseline   q 0.5, softmax, no label noise, full vocabulary (the demo recipe)
    q          q = 1 (natural frequencies) and q = 0 (uniform over hashtags)
    loss       per-hashtag sigmoid + binary cross-entropy
    noise      25 % and 50 % of concept tags replaced by a wrong concept (same images, other tags)
    vocab      only the --small-vocab most frequent hashtags

plus a random-init reference (the linear probe on an untrained trunk, per seed). Outputs in --out:
ablations.md (the table), ablations.png (one panel per factor), ablations.json (every cell), and
per cell cells/<config>-seed<s>/ (runs, log.txt, result.json). Rerunning the same command reuses
finished inputs and cells and resumes unfinished ones (a pretraining run resumes from its last
checkpoint).

Parallelism: --jobs cells run at once, each pretraining on --ranks processes. Measured on this
project's 2-core machine (docs/ablations.md), one cell at a time on two torchrun ranks trained
faster than two cells at once on one process each (303-314 vs 212-252 img/s in total), so the
default is --ranks 2 and --jobs os.cpu_count() // 2. Either way the recipe is the same: on one rank, gradient accumulation keeps the
recipe's global batch (its batch per rank x 2 ranks) and per-rank BN batch.
"""
from __future__ import annotations

import argparse
import datetime
import hashlib
import json
import os
import platform
import shlex
import shutil
import signal
import subprocess
import sys
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
from data.figure_png import save_figure  # noqa: E402
from pretrain.checkpoint import TRUNK_FILE  # noqa: E402
from pretrain.config import PretrainConfig, config_from_dict, config_to_dict, load_config  # noqa: E402
from transfer.config import TransferConfig  # noqa: E402

RECIPES = {"pretrain": REPO / "configs" / "pretrain" / "cpu_demo.yaml",
           "linear": REPO / "configs" / "transfer" / "cpu_demo_linear.yaml",
           "finetune": REPO / "configs" / "transfer" / "cpu_demo_finetune.yaml"}
RECIPE_RANKS = 2  # cpu_demo.yaml's data.batch_size is per rank for two ranks (a global batch of 128)
WORLD_SEED = 0
FULL_VOCAB_CAP = 1000  # the demo's --top-k: in the default world, min-count binds long before the cap
RESULT_FILE = "result.json"
SETTINGS_FILE = "settings.json"
METRICS = {"linear": "linear probe", "finetune": "fine-tuning"}


# --- the grid ----------------------------------------------------------------------------------

@dataclass(frozen=True)
class Arm:
    """One pretraining configuration (a row of the table); ``pretrained=False`` is the random-init
    reference, which skips pretraining."""

    name: str
    q: float = 0.5
    loss: str = "softmax"
    noise: float = 0.0
    small_vocab: bool = False
    pretrained: bool = True


BASELINE = Arm("baseline")
RANDOM_INIT = Arm("random-init", pretrained=False)


@dataclass(frozen=True)
class Factor:
    key: str  # the --only name
    title: str
    levels: tuple[tuple[str, Arm], ...]  # (value as the table shows it, configuration), baseline included


FACTORS = (
    Factor("q", "resampling exponent q", (("1 (natural)", Arm("q1", q=1.0)), ("0.5 (square root)", BASELINE),
                                          ("0 (uniform)", Arm("q0", q=0.0)))),
    Factor("loss", "loss", (("softmax", BASELINE), ("sigmoid", Arm("sigmoid", loss="sigmoid")))),
    Factor("noise", "label noise", (("0 %", BASELINE), ("25 %", Arm("noise25", noise=0.25)),
                                    ("50 %", Arm("noise50", noise=0.5)))),
    # level_label spells out the vocabulary levels (rule and size).
    Factor("vocab", "vocabulary", (("full", BASELINE), ("small", Arm("small-vocab", small_vocab=True)))),
)
FACTOR_KEYS = tuple(f.key for f in FACTORS)


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
    """The configurations to run, each once, baseline first, then the random-init reference."""
    arms = [BASELINE]
    for factor in factors:
        arms.extend(arm for _, arm in factor.levels if arm not in arms)
    return arms + [RANDOM_INIT]


# --- settings, recipes and paths ---------------------------------------------------------------

@dataclass(frozen=True)
class Settings:
    """What a cell's result depends on besides its configuration and seed (the recipes resolved, so
    a comment edit is no change). A rerun into the same --out must use the same settings, or finished
    cells would be mixed with different ones."""

    world_images: int
    pretrain_images: int
    image_size: int | None
    min_count: int
    small_vocab: int
    finetune: bool
    recipes: dict[str, Any]

    def to_dict(self) -> dict[str, Any]:
        return json.loads(json.dumps(asdict(self), sort_keys=True))

    def digest(self) -> str:
        return hashlib.sha256(json.dumps(self.to_dict(), sort_keys=True).encode()).hexdigest()[:16]


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

    def world(self, noise: float) -> Path:
        return self.inputs() / f"world-noise{round(noise * 100)}"

    def _labelled(self, arm: Arm) -> str:
        return f"noise{round(arm.noise * 100)}-{'small' if arm.small_vocab else 'full'}"

    def vocab(self, arm: Arm) -> Path:
        return self.inputs() / f"vocab-{self._labelled(arm)}.json"

    def shards(self, arm: Arm) -> Path:
        return self.inputs() / f"shards-{self._labelled(arm)}"

    def downstream(self) -> Path:
        # Worlds of one seed share their images whatever the noise: every cell is scored on the same task.
        return self.world(0.0) / "downstream"

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
    """Each world, vocabulary and shard set the arms need, once; a ``<name>.done`` marker written
    last says it is complete, so an interrupted build is redone and a finished one reused."""
    layout, args = ab.layout, ab.args
    workers = str(max(1, os.cpu_count() or 1))
    python = sys.executable
    for noise in sorted({0.0, *(arm.noise for arm in arms)}):
        world = layout.world(noise)
        build_input(world, [python, "scripts/make_synthetic.py", "--out", str(world), "--images",
                            str(args.world_images), "--seed", str(WORLD_SEED), "--label-noise", str(noise),
                            "--workers", workers], ab.processes)
    for arm in unique_inputs(arms):
        world, vocab, shards = layout.world(arm.noise), layout.vocab(arm), layout.shards(arm)
        metadata = world / "yfcc100m_dataset.tsv"
        top_k = args.small_vocab if arm.small_vocab else FULL_VOCAB_CAP
        build_input(vocab, [python, "scripts/build_vocab.py", "--source", "yfcc100m", "--input", str(metadata),
                            "--top-k", str(top_k), "--min-count", str(args.min_count), "--out", str(vocab),
                            "--workers", workers], ab.processes)
        build_input(shards, [python, "scripts/build_shards.py", "--source", "yfcc100m", "--input", str(metadata),
                             "--images", str(world), "--vocab", str(vocab), "--out", str(shards),
                             "--exclude-near", str(layout.downstream() / "val"), "--workers", workers], ab.processes)


def unique_inputs(arms: list[Arm]) -> list[Arm]:
    """One pretrained arm per distinct (world, vocabulary) pair."""
    seen: dict[tuple[float, bool], Arm] = {}
    for arm in arms:
        if arm.pretrained:
            seen.setdefault((arm.noise, arm.small_vocab), arm)
    return list(seen.values())


def build_input(path: Path, command: list[str], processes: Processes) -> None:
    marker = path.with_name(path.name + ".done")
    if marker.is_file():
        tqdm.write(f"input {path.name}: reused")
        return
    if path.name.startswith("world-") and path.exists():
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
                 "run.name=pretrain", f"run.seed={cell.seed}", f"data.sampling.q={arm.q}", f"loss.name={arm.loss}",
                 f"optim.total_images={ab.args.pretrain_images}", f"optim.warmup_images={warmup}",
                 f"optim.grad_accum={accumulation}", "eval.every_images=null", "tracking.wandb=disabled"]
    if ab.args.image_size:
        overrides.append(f"data.image_size={ab.args.image_size}")
    return [*launcher, "-m", "pretrain", "--config", str(ab.layout.recipe("pretrain")), *overrides]


def transfer_command(kind: str, cell: Cell, ab: Ablation) -> list[str]:
    layout, size = ab.layout, ab.args.image_size
    trunk = layout.cell(cell) / "pretrain" / TRUNK_FILE if cell.arm.pretrained else "null"
    overrides = [f"init={trunk}", f"data.train={layout.downstream() / 'train'}",
                 f"data.val={layout.downstream() / 'val'}", f"run.dir={layout.cell(cell)}", f"run.name={kind}",
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
    write_json(directory / RESULT_FILE, result)
    return result


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
    if ab.settings.finetune:
        summary = read_json(directory / "finetune" / "summary.json") or {}
        if "last_top1" not in summary:
            raise StageFailed(f"{cell.name}: {directory / 'finetune' / 'summary.json'} has no last_top1")
        result["finetune"] = {"top1": summary["last_top1"], "top5": summary.get("last_top5"),
                              "best_top1": summary.get("best_top1")}
    return result


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


# --- the table, the plot, the json -------------------------------------------------------------

def summarise(values: list[float]) -> dict[str, Any]:
    """Mean and sample standard deviation (n - 1; None for a single seed)."""
    arr = np.asarray(values, dtype=float)
    return {"mean": float(arr.mean()), "std": float(arr.std(ddof=1)) if len(arr) > 1 else None, "n": len(arr)}


def by_arm(results: list[dict], metric: str) -> dict[str, list[tuple[int, float]]]:
    """Arm name -> [(seed, top-1)], sorted by seed."""
    grouped: dict[str, list[tuple[int, float]]] = {}
    for result in results:
        if metric in result:
            grouped.setdefault(result["arm"]["name"], []).append((result["seed"], result[metric]["top1"]))
    return {name: sorted(values) for name, values in grouped.items()}


def level_label(factor: Factor, label: str, arm: Arm, results: list[dict], args: argparse.Namespace) -> str:
    """The vocabulary levels say how they were chosen and how many labels they had."""
    if factor.key != "vocab":
        return label
    sizes = sorted({r["num_labels"] for r in results if r["arm"]["name"] == arm.name and r.get("num_labels")})
    rule = f"top-{args.small_vocab}" if arm.small_vocab else f"full (>= {args.min_count} images)"
    return f"{rule}: {'/'.join(map(str, sizes)) or '?'} labels"


def table_lines(factors: list[Factor], results: list[dict], metric: str, args: argparse.Namespace) -> list[str]:
    grouped = by_arm(results, metric)
    lines = [f"| factor | value | {METRICS[metric]} top-1 (%), mean ± std | seeds | per seed (seed: top-1) |",
             "|---|---|---|---|---|"]

    def row(factor: str, value: str, arm: Arm) -> str:
        values = grouped.get(arm.name, [])
        if not values:
            return f"| {factor} | {value} | not run yet | 0 | |"
        stats = summarise([v for _, v in values])
        mark = " (baseline)" if arm == BASELINE else ""
        spread = f"{stats['std']:.1f}" if stats["std"] is not None else "n/a (1 seed)"
        return (f"| {factor} | {value}{mark} | {stats['mean']:.1f} ± {spread} | {stats['n']} | "
                f"{', '.join(f'{s}: {v:.1f}' for s, v in values)} |")

    for factor in factors:
        for i, (label, arm) in enumerate(factor.levels):
            lines.append(row(factor.title if i == 0 else "", level_label(factor, label, arm, results, args), arm))
    lines.append(row("reference", "random-init trunk (no pretraining)", RANDOM_INIT))
    return lines


def header_lines(ab: Ablation, seconds: float) -> list[str]:
    args, recipe, downstream = ab.args, ab.recipe, downstream_counts(ab.layout)
    return [
        "# Ablations at demo scale", "",
        f"- command: `{shlex.join(['python', 'scripts/ablate.py', *args.argv])}`",
        f"- date: {datetime.date.today().isoformat()}; wall time of this invocation {clock(seconds)}",
        f"- hardware: {os.cpu_count()} CPU cores (os.cpu_count()), no GPU ({platform.machine()}); "
        f"{ab.jobs} cell(s) at a time, {ab.ranks} pretraining process(es) per cell",
        f"- budget per cell: {args.pretrain_images:,} pretraining images with {_rel(RECIPES['pretrain'])} "
        f"({recipe.model.name}, {args.image_size or recipe.data.image_size} px, global batch "
        f"{recipe.data.batch_size * RECIPE_RANKS * recipe.optim.grad_accum}, {recipe.optim.schedule} lr; "
        f"copy in {_rel(ab.layout.recipe('pretrain'))}), then {_rel(RECIPES['linear'])}"
        + (f" and {_rel(RECIPES['finetune'])}" if ab.settings.finetune else ""),
        f"- data: the synthetic world ({args.world_images:,} photos, seed {WORLD_SEED}; the label-noise worlds "
        f"have the same images, other tags); downstream: {downstream['classes']} classes, "
        f"{downstream['train']} train / {downstream['val']} val images",
        "- metric: downstream top-1 (%) on the val images, mean ± sample std (n-1) over seeds; the seed is the "
        "run seed of pretraining and transfer",
        "",
    ]


def downstream_counts(layout: Layout) -> dict[str, int]:
    root = layout.downstream()
    counts = {split: sum(1 for p in (root / split).rglob("*") if p.is_file()) for split in ("train", "val")}
    counts["classes"] = sum(1 for p in (root / "train").iterdir() if p.is_dir())
    return counts


def _rel(path: Path) -> str:
    try:
        return str(Path(path).resolve().relative_to(REPO))
    except ValueError:
        return str(path)


def plot(factors: list[Factor], results: list[dict], metric: str, args: argparse.Namespace, path: Path) -> None:
    """One panel per factor: mean ± std per level, every seed as a dot, the random-init mean dashed."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    grouped = by_arm(results, metric)
    figure, axes = plt.subplots(1, len(factors), figsize=(3.6 * len(factors), 3.8), sharey=True, squeeze=False)
    random_values = [v for _, v in grouped.get(RANDOM_INIT.name, [])]
    for ax, factor in zip(axes[0], factors):
        for x, (_, arm) in enumerate(factor.levels):
            values = [v for _, v in grouped.get(arm.name, [])]
            if not values:
                continue
            stats = summarise(values)
            ax.errorbar([x], [stats["mean"]], yerr=[stats["std"] or 0.0], fmt="o", color="C0", capsize=5, markersize=7,
                        label="mean ± std" if x == 0 else None)
            offsets = np.linspace(-0.1, 0.1, len(values)) if len(values) > 1 else np.zeros(1)
            ax.scatter(x + 0.25 + offsets, values, s=12, color="C1", zorder=3, label="seeds" if x == 0 else None)
        if random_values:
            ax.axhline(float(np.mean(random_values)), color="grey", linestyle="--", linewidth=1,
                       label="random-init trunk")
        labels = [level_label(factor, label, arm, results, args).replace(": ", "\n").replace(" (", "\n(")
                  for label, arm in factor.levels]
        ax.set_xticks(range(len(factor.levels)), labels, fontsize=8)
        ax.set_xlim(-0.5, len(factor.levels) - 0.3)
        ax.set_title(factor.title)
        ax.grid(axis="y", alpha=0.3)
    axes[0][0].set_ylabel(f"downstream {METRICS[metric]} top-1 (%)")
    axes[0][0].legend(fontsize=7, loc="lower left")
    figure.suptitle(f"{args.pretrain_images:,} pretraining images per cell", fontsize=9)
    figure.tight_layout()
    save_figure(figure, path, dpi=110)
    plt.close(figure)


def write_outputs(factors: list[Factor], results: list[dict], ab: Ablation, seconds: float) -> list[Path]:
    out, args = ab.layout.out, ab.args
    metrics = ["linear", "finetune"] if ab.settings.finetune else ["linear"]
    lines = header_lines(ab, seconds)
    for metric in metrics:
        lines += [f"## Downstream top-1 of the {METRICS[metric]} (higher is better)", "",
                  *table_lines(factors, results, metric, args), ""]
    pngs = [out / ("ablations.png" if metric == "linear" else f"ablations_{metric}.png") for metric in metrics]
    lines += [f"Plots: {', '.join(f'`{p.name}`' for p in pngs)}; every cell's figures: `ablations.json`.", ""]
    write_text(out / "ablations.md", "\n".join(lines))
    summary = {metric: {name: {**summarise([v for _, v in values]), "values": {str(s): v for s, v in values}}
                        for name, values in by_arm(results, metric).items()} for metric in metrics}
    write_json(out / "ablations.json", {"settings": {**ab.settings.to_dict(), "digest": ab.settings.digest()},
                                        "summary": summary,
                                        "cells": sorted(results, key=lambda r: (r["arm"]["name"], r["seed"]))})
    for metric, png in zip(metrics, pngs):
        plot(factors, results, metric, args, png)
    return [out / "ablations.md", out / "ablations.json", *pngs]


# --- the command -------------------------------------------------------------------------------

def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    cores = os.cpu_count() or 1
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=REPO / "runs" / "ablate",
                        help="output directory; rerunning into it reuses finished work (default runs/ablate)")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2], help="run seeds (default 0 1 2)")
    parser.add_argument("--only", metavar="FACTORS",
                        help=f"comma-separated subset of {','.join(FACTOR_KEYS)} (default: all); the baseline and "
                             "the random-init reference always run")
    parser.add_argument("--pretrain-images", type=int, default=60_000,
                        help="pretraining budget per cell in images, all ranks together (default 60000; the demo trains 150000)")
    parser.add_argument("--world-images", type=int, default=20_000,
                        help="photos in the synthetic world (default 20000, as make demo)")
    parser.add_argument("--small-vocab", type=int, default=40, metavar="K",
                        help="size of the vocab factor's small vocabulary: the top-K hashtags (default 40)")
    parser.add_argument("--min-count", type=int, default=20,
                        help="images a hashtag needs to enter a vocabulary (default 20, as make demo)")
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
    for flag in ("pretrain_images", "world_images", "small_vocab", "min_count"):
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
    settings = Settings(args.world_images, args.pretrain_images, args.image_size, args.min_count, args.small_vocab,
                        args.finetune, resolved_recipes())
    claim_out(layout, settings)
    recipe = config_from_dict(settings.recipes["pretrain"], source=str(layout.recipe("pretrain")))
    ab = Ablation(layout, args, settings, recipe, jobs, args.ranks, Processes())
    cells = [Cell(arm, seed) for seed in args.seeds for arm in arms]  # seed-major: early results span the arms
    tqdm.write(f"ablations: {len(arms) - 1} configurations + the random-init reference x {len(args.seeds)} seed(s) "
               f"into {layout.out}")
    build_inputs(arms, ab)
    results, failures = run_cells(cells, ab)
    paths = write_outputs(factors, results, ab, time.perf_counter() - started)
    tqdm.write(f"wrote {', '.join(map(str, paths))} in {clock(time.perf_counter() - started)}")
    if failures:
        raise UserError(f"{len(failures)} of {len(cells)} cells failed (first: {failures[0]}); the table holds the "
                        "others; rerun the same command to retry the failed ones")


if __name__ == "__main__":
    main()
