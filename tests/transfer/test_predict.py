"""`python -m transfer predict`: the top-k labels of images, with the probabilities timm's own pipeline
gives for the same export (``timm.create_model("local-dir:…")`` + ``resolve_data_config`` +
``create_transform`` on ``PIL.Image.open(path).convert("RGB")``: the oracle), batched, and hostile or
unreadable images skipped with a counted reason."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import timm
import torch
from PIL import Image

from tests.export_factory import image_files, photo, png_header_only, pretraining_run
from transfer.__main__ import main
from transfer.export import load_export
from transfer.predict import collect_images, predict

TAGS = ["dog", "cat", "beach", "sunset", "snow", "city"]


def export_of(tmp_path: Path, name: str, model: str, image_size: int, loss: str = "softmax", *extra: str) -> Path:
    run = tmp_path / "runs" / name
    pretraining_run(run, model, TAGS, image_size=image_size, loss=loss)
    main(["export", str(run), "--out", str(tmp_path / name), *extra])
    return tmp_path / name


@pytest.fixture(scope="module")
def tiny_224(tmp_path_factory) -> Path:
    """resnext_tiny with the seed's eval transform: resize 256, centre crop 224."""
    return export_of(tmp_path_factory.mktemp("tiny224"), "export", "resnext_tiny", 224)


def timm_probabilities(folder: Path, paths: list[Path], sigmoid: bool = False) -> torch.Tensor:
    model = timm.create_model(f"local-dir:{folder}", pretrained=True).eval()
    transform = timm.data.create_transform(**timm.data.resolve_data_config(model=model))
    images = torch.stack([transform(Image.open(path).convert("RGB")) for path in paths])
    with torch.inference_mode():
        logits = model(images)
    return torch.sigmoid(logits) if sigmoid else torch.softmax(logits, dim=1)


def predicted(folder: Path, paths: list[Path], batch_size: int = 4) -> torch.Tensor:
    """All labels' probabilities from predict, in the export's label order."""
    loaded = load_export(folder)
    rows = []
    for result in predict(loaded, paths, top_k=len(TAGS), batch_size=batch_size, device=torch.device("cpu"),
                          progress=False):
        assert result.top is not None, f"{result.image} skipped: {result.skipped}"
        scores = dict(result.top)
        rows.append([scores[label] for label in loaded.labels])
    return torch.tensor(rows)


def test_probabilities_equal_timms_pipeline_on_test_made_images(tiny_224, tmp_path):
    paths = image_files(tmp_path / "images")
    ours, theirs = predicted(tiny_224, paths), timm_probabilities(tiny_224, paths)
    diff = float((ours - theirs).abs().max())
    print(f"predict vs timm transforms, {len(paths)} test-made images at 224: max |probability diff| {diff:.3g}")
    assert diff <= 1e-5
    assert float(theirs.std(dim=0).max()) > 1e-3, "the images get different probabilities: a real check"
    assert torch.allclose(ours.sum(dim=1), torch.ones(len(paths)), atol=1e-5)  # softmax


def test_probabilities_equal_timms_pipeline_on_real_imagenet_photos(tiny_224, shared_data):
    paths = sorted((shared_data / "imagenet_samples").glob("*.JPEG"))[::20]  # 13 photos, grayscale ones included
    ours, theirs = predicted(tiny_224, paths), timm_probabilities(tiny_224, paths)
    diff = float((ours - theirs).abs().max())
    print(f"predict vs timm transforms, {len(paths)} ImageNet photos at 224: max |probability diff| {diff:.3g}")
    assert diff <= 1e-5


def test_a_sigmoid_run_scores_each_hashtag_with_a_sigmoid(tmp_path):
    folder = export_of(tmp_path, "sigmoid", "resnext_tiny", 32, "sigmoid")
    paths = image_files(tmp_path / "images")[:3]
    ours, theirs = predicted(folder, paths), timm_probabilities(folder, paths, sigmoid=True)
    assert float((ours - theirs).abs().max()) <= 1e-5
    assert not torch.allclose(ours.sum(dim=1), torch.ones(3), atol=1e-3)


def test_the_command_prints_top_k_lines_and_json_in_input_order_skipping_hostile_files(tmp_path, capsys):
    folder = export_of(tmp_path, "micro", "resnext_micro", 32, "softmax", "--allow-openwsl-only")
    good = image_files(tmp_path / "good")[:2]
    bad = tmp_path / "bad"
    bad.mkdir()
    hostile = {"corrupt.jpg": b"\xff\xd8\xff\xe0" + bytes(range(256)) * 4, "truncated.jpg": photo(300, 200, 9)[:900],
               "notes.jpg": b"not an image at all\n", "bomb.png": png_header_only(100_000, 100_000)}
    for name, data in hostile.items():
        (bad / name).write_bytes(data)
    order = [good[0], bad / "corrupt.jpg", bad / "truncated.jpg", good[1], bad / "notes.jpg", bad / "bomb.png"]
    capsys.readouterr()
    main(["predict", "--model", str(folder), *map(str, order), "--top-k", "3", "--json", "--batch-size", "2",
          "--workers", "0"])
    captured = capsys.readouterr()
    rows = [json.loads(line) for line in captured.out.splitlines()]
    assert [row["image"] for row in rows] == [str(p) for p in order]
    assert [row.get("skipped") for row in rows] == [None, "corrupt", "truncated", None, "unsupported_format",
                                                   "too_many_pixels"]
    for row in (rows[0], rows[3]):
        assert [label for label, _ in row["top"]] != [] and len(row["top"]) == 3
        probabilities = [p for _, p in row["top"]]
        assert probabilities == sorted(probabilities, reverse=True) and all(label in TAGS for label, _ in row["top"])
    assert captured.err.strip().splitlines()[-1] == ("predict: 2 of 6 images tagged on cpu; 4 skipped (1 corrupt, "
                                                     "1 too_many_pixels, 1 truncated, 1 unsupported_format)")

    main(["predict", "--model", str(folder), str(good[0]), "--top-k", "2", "--workers", "0"])
    lines = capsys.readouterr().out.splitlines()
    assert lines[0] == str(good[0]) and len(lines) == 3
    assert [line.split()[1] for line in lines[1:]] == [label for label, _ in rows[0]["top"][:2]]


def test_a_run_directory_predicts_what_its_export_predicts(tmp_path):
    folder = export_of(tmp_path, "export", "resnext_tiny", 32)
    paths = image_files(tmp_path / "images")[:3]
    from_export = list(predict(load_export(folder), paths, progress=False))
    from transfer.export import load_model
    from_run = list(predict(load_model(tmp_path / "runs" / "export"), paths, progress=False))
    assert [r.to_dict() for r in from_run] == [r.to_dict() for r in from_export]


def test_every_real_edge_case_image_is_tagged_or_skipped_with_a_reason(tmp_path, shared_data):
    folder = export_of(tmp_path, "micro", "resnext_micro", 32, "softmax", "--allow-openwsl-only")
    paths = collect_images([shared_data / "image_edge_cases"])
    results = list(predict(load_export(folder), paths, batch_size=16, progress=False))
    assert [r.image for r in results] == [str(p) for p in paths]
    skipped = {r.skipped for r in results if r.top is None}
    print(f"{len(results)} edge-case files: {sum(r.top is not None for r in results)} tagged, skipped: {skipped}")
    assert skipped and skipped <= {"corrupt", "truncated", "too_many_pixels", "unsupported_format", "unsupported_mode",
                                   "unreadable"}


@pytest.mark.parametrize("case, message", [
    ("trunk_only", "has no classifier head (a trunk-only export or a trunk)"),
    ("missing_image", "no such image file or folder"),
    ("no_images", "no image files found in"),
    ("not_a_model", "is not a run directory"),
    ("bad_export", "not an openwsl export"),
])
def test_bad_input_is_one_error_line(case, message, tmp_path, capsys):
    image = tmp_path / "a.jpg"
    image.write_bytes(photo(64, 48, 0))
    (tmp_path / "empty").mkdir()
    (tmp_path / "timm_folder").mkdir()
    (tmp_path / "timm_folder" / "config.json").write_text(json.dumps({"architecture": "resnet18"}))
    model, images = tmp_path / "empty", [image]
    if case == "trunk_only":
        model = export_of(tmp_path, "trunk", "resnext_micro", 32, "softmax", "--trunk-only", "--allow-openwsl-only")
    elif case == "missing_image":
        images = [tmp_path / "b.jpg"]
    elif case == "no_images":
        images = [tmp_path / "empty"]
    elif case == "bad_export":
        model = tmp_path / "timm_folder"
    capsys.readouterr()
    with pytest.raises(SystemExit) as stop:
        main(["predict", "--model", str(model), *map(str, images), "--workers", "0"])
    assert stop.value.code == 2
    [line] = capsys.readouterr().err.strip().splitlines()
    assert line.startswith("error: ") and message in line


def test_top_k_must_be_positive(tmp_path, capsys):
    with pytest.raises(SystemExit) as stop:
        main(["predict", "--model", str(tmp_path), str(tmp_path), "--top-k", "0"])
    assert stop.value.code == 2 and "--top-k must be at least 1, got 0" in capsys.readouterr().err
