"""A checkpoint changed on disk after it was written, and a checkpoint resumed into another
vocabulary: both are found when the file is read, never trained on.

Bytes are overwritten in place inside checkpoint-latest.pt (which is a hard link to the newest
numbered checkpoint, so both are hit, as a disk or a careless tool would hit them): torch.load
accepts such a file without a word (the test shows it), the CRC-32 every record of the zip
archive carries does not match. Resume falls back to the newest intact checkpoint and says so in
one line; with none intact the run stops with one line. Resuming into shards whose vocabulary has
the same size but other tags stops with one line naming both vocabularies."""
from __future__ import annotations

import hashlib
import json
import shutil
import struct
import zipfile
from pathlib import Path

import pytest
import torch

from pretrain.__main__ import main
from pretrain.checkpoint import LATEST, TRUNK_FILE, load_checkpoint, load_trunk
from pretrain.config import load_config
from pretrain.train import DebugOptions, train
from tests.faults.run_checks import one_error_line, train_rows
from tests.pretrain_runs import make_shards, write_config


def overwrite_inside_a_tensor(path: Path, data: bytes = b"\xff" * 64) -> str:
    """Overwrite ``data`` in the middle of the biggest tensor record of a torch zip file, in place
    (same size, same inode); returns the record's name. 0xff bytes read as float32 NaN."""
    with zipfile.ZipFile(path) as archive:
        record = max((i for i in archive.infolist() if "/data/" in i.filename), key=lambda i: i.file_size)
    with open(path, "r+b") as f:
        f.seek(record.header_offset)
        name_length, extra_length = struct.unpack("<HH", f.read(30)[26:30])
        f.seek(record.header_offset + 30 + name_length + extra_length + record.file_size // 2)
        f.write(data)
    return record.filename



@pytest.fixture
def half_run(tmp_path, one_thread) -> tuple[Path, Path]:
    """A run stopped at 64 images with checkpoints at 32 and 64 (latest -> 64); (config, run dir)."""
    shards, _ = make_shards(tmp_path)
    config = write_config(tmp_path / "run.yaml", shards, None, tmp_path / "runs", "damaged", data={"workers": 0},
                          checkpoint={"every_images": 32, "keep_last": 3})
    train(load_config(config), DebugOptions(stop_after_images=64))
    return config, tmp_path / "runs" / "damaged"


@pytest.mark.slow
def test_a_checkpoint_overwritten_in_place_is_found_and_resume_falls_back_to_the_newest_intact(half_run, capsys):
    config, run_dir = half_run
    capsys.readouterr()
    record = overwrite_inside_a_tensor(run_dir / LATEST)
    # What torch.load alone makes of it: loads, with NaN weights.
    silent = torch.load(run_dir / LATEST, weights_only=True)
    assert not all(torch.isfinite(v).all() for v in silent["model"].values() if v.is_floating_point())

    main(["--config", str(config)])
    out = capsys.readouterr().out
    notes = [line for line in out.splitlines() if "the newest intact checkpoint" in line]
    assert notes == [f"{LATEST}, checkpoint-64.pt: damaged: record {record} fails the CRC-32 check written with it "
                     "(its bytes changed after it was written: a disk, copy or transfer fault); resuming from "
                     f"{run_dir / 'checkpoint-32.pt'}, the newest intact checkpoint"], out[-3000:]
    assert f"resumed from {run_dir / 'checkpoint-32.pt'}: step 8, 32 images" in out
    assert train_rows(run_dir)[-1]["images"] == 96
    trunk, _ = load_trunk(run_dir / TRUNK_FILE)
    assert all(torch.isfinite(v).all() for v in trunk.values() if v.is_floating_point())
    assert load_checkpoint(run_dir / LATEST)["images_seen"] == 96


@pytest.mark.slow
def test_with_no_intact_checkpoint_the_run_stops_with_one_line(half_run, capsys):
    config, run_dir = half_run
    record = overwrite_inside_a_tensor(run_dir / LATEST)
    overwrite_inside_a_tensor(run_dir / "checkpoint-32.pt")
    line = one_error_line(main, ["--config", str(config)], capsys)
    assert line.startswith(f"error: {run_dir} holds checkpoints but none loads ({LATEST}, checkpoint-64.pt, "
                           f"checkpoint-32.pt: damaged: record {record} fails the CRC-32 check"), line
    assert line.endswith("pass checkpoint.resume=none to start this run over, or a path to resume from")
    assert not (run_dir / TRUNK_FILE).exists()


@pytest.mark.slow
def test_resuming_into_shards_of_another_vocabulary_of_the_same_size_stops_with_one_line(half_run, tmp_path, capsys):
    config, run_dir = half_run
    vocab = tmp_path / "vocab-b.json"
    vocab.write_text("another vocabulary of six tags\n")
    other = shutil.copytree(tmp_path / "train", tmp_path / "train-b")
    info = json.loads((other / "info.json").read_text())
    info["vocab"].update(tags=["t0", "t1", "t2", "dog", "t4", "t5"], path=str(vocab),
                         sha256=hashlib.sha256(vocab.read_bytes()).hexdigest())
    (other / "info.json").write_text(json.dumps(info))
    line = one_error_line(main, ["--config", str(config), f"data.train={other}"], capsys)
    assert line == (f"error: {run_dir / LATEST} was trained on the vocabulary (6 tags), but data.train={other} (train) "
                    f"carries {vocab} (sha256 {info['vocab']['sha256'][:12]}, 6 tags) (label 3 is 't3' there and "
                    "'dog' here); resume on the shards it was trained on, or pass checkpoint.resume=none to start over")
    assert load_checkpoint(run_dir / LATEST)["images_seen"] == 64, "nothing was trained or written"
