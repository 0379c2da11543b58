"""transfer evaluate and linear end to end (generated ImageFolders and the real hymenoptera photos),
top-k arithmetic, exact 2-process DDP evaluation, and the CLI's one-line errors."""
from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from tests.transfer_factory import colour_task, image_folder, tiny_model_file
from transfer.__main__ import main
from transfer.evaluate import topk_correct

REPO = Path(__file__).resolve().parents[2]
EVAL_RECIPE = str(REPO / "configs/transfer/cpu_demo_eval.yaml")
LINEAR_RECIPE = str(REPO / "configs/transfer/cpu_demo_linear.yaml")
SMALL = ["data.image_size=32", "data.resize_size=36", "data.workers=0", "data.batch_size=16"]


def test_topk_correct_arithmetic():
    logits = torch.tensor([[0.1, 0.9, 0.0, 0.3],   # ranks: 1, 3, 0, 2
                           [5.0, 1.0, 2.0, 3.0],   # ranks: 0, 3, 2, 1
                           [0.0, 0.0, 1.0, -1.0]])  # ranks: 2, then 0/1 tied, 3 last
    targets = torch.tensor([3, 1, 3])
    hits = topk_correct(logits, targets, (1, 2, 3, 4, 5))
    assert hits.tolist() == [[False, True, True, True, True],
                             [False, False, False, True, True],
                             [False, False, False, True, True]]
    assert topk_correct(logits, torch.tensor([1, 0, 2]), (1,)).squeeze(1).tolist() == [True, True, True]
    with pytest.raises(ValueError):
        topk_correct(logits, targets[:2], (1,))
    # A class scored -inf (zero-shot: no hashtag) is never a hit, even inside a k wider than the rest.
    unmapped = torch.tensor([[2.0, 1.0, float("-inf")]])
    assert topk_correct(unmapped, torch.tensor([2]), (1, 3)).tolist() == [[False, False]]


def _run(tmp_path: Path, command: str, recipe: str, *overrides: str) -> dict:
    main([command, "--config", recipe, f"run.dir={tmp_path / 'runs'}", *SMALL, *overrides])
    name = next(o.split("=", 1)[1] for o in overrides if o.startswith("run.name="))
    result = "eval.json" if command == "evaluate" else "linear.json"
    return json.loads((tmp_path / "runs" / name / result).read_text())


def test_linear_probe_then_evaluate_its_model_on_a_generated_image_folder(tmp_path):
    train, val, weights = colour_task(tmp_path, 16, 7)
    common = [f"init={weights}", f"data.train={train}", f"data.val={val}"]
    linear = _run(tmp_path, "linear", LINEAR_RECIPE, *common, "run.name=lin", "linear.weight_decays=[1e-4, 1e-2, 1.0]")
    assert linear["classes"] == ["blue", "green", "red"]
    assert [row["weight_decay"] for row in linear["grid"]] == [1e-4, 1e-2, 1.0]
    assert linear["weight_decay"] in (1e-4, 1e-2, 1.0) and linear["train_images"] == 48
    assert linear["val"]["top1"] >= 90.0, "colour classes are linearly separable in random-conv features"
    assert linear["init"]["head_not_loaded"] == ["fc.weight", "fc.bias"]
    assert not any(f["reused"] for f in linear["features"].values())

    again = _run(tmp_path, "linear", LINEAR_RECIPE, *common, "run.name=lin", "linear.weight_decays=[1e-4, 1e-2, 1.0]")
    assert all(f["reused"] for f in again["features"].values()), "identical settings reuse the cached features"
    assert again["val"] == linear["val"]
    resized = _run(tmp_path, "linear", LINEAR_RECIPE, *common, "run.name=lin", "data.resize_size=40",
                   "linear.weight_decays=[1e-2]")
    assert not any(f["reused"] for f in resized["features"].values()), "another transform extracts again"

    model_file = tmp_path / "runs" / "lin" / "linear_model.safetensors"
    result = _run(tmp_path, "evaluate", EVAL_RECIPE, f"init={model_file}", f"data.val={val}", "run.name=ev")
    # The probe folded into fc scores raw images exactly as it scored the cached features.
    assert result["top1"] == pytest.approx(linear["val"]["top1"]) and result["top5"] == 100.0
    assert result["scored"] == 21 and result["skipped"]["total"] == 0
    assert [c["images"] for c in result["per_class"]] == [7, 7, 7]
    assert result["settings"]["transform"]["interpolation"] == "bilinear"
    assert result["settings"]["transform"]["resize"] == 36 and result["settings"]["transform"]["crop"] == 32
    run_dir = tmp_path / "runs" / "ev"
    assert (run_dir / "eval_per_class.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    rows = list(csv.DictReader((run_dir / "predictions.csv").open()))
    assert sorted(int(r["index"]) for r in rows) == list(range(21))
    assert sum(int(r["top1_correct"]) for r in rows) == round(result["top1"] * 21 / 100)


def test_linear_and_evaluate_on_real_hymenoptera_photos(tmp_path, shared_data):
    root = shared_data / "hymenoptera" / "hymenoptera_data"
    weights = tiny_model_file(tmp_path / "trunk.pth", num_classes=10)
    linear = _run(tmp_path, "linear", LINEAR_RECIPE, f"init={weights}", f"data.train={root / 'train'}",
                  f"data.val={root / 'val'}", "run.name=hym", "linear.weight_decays=[1e-3, 1e-1]")
    # 245 train / 153 val photos incl. a GIF, a name with a space and a progressive JPEG: all decode.
    assert linear["train_images"] == 245 and linear["val_images"] == 153
    assert linear["features"]["train"]["skipped"]["total"] == 0
    assert linear["val"]["top1"] > 50.0 and linear["val"]["top5"] == 100.0
    model_file = tmp_path / "runs" / "hym" / "linear_model.safetensors"
    result = _run(tmp_path, "evaluate", EVAL_RECIPE, f"init={model_file}", f"data.val={root / 'val'}", "run.name=hev")
    assert result["scored"] == 153 and result["top1"] == pytest.approx(linear["val"]["top1"])
    assert [c["class"] for c in result["per_class"]] == ["ants", "bees"]


_TORCHRUN_VARS = ("RANK", "LOCAL_RANK", "WORLD_SIZE", "LOCAL_WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT")


def test_two_process_ddp_evaluation_scores_an_odd_number_of_images_exactly_once(tmp_path):
    val = image_folder(tmp_path / "val", {"red": 4, "green": 2, "blue": 3}, seed=2)  # 9 images
    (val / "green" / "broken.jpg").write_bytes(b"plain text saved as .jpg")  # 10th: a skip
    weights = tiny_model_file(tmp_path / "model.pth", num_classes=3, seed=4)
    args = ["evaluate", "--config", EVAL_RECIPE, f"init={weights}", f"data.val={val}", f"run.dir={tmp_path}",
            "data.image_size=32", "data.resize_size=36", "data.workers=0", "data.batch_size=2"]
    env = {k: v for k, v in os.environ.items() if k not in _TORCHRUN_VARS}
    env.update(PYTHONPATH=str(REPO), OMP_NUM_THREADS="1", CUDA_VISIBLE_DEVICES="")
    done = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
                           "-m", "transfer", *args, "run.name=ddp"], cwd=REPO, env=env, capture_output=True,
                          text=True, timeout=240)
    assert done.returncode == 0, done.stderr[-3000:]
    main([*args, "run.name=single"])
    ddp, single = (json.loads((tmp_path / name / "eval.json").read_text()) for name in ("ddp", "single"))
    assert ddp["settings"]["world_size"] == 2 and ddp["num_images"] == 10
    assert ddp["scored"] == 9 and ddp["skipped"]["counts"] == {"unsupported_format": 1}
    assert [c["images"] for c in ddp["per_class"]] == [3, 2, 4]
    rows = list(csv.DictReader((tmp_path / "ddp" / "predictions.csv").open()))
    assert len(rows) == 9 and len({r["index"] for r in rows}) == 9
    assert (ddp["top1"], ddp["top5"], ddp["per_class"]) == (single["top1"], single["top5"], single["per_class"])
    assert rows == list(csv.DictReader((tmp_path / "single" / "predictions.csv").open()))


def _one_error_line(capsys, *args: str) -> str:
    """Run the CLI in-process (as `python -m transfer` does); it must exit 2 with one `error:` line."""
    with pytest.raises(SystemExit) as exit_info:
        main([*args, "data.workers=0"])
    assert exit_info.value.code == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), lines
    return lines[0]


def test_cli_errors_for_missing_class_folder_and_empty_dataset(tmp_path, capsys):
    runs = f"run.dir={tmp_path / 'runs'}"
    train = image_folder(tmp_path / "train", {"red": 2, "blue": 2})
    val = image_folder(tmp_path / "val", {"red": 1, "purple": 1}, colours={"red": (200, 0, 0), "purple": (90, 0, 90)})
    line = _one_error_line(capsys, "linear", "--config", LINEAR_RECIPE, "init=null", f"data.train={train}",
                           f"data.val={val}", runs)
    assert "class folder 'purple' is not among the 2 training classes" in line
    (tmp_path / "empty" / "red").mkdir(parents=True)
    line = _one_error_line(capsys, "evaluate", "--config", EVAL_RECIPE, f"data.val={tmp_path / 'empty'}", runs)
    assert "holds no images" in line and str(tmp_path / "empty") in line
    line = _one_error_line(capsys, "evaluate", "--config", EVAL_RECIPE, f"data.val={tmp_path / 'absent'}", runs)
    assert "not found" in line
    line = _one_error_line(capsys, "linear", "--config", LINEAR_RECIPE, "linear.weight_decay=[1]", runs)
    assert "unknown key linear.weight_decay (did you mean linear.weight_decays?)" in line


def test_evaluate_refuses_a_file_without_a_matching_head(tmp_path, capsys):
    val = image_folder(tmp_path / "val", {"red": 1, "blue": 1})
    trunk = tiny_model_file(tmp_path / "ten.pth", num_classes=10)
    line = _one_error_line(capsys, "evaluate", "--config", EVAL_RECIPE, f"init={trunk}", f"data.val={val}",
                           f"run.dir={tmp_path / 'runs'}")
    assert "no 2-way classifier" in line and "linear" in line


def test_help_lists_the_subcommands(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["--help"])
    out = capsys.readouterr().out
    assert exit_info.value.code == 0 and "{finetune,linear,evaluate}" in out
