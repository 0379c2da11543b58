"""An exported trunk as a detection backbone: torchvision's Faster R-CNN with an FPN over our ResNeXt
(torchvision.models.detection.backbone_utils), the export loaded strictly, frozen BN as detection
recipes use it; docs/transfer.md shows the same steps."""
from __future__ import annotations

import safetensors.torch
import torch
from torchvision.models.detection import FasterRCNN
from torchvision.models.detection.backbone_utils import _resnet_fpn_extractor
from torchvision.ops.misc import FrozenBatchNorm2d

from pretrain.model import create_model
from tests.export_factory import pretraining_run
from transfer.__main__ import main


def test_an_exported_trunk_drives_a_faster_rcnn_with_fpn(tmp_path):
    run = tmp_path / "runs" / "pretrain"
    trained = pretraining_run(run, "resnext_tiny", ["dog", "cat", "beach"], image_size=64)
    main(["export", str(run), "--out", str(tmp_path / "trunk"), "--trunk-only"])

    trunk = create_model("resnext_tiny", 0, norm_layer=FrozenBatchNorm2d)
    trunk.load_state_dict(safetensors.torch.load_file(tmp_path / "trunk" / "model.safetensors"), strict=True)
    images = torch.rand(2, 3, 64, 64, generator=torch.Generator().manual_seed(0))
    with torch.inference_mode():  # frozen BN computes what the trained network's eval-mode BN computes
        assert torch.allclose(trunk.forward_features(images), trained.forward_features(images), atol=1e-4)

    backbone = _resnet_fpn_extractor(trunk, trainable_layers=3)  # conv1 and layer1 frozen, as torchvision's default
    assert not trunk.layer1[0].conv1.weight.requires_grad and trunk.layer4[0].conv2.weight.requires_grad
    detector = FasterRCNN(backbone, num_classes=4, min_size=64, max_size=96, rpn_pre_nms_top_n_test=100,
                          rpn_post_nms_top_n_test=50).eval()
    with torch.inference_mode():
        detections = detector([torch.rand(3, 64, 80), torch.rand(3, 72, 64)])
    assert len(detections) == 2 and all(set(d) == {"boxes", "labels", "scores"} for d in detections)
    assert all(d["boxes"].shape[1:] == (4,) and bool((d["scores"] <= 1).all()) for d in detections)
