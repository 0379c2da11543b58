"""`make demo` end to end at a tiny size: every stage's wiring (world -> vocab -> shards -> torchrun
pretraining -> fine-tuning both arms -> linear probes -> report), the checkable results.json, the
plots and the wandb offline run. The full-size demo's figures are measured, not tested
(docs/benchmarks.md); a tiny run cannot show the transfer gain, only that it is measured and
reported truthfully."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
PNG = b"\x89PNG\r\n\x1a\n"
TINY = ["--images", "400", "--downstream-train", "4", "--downstream-val", "4", "--min-count", "3",
        "--pretrain-images", "512", "--finetune-epochs", "2"]


def run_demo(out: Path, *extra: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(REPO / "scripts" / "demo.py"), "--out", str(out), *TINY, *extra],
                          cwd=REPO, capture_output=True, text=True, timeout=600)


@pytest.fixture(scope="module")
def demo(tmp_path_factory) -> tuple[Path, subprocess.CompletedProcess]:
    out = tmp_path_factory.mktemp("demo") / "out"
    result = run_demo(out)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return out, result


pytestmark = [pytest.mark.slow, pytest.mark.xdist_group("demo")]


def test_every_stage_ran_and_printed_its_command(demo):
    out, result = demo
    for number, command in enumerate(["python scripts/make_synthetic.py", "python scripts/build_vocab.py",
                                      "python scripts/build_shards.py",
                                      "OMP_NUM_THREADS=1 python -m torch.distributed.run --standalone --nproc_per_node=2 -m pretrain",
                                      "python -m transfer finetune", "python -m transfer finetune",
                                      "python -m transfer linear", "python -m transfer linear",
                                      "python -m transfer export", "python -m transfer predict"], start=1):
        assert f"=== [{number}/10]" in result.stdout
        assert f"$ {command}" in result.stdout
    for produced in ["world/yfcc100m_dataset.tsv", "vocab.json", "shards/info.json", "pretrain/trunk.safetensors",
                     "pretrain/metrics.jsonl", "finetune/metrics.jsonl", "finetune_scratch/metrics.jsonl",
                     "linear/linear.json", "linear_scratch/linear.json"]:
        assert (out / produced).is_file(), produced


def test_results_json_holds_the_checkable_figures(demo):
    out, _ = demo
    results = json.loads((out / "results.json").read_text())
    for key in ("pretrained_top1", "scratch_top1", "linear_top1", "seconds"):
        assert isinstance(results[key], (int, float)) and results[key] >= 0, key
    assert results["seed"] == 0 and results["pretrain_images"] == 512
    # The figures are the runs' own final-epoch numbers, not re-derived ones.
    final = [json.loads(line) for line in (out / "finetune" / "metrics.jsonl").read_text().splitlines()][-1]
    assert results["pretrained_top1"] == final["val/top1"]
    linear = json.loads((out / "linear" / "linear.json").read_text())
    assert results["linear_top1"] == linear["val"]["top1"]
    assert results["gain"] == pytest.approx(results["pretrained_top1"] - results["scratch_top1"])
    assert results["target_met"] == (results["gain"] >= 10)
    # Each figure is rounded to 0.1 s: allow that much per stage.
    assert 0 < sum(results["stage_seconds"].values()) <= results["seconds"] + 0.05 * len(results["stage_seconds"])


def test_report_and_plots(demo):
    out, result = demo
    results = json.loads((out / "results.json").read_text())
    report = (out / "report.md").read_text()
    assert f"**{results['pretrained_top1']:.1f}**" in report and f"{results['scratch_top1']:.1f}" in report
    assert f"Seed {results['seed']}" in report
    assert ("NOT met" in report) == (not results["target_met"])
    for image in ["downstream.png", "pretraining.png", "pretrain/label_distribution.png", "vocab.zipf.png"]:
        assert (out / image).read_bytes()[:8] == PNG, image
    # Relative links resolve from the report's own directory.
    for link in ["downstream.png", "pretraining.png", "pretrain/label_distribution.png"]:
        assert f"]({link})" in report
    assert f"report: {out / 'report.md'}" in result.stdout


def test_wandb_offline_run_and_its_sync_command(demo):
    out, result = demo
    results = json.loads((out / "results.json").read_text())
    [command] = results["wandb_sync"]
    run_dir = Path(command.split(" ", 2)[2])
    assert run_dir.parent == out / "pretrain" / "wandb" and run_dir.name.startswith("offline-run-")
    assert list(run_dir.glob("*.wandb")), "the offline run has no .wandb log"
    assert f"upload the wandb offline run: {command}" in result.stdout


def test_the_demo_exports_its_pretraining_run_and_tags_three_downstream_pictures(demo):
    out, result = demo
    config = json.loads((out / "export" / "config.json").read_text())
    vocab = json.loads((out / "vocab.json").read_text())
    assert config["label_names"] == [label["tag"] for label in vocab["labels"]]
    assert config["openwsl"]["probabilities"] == "softmax" and (out / "export" / "model.safetensors").is_file()
    predicted = result.stdout.split("$ python -m transfer predict", 1)[1]
    pictures = [line for line in predicted.splitlines() if line.endswith(".jpg")]
    assert len(pictures) == 3 and len({Path(p).parent.name for p in pictures}) == 3  # one per class
    rows = [line.split() for line in predicted.splitlines() if line.startswith("  ")][:9]
    assert len(rows) == 9 and all(0 <= float(p) <= 1 and tag in config["label_names"] for p, tag in rows)


def test_a_previous_demo_output_is_replaced(tmp_path):
    sys.path.insert(0, str(REPO / "scripts"))
    from demo import MARKER, prepare_out

    out = tmp_path / "demo"
    prepare_out(out)
    (out / "shards").mkdir()
    (out / "shards" / "old.tar").write_bytes(b"stale")
    prepare_out(out)
    assert sorted(path.name for path in out.iterdir()) == [MARKER]


def test_a_foreign_directory_is_never_cleared(demo, tmp_path):
    foreign = tmp_path / "mine"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("precious")
    result = run_demo(foreign)
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [
        f"error: --out {foreign}: directory exists, is not empty and was not made by the demo; "
        "pass an empty or new directory"]
    assert (foreign / "notes.txt").read_text() == "precious"
