"""hubconf.py: torch.hub entry points for the official WSL-Images files and for openwsl exports, loaded
with ``torch.hub.load(<repo>, …, source="local")`` as a user would. The official-file oracle is
torchvision's own resnext101_32x8d loading the same file."""
from __future__ import annotations

from pathlib import Path

import pytest
import timm
import torch
import torchvision

from data.errors import UserError
from tests.export_factory import pretraining_run, randomise
from transfer.__main__ import main

REPO = Path(__file__).resolve().parents[2]
TAGS = ["dog", "cat", "beach"]


def test_the_entry_points_are_what_torch_hub_lists():
    # torch.hub.list reads GitHub repositories only; this is its listing rule on the local hubconf.py
    hubconf = torch.hub._import_module("hubconf", str(REPO / "hubconf.py"))
    listed = {name for name in dir(hubconf) if callable(getattr(hubconf, name)) and not name.startswith("_")}
    assert listed == {"resnext101_32x8d_wsl", "resnext101_32x16d_wsl", "resnext101_32x32d_wsl",
                      "resnext101_32x48d_wsl", "openwsl_model"}
    assert set(hubconf.dependencies) == {"torch", "torchvision", "timm", "safetensors"}


def test_openwsl_model_loads_an_export_with_its_labels_and_preprocessing(tmp_path):
    run = tmp_path / "runs" / "pretrain"
    ours = pretraining_run(run, "resnext_tiny", TAGS, image_size=64)
    main(["export", str(run), "--out", str(tmp_path / "export")])
    model = torch.hub.load(str(REPO), "openwsl_model", source="local", folder=str(tmp_path / "export"))
    assert not model.training and list(model.pretrained_cfg["label_names"]) == TAGS
    config = timm.data.resolve_data_config(model=model)
    assert config["input_size"] == (3, 64, 64) and config["interpolation"] == "bilinear"
    images = torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(0))
    with torch.inference_mode():
        assert torch.equal(model(images), ours(images))


@pytest.mark.slow
def test_an_official_wsl_file_loads_as_torchvision_loads_it(tmp_path):
    """A file in the released layout (a plain torchvision state dict with a 1000-way fc and, as the
    2019 files, no BN num_batches_tracked), written from torchvision's own resnext101_32x8d."""
    reference = randomise(torchvision.models.resnext101_32x8d(weights=None)).eval()
    state = {k: v for k, v in reference.state_dict().items() if not k.endswith("num_batches_tracked")}
    weights = tmp_path / "ig_resnext101_32x8-c38310e5.pth"
    torch.save(state, weights)
    del state
    model = torch.hub.load(str(REPO), "resnext101_32x8d_wsl", source="local", weights=str(weights))
    images = torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(0))
    with torch.inference_mode():
        assert torch.equal(model(images), reference(images))
    assert not model.training and model.pretrained_cfg["license"] == "cc-by-nc-4.0"
    labels = model.pretrained_cfg["label_names"]
    assert len(labels) == 1000 and labels[0] == "n01440764"  # ImageNet-1k class order (tench first)
    assert timm.data.resolve_data_config(model=model)["crop_pct"] == 0.875

    other_width = tmp_path / "ig_resnext101_32x16-c6f796b0.pth"
    torch.save({"layer1.0.conv1.weight": torch.zeros(512, 64, 1, 1)}, other_width)  # 32x16d's first conv
    with pytest.raises(UserError, match=r"layer1.0.conv1.weight has shape \(512, 64, 1, 1\) in the file but "
                                        r"\(256, 64, 1, 1\) in the model"):
        torch.hub.load(str(REPO), "resnext101_32x8d_wsl", source="local", weights=str(other_width))
    with pytest.raises(UserError, match="no such file"):
        torch.hub.load(str(REPO), "resnext101_32x8d_wsl", source="local", weights=str(tmp_path / "missing.pth"))
