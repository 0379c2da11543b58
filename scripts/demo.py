"""The embedded end-to-end demo (`make demo`): every stage of the pipeline on CPU, no downloads.

    synthetic hashtag world -> vocabulary -> shards -> pretraining (torchrun, 2 ranks)
    -> fine-tuning from the pretrained trunk and from random init (same budget) -> linear probes
    -> the pretraining run exported (runs/demo/export) and the hashtags it predicts for three
       downstream pictures
    -> runs/demo/report.md, plots, results.json, and a wandb offline run

Each stage runs the command a user would type, printed before it runs, so the demo doubles as a
worked example of the README. With the defaults it takes about 6-7 minutes on 2 CPU cores; the
hashtag-pretrained trunk should beat random init on the downstream task by 10+ points of top-1
(the report states the measured gap, the seed and whether the target was met).

``runs/demo/results.json`` holds ``pretrained_top1``, ``scratch_top1``, ``linear_top1`` (final-epoch
validation top-1, in %) and ``seconds`` (the whole demo), so a script can check a run.
"""
from __future__ import annotations

import argparse
import os
import shlex
import shutil
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from data.errors import UserError, cli_main  # noqa: E402
from demo_report import DemoRun, write_outputs  # noqa: E402

# Written first into a demo output directory: only a directory carrying it is ever cleared.
MARKER = ".openwsl-demo"
STAGES = 10


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=REPO / "runs" / "demo",
                        help="demo output directory (default runs/demo); a previous demo's output there is replaced")
    parser.add_argument("--seed", type=int, default=0, help="seed of the world, pretraining and transfer runs")
    world = parser.add_argument_group("sizes (the defaults are the demo; the test suite runs it tiny)")
    world.add_argument("--images", type=int, default=20000, help="pictures in the synthetic world")
    world.add_argument("--downstream-train", type=int, default=20, help="labelled training pictures per class")
    world.add_argument("--downstream-val", type=int, default=50, help="validation pictures per class")
    world.add_argument("--min-count", type=int, default=20, help="minimum images per vocabulary tag")
    world.add_argument("--pretrain-images", type=int, default=150_000,
                       help="pretraining length in images (configs/pretrain/cpu_demo.yaml: 150,000)")
    world.add_argument("--finetune-epochs", type=int, default=10, help="fine-tuning epochs, both arms")
    run = parser.add_argument_group("running")
    run.add_argument("--nproc", type=int, default=2, help="torchrun processes for pretraining (gloo)")
    run.add_argument("--workers", type=int, default=2, help="worker processes of the data stages")
    run.add_argument("--wandb", choices=("offline", "disabled"), default="offline",
                     help="wandb mode of the pretraining run (offline: `wandb sync` it later)")
    args = parser.parse_args(argv)
    for flag in ("images", "downstream_train", "downstream_val", "min_count", "pretrain_images", "finetune_epochs",
                 "nproc", "workers"):
        if getattr(args, flag) < 1:
            parser.error(f"--{flag.replace('_', '-')} must be at least 1, got {getattr(args, flag)}")
    return args


def prepare_out(out: Path) -> None:
    """Start from an empty output directory, clearing it only if an earlier demo made it."""
    if out.exists() and any(out.iterdir()):
        if not (out / MARKER).is_file():
            raise UserError(f"--out {out}: directory exists, is not empty and was not made by the demo; "
                            "pass an empty or new directory")
        shutil.rmtree(out)
    out.mkdir(parents=True, exist_ok=True)
    (out / MARKER).write_text("made by scripts/demo.py; cleared by the next demo run into this directory\n")


class Stages:
    """Runs the numbered pipeline commands, streaming their output, and times each."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = {}

    def run(self, title: str, command: list[str], env: dict[str, str] | None = None) -> None:
        number = len(self.seconds) + 1
        shown = [*(f"{k}={v}" for k, v in (env or {}).items()), "python", *command]
        print(f"\n=== [{number}/{STAGES}] {title}\n$ {shlex.join(shown)}", flush=True)
        start = time.perf_counter()
        result = subprocess.run([sys.executable, *command], cwd=REPO, env={**os.environ, **(env or {})})
        if result.returncode != 0:
            raise UserError(f"demo stage '{title}' failed (exit {result.returncode}); its output is above")
        self.seconds[title] = time.perf_counter() - start


def data_stages(stages: Stages, args: argparse.Namespace, run: DemoRun) -> None:
    stages.run("synthetic hashtag world", [
        "scripts/make_synthetic.py", "--out", run.rel(run.world), "--images", str(args.images),
        "--downstream-train", str(args.downstream_train), "--downstream-val", str(args.downstream_val),
        "--seed", str(args.seed), "--workers", str(args.workers)])
    stages.run("hashtag vocabulary", [
        "scripts/build_vocab.py", "--source", "yfcc100m", "--input", run.rel(run.metadata),
        "--min-count", str(args.min_count), "--out", run.rel(run.vocab), "--workers", str(args.workers)])
    stages.run("labelled WebDataset shards", [
        "scripts/build_shards.py", "--source", "yfcc100m", "--input", run.rel(run.metadata),
        "--images", run.rel(run.world), "--vocab", run.rel(run.vocab), "--out", run.rel(run.shards),
        "--exclude-near", run.rel(run.downstream / "val"), "--workers", str(args.workers)])


def pretrain_stage(stages: Stages, args: argparse.Namespace, run: DemoRun) -> None:
    total = args.pretrain_images
    stages.run(f"hashtag pretraining, {args.nproc} ranks", [
        "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={args.nproc}",
        "-m", "pretrain", "--config", "configs/pretrain/cpu_demo.yaml",
        f"data.train={run.rel(run.shards)}", f"data.val={run.rel(run.shards)}", f"optim.total_images={total}",
        f"optim.warmup_images={min(4096, total // 10)}", f"eval.every_images={max(total // 6, 1)}",
        f"checkpoint.every_images={max(total // 3, 1)}", f"run.dir={run.rel(run.out)}", f"run.name={run.pretrain.name}",
        f"run.seed={args.seed}", f"tracking.wandb={args.wandb}"],
        # One BLAS thread per rank: the ranks and their loader workers already fill the cores.
        env={"OMP_NUM_THREADS": "1"})


def transfer_stages(stages: Stages, args: argparse.Namespace, run: DemoRun) -> None:
    data = [f"data.train={run.rel(run.downstream / 'train')}", f"data.val={run.rel(run.downstream / 'val')}",
            f"run.dir={run.rel(run.out)}", f"run.seed={args.seed}"]
    trunk = run.rel(run.pretrain / "trunk.safetensors")
    # The recipe warms up for 1 epoch; a shorter run warms up for half of it, so any --finetune-epochs works.
    finetune = ["-m", "transfer", "finetune", "--config", "configs/transfer/cpu_demo_finetune.yaml",
                f"finetune.epochs={args.finetune_epochs}", f"finetune.warmup_epochs={min(1, args.finetune_epochs / 2):g}",
                *data]
    linear = ["-m", "transfer", "linear", "--config", "configs/transfer/cpu_demo_linear.yaml", *data]
    stages.run("fine-tuning from the pretrained trunk", [*finetune, f"init={trunk}", f"run.name={run.finetune.name}"])
    stages.run("fine-tuning from random init (same budget)",
               [*finetune, "init=null", f"run.name={run.finetune_scratch.name}"])
    stages.run("linear probe on the pretrained trunk", [*linear, f"init={trunk}", f"run.name={run.linear.name}"])
    stages.run("linear probe on a random trunk", [*linear, "init=null", f"run.name={run.linear_scratch.name}"])


def model_out_stages(stages: Stages, run: DemoRun) -> None:
    """Export the pretraining run (hashtag head, vocabulary) and tag one validation picture of each of
    three downstream classes with it. The demo's resnext_micro has a 16-channel stem that timm's
    ResNet cannot build, hence --allow-openwsl-only (the ResNeXt-101 family exports for timm)."""
    export = run.out / "export"
    stages.run("export the pretraining run", ["-m", "transfer", "export", run.rel(run.pretrain), "--out",
                                              run.rel(export), "--allow-openwsl-only"])
    classes = sorted(p for p in (run.downstream / "val").iterdir() if p.is_dir())[:3]
    pictures = [run.rel(min(p for p in folder.iterdir() if p.is_file())) for folder in classes]
    stages.run("hashtags predicted for three downstream pictures",
               ["-m", "transfer", "predict", "--model", run.rel(export), *pictures, "--top-k", "3"])


@cli_main
def main(argv=None) -> None:
    args = parse_args(argv)
    start = time.perf_counter()
    prepare_out(args.out)
    run = DemoRun(args.out.resolve())
    stages = Stages()
    data_stages(stages, args, run)
    pretrain_stage(stages, args, run)
    transfer_stages(stages, args, run)
    model_out_stages(stages, run)
    results = write_outputs(run, stages.seconds, seconds=time.perf_counter() - start, seed=args.seed,
                            pretrain_images=args.pretrain_images)
    print(f"\ndemo finished in {results['seconds']:.0f} s (seed {args.seed})")
    print(f"  fine-tuned top-1: pretrained {results['pretrained_top1']:.1f}% vs random init "
          f"{results['scratch_top1']:.1f}% ({results['gain']:+.1f} points; target +{results['target_gain']:.0f})")
    print(f"  linear probe top-1: {results['linear_top1']:.1f}% (random trunk: {results['linear_scratch_top1']:.1f}%)")
    print(f"  report: {run.rel(run.report)}   results: {run.rel(run.results)}")
    for command in results["wandb_sync"]:
        print(f"  upload the wandb offline run: {command}")


if __name__ == "__main__":
    main()
