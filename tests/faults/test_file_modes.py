"""Output files get the permissions of the user's umask, as a plain ``open()`` would give them.

Every file a command keeps is written through data/atomic_write.py (temp file, fsync, rename).
Its temp file came from ``tempfile.mkstemp``, which makes files 0600 whatever the umask, and the
rename handed that mode to the output: on the shared filesystem multi-node builds assume, nobody
else could read the shards, info.json or the checkpoints. ``build_vocab`` and ``build_shards`` are
run under umask 022 and 077 and every file they write is checked, as is a checkpoint.
"""
from __future__ import annotations

import os
import stat
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from data.shards.tar_writer import write_tar
from pretrain.checkpoint import save_checkpoint
from tests.faults.child_process import REPO
from tests.shard_factory import img2dataset_members


def _modes(root: Path) -> dict[str, int]:
    return {str(p.relative_to(root)): stat.S_IMODE(p.stat().st_mode) for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.mark.parametrize("umask", [0o022, 0o077])
def test_command_outputs_follow_the_umask(tmp_path, umask):
    corpus = tmp_path / "corpus"
    corpus.mkdir()
    write_tar(corpus / "00000.tar", img2dataset_members(4, np.random.default_rng(0), tags=lambda i: ["cat", "dog"]))
    out = tmp_path / "out"
    for script, *args in (["build_vocab.py", "--out", str(out / "vocab.json"), "--stoplist", "none"],
                          ["build_shards.py", "--images", str(corpus), "--vocab", str(out / "vocab.json"),
                           "--out", str(out / "shards"), "--val-fraction", "0"]):
        done = subprocess.run([sys.executable, str(REPO / "scripts" / script), "--source", "img2dataset", "--input",
                               str(corpus), *args, "--workers", "1", "--no-progress"], cwd=tmp_path,
                              capture_output=True, text=True, timeout=180, preexec_fn=lambda: os.umask(umask),
                              env={**os.environ, "PYTHONPATH": str(REPO)})
        assert done.returncode == 0, done.stderr[-2000:]
    modes = _modes(out)
    assert {"vocab.json", "vocab.report.json", "vocab.zipf.png", "shards/info.json", "shards/report.json",
            "shards/train-000000.tar"} <= set(modes)
    assert set(modes.values()) == {0o666 & ~umask}, {name: oct(mode) for name, mode in modes.items()}


@pytest.mark.parametrize("umask", [0o022, 0o077])
def test_a_checkpoint_follows_the_umask(tmp_path, umask):
    previous = os.umask(umask)
    try:
        path = save_checkpoint(tmp_path, {"model": {"w": torch.zeros(2)}, "step": 1}, images_seen=8, keep_last=1)
    finally:
        os.umask(previous)
    assert stat.S_IMODE(Path(path).stat().st_mode) == 0o666 & ~umask
