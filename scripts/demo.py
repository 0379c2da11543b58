"""The embedded end-to-end demo (`make demo`): every stage of the pipeline on CPU, no downloads.

Each stage runs the same command a user would type (printed before it runs), so the demo doubles as
a worked example of the README. Stages so far: synthetic hashtag world -> vocabulary -> shards ->
report. Outputs land in ``runs/demo/`` (``--out``); ``runs/demo/report.md`` says where everything is.
"""
from __future__ import annotations

import argparse
import json
import shlex
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from data.atomic_write import write_text  # noqa: E402
from data.errors import UserError, cli_main  # noqa: E402


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=REPO / "runs" / "demo", help="demo output directory")
    parser.add_argument("--images", type=int, default=20000, help="pictures in the synthetic world")
    parser.add_argument("--top-k", type=int, default=1000, help="vocabulary size cap")
    parser.add_argument("--min-count", type=int, default=20, help="minimum images per vocabulary tag")
    parser.add_argument("--seed", type=int, default=0, help="seed of the synthetic world")
    parser.add_argument("--workers", type=int, default=2, help="worker processes per stage")
    return parser.parse_args(argv)


def run_stage(title: str, args: list[str]) -> float:
    """Run one pipeline command as a user would, streaming its output; return seconds taken."""
    print(f"\n=== {title}\n$ {shlex.join(args)}", flush=True)
    start = time.perf_counter()
    result = subprocess.run([sys.executable, *args], cwd=REPO)
    if result.returncode != 0:
        raise UserError(f"demo stage '{title}' failed (exit {result.returncode}); its output is above")
    return time.perf_counter() - start


def rel(path: Path) -> str:
    try:
        return str(path.resolve().relative_to(REPO))
    except ValueError:
        return str(path)


def write_report(out: Path, timings: dict[str, float]) -> Path:
    vocab = json.loads((out / "vocab.json").read_text())
    vocab_report = json.loads((out / "vocab.report.json").read_text())
    info = json.loads((out / "shards" / "info.json").read_text())
    shard_report = json.loads((out / "shards" / "report.json").read_text())
    lines = [
        "# openwsl demo report", "",
        "| stage | seconds |", "|---|---|",
        *[f"| {name} | {sec:.1f} |" for name, sec in timings.items()], "",
        "## Vocabulary", "",
        f"- `{rel(out / 'vocab.json')}`: {vocab['num_labels']} labels",
        f"- coverage: {vocab_report['coverage']['percent']:.1f}% of images carry >= 1 label",
        f"- top labels: {', '.join(label['tag'] for label in vocab['labels'][:10])}",
        f"- Zipf plot: `{rel(out / 'vocab.zipf.png')}`", "",
        "## Shards", "",
        f"- `{rel(out / 'shards')}`: {info['num_samples']['train']} train and {info['num_samples']['val']} "
        "val samples",
        f"- skipped by reason: {json.dumps(shard_report['skipped']['counts'])} (examples in "
        f"`{rel(out / 'shards' / 'report.json')}`)",
        f"- label histogram: `{rel(out / 'shards' / 'label_histogram.png')}`", "",
    ]
    path = out / "report.md"
    write_text(path, "\n".join(lines))
    return path


@cli_main
def main(argv=None) -> None:
    args = parse_args(argv)
    out: Path = args.out
    world, vocab, shards = out / "world", out / "vocab.json", out / "shards"
    metadata = world / "yfcc100m_dataset.tsv"
    timings = {
        "synthetic world": run_stage("1/3 synthetic hashtag world", [
            "scripts/make_synthetic.py", "--out", str(world), "--images", str(args.images),
            "--seed", str(args.seed), "--workers", str(args.workers)]),
        "vocabulary": run_stage("2/3 hashtag vocabulary", [
            "scripts/build_vocab.py", "--source", "yfcc100m", "--input", str(metadata),
            "--top-k", str(args.top_k), "--min-count", str(args.min_count), "--out", str(vocab),
            "--workers", str(args.workers)]),
        "shards": run_stage("3/3 labelled WebDataset shards", [
            "scripts/build_shards.py", "--source", "yfcc100m", "--input", str(metadata),
            "--images", str(world), "--vocab", str(vocab), "--out", str(shards),
            "--exclude-near", str(world / "downstream" / "val"), "--workers", str(args.workers)]),
    }
    report = write_report(out, timings)
    print(f"\ndemo finished in {sum(timings.values()):.0f} s; report: {rel(report)}")


if __name__ == "__main__":
    main()
