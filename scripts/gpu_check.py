"""The GPU acceptance check: one command that proves the CUDA path and measures it on one GPU.

    python scripts/gpu_check.py --out gpu-check       # one CUDA GPU, at most --time-limit (470 s)
    python scripts/gpu_check.py --dry-run --out dry   # the same steps at toy sizes on the CPU

Phases, in order; each records its own failure and the next runs anyway, each prints its budget
and the time left, and the whole run stops at --time-limit:

1. ``env``: versions, GPU, the precision flags in force.
2. ``tests``: ``pytest -m cuda`` on the test files holding cuda-marked tests (nvJPEG vs the CPU
   decoder, bf16 + channels_last steps, the non-finite skip on CUDA, a CUDA checkpoint loaded on
   the CPU, a one-rank nccl group). Meanwhile the CPU builds the synthetic world, vocabulary and
   shards of phase 4 in the background (``scripts/make_synthetic.py``, ``build_vocab.py``,
   ``build_shards.py``).
3. ``throughput``: pretraining's own step (:class:`pretrain.engine.Engine`) on ResNeXt-101 32x4d,
   32x8d and 32x16d at 224 px: fp32 NCHW eager and bf16 channels_last eager (plus one row with
   ``cudnn.benchmark`` on, which the trainer leaves off); synthetic uint8 batches, warm-up
   excluded, timed with CUDA events over rounds that alternate the step with and without the
   non-finite guard's buffer copy (its cost); peak memory. One child process per model.
4. ``e2e``: ``torchrun --nproc_per_node=1 -m pretrain`` (the single-GPU recipe) on those shards
   for about --e2e-seconds in all, once per --e2e entry (decoder and loader workers): images/s
   and ``data_wait`` from its metrics.jsonl, i.e. whether the loader keeps the GPU fed.
5. ``decode``: ``data.decode=cuda`` (nvJPEG, then crop and resize on the device) on one real shard
   of phase 4 against ``data.decode=cpu``: the same samples in the same order, and each image
   within DECODE_MAX_MAD grey levels (mean absolute difference) of the CPU path's. In the dry run
   it checks the CPU-only behaviour instead: ``decode=cuda`` is refused with its one-line error,
   ``decode=auto`` falls back to the CPU path (identical batches), and the device path's code
   runs with ``device="cpu"`` against the same tolerance.
6. ``compiled``: bf16 channels_last under ``torch.compile`` (inductor), model by model while
   time is left (compiling ResNeXt-101 takes a minute or more).

Every figure is one JSON line in ``<out>/results.jsonl``; ``<out>/summary.md`` holds the tables;
``<out>/*.log`` the output of the tests and runs. The exit status is 1 when a phase failed.

The dry run keeps every step on the CPU at toy sizes (resnext_micro, 32 px, a 48-picture world,
torchrun with gloo) and compiles with ``backend=aot_eager`` (graph capture without inductor's
code generation, which tests/pretrain/test_train.py exercises for real on the CPU); the cuda tests
skip with their reason. A test in ``make test`` runs it, so this script keeps working between
the rare occasions a GPU is at hand.

No network: on a bare machine without webdataset or simplejpeg, the wheels that ``make gpu-carry``
puts in build/gpu/wheels are unpacked into the scratch folder and put on the path (also of every
child); build/gpu/shared-data (a subset of ../shared/data) feeds the real-photo decode tests. wandb
is off (``tracking.wandb=disabled``). Runs on torch 2.11 as on the pinned 2.14.
"""
from __future__ import annotations

import argparse
import contextlib
import faulthandler
import importlib.util
import json
import os
import platform
import shlex
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import traceback
import xml.etree.ElementTree as ElementTree
import zipfile
from dataclasses import asdict, dataclass, replace
from unittest import mock
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Iterator

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import torch  # noqa: E402

CARRY = REPO / "build" / "gpu"  # made by `make gpu-carry`
RECIPE = REPO / "configs" / "pretrain" / "resnext101_32x8d_single_gpu.yaml"
CLASSES = 1500  # the IN-1k-aligned vocabulary's size
# NVIDIA DeepLearningExamples, PyTorch/Classification/ConvNets/resnext101-32x4d/README.md, "Training
# performance: NVIDIA DGX A100 (8x A100 80GB)", 1 GPU, pytorch-21.03 NGC container, DALI data loading:
# mixed precision (AMP, NHWC) 1,211 img/s, TF32 456 img/s. Ours: the same model in bf16 channels_last
# eager and in fp32 eager (whose convolutions run in TF32 by PyTorch's default, recorded by env).
ANCHOR = {"source": "NVIDIA DeepLearningExamples ResNeXt101-32x4d (PyTorch), 1x A100-80GB, DALI",
          "model": "resnext101_32x4d", "images_per_s": {"bf16_cl_eager": 1211.0, "fp32_eager": 456.0},
          "setting": {"bf16_cl_eager": "AMP + NHWC", "fp32_eager": "TF32"}}
# The decode phase's tolerance: torchvision's own test of nvJPEG against libjpeg-turbo
# (test/test_image.py, test_decode_jpegs_cuda) accepts a mean absolute difference below 2 grey levels
# (IDCT and chroma upsampling differ); tests/data/loader/test_gpu_decode.py uses the same bound.
DECODE_MAX_MAD = 2.0
PHASES = ("env", "tests", "throughput", "e2e", "decode", "compiled")


@dataclass(frozen=True)
class Mode:
    dtype: str | None  # autocast dtype; None: fp32
    channels_last: bool
    compiled: bool
    cudnn_benchmark: bool = False


MODES = {
    "fp32_eager": Mode(None, False, False),
    "bf16_cl_eager": Mode("bfloat16", True, False),
    "bf16_cl_eager_cudnn_benchmark": Mode("bfloat16", True, False, cudnn_benchmark=True),
    "bf16_cl_compiled": Mode("bfloat16", True, True),
}


@dataclass(frozen=True)
class Sizes:
    """What the check runs: the GPU defaults, or toy sizes for the CPU dry run."""

    models: tuple[str, ...]
    image_size: int
    batch_size: int
    warmup: int
    steps: int  # timed steps per round, at most: fewer when a round would last over round_seconds
    rounds: int
    round_seconds: float | None
    world_images: int
    world_size_range: tuple[int, int]
    e2e_model: str
    e2e_batch: int
    e2e_log_every: int
    e2e_runs: str  # decode:workers entries
    e2e_max_images: int | None  # per run (None: as many as its share of the phase's time allows)
    shuffle_buffer: int
    compile_backend: str
    budgets: dict[str, float]  # seconds per phase (compiled: whatever is left)


GPU = Sizes(models=("resnext101_32x4d", "resnext101_32x8d", "resnext101_32x16d"), image_size=224, batch_size=128,
            warmup=3, steps=8, rounds=2, round_seconds=1.5, world_images=8000, world_size_range=(288, 384),
            e2e_model="resnext101_32x8d", e2e_batch=64, e2e_log_every=20, e2e_runs="cpu:4,cpu:12",
            e2e_max_images=None, shuffle_buffer=1000, compile_backend="inductor",
            budgets={"tests": 75, "throughput": 100, "e2e": 160, "decode": 30})
DRY = Sizes(models=("resnext_micro",), image_size=32, batch_size=4, warmup=1, steps=2, rounds=2, round_seconds=None,
            world_images=48,
            world_size_range=(64, 96), e2e_model="resnext_micro", e2e_batch=4, e2e_log_every=2, e2e_runs="cpu:1,cpu:2",
            e2e_max_images=48, shuffle_buffer=50, compile_backend="aot_eager", budgets={"tests": 60, "throughput": 60, "e2e": 120,
                                                                 "decode": 60})


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, required=True, help="folder for results.jsonl, summary.md and logs")
    parser.add_argument("--dry-run", action="store_true", help="every step on the CPU at toy sizes")
    parser.add_argument("--time-limit", type=float, default=None,
                        help="seconds for the whole check (default 470 on a GPU, 300 dry)")
    parser.add_argument("--phases", default=",".join(PHASES),
                        help=f"comma-separated subset of {','.join(PHASES)}")
    parser.add_argument("--models", default=None, help="comma-separated model names (default: ResNeXt-101 "
                        "32x4d,32x8d,32x16d; dry: resnext_micro); the compiled phase takes them in this order")
    parser.add_argument("--batch-size", type=int, default=None, help="throughput batch (default 128, halved on OOM)")
    parser.add_argument("--e2e", default=None, help="end-to-end runs as decode:workers entries (decode cpu or "
                        "cuda; default cpu:4,cpu:12, dry cpu:1,cpu:2; e.g. cpu:4,cpu:12,cuda:4)")
    parser.add_argument("--e2e-seconds", type=float, default=None,
                        help="seconds of all end-to-end runs together (default: the e2e phase's budget, 160)")
    parser.add_argument("--work", type=Path, default=None, help="scratch folder (default: a new temporary one)")
    parser.add_argument("--measure", help=argparse.SUPPRESS)  # internal: the throughput child process
    args = parser.parse_args(argv)
    unknown = set(args.phases.split(",")) - set(PHASES)
    if unknown:
        parser.error(f"--phases: unknown phase(s) {', '.join(sorted(unknown))}")
    args.e2e = args.e2e or (DRY if args.dry_run else GPU).e2e_runs
    try:
        args.e2e_runs = [(decode, int(workers)) for decode, workers in
                         (entry.split(":") for entry in args.e2e.split(",") if entry)]
    except ValueError:
        parser.error(f"--e2e takes decode:workers entries such as cpu:4,cuda:4, got {args.e2e!r}")
    if any(decode not in ("cpu", "cuda") or workers < 0 for decode, workers in args.e2e_runs):
        parser.error(f"--e2e: decode is cpu or cuda and workers >= 0, got {args.e2e!r}")
    return args


# -- bookkeeping ---------------------------------------------------------------------------------

class Check:
    """The output folder, the clock and the records of one run."""

    def __init__(self, args: argparse.Namespace, sizes: Sizes, work: Path) -> None:
        self.args, self.sizes, self.work = args, sizes, work
        self.out = args.out
        self.out.mkdir(parents=True, exist_ok=True)
        self.results = self.out / "results.jsonl"
        self.results.write_text("")
        self.records: list[dict[str, Any]] = []
        self.start = time.monotonic()
        self.limit = args.time_limit or (300.0 if args.dry_run else 470.0)
        self.device = "cpu" if args.dry_run else "cuda"
        self.env = child_env(work, args.dry_run)
        self.failed = False

    def left(self) -> float:
        return self.limit - (time.monotonic() - self.start)

    def record(self, **fields: Any) -> dict[str, Any]:
        row = {"t": round(time.monotonic() - self.start, 1), **fields}
        self.records.append(row)
        with self.results.open("a") as f:
            f.write(json.dumps(row) + "\n")
        return row

    def budget(self, phase: str) -> float:
        planned = self.sizes.budgets.get(phase, float("inf"))
        return max(0.0, min(planned, self.left()))

    @contextlib.contextmanager
    def phase(self, name: str, minimum: float = 5.0) -> Iterator[float]:
        budget = self.budget(name)
        print(f"\n== {name}: budget {budget:.0f} s, {self.left():.0f} s of {self.limit:.0f} s left", flush=True)
        if budget < minimum:
            self.record(phase=name, status="skipped", reason=f"no time left ({self.left():.0f} s)")
            yield 0.0
            return
        start = time.monotonic()
        try:
            yield budget
        except Exception as err:  # the next phase runs anyway
            self.failed = True
            self.record(phase=name, status="error", error=f"{type(err).__name__}: {err}"[:2000],
                        traceback=traceback.format_exc()[-4000:], seconds=round(time.monotonic() - start, 1))
            print(f"   {name} failed: {type(err).__name__}: {err}", flush=True)
        else:
            self.record(phase=name, status="ok", seconds=round(time.monotonic() - start, 1), budget=round(budget))
        print(f"   {name}: {time.monotonic() - start:.0f} s", flush=True)
        write_summary(self)

    def run(self, command: list[str], log: str, timeout: float, env: dict[str, str] | None = None
            ) -> tuple[int | None, float]:
        """A child process (its own process group, killed whole at ``timeout``), output to ``<out>/<log>``;
        returns (exit status or None on timeout, seconds)."""
        start = time.monotonic()
        with (self.out / log).open("a") as f:
            f.write(f"\n$ {shlex.join(command)}\n")
            f.flush()
            child = subprocess.Popen(command, cwd=REPO, env=env or self.env, stdout=f, stderr=subprocess.STDOUT,
                                     start_new_session=True)
            try:
                code: int | None = child.wait(timeout=max(1.0, timeout))
            except subprocess.TimeoutExpired:
                os.killpg(child.pid, signal.SIGKILL)
                child.wait()
                code = None
                f.write(f"\n[gpu_check: killed after {timeout:.0f} s]\n")
        return code, time.monotonic() - start


def child_env(work: Path, dry_run: bool) -> dict[str, str]:
    """This environment with the repository (and unpacked wheels) on PYTHONPATH and wandb off."""
    paths = [str(REPO), *[p for p in sys.path if p.startswith(str(work))]]
    env = dict(os.environ, PYTHONUNBUFFERED="1", WANDB_MODE="disabled", WANDB_SILENT="true",
               PYTHONPATH=os.pathsep.join(paths + [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p]))
    shared = CARRY / "shared-data"
    if "OPENWSL_SHARED_DATA" not in env and not (REPO.parent / "shared" / "data").is_dir() and shared.is_dir():
        env["OPENWSL_SHARED_DATA"] = str(shared)
    if dry_run:
        env.update(CUDA_VISIBLE_DEVICES="", OMP_NUM_THREADS="1")
    return env


#: packages a bare GPU machine may lack, carried as wheels by ``make gpu-carry``
CARRIED = ("webdataset", "braceexpand", "simplejpeg")


def ensure_carried_packages(work: Path) -> str:
    """webdataset and simplejpeg importable: installed, or unpacked here from the carried wheels
    (pure Python, and simplejpeg's CPython 3.12 manylinux wheel)."""
    missing = [name for name in CARRIED if importlib.util.find_spec(name) is None]
    if not missing:
        return "installed"
    wheels = sorted((CARRY / "wheels").glob("*.whl"))
    if not wheels:
        return f"missing {', '.join(missing)} (no wheels in {CARRY / 'wheels'}: run `make gpu-carry` where pip works)"
    site = work / "site"
    for wheel in wheels:
        with zipfile.ZipFile(wheel) as archive:
            archive.extractall(site)
    sys.path.insert(0, str(site))
    importlib.invalidate_caches()
    return f"{', '.join(missing)} unpacked from " + ", ".join(w.name for w in wheels)


# -- phases --------------------------------------------------------------------------------------

def phase_env(check: Check, carried: str) -> None:
    info: dict[str, Any] = {
        "date": datetime.now(timezone.utc).strftime("%Y-%m-%d"), "python": platform.python_version(),
        "torch": torch.__version__, "cuda": torch.version.cuda, "cpu_cores": os.cpu_count(),
        "dry_run": check.args.dry_run, "carried_packages": carried, "command": shlex.join(sys.argv),
        "git_commit": _git_commit()}
    with contextlib.suppress(ImportError):
        import torchvision
        info["torchvision"] = torchvision.__version__
    if torch.cuda.is_available() and not check.args.dry_run:
        props = torch.cuda.get_device_properties(0)
        info.update(gpu=props.name, gpu_memory_gib=round(props.total_memory / 2**30, 1),
                    compute_capability=f"{props.major}.{props.minor}", cudnn=torch.backends.cudnn.version(),
                    tf32_matmul=torch.backends.cuda.matmul.allow_tf32, tf32_cudnn=torch.backends.cudnn.allow_tf32)
        with contextlib.suppress(Exception):  # informative only
            info["nccl"] = ".".join(map(str, torch.cuda.nccl.version()))
    elif not check.args.dry_run:
        raise RuntimeError("no CUDA GPU visible: run with --dry-run on a machine without one")
    check.record(phase="env", **info)
    print("   " + ", ".join(f"{k}={v}" for k, v in info.items() if k != "command"), flush=True)


def _git_commit() -> str | None:
    try:
        return subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=REPO, capture_output=True, text=True,
                              timeout=10).stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        return None


def cuda_test_files() -> list[str]:
    """The test files that hold cuda-marked tests (found by their marker, so new ones join)."""
    return sorted(str(path.relative_to(REPO)) for path in (REPO / "tests").rglob("test_*.py")
                  if "pytest.mark.cuda" in path.read_text(encoding="utf-8"))


def phase_tests(check: Check, budget: float) -> None:
    junit = check.work / "cuda-tests.xml"
    files = cuda_test_files()
    code, seconds = check.run([sys.executable, "-m", "pytest", "-m", "cuda", "-q", "-rs", "-p", "no:cacheprovider",
                               f"--junitxml={junit}", *files], "tests.log", budget)
    outcomes = junit_outcomes(junit) if junit.is_file() else []
    counts = {state: sum(1 for o in outcomes if o["outcome"] == state) for state in ("passed", "failed", "skipped")}
    check.record(phase="tests", files=files, exit_code=code, timed_out=code is None, seconds=round(seconds, 1),
                 **counts, tests=outcomes)
    print(f"   {counts['passed']} passed, {counts['failed']} failed, {counts['skipped']} skipped", flush=True)
    if code not in (0, 5) or counts["failed"]:  # 5: nothing collected
        raise RuntimeError(f"pytest -m cuda exited with {code} ({counts['failed']} failed); see tests.log")


def junit_outcomes(path: Path) -> list[dict[str, str]]:
    outcomes = []
    for case in ElementTree.parse(path).iter("testcase"):
        name = f"{case.get('classname')}::{case.get('name')}"
        outcome, message = "passed", ""
        for tag in ("failure", "error", "skipped"):
            element = case.find(tag)
            if element is not None:
                outcome = "skipped" if tag == "skipped" else "failed"
                message = (element.get("message") or "")[:300]
        outcomes.append({"test": name, "outcome": outcome, "message": message})
    return outcomes


class ShardBuild(threading.Thread):
    """World -> vocabulary -> shards for the end-to-end runs, on the CPU, beside the tests."""

    def __init__(self, check: Check) -> None:
        super().__init__(daemon=True)
        self.check = check
        self.root = check.work / "e2e"
        self.shards = self.root / "shards"
        self.seconds: dict[str, float] = {}
        self.error: str | None = None

    def run(self) -> None:
        check, sizes, root = self.check, self.check.sizes, self.root
        workers = str(max(1, min(14, (os.cpu_count() or 2) - 2)))
        steps = [
            ("world", ["scripts/make_synthetic.py", "--out", str(root / "world"), "--images", str(sizes.world_images),
                       "--size-range", *map(str, sizes.world_size_range), "--downstream-train", "1",
                       "--downstream-val", "1", "--workers", workers, "--no-progress"]),
            ("vocab", ["scripts/build_vocab.py", "--source", "yfcc100m", "--input",
                       str(root / "world" / "yfcc100m_dataset.tsv"), "--min-count", "3", "--out",
                       str(root / "vocab.json"), "--workers", workers, "--no-progress"]),
            ("shards", ["scripts/build_shards.py", "--source", "yfcc100m", "--input",
                        str(root / "world" / "yfcc100m_dataset.tsv"), "--images", str(root / "world"), "--vocab",
                        str(root / "vocab.json"), "--out", str(self.shards), "--shard-size",
                        str(max(16, sizes.world_images // 16)), "--val-fraction", "0.1", "--workers", workers,
                        "--no-progress"])]
        for name, command in steps:
            code, seconds = check.run([sys.executable, *command], "build.log", max(1.0, check.left()))
            self.seconds[name] = round(seconds, 1)
            if code != 0:
                self.error = f"{name} exited with {code}; see build.log"
                return


def phase_throughput(check: Check, budget: float, models: list[str], modes: list[tuple[str, str]], tag: str) -> None:
    """``modes``: (model, mode) pairs; one child process per model, each with the time left."""
    deadline = time.monotonic() + budget
    by_model: dict[str, list[str]] = {}
    for model, mode in modes:
        by_model.setdefault(model, []).append(mode)
    errors = []
    for model in models:
        if model not in by_model:
            continue
        left = deadline - time.monotonic()
        if left < 5:
            check.record(phase=tag, model=model, status="skipped", reason="no time left")
            continue
        spec = {"model": model, "modes": by_model[model], "out": str(check.work / f"{tag}-{model}.jsonl"),
                "device": check.device, "image_size": check.sizes.image_size,
                "batch_size": check.args.batch_size or check.sizes.batch_size, "warmup": check.sizes.warmup,
                "steps": check.sizes.steps, "rounds": check.sizes.rounds, "round_seconds": check.sizes.round_seconds,
                "backend": check.sizes.compile_backend}
        Path(spec["out"]).unlink(missing_ok=True)
        code, seconds = check.run([sys.executable, str(Path(__file__).resolve()), "--out", str(check.out),
                                   "--measure", json.dumps(spec)], f"{tag}.log", left)
        rows = [json.loads(line) for line in Path(spec["out"]).read_text().splitlines()] \
            if Path(spec["out"]).is_file() else []
        for row in rows:
            check.record(phase=tag, **row)
            if "images_per_s" in row:
                print(f"   {model} {row['mode']}: {row['images_per_s']:.1f} img/s at batch {row['batch_size']}, "
                      f"peak {row['peak_memory_gib']:.2f} GiB, guard {row['guard_cost']:+.2%}", flush=True)
        missing = [mode for mode in by_model[model] if not any(r.get("mode") == mode and "images_per_s" in r
                                                                 for r in rows)]
        if missing:
            reason = "timed out" if code is None else f"exit {code}"
            errors.append(f"{model} {','.join(missing)}: {reason} after {seconds:.0f} s")
            check.record(phase=tag, model=model, status="error", modes=missing,
                         reason=f"{reason} after {seconds:.0f} s; see {tag}.log")
    if errors:
        raise RuntimeError("; ".join(errors))


def phase_e2e(check: Check, budget: float, build: ShardBuild) -> None:
    build.join(timeout=max(1.0, budget / 3))
    if build.is_alive():
        raise RuntimeError("the shards were not built in time; see build.log")
    check.record(phase="e2e-shards", seconds=build.seconds, error=build.error, images=check.sizes.world_images,
                 size_range=list(check.sizes.world_size_range))
    if build.error:
        raise RuntimeError(build.error)
    runs = check.args.e2e_runs
    total = min(check.args.e2e_seconds or budget, check.left())
    rate = _planning_rate(check)
    errors = []
    for i, (decode, workers) in enumerate(runs):
        seconds = total / len(runs) if i == 0 else min(total / len(runs), check.left())
        if seconds < 10:
            check.record(phase="e2e", decode=decode, workers=workers, status="skipped", reason="no time left")
            continue
        row = e2e_run(check, build.shards, decode, workers, seconds, rate)
        check.record(phase="e2e", **row)
        print(f"   decode={decode} workers={workers}: {row.get('images_per_s', float('nan')):.1f} img/s, data_wait "
              f"{row.get('data_wait', float('nan')):.1%}, exit {row['exit_code']}", flush=True)
        if row["exit_code"] != 0 and not row["timed_out"]:
            errors.append(f"decode={decode} workers={workers}: exit {row['exit_code']} (see e2e.log)")
    if errors:
        raise RuntimeError("; ".join(errors))


def phase_decode(check: Check, budget: float, build: ShardBuild) -> None:
    """The device-decode path against the CPU path on one real shard (the module docstring, phase 5)."""
    build.join(timeout=max(1.0, budget / 2))
    if build.is_alive() or build.error:
        raise RuntimeError(build.error or "the shards were not built in time; see build.log")
    from data.errors import UserError
    from data.loader.gpu_decode import decode_batch
    from data.loader.pipeline import LoaderConfig, create_loader

    size = check.sizes.image_size
    shard = sorted(str(p) for p in build.shards.glob("train-*.tar"))[:1]
    config = LoaderConfig(batch_size=16, num_workers=0, image_size=size, shuffle_buffer=32, shuffle_initial=8,
                          epoch_images=64)
    reference = _keyed_images(create_loader(shard, config))  # the CPU path: reduced-DCT decode in the worker
    row: dict[str, Any] = {"device": check.device, "shard": Path(shard[0]).name, "image_size": size,
                           "max_mad_allowed": DECODE_MAX_MAD}
    if check.args.dry_run:
        try:
            create_loader(shard, replace(config, decode="cuda"))
            row["cuda_refused"] = None
        except UserError as err:
            row["cuda_refused"] = str(err)
        if not row["cuda_refused"] or "needs a CUDA device" not in row["cuda_refused"]:
            raise RuntimeError(f"decode=cuda on a machine without CUDA was not refused with its one-line error: "
                               f"{row['cuda_refused']!r}")
        auto = _keyed_images(create_loader(shard, replace(config, decode="auto")))
        row["auto_falls_back_to_cpu"] = [k for k, _ in auto] == [k for k, _ in reference] and all(
            torch.equal(a, b) for (_, a), (_, b) in zip(auto, reference))
        if not row["auto_falls_back_to_cpu"]:
            raise RuntimeError("decode=auto without CUDA did not give the CPU path's batches")
        # The worker side as on a GPU (header-only boxes, bytes shipped), CUDA reported present; the
        # batch side is the loader's own decode_batch call, run on the CPU.
        with mock.patch.object(torch.cuda, "is_available", return_value=True):
            shipped = list(create_loader(shard, replace(config, decode="auto")).stream)
        device = [(batch["keys"][i], image) for batch in shipped
                  for image, i in _decoded(decode_batch(batch["jpeg"], batch["boxes"], batch["flips"], size, "cpu"))]
    else:
        loader = create_loader(shard, replace(config, decode="cuda"))
        shipped = list(loader.stream)  # the worker side of epoch 0, then the whole loader over epoch 0
        loader.set_epoch(0)
        device = _keyed_images(loader)
        row["decoded_on"] = str(device[0][1].device) if device else None
    # The same boxes and flips decoded at full scale by libjpeg-turbo, cropped and resized by the same
    # code: what remains is the decoder's difference, which torchvision's tolerance bounds per image.
    full = [(batch["keys"][i], image) for batch in shipped
            for image, i in _decoded(decode_batch(batch["jpeg"], batch["boxes"], batch["flips"], size, "cpu"))]
    row["same_samples"] = [k for k, _ in device] == [k for k, _ in reference] == [k for k, _ in full]
    if not row["same_samples"] or not device:
        raise RuntimeError(f"the device decode path delivered other samples than the CPU path "
                           f"({len(device)} images against {len(reference)})")
    decoder = [_mad(image, cpu) for (_, image), (_, cpu) in zip(device, full)]
    path = [_mad(image, cpu) for (_, image), (_, cpu) in zip(device, reference)]
    row.update(images=len(device), decoder_mad_mean=round(statistics.fmean(decoder), 3),
               decoder_mad_max=round(max(decoder), 3), cpu_path_mad_mean=round(statistics.fmean(path), 3),
               cpu_path_mad_max=round(max(path), 3))
    check.record(phase="decode-check", **row)
    print(f"   {len(device)} images, device path on {row.get('decoded_on', 'cpu (dry run)')}: mean absolute difference "
          f"per image to libjpeg-turbo with the same boxes {row['decoder_mad_mean']} (max {row['decoder_mad_max']}, "
          f"allowed {DECODE_MAX_MAD}); to the CPU loader path (reduced-DCT decode) {row['cpu_path_mad_mean']} on "
          f"average (allowed {DECODE_MAX_MAD}), max {row['cpu_path_mad_max']}", flush=True)
    if row["decoder_mad_max"] > DECODE_MAX_MAD or row["cpu_path_mad_mean"] > DECODE_MAX_MAD:
        raise RuntimeError(f"the device decode path is off: per-image difference to libjpeg-turbo up to "
                           f"{row['decoder_mad_max']}, to the CPU loader path {row['cpu_path_mad_mean']} on average "
                           f"(allowed {DECODE_MAX_MAD} each)")


def _decoded(result: tuple[torch.Tensor, list[int], list[Any]]) -> list[tuple[torch.Tensor, int]]:
    """decode_batch's images paired with the batch index each one came from."""
    images, kept, _ = result
    return list(zip(images, kept))


def _mad(a: torch.Tensor, b: torch.Tensor) -> float:
    """Mean absolute difference of two uint8 images, in grey levels."""
    return float((a.cpu().to(torch.int16) - b.cpu().to(torch.int16)).abs().float().mean())


def _keyed_images(loader: Any) -> list[tuple[str, torch.Tensor]]:
    """(key, image) of every sample a loader delivers, in order (a resampled shard repeats keys)."""
    return [(key, image) for batch in loader for key, image in zip(batch["keys"], batch["image"])]


def _planning_rate(check: Check) -> float:
    """img/s to size the end-to-end runs: the measured bf16 channels_last eager step of that model."""
    measured = [r["images_per_s"] for r in check.records if r.get("phase") == "throughput"
                and r.get("model") == check.sizes.e2e_model and r.get("mode") == "bf16_cl_eager" and "images_per_s" in r]
    return measured[0] if measured else (200.0 if check.args.dry_run else 1000.0)


def e2e_run(check: Check, shards: Path, decode: str, workers: int, seconds: float, rate: float) -> dict[str, Any]:
    sizes = check.sizes
    name = f"e2e-{decode}-w{workers}"
    start_up = 10.0 if check.args.dry_run else 25.0  # interpreter, CUDA, model, workers, final checkpoint
    images = max(8 * sizes.e2e_batch, int(rate * max(5.0, seconds - start_up)) // sizes.e2e_batch * sizes.e2e_batch)
    images = min(images, sizes.e2e_max_images or images)
    overrides = [f"data.train={shards}", f"data.val={shards}", f"data.workers={workers}", f"data.decode={decode}",
                 f"data.batch_size={sizes.e2e_batch}", f"data.image_size={sizes.image_size}",
                 f"data.shuffle_buffer={sizes.shuffle_buffer}", f"model.name={sizes.e2e_model}", f"optim.total_images={images}",
                 f"optim.warmup_images={images // 10}",
                 "eval.every_images=1000000000000", "eval.shards=1", "checkpoint.every_images=1000000000000",
                 "tracking.wandb=disabled", f"tracking.log_every_steps={sizes.e2e_log_every}",
                 f"run.dir={check.work / 'runs'}", f"run.name={name}"]
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=1", "-m", "pretrain",
               "--config", str(RECIPE.relative_to(REPO)), *overrides]
    print(f"   $ torchrun --standalone --nproc_per_node=1 -m pretrain --config {RECIPE.relative_to(REPO)} "
          f"{' '.join(overrides)}", flush=True)
    code, elapsed = check.run(command, "e2e.log", timeout=min(max(seconds * 1.6, seconds + 30), check.left() - 5))
    row: dict[str, Any] = {"decode": decode, "workers": workers, "model": sizes.e2e_model,
                           "batch_size": sizes.e2e_batch, "image_size": sizes.image_size, "planned_images": images,
                           "exit_code": code, "timed_out": code is None, "seconds": round(elapsed, 1)}
    metrics = check.work / "runs" / name / "metrics.jsonl"
    rows = [json.loads(line) for line in metrics.read_text().splitlines()] if metrics.is_file() else []
    row.update(summarise_training_rows([r for r in rows if "loss" in r and "images_per_s" in r]))
    return row


def summarise_training_rows(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """Throughput and data wait of a run's log rows, the first (start-up, first batches) left out."""
    if not rows:
        return {"log_rows": 0}
    summary: dict[str, Any] = {"log_rows": len(rows), "images": rows[-1]["images"],
                               "loss_first": rows[0]["loss"], "loss_last": rows[-1]["loss"]}
    steady = rows[1:] or rows
    if len(rows) >= 2 and rows[-1]["time"] > rows[0]["time"]:
        summary["images_per_s"] = (rows[-1]["images"] - rows[0]["images"]) / (rows[-1]["time"] - rows[0]["time"])
    else:
        summary["images_per_s"] = steady[-1]["images_per_s"]
    summary["images_per_s_median_row"] = statistics.median(r["images_per_s"] for r in steady)
    summary["data_wait"] = statistics.mean(r["data_wait"] for r in steady)
    summary["data_wait_max"] = max(r["data_wait"] for r in steady)
    memory = [r["memory/cuda_max_allocated_mb"] for r in rows if "memory/cuda_max_allocated_mb" in r]
    if memory:
        summary["cuda_max_allocated_mb"] = max(memory)
    return summary


# -- the throughput child ------------------------------------------------------------------------

def measure(spec: dict[str, Any]) -> None:
    """Child process: one JSON line per mode of ``spec['model']`` appended to ``spec['out']``."""
    for mode in spec["modes"]:
        batch = spec["batch_size"]
        while True:
            try:
                row = measure_mode(spec, mode, batch)
                break
            except torch.cuda.OutOfMemoryError:
                _release()
                if batch <= 8:
                    raise
                print(f"{spec['model']} {mode}: out of memory at batch {batch}, trying {batch // 2}", flush=True)
                batch //= 2
        with open(spec["out"], "a") as f:
            f.write(json.dumps(row) + "\n")
        _release()


def _release() -> None:
    import gc
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def measure_mode(spec: dict[str, Any], mode_name: str, batch_size: int) -> dict[str, Any]:
    from data.loader.labels import pack_labels
    from pretrain.engine import Engine, Progress, StepSettings
    from pretrain.loss import create_loss
    from pretrain.model import create_model, param_groups
    from pretrain.schedule import ImageScheduler, LRSchedule

    mode, device = MODES[mode_name], torch.device(spec["device"])
    cuda = device.type == "cuda"
    torch.backends.cudnn.benchmark = mode.cudnn_benchmark
    torch.manual_seed(0)
    with device:  # initialised where it trains: seconds, not a minute, for 32x16d
        network = create_model(spec["model"], CLASSES)
    if mode.channels_last:
        network = network.to(memory_format=torch.channels_last)
    optimizer = torch.optim.SGD(param_groups(network, 1e-4), lr=0.0, momentum=0.9, nesterov=True, fused=True)
    scheduler = ImageScheduler(optimizer, LRSchedule(peak_lr=0.1, total_images=10**9, warmup_images=10**8))
    model = torch.compile(network, backend=spec["backend"]) if mode.compiled else network
    dtype = getattr(torch, mode.dtype) if mode.dtype else None
    engine = Engine(model, optimizer, create_loss("softmax"),
                    StepSettings(CLASSES, autocast_dtype=dtype, channels_last=mode.channels_last), device, scheduler)
    generator = torch.Generator().manual_seed(0)
    size = spec["image_size"]
    images = torch.randint(0, 256, (batch_size, 3, size, size), dtype=torch.uint8, generator=generator)
    labels = pack_labels([torch.randint(0, CLASSES, (1 + i % 3,), generator=generator).tolist()
                          for i in range(batch_size)])
    batch = {"image": images.pin_memory() if cuda else images, "labels": labels.pin_memory() if cuda else labels}
    progress = Progress()

    def sync() -> None:
        if cuda:
            torch.cuda.synchronize()

    if cuda:
        torch.cuda.reset_peak_memory_stats()
    start = time.perf_counter()
    for _ in range(spec["warmup"] + (2 if mode.compiled else 0)):
        engine.step([batch], progress, batch_size)
    sync()
    warmup_seconds = time.perf_counter() - start
    steps = spec["steps"]
    if spec["round_seconds"]:  # the big fp32 models take ~0.5 s a step: 3 steps a round, not 8
        rate, _ = _timed(engine, batch, progress, 1, batch_size, cuda)
        steps = max(3, min(steps, int(spec["round_seconds"] * rate / batch_size)))
    guard = engine.buffer_guard
    rates: dict[str, list[float]] = {"with": [], "without": []}
    host_ms: list[float] = []
    for round_ in range(spec["rounds"]):
        for variant in ("with", "without") if round_ % 2 == 0 else ("without", "with"):  # no order bias
            engine.buffer_guard = guard if variant == "with" else None
            rate, host = _timed(engine, batch, progress, steps, batch_size, cuda)
            rates[variant].append(rate)
            if variant == "with":
                host_ms.append(host)
    engine.buffer_guard = guard
    stats = engine.read_stats()
    with_guard, without = statistics.median(rates["with"]), statistics.median(rates["without"])
    row = {"model": spec["model"], "mode": mode_name, "batch_size": batch_size, "image_size": size,
           "device": str(device), "images_per_s": with_guard, "images_per_s_rounds": rates["with"],
           "images_per_s_without_guard": without, "images_per_s_without_guard_rounds": rates["without"],
           "guard_cost": 1.0 - with_guard / without,
           "round_spread": (max(rates["with"]) - min(rates["with"])) / with_guard,
           "host_ms_per_step": statistics.median(host_ms), "warmup_seconds": warmup_seconds,
           "warmup_steps": spec["warmup"] + (2 if mode.compiled else 0), "timed_steps": steps * spec["rounds"],
           "loss": stats["loss"], "nonfinite_steps": stats["nonfinite_steps"],
           "peak_memory_gib": torch.cuda.max_memory_allocated() / 2**30 if cuda else 0.0,
           "compiled_backend": spec["backend"] if mode.compiled else None, "cudnn_benchmark": mode.cudnn_benchmark}
    if not mode.compiled:
        row.update(_op_counts(engine, batch, progress, batch_size))
    return row


def _timed(engine: Any, batch: dict[str, Any], progress: Any, steps: int, batch_size: int, cuda: bool
           ) -> tuple[float, float]:
    """(images per second over ``steps`` steps, host milliseconds per step to enqueue them)."""
    if cuda:
        torch.cuda.synchronize()
        begin, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        begin.record()
    start = time.perf_counter()
    for _ in range(steps):
        engine.step([batch], progress, batch_size)
    host = (time.perf_counter() - start) / steps * 1000
    if cuda:
        end.record()
        end.synchronize()
        seconds = begin.elapsed_time(end) / 1000
    else:
        seconds = time.perf_counter() - start
    return steps * batch_size / seconds, host


def _op_counts(engine: Any, batch: dict[str, Any], progress: Any, batch_size: int) -> dict[str, int]:
    """Aten ops dispatched by one whole step and by the guard alone (each is a kernel launch on a GPU)."""
    from torch.utils._python_dispatch import TorchDispatchMode

    class Counter(TorchDispatchMode):
        ops = 0

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            Counter.ops += 1
            return func(*args, **(kwargs or {}))

    with Counter():
        engine.step([batch], progress, batch_size)
    step_ops, Counter.ops = Counter.ops, 0
    skipped = torch.zeros((), dtype=torch.bool, device=engine.device)
    if engine.buffer_guard is not None:
        with Counter():
            engine.buffer_guard.save()
            engine.buffer_guard.restore_if(skipped)
    return {"step_ops": step_ops, "guard_ops": Counter.ops}


# -- the summary ---------------------------------------------------------------------------------

def write_summary(check: Check) -> None:
    rows, dry = check.records, check.args.dry_run
    env = next((r for r in rows if r.get("phase") == "env" and "torch" in r), {})
    lines = ["# GPU check" + (" (dry run on the CPU: toy sizes, no GPU figure)" if dry else ""), "",
             f"{env.get('date', '?')}, {env.get('gpu', 'CPU')}, torch {env.get('torch', '?')}"
             f" (CUDA {env.get('cuda')}, cuDNN {env.get('cudnn')}), {env.get('cpu_cores')} CPU cores, commit "
             f"{env.get('git_commit')}", "", f"Command: `{env.get('command', '')}`", ""]
    tests = next((r for r in rows if r.get("phase") == "tests" and "tests" in r), None)
    if tests:
        lines += [f"## CUDA tests: {tests['passed']} passed, {tests['failed']} failed, {tests['skipped']} skipped", ""]
        lines += [f"- {t['outcome']}: `{t['test']}` {t['message']}".rstrip() for t in tests["tests"]] + [""]
    figures = [r for r in rows if r.get("phase") in ("throughput", "compiled") and "images_per_s" in r]
    if figures:
        lines += ["## Training step throughput (pretrain.engine.Engine.step, synthetic uint8 batches)", "",
                  "| model | mode | batch | img/s | peak GiB | without guard img/s | guard cost | round spread | "
                  "host ms/step | warm-up s |", "|---|---|---|---|---|---|---|---|---|---|"]
        for r in figures:
            peak = f"{r['peak_memory_gib']:.1f}" if r["device"].startswith("cuda") else "-"
            lines.append(f"| {r['model']} | {r['mode']} | {r['batch_size']} | {r['images_per_s']:,.1f} | {peak} | "
                         f"{r['images_per_s_without_guard']:,.1f} | {r['guard_cost']:+.2%} | {r['round_spread']:.2%} | "
                         f"{r['host_ms_per_step']:.1f} | {r['warmup_seconds']:.1f} |")
        lines.append("")
    lines += [f"Anchor: {ANCHOR['source']}", "", "| mode | anchor img/s | ours img/s | ours / anchor |",
              "|---|---|---|---|"]
    for mode, rate in ANCHOR["images_per_s"].items():
        ours = [r for r in figures if r["model"] == ANCHOR["model"] and r["mode"] == mode and not dry]
        measured = f"{ours[0]['images_per_s']:,.1f}" if ours else "-"
        ratio = f"{ours[0]['images_per_s'] / rate:.2f} ({env.get('gpu')} against an A100-80GB)" if ours \
            else "not measured" + (" on GPU (dry run)" if dry else "")
        lines.append(f"| {mode} ({ANCHOR['setting'][mode]} for the anchor) | {rate:,.0f} | {measured} | **{ratio}** |")
    lines.append("")
    runs = [r for r in rows if r.get("phase") == "e2e" and "exit_code" in r]
    if runs:
        lines += ["## End to end: torchrun --nproc_per_node=1 -m pretrain (single-GPU recipe) on synthetic shards", "",
                  "| decode | workers | model | batch | img/s | data wait (mean / max) | log rows | seconds | exit |",
                  "|---|---|---|---|---|---|---|---|---|"]
        for r in runs:
            rate = f"{r['images_per_s']:,.1f}" if "images_per_s" in r else "-"
            wait = f"{r['data_wait']:.1%} / {r['data_wait_max']:.1%}" if "data_wait" in r else "-"
            lines.append(f"| {r['decode']} | {r['workers']} | {r['model']} | {r['batch_size']} | {rate} | {wait} | "
                         f"{r['log_rows']} | {r['seconds']} | {'timeout' if r['timed_out'] else r['exit_code']} |")
        lines.append("")
    decode = next((r for r in rows if r.get("phase") == "decode-check"), None)
    if decode:
        on = decode.get("decoded_on") or "cpu: the device path's code (dry run; decode=cuda refused, auto falls back)"
        lines += [f"## Device decode (data.decode=cuda) on {decode['shard']}, {decode['images']} images at "
                  f"{decode['image_size']} px, decoded on {on}", "",
                  "| against | mean abs. difference (mean / max over images) | allowed |", "|---|---|---|",
                  f"| libjpeg-turbo, same boxes and resize | {decode['decoder_mad_mean']} / "
                  f"{decode['decoder_mad_max']} | {DECODE_MAX_MAD} per image |",
                  f"| the CPU loader path (reduced-DCT decode) | {decode['cpu_path_mad_mean']} / "
                  f"{decode['cpu_path_mad_max']} | {DECODE_MAX_MAD} on average |", ""]
    lines += ["## Phases", "", "| phase | status | seconds | note |", "|---|---|---|---|"]
    for r in rows:
        if "status" in r and r.get("phase") in PHASES and "model" not in r and "decode" not in r:
            note = r.get("error") or r.get("reason") or ""
            lines.append(f"| {r['phase']} | {r['status']} | {r.get('seconds', '')} | {note.splitlines()[0] if note else ''} |")
    (check.out / "summary.md").write_text("\n".join(lines) + "\n")


# -- main ----------------------------------------------------------------------------------------

def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.measure:
        measure(json.loads(args.measure))
        return 0
    sizes = DRY if args.dry_run else GPU
    if args.models:
        sizes = Sizes(**{**asdict(sizes), "models": tuple(args.models.split(","))})
    work = args.work or Path(tempfile.mkdtemp(prefix="gpu-check-"))
    work.mkdir(parents=True, exist_ok=True)
    carried = ensure_carried_packages(work)
    check = Check(args, sizes, work)
    # Every phase bounds its children; this is the backstop should the parent itself hang.
    faulthandler.dump_traceback_later(check.limit + 60, exit=True)
    phases = set(args.phases.split(","))
    print(f"gpu_check: {'dry run on the CPU' if args.dry_run else 'CUDA'}, {check.limit:.0f} s in all, "
          f"out {args.out}, scratch {work}", flush=True)
    build = ShardBuild(check)
    if phases & {"e2e", "decode"}:
        build.start()  # CPU work beside the tests
    if "env" in phases:
        with check.phase("env"):
            phase_env(check, carried)
    if "tests" in phases:
        with check.phase("tests") as budget:
            if budget:
                phase_tests(check, budget)
    eager = [(m, mode) for m in sizes.models for mode in ("fp32_eager", "bf16_cl_eager")]
    eager += [(sizes.e2e_model if sizes.e2e_model in sizes.models else sizes.models[0], "bf16_cl_eager_cudnn_benchmark")]
    if "throughput" in phases:
        with check.phase("throughput") as budget:
            if budget:
                phase_throughput(check, budget, list(sizes.models), eager, "throughput")
    if "e2e" in phases:
        with check.phase("e2e") as budget:
            if budget:
                phase_e2e(check, budget, build)
    if "decode" in phases:
        with check.phase("decode") as budget:
            if budget:
                phase_decode(check, budget, build)
    if "compiled" in phases:
        # The single-GPU recipe's model first, then the others in the given order.
        order = sorted(sizes.models, key=lambda m: m != sizes.e2e_model)
        with check.phase("compiled", minimum=30.0 if not args.dry_run else 5.0) as budget:
            if budget:
                phase_throughput(check, budget, order, [(m, "bf16_cl_compiled") for m in order], "compiled")
    write_summary(check)
    print(f"\ngpu_check done in {time.monotonic() - check.start:.0f} s: {check.results}, {check.out / 'summary.md'}",
          flush=True)
    if args.work is None:
        shutil.rmtree(work, ignore_errors=True)
    return 1 if check.failed else 0


if __name__ == "__main__":
    sys.exit(main())
