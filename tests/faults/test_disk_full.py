"""Disk full during shard building and during checkpointing: one clear error line (exit 2, no
traceback), nothing partial left named as complete, and a rerun after freeing space completes:
the shards byte-identical to an uninterrupted build, the pretraining run resumed from its last
checkpoint.

A full disk is simulated with a file-size limit on the child process (RLIMIT_FSIZE with SIGXFSZ
ignored): the write that would cross it fails with EFBIG, as it would with ENOSPC on a full disk
(both are turned into the same error).
"""
from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest

from data.corpus import open_corpus
from data.shards.build import BuildConfig, build_shards
from data.vocab.vocabulary import Label, Vocabulary
from pretrain.checkpoint import LATEST, load_checkpoint
from pretrain.config import load_config
from pretrain.train import DebugOptions, train
from tests.faults.child_process import REPO, run
from tests.faults.run_checks import assert_every_checkpoint_loads
from tests.pretrain_runs import job_env, make_shards, write_config
from tests.shard_factory import built_files, photo_like

WORDS = ["cat", "dog", "bird"]


def _growing_corpus(root: Path, records: int = 24) -> Path:
    """A JSONL table of labelled photos that grow along the corpus, so later shards are bigger."""
    rng = np.random.default_rng(0)
    (root / "img").mkdir(parents=True)
    with open(root / "table.jsonl", "w", encoding="utf-8") as table:
        for i in range(records):
            side = 40 + 10 * i
            (root / "img" / f"p{i}.jpg").write_bytes(photo_like(rng, side, side * 3 // 4))
            table.write(json.dumps({"key": f"p{i}", "tags": [WORDS[i % 3]], "image": f"img/p{i}.jpg"}) + "\n")
    Vocabulary([Label(i, w, 10) for i, w in enumerate(WORDS)]).save(root / "vocab.json")
    return root


def test_shard_building_on_a_full_disk_fails_with_one_line_and_the_rerun_is_byte_identical(tmp_path):
    corpus = _growing_corpus(tmp_path)
    settings = {"shard_size": 3, "val_fraction": 0.2}
    reference = tmp_path / "whole"
    build_shards(open_corpus("jsonl", corpus / "table.jsonl"),
                 BuildConfig(reference, corpus / "vocab.json", str(corpus), **settings))
    sizes = sorted(p.stat().st_size for p in reference.glob("*.tar"))
    limit = (sizes[len(sizes) // 2 - 1] + sizes[len(sizes) // 2]) // 2  # the smaller half fits
    out = tmp_path / "out"
    command = [sys.executable, str(REPO / "scripts" / "build_shards.py"), "--source", "jsonl", "--input",
               str(corpus / "table.jsonl"), "--images", str(corpus), "--vocab", str(corpus / "vocab.json"),
               "--out", str(out), "--shard-size", "3", "--val-fraction", "0.2", "--workers", "2", "--no-progress"]
    full = run(command, max_file_bytes=limit, timeout=120)
    line = full.assert_one_error_line()
    assert line.startswith(f"error: cannot write {out}/") and ".tar: File too large" in line
    assert "free space and rerun the same command" in line
    assert not (out / "info.json").exists()
    assert not [p for p in out.rglob("*") if p.name.endswith(".tmp")], "a failed write leaves no temp file"
    built_before = sorted(p.name for p in out.glob("*.tar"))
    assert 0 < len(built_before) < len(sizes), "the disk filled up part-way through"

    again = run(command, timeout=120)
    assert again.returncode == 0, again.stderr[-3000:]
    assert built_files(out) == built_files(reference)
    print(f"disk full at {limit} bytes per file after {len(built_before)} of {len(sizes)} shards: {line}")


def _max_difference(a: dict, b: dict) -> float:
    return max((a[k].double() - b[k].double()).abs().max().item() for k in a if a[k].is_floating_point())


def _checkpointing_on_a_full_disk(tmp_path: Path) -> tuple[Path, Path]:
    """A run stopped at 32 images, then run on a full disk; returns (config, run dir)."""
    shards, _ = make_shards(tmp_path)
    config = write_config(tmp_path / "run.yaml", shards, None, tmp_path / "runs", "full",
                          data={"workers": 1}, checkpoint={"every_images": 32})
    run_dir = tmp_path / "runs" / "full"
    train(load_config(config), DebugOptions(stop_after_images=32))
    size = (run_dir / "checkpoint-32.pt").stat().st_size
    full = run([sys.executable, "-m", "pretrain", "--config", str(config)], env=job_env(),
               max_file_bytes=size // 2, timeout=180)
    line = full.assert_one_error_line()
    assert line == (f"error: cannot write {run_dir}/checkpoint-64.pt: File too large (the disk, a quota or a "
                    "file-size limit is full); free space and rerun the same command: finished work is kept")
    # The previous checkpoint is intact and still the latest; nothing partial carries a name.
    assert assert_every_checkpoint_loads(run_dir)["images_seen"] == 32
    assert not [p for p in run_dir.iterdir() if p.name.startswith(".")]
    return config, run_dir


def test_checkpointing_on_a_full_disk_fails_with_one_line_and_the_rerun_resumes(tmp_path, one_thread):
    config, run_dir = _checkpointing_on_a_full_disk(tmp_path)
    assert train(load_config(config))["images_seen"] == 96
    assert load_checkpoint(run_dir / LATEST)["images_seen"] == 96


@pytest.mark.heavy
def test_the_rerun_after_a_full_disk_ends_with_the_weights_of_an_uninterrupted_run(tmp_path, one_thread):
    config, run_dir = _checkpointing_on_a_full_disk(tmp_path)
    train(load_config(config))
    straight = write_config(tmp_path / "straight.yaml", tmp_path / "train", None, tmp_path / "runs", "straight",
                            data={"workers": 1}, checkpoint={"every_images": 32})
    train(load_config(straight))
    # 32 images is a loader-epoch boundary: the resumed stream is the uninterrupted one.
    a = load_checkpoint(run_dir / LATEST)["model"]
    b = load_checkpoint(tmp_path / "runs" / "straight" / LATEST)["model"]
    assert _max_difference(a, b) <= 1e-6
