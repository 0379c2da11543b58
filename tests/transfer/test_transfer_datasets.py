"""transfer/datasets.py: ImageFolder, ImageNet's flat val folder, labelled WebDataset tars, skips of
bad images, and the exact (unpadded) distributed sampler."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from data.errors import UserError
from data.images.decode import ImageSkip
from data.loader.transforms import EvalTransform
from tests.transfer_factory import coloured_jpeg, image_folder, wds_shards
from transfer.datasets import ExactShardSampler, collate, open_dataset

TRANSFORM = EvalTransform(size=32, resize=36)


@pytest.mark.parametrize("size,world", [(7, 2), (10, 3), (2, 4), (0, 2), (101, 8)])
def test_exact_sampler_gives_every_index_once_without_padding(size, world):
    for shuffle in (False, True):
        shares = [list(ExactShardSampler(size, r, world, shuffle=shuffle, seed=3)) for r in range(world)]
        flat = sorted(i for share in shares for i in share)
        assert flat == list(range(size))
        assert [len(s) for s in shares] == [len(ExactShardSampler(size, r, world)) for r in range(world)]
        assert max(map(len, shares)) - min(map(len, shares)) <= 1


def test_shuffled_sampler_changes_order_with_the_epoch_only():
    sampler = ExactShardSampler(50, 0, 1, shuffle=True, seed=1)
    first = list(sampler)
    assert list(sampler) == first
    sampler.set_epoch(1)
    assert list(sampler) != first and sorted(sampler) == sorted(first)


def test_image_folder_classes_targets_and_decoded_pixels(tmp_path):
    root = image_folder(tmp_path / "train", {"red": 3, "blue": 2})
    (root / "red" / "notes.txt").write_text("not an image")
    dataset = open_dataset(root).with_transform(TRANSFORM)
    assert dataset.classes == ["blue", "red"] and len(dataset) == 5
    assert dataset.targets == [0, 0, 1, 1, 1]
    index, pixels, target = dataset[4]
    assert (index, target, pixels.shape, pixels.dtype) == (4, 1, (3, 32, 32), torch.uint8)
    assert pixels[0].float().mean() > pixels[2].float().mean() + 50, "red channel dominates a red image"


def test_corrupt_and_truncated_files_become_counted_skips(tmp_path):
    root = image_folder(tmp_path / "val", {"a": 2})
    good = (root / "a" / "a_000.jpg").read_bytes()
    (root / "a" / "truncated.jpg").write_bytes(good[: len(good) // 2])
    (root / "a" / "garbage.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"\0" * 40)
    dataset = open_dataset(root).with_transform(TRANSFORM)
    batch = collate([dataset[i] for i in range(len(dataset))])
    assert len(batch.indices) == 2 and batch.images.shape == (2, 3, 32, 32)
    reasons = sorted(reason for _, reason in batch.skipped)
    assert len(reasons) == 2 and set(reasons) <= {"corrupt", "truncated"}


def test_pixel_limit_skips_before_decoding(tmp_path):
    root = image_folder(tmp_path / "val", {"a": 1})
    dataset = open_dataset(root).with_transform(EvalTransform(size=32, resize=36, max_pixels=100))
    _, skip, _ = dataset[0]
    assert isinstance(skip, ImageSkip) and skip.reason == "too_many_pixels"


def test_val_split_with_a_class_the_training_set_lacks_is_an_error(tmp_path):
    train = open_dataset(image_folder(tmp_path / "train", {"red": 1, "blue": 1}))
    image_folder(tmp_path / "val", {"red": 1, "green": 1})
    with pytest.raises(UserError, match="class folder 'green' is not among the 2 training classes"):
        open_dataset(tmp_path / "val", classes=train.classes)
    subset = open_dataset(image_folder(tmp_path / "val2", {"red": 2}), classes=train.classes)
    assert subset.classes == ["blue", "red"] and subset.targets == [1, 1], "indices follow the training classes"


def test_missing_folder_no_class_folders_and_empty_dataset_are_clear_errors(tmp_path):
    with pytest.raises(UserError, match="not found"):
        open_dataset(tmp_path / "absent")
    (tmp_path / "empty" / "a").mkdir(parents=True)
    (tmp_path / "empty" / "b").mkdir()
    with pytest.raises(UserError, match="holds no images"):
        open_dataset(tmp_path / "empty")
    flat = tmp_path / "flat"
    flat.mkdir()
    (flat / "x.jpg").write_bytes(coloured_jpeg(np.random.default_rng(0), (1, 2, 3)))
    with pytest.raises(UserError, match="flat folder of images with no labels"):
        open_dataset(flat)


def _flat_val(tmp_path, wnids_by_file):
    root = tmp_path / "val"
    root.mkdir()
    rng = np.random.default_rng(0)
    for name in wnids_by_file:
        (root / name).write_bytes(coloured_jpeg(rng, (100, 100, 100)))
    return root


def test_imagenet_flat_val_with_val_labels_file(tmp_path):
    labels = {"ILSVRC2012_val_00000001.JPEG": "n01751748", "ILSVRC2012_val_00000002.JPEG": "n09193705",
              "ILSVRC2012_val_00000003.JPEG": "n01751748"}
    root = _flat_val(tmp_path, labels)
    (tmp_path / "labels.txt").write_text("".join(f"{k} {v}\n" for k, v in labels.items()))
    dataset = open_dataset(root, val_labels=str(tmp_path / "labels.txt"))
    assert dataset.classes == ["n01751748", "n09193705"] and dataset.targets == [0, 1, 0]
    (tmp_path / "short.txt").write_text("ILSVRC2012_val_00000001.JPEG n01751748\n")
    with pytest.raises(UserError, match="2 image\\(s\\) have no label"):
        open_dataset(root, val_labels=str(tmp_path / "short.txt"))


def test_imagenet_flat_val_with_devkit_ground_truth_and_synsets(tmp_path):
    # ILSVRC2012_IDs are 1-based positions in the synsets list (meta.mat order), not sorted wnids.
    root = _flat_val(tmp_path, ["ILSVRC2012_val_00000001.JPEG", "ILSVRC2012_val_00000002.JPEG",
                                "ILSVRC2012_val_00000003.JPEG"])
    (root / "ILSVRC2012_validation_ground_truth.txt").write_text("2\n1\n2\n")
    (tmp_path / "synsets.txt").write_text("n09999999 z-thing\nn01000000 a-thing\n")
    dataset = open_dataset(root, synsets=str(tmp_path / "synsets.txt"))
    assert dataset.classes == ["n01000000", "n09999999"]
    assert [dataset.classes[t] for t in dataset.targets] == ["n01000000", "n09999999", "n01000000"]
    with pytest.raises(UserError, match="data.synsets"):
        open_dataset(root)


def test_labelled_webdataset_tars_with_info_json(tmp_path):
    written = wds_shards(tmp_path / "wds", [3, 4], num_classes=3, seed=1)
    (tmp_path / "wds" / "_info.json").write_text(json.dumps({"classes": ["r", "g", "b"]}))
    dataset = open_dataset(tmp_path / "wds").with_transform(TRANSFORM)
    assert dataset.classes == ["r", "g", "b"] and len(dataset) == 7
    assert [(name.split("/")[1], t) for name, t in zip(dataset.names, dataset.targets)] == written
    batch = collate([dataset[i] for i in range(len(dataset))])
    assert batch.images.shape == (7, 3, 32, 32) and batch.skipped == []
    single = open_dataset(tmp_path / "wds" / "imagenet1k-train-0001.tar")
    assert len(single) == 4
