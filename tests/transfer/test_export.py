"""`python -m transfer export`: runs and trunks become folders that plain timm loads with the same logits,
with their labels, the loss that turns logits into probabilities, the eval transform and provenance.

The oracle is timm itself: ``timm.create_model("local-dir:<folder>", pretrained=True)`` and its
``pretrained_cfg``, compared with the project's own model of the run on the same input."""
from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import pytest
import timm
import torch

from data.errors import UserError
from pretrain.config import load_config
from pretrain.model import create_model, pooled_features
from pretrain.train import train
from tests.export_factory import pretraining_run
from tests.pretrain_runs import job_env, make_shards, write_config
from tests.transfer_factory import image_folder
from transfer.__main__ import main
from transfer.export import Preprocessing, load_export, read_source, source_model

REPO = Path(__file__).resolve().parents[2]
TAGS = [f"t{i}" for i in range(6)]


@pytest.fixture(scope="module")
def trained_run(tmp_path_factory) -> Path:
    """A real pretraining run (resnext_tiny, 32 px, 32 images, softmax) on shards whose info.json names
    the vocab's sha256 and a YFCC100M licence filter."""
    root = tmp_path_factory.mktemp("trained")
    train_shards, _ = make_shards(root)
    info = json.loads((train_shards / "info.json").read_text())
    info["vocab"].update(path=str(root / "vocab.json"), sha256="ab" * 32)
    info["corpus"] = {"source": "yfcc100m", "input": str(root / "yfcc100m_dataset.bz2"), "licenses": ["by", "by-sa"]}
    (train_shards / "info.json").write_text(json.dumps(info))
    config = write_config(root / "run.yaml", train_shards, None, root / "runs", "pretrain",
                          optim={"total_images": 32, "warmup_images": 8}, checkpoint={"every_images": 32})
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        train(load_config(config))
    finally:
        torch.set_num_threads(threads)
    return root / "runs" / "pretrain"


def export(*args: str) -> None:
    main(["export", *map(str, args)])


def timm_logits(folder: Path, images: torch.Tensor) -> tuple[torch.nn.Module, torch.Tensor]:
    model = timm.create_model(f"local-dir:{folder}", pretrained=True).eval()
    with torch.inference_mode():
        return model, model(images)


def batch(size: int, seed: int = 1) -> torch.Tensor:
    return torch.randn(3, 3, size, size, generator=torch.Generator().manual_seed(seed))


def test_a_pretraining_run_loads_in_timm_with_its_hashtags_loss_and_provenance(trained_run, tmp_path, capsys):
    out = tmp_path / "export"
    export(trained_run, "--out", out)
    printed = capsys.readouterr().out
    assert f'timm.create_model("local-dir:{out}", pretrained=True)' in printed
    assert sorted(p.name for p in out.iterdir()) == ["README.md", "config.json", "model.safetensors"]

    config = json.loads((out / "config.json").read_text())
    assert config["architecture"] == "resnext50_32x4d"  # resnext_tiny: timm's ResNeXt with model_args
    assert config["model_args"]["layers"] == [1, 1, 1, 1] and config["model_args"]["cardinality"] == 8
    assert config["num_classes"] == 6 and config["num_features"] == 2048
    assert config["label_names"] == TAGS  # vocabulary order = head order
    cfg = config["pretrained_cfg"]
    assert cfg["input_size"] == [3, 32, 32] and cfg["interpolation"] == "bilinear" and cfg["crop_mode"] == "center"
    assert math.floor(32 / cfg["crop_pct"]) == 37  # pretraining's eval resize, round(32 * 256 / 224)
    assert cfg["mean"] == [0.485, 0.456, 0.406] and cfg["std"] == [0.229, 0.224, 0.225]
    assert cfg["license"] == "YFCC100M photos under: Attribution License, Attribution-ShareAlike License; each " \
                             "photo keeps its own licence"
    assert "softmax over 6 hashtags, 32 images seen" in cfg["description"] and "ab" * 32 in cfg["description"]
    openwsl = config["openwsl"]
    assert openwsl["probabilities"] == "softmax" and openwsl["head"] == "hashtags" and openwsl["model"] == "resnext_tiny"
    assert openwsl["vocab"] == {"path": str(trained_run.parents[1] / "vocab.json"), "sha256": "ab" * 32, "num_labels": 6}
    assert openwsl["run_config"]["optim"]["total_images"] == 32 and openwsl["timm"] is True
    assert "timm" in (out / "README.md").read_text()

    ours = source_model(read_source(trained_run))
    images = batch(32)
    model, logits = timm_logits(out, images)
    with torch.inference_mode():
        diff = float((logits - ours(images)).abs().max())
    print(f"resnext_tiny pretraining run: timm local-dir vs ours, max |logit diff| {diff:.3g}")
    assert diff <= 1e-5
    assert list(model.pretrained_cfg["label_names"]) == TAGS
    assert timm.data.resolve_data_config(model=model)["crop_pct"] == cfg["crop_pct"]


@pytest.mark.slow
def test_a_resnext101_member_loads_in_timm_with_identical_logits(tmp_path):
    """The cheapest real ResNeXt-101 (32x4d, 44 M parameters) at 64 px: timm's own resnext101_32x4d
    architecture, no model_args; a sigmoid run records sigmoid."""
    run = tmp_path / "runs" / "r101"
    ours = pretraining_run(run, "resnext101_32x4d", [f"tag{i}" for i in range(10)], image_size=64, loss="sigmoid")
    out = tmp_path / "export"
    export(run, "--out", out)
    config = json.loads((out / "config.json").read_text())
    assert config["architecture"] == "resnext101_32x4d"
    assert set(config["model_args"]) <= {"num_classes", "in_chans", "global_pool"}
    assert config["openwsl"]["probabilities"] == "sigmoid" and config["pretrained_cfg"]["input_size"] == [3, 64, 64]
    images = batch(64)
    model, logits = timm_logits(out, images)
    with torch.inference_mode():
        diff = float((logits - ours(images)).abs().max())
    print(f"resnext101_32x4d: timm local-dir vs ours, max |logit diff| {diff:.3g} (logits up to "
          f"{float(logits.abs().max()):.3g})")
    assert diff <= 1e-5 and float(logits.std()) > 0.1
    assert list(model.pretrained_cfg["label_names"]) == [f"tag{i}" for i in range(10)]


def test_a_model_built_from_a_timm_name_exports_with_its_class_names(tmp_path, capsys):
    """A fine-tuning run of timm's test_resnet: its class head and class names, ImageNet mean/std (the
    pipeline's normalisation, not test_resnet's own 0.5/0.5) and a softmax."""
    classes = {"red": 3, "green": 3, "blue": 3}
    train_dir = image_folder(tmp_path / "train", classes)
    main(["finetune", "--config", str(REPO / "configs/transfer/cpu_demo_finetune.yaml"), "model.name=test_resnet",
          "init=null", f"data.train={train_dir}", f"data.val={train_dir}", "data.image_size=32", "data.resize_size=40",
          "data.workers=0", "finetune.epochs=1", "finetune.warmup_epochs=0.5", "finetune.batch_size=3",
          f"run.dir={tmp_path / 'runs'}", "run.name=ft", "tracking.wandb=disabled"])
    out = tmp_path / "export"
    export(tmp_path / "runs" / "ft", "--out", out)
    config = json.loads((out / "config.json").read_text())
    assert config["architecture"] == "test_resnet" and config["label_names"] == sorted(classes)
    cfg = config["pretrained_cfg"]
    assert cfg["mean"] == [0.485, 0.456, 0.406] and cfg["input_size"] == [3, 32, 32]
    assert math.floor(32 / cfg["crop_pct"]) == 40
    assert config["openwsl"]["probabilities"] == "softmax" and config["openwsl"]["source"]["kind"] == "fine-tuned model"
    ours = source_model(read_source(tmp_path / "runs" / "ft"))
    images = batch(32)
    _, logits = timm_logits(out, images)
    with torch.inference_mode():
        assert float((logits - ours(images)).abs().max()) <= 1e-5


def test_the_quarter_width_micro_cannot_be_a_timm_architecture_and_says_why(tmp_path, capsys):
    run = tmp_path / "runs" / "micro"
    ours = pretraining_run(run, "resnext_micro", TAGS, image_size=64)
    out = tmp_path / "export"
    with pytest.raises(SystemExit) as stop:
        export(run, "--out", out)
    assert stop.value.code == 2
    [line] = capsys.readouterr().err.strip().splitlines()
    assert line.startswith("error: cannot export resnext_micro for timm: resnext_micro has a 16-channel stem and "
                           "timm's ResNet fixes its stem at 64 channels") and "--allow-openwsl-only" in line
    assert not out.exists(), "a refused export leaves nothing behind"

    export(run, "--out", out, "--allow-openwsl-only")
    config = json.loads((out / "config.json").read_text())
    assert config["architecture"] == "resnext_micro" and config["openwsl"]["timm"] is False
    with pytest.raises(RuntimeError, match="Unknown model"):
        timm.create_model(f"local-dir:{out}", pretrained=True)
    loaded = load_export(out)  # openwsl's loader (torch.hub openwsl_model, predict) reads it
    images = batch(64)
    with torch.inference_mode():
        assert torch.equal(loaded.model(images), ours(images))
    assert loaded.labels == TAGS and loaded.preprocessing == Preprocessing(64, 73)


def test_trunk_only_and_trunk_files_export_pooled_features(trained_run, tmp_path):
    images = batch(32)
    ours = create_model("resnext_tiny", 6)
    ours.load_state_dict(read_source(trained_run).state)
    ours.eval()
    with torch.inference_mode():
        expected = pooled_features(ours, images)
    for name, source, extra in (("trunk_only", trained_run, ["--trunk-only"]),
                                ("trunk_file", trained_run / "trunk.safetensors", [])):
        out = tmp_path / name
        export(source, "--out", out, *extra)
        config = json.loads((out / "config.json").read_text())
        assert config["num_classes"] == 0 and "label_names" not in config and config["openwsl"]["head"] is None
        # the trunk file is read with its run's config.yaml beside it: same preprocessing
        assert config["pretrained_cfg"]["input_size"] == [3, 32, 32]
        model, features = timm_logits(out, images)
        assert features.shape == (3, 2048)
        assert float((features - expected).abs().max()) <= 1e-5, name


def test_the_preprocessing_round_trips_through_timms_crop_pct_rule():
    for size, resize in [(224, 256), (64, 73), (32, 37), (288, 320), (100, 114), (57, 65), (384, 384)]:
        pre = Preprocessing(size, resize)
        assert math.floor(size / pre.crop_pct()) == resize
        assert Preprocessing.from_timm_config(pre.timm_config(), "x") == pre


@pytest.mark.parametrize("case, message", [
    ("missing", "no such run directory or model file"),
    ("not_a_run", "is not a run directory: it holds none of checkpoint-latest.pt"),
    ("an_export", "is already an export (config.json)"),
    ("foreign_file", "not a model file openwsl writes"),
    ("out_not_empty", "exists and is not an empty folder; pass a new folder"),
])
def test_bad_input_is_one_error_line(case, message, trained_run, tmp_path, capsys):
    out = tmp_path / "out"
    source = {"missing": tmp_path / "nope", "not_a_run": tmp_path, "an_export": tmp_path / "done",
              "foreign_file": tmp_path / "weights.bin", "out_not_empty": trained_run}[case]
    (tmp_path / "weights.bin").write_bytes(b"\0" * 10)
    (tmp_path / "done").mkdir()
    (tmp_path / "done" / "config.json").write_text("{}")
    if case == "out_not_empty":
        out.mkdir()
        (out / "mine.txt").write_text("precious")
    with pytest.raises(SystemExit) as stop:
        export(source, "--out", out)
    assert stop.value.code == 2
    [line] = capsys.readouterr().err.strip().splitlines()
    assert line.startswith("error: ") and message in line
    if case == "out_not_empty":
        assert sorted(p.name for p in out.iterdir()) == ["mine.txt"]


def test_a_fine_tuning_checkpoint_points_at_the_model_files(tmp_path):
    from pretrain.checkpoint import save_checkpoint

    config = {"finetune": {}, "model": {"name": "resnext_tiny"}}
    path = save_checkpoint(tmp_path, {"model": {}, "step": 1, "config": config}, 8, 1)
    with pytest.raises(UserError, match="fine-tuning checkpoint, which does not name its classes"):
        read_source(path)


def test_push_to_hub_writes_the_folder_then_reports_a_failed_upload_in_one_line(trained_run, tmp_path):
    """No network in tests: huggingface_hub's offline mode makes the upload fail at its first request.
    Everything before it runs for real, and the complete folder stays for a later `hf upload`."""
    out = tmp_path / "export"
    done = subprocess.run([sys.executable, "-m", "transfer", "export", str(trained_run), "--out", str(out),
                           "--push-to-hub", "someone/openwsl-test"], cwd=REPO, capture_output=True, text=True,
                          timeout=300, env=job_env(HF_HUB_OFFLINE="1", HF_TOKEN="hf_invalid"))
    assert done.returncode == 2, done.stderr[-2000:]
    assert "uploading" in done.stdout and "someone/openwsl-test" in done.stdout
    [line] = [l for l in done.stderr.splitlines() if l.startswith("error:")]
    assert line.startswith(f"error: upload of {out} to the Hugging Face Hub repo someone/openwsl-test failed (")
    assert "offline mode" in line and f"upload it later with `hf upload someone/openwsl-test {out}`" in line
    assert sorted(p.name for p in out.iterdir()) == ["README.md", "config.json", "model.safetensors"]
    timm.create_model(f"local-dir:{out}", pretrained=True)


def test_export_and_predict_answer_help(capsys):
    for command in ("export", "predict"):
        with pytest.raises(SystemExit) as stop:
            main([command, "--help"])
        assert stop.value.code == 0 and f"usage: python -m transfer {command}" in capsys.readouterr().out
