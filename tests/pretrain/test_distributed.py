"""pretrain/distributed.py: torchrun environment parsing, single-process path, a 2-rank gloo job."""
from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from data.errors import UserError
from pretrain.distributed import (DistInfo, all_reduce_mean, barrier, cleanup, init_distributed, launch_env,
                                  resolve_backend, seed_everything)

REPO = Path(__file__).resolve().parents[2]
TORCHRUN_VARS = ("RANK", "LOCAL_RANK", "WORLD_SIZE", "LOCAL_WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT")


def test_launch_env_parses_torchrun_variables():
    assert launch_env({}) is None
    env = launch_env({"RANK": "11", "LOCAL_RANK": "3", "WORLD_SIZE": "16", "MASTER_ADDR": "node-0",
                      "MASTER_PORT": "29500"})
    assert (env.rank, env.local_rank, env.world_size, env.master_addr, env.master_port) == (11, 3, 16, "node-0", 29500)


@pytest.mark.parametrize("environ, message", [
    ({"RANK": "0"}, "environment has RANK but not LOCAL_RANK, WORLD_SIZE: launch with torchrun"),
    ({"RANK": "x", "LOCAL_RANK": "0", "WORLD_SIZE": "2"}, "environment variable RANK='x' is not an integer"),
    ({"RANK": "2", "LOCAL_RANK": "0", "WORLD_SIZE": "2"}, "inconsistent torchrun environment RANK=2"),
    ({"RANK": "0", "LOCAL_RANK": "1", "WORLD_SIZE": "2"}, "inconsistent torchrun environment RANK=0 LOCAL_RANK=1"),
])
def test_launch_env_errors(environ, message):
    with pytest.raises(UserError) as info:
        launch_env(environ)
    assert str(info.value).startswith(message)


def test_backend_choice():
    assert resolve_backend("auto", cuda=False) == "gloo"
    assert resolve_backend("auto", cuda=True) == "nccl"
    assert resolve_backend("gloo", cuda=True) == "gloo"
    with pytest.raises(UserError, match=r"dist.backend=nccl needs CUDA GPUs"):
        resolve_backend("nccl", cuda=False)


def test_single_process_without_torchrun(monkeypatch):
    for name in TORCHRUN_VARS:
        monkeypatch.delenv(name, raising=False)
    info = init_distributed("auto")
    expected_device = torch.device("cuda", 0) if torch.cuda.is_available() else torch.device("cpu")
    assert info == DistInfo(0, 0, 1, expected_device, True, None)
    assert not info.distributed and not torch.distributed.is_initialized()
    barrier()
    x = torch.tensor([1.0, 3.0])
    mean = all_reduce_mean(x)
    assert torch.equal(mean, x) and mean is not x
    assert all_reduce_mean(torch.tensor([3, 4])).dtype == torch.float64
    cleanup()


def test_seeds_are_reproducible_and_differ_by_rank():
    def draws(seed: int, rank: int) -> tuple:
        seed_everything(seed, rank)
        import random
        return random.random(), float(np.random.rand()), float(torch.rand(()))

    assert draws(5, 0) == draws(5, 0)
    assert draws(5, 0) != draws(5, 1)
    assert draws(5, 1) == draws(6, 0), "rank seed is seed + rank"


_RANK_SCRIPT = """
import json, os, random, sys
import torch
from pretrain.distributed import all_reduce_mean, barrier, cleanup, init_distributed, seed_everything

out = sys.argv[1]
info = init_distributed("auto", timeout_s=60)
seed = seed_everything(100, info.rank)
mean = all_reduce_mean(torch.tensor([float(info.rank + 1), 10.0 * info.rank]))
int_mean = all_reduce_mean(torch.tensor([info.rank], dtype=torch.int64))

if info.is_main:  # how the training code guards its writes
    with open(os.path.join(out, "written-by-rank-%d" % info.rank), "w") as f:
        f.write("x")
barrier()
seen = sorted(os.listdir(out))  # after the barrier every rank sees rank 0's file
result = {"rank": info.rank, "local_rank": info.local_rank, "world_size": info.world_size,
          "device": str(info.device), "is_main": info.is_main, "backend": info.backend, "seed": seed,
          "draw": random.random(), "mean": mean.tolist(), "int_mean": int_mean.tolist(), "seen": seen}
barrier()
with open(os.path.join(out, "rank-%d.json" % info.rank), "w") as f:
    json.dump(result, f)
cleanup()
"""


def test_two_rank_torchrun_job_on_gloo(tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    script = tmp_path / "rank.py"
    script.write_text(_RANK_SCRIPT)
    env = {k: v for k, v in os.environ.items() if k not in TORCHRUN_VARS}
    env.update(PYTHONPATH=str(REPO), OMP_NUM_THREADS="1", CUDA_VISIBLE_DEVICES="")
    result = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
                             str(script), str(out)], cwd=REPO, env=env, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr[-3000:]
    ranks = [json.loads((out / f"rank-{r}.json").read_text()) for r in (0, 1)]
    for r, info in enumerate(ranks):
        assert (info["rank"], info["local_rank"], info["world_size"], info["is_main"]) == (r, r, 2, r == 0)
        assert info["device"] == "cpu" and info["backend"] == "gloo"
        assert info["mean"] == [1.5, 5.0] and info["int_mean"] == [0.5]
        assert info["seen"] == ["written-by-rank-0"], "only rank 0 writes; others see it after the barrier"
    assert [info["seed"] for info in ranks] == [100, 101]
    assert ranks[0]["draw"] != ranks[1]["draw"]


def _stub(bin_dir: Path, name: str, body: str) -> None:
    path = bin_dir / name
    path.write_text("#!/bin/bash\n" + body)
    path.chmod(0o755)


def test_slurm_example_launches_torchrun_with_a_c10d_rendezvous_on_the_first_node(tmp_path):
    script = REPO / "scripts" / "slurm" / "pretrain.sbatch"
    subprocess.run(["bash", "-n", str(script)], check=True)
    # SLURM's commands stand in as stubs: scontrol lists the nodes, srun runs its command once,
    # torchrun records the arguments it was given.
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    _stub(bin_dir, "scontrol", 'printf "gpu-node-07\\ngpu-node-08\\n"\n')
    _stub(bin_dir, "srun", 'while [[ "$1" == --* ]]; do shift; done; exec "$@"\n')
    _stub(bin_dir, "torchrun", f'printf "%s\\n" "$@" > {tmp_path}/torchrun.args\n')
    env = {**os.environ, "PATH": f"{bin_dir}:{os.environ['PATH']}", "SLURM_JOB_NODELIST": "gpu-node-[07-08]",
           "SLURM_NNODES": "2", "SLURM_JOB_ID": "4242", "SLURM_GPUS_ON_NODE": "8"}
    result = subprocess.run(["bash", str(script), "configs/pretrain/resnext101_32x8d_yfcc_in1k.yaml",
                             "optim.total_images=1000"], cwd=tmp_path, env=env, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    args = (tmp_path / "torchrun.args").read_text().splitlines()
    assert args == ["--nnodes=2", "--nproc_per_node=8", "--rdzv_id=4242", "--rdzv_backend=c10d",
                    "--rdzv_endpoint=gpu-node-07:29500", "--max-restarts=3", "-m", "pretrain", "--config",
                    "configs/pretrain/resnext101_32x8d_yfcc_in1k.yaml", "optim.total_images=1000"]
    usage = subprocess.run(["bash", str(script)], env=env, capture_output=True, text=True)
    assert usage.returncode == 2 and "usage: sbatch" in usage.stderr


@pytest.mark.cuda
def test_one_rank_nccl_group_on_cuda_all_reduces(monkeypatch):
    """What torchrun --nproc_per_node=1 gives a GPU job: the nccl backend (auto), the rank's GPU
    bound up front, and a working all-reduce and barrier."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    for name, value in {"RANK": "0", "LOCAL_RANK": "0", "WORLD_SIZE": "1", "LOCAL_WORLD_SIZE": "1",
                        "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port)}.items():
        monkeypatch.setenv(name, value)
    info = init_distributed("auto", timeout_s=120)
    try:
        assert info == DistInfo(0, 0, 1, torch.device("cuda", 0), True, "nccl")
        assert torch.distributed.get_backend() == "nccl"
        values = torch.arange(1024, dtype=torch.float32, device=info.device)
        torch.distributed.all_reduce(values)
        barrier()
        assert values.device == info.device and torch.equal(values.cpu(), torch.arange(1024, dtype=torch.float32))
    finally:
        cleanup()
    assert not torch.distributed.is_initialized()
