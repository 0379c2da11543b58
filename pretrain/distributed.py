"""The torchrun environment: process group, device, per-rank seeds, and the few collectives we use.

Under ``torchrun`` (single node or a multi-node c10d rendezvous) the launcher sets RANK, LOCAL_RANK,
WORLD_SIZE, MASTER_ADDR and MASTER_PORT; :func:`init_distributed` joins the process group (nccl on
CUDA, gloo on CPU) and pins this process to the GPU of its local rank. Run as a plain ``python``
process it creates no process group, and every helper here degrades to its one-process meaning
(``barrier`` returns, ``all_reduce_mean`` returns its input), so the training code has one path.

Only rank 0 writes files: guard writes with ``info.is_main``.
"""
from __future__ import annotations

import datetime
import os
import random
from dataclasses import dataclass
from typing import Any, Mapping

import numpy as np
import torch
import torch.distributed as dist

from data.errors import UserError

_TORCHRUN_VARS = ("RANK", "LOCAL_RANK", "WORLD_SIZE")


@dataclass(frozen=True)
class DistInfo:
    """Where this process sits in the job."""

    rank: int
    local_rank: int
    world_size: int
    device: torch.device
    is_main: bool
    backend: str | None = None  # None: no process group (a plain single process)

    @property
    def distributed(self) -> bool:
        return self.backend is not None


@dataclass(frozen=True)
class LaunchEnv:
    """What torchrun told this process (None: not launched by torchrun)."""

    rank: int
    local_rank: int
    world_size: int
    master_addr: str | None
    master_port: int | None


def launch_env(environ: Mapping[str, str] | None = None) -> LaunchEnv | None:
    """Parse torchrun's variables; None when none is set, UserError when they are inconsistent."""
    env = os.environ if environ is None else environ
    present = [name for name in _TORCHRUN_VARS if name in env]
    if not present:
        return None
    missing = [name for name in _TORCHRUN_VARS if name not in env]
    if missing:
        raise UserError(f"environment has {', '.join(present)} but not {', '.join(missing)}: launch with "
                        "torchrun (which sets all of them) or unset them for a single process")
    rank, local_rank, world_size = (_env_int(env, name) for name in _TORCHRUN_VARS)
    if world_size < 1 or not 0 <= rank < world_size or local_rank < 0 or local_rank > rank:
        raise UserError(f"inconsistent torchrun environment RANK={rank} LOCAL_RANK={local_rank} "
                        f"WORLD_SIZE={world_size}: need 0 <= LOCAL_RANK <= RANK < WORLD_SIZE")
    port = env.get("MASTER_PORT")
    return LaunchEnv(rank, local_rank, world_size, env.get("MASTER_ADDR"),
                     _env_int(env, "MASTER_PORT") if port else None)


def _env_int(env: Mapping[str, str], name: str) -> int:
    try:
        return int(env[name])
    except ValueError:
        raise UserError(f"environment variable {name}={env[name]!r} is not an integer") from None


def resolve_backend(backend: str, cuda: bool) -> str:
    """auto -> nccl with CUDA, gloo without; nccl without CUDA is a user error. ``backend`` is
    ``dist.backend``, which the config schema restricts to auto, nccl and gloo."""
    if backend == "auto":
        return "nccl" if cuda else "gloo"
    if backend == "nccl" and not cuda:
        raise UserError("dist.backend=nccl needs CUDA GPUs and none is visible; use dist.backend=gloo "
                        "(or auto) on CPU")
    return backend


def _device(local_rank: int) -> torch.device:
    if not torch.cuda.is_available():
        return torch.device("cpu")
    count = torch.cuda.device_count()
    if local_rank >= count:
        raise UserError(f"LOCAL_RANK={local_rank} but this node has {count} visible GPU(s): set "
                        f"torchrun --nproc_per_node to at most {count}")
    torch.cuda.set_device(local_rank)
    return torch.device("cuda", local_rank)


def init_distributed(backend: str = "auto", timeout_s: int = 1800) -> DistInfo:
    """Join torchrun's process group (or stay a single process) and select this rank's device."""
    env = launch_env()
    cuda = torch.cuda.is_available()
    chosen = resolve_backend(backend, cuda)
    if env is None:
        return DistInfo(0, 0, 1, _device(0), True, None)
    device = _device(env.local_rank)
    if not dist.is_initialized():
        # device_id binds NCCL communicators to this GPU up front (no lazy init on a wrong device).
        kwargs = {"device_id": device} if chosen == "nccl" else {}
        timeout = datetime.timedelta(seconds=timeout_s)
        store = _restart_store(env, timeout)
        if store is not None:
            kwargs.update(store=store, rank=env.rank, world_size=env.world_size)
        dist.init_process_group(chosen, timeout=timeout, **kwargs)
    return DistInfo(env.rank, env.local_rank, env.world_size, device, env.rank == 0, chosen)


def _restart_store(env: LaunchEnv, timeout: datetime.timedelta) -> dist.Store | None:
    """After a ``torchrun --max-restarts`` restart, a store prefixed by this attempt's number.

    torchrun shares its rendezvous TCPStore with the workers, and a restarted group finds the
    previous attempt's keys there: gloo then waits for peers at dead addresses for the whole timeout
    (pytorch/pytorch#135712). A per-attempt prefix gives every attempt a clean namespace.
    """
    attempt = os.environ.get("TORCHELASTIC_RESTART_COUNT", "0")
    if attempt == "0" or os.environ.get("TORCHELASTIC_USE_AGENT_STORE") != "True":
        return None
    return dist.PrefixStore(f"openwsl/attempt-{attempt}", dist.TCPStore(
        env.master_addr, env.master_port, env.world_size, is_master=False, timeout=timeout))


def rank_seed(seed: int, rank: int) -> int:
    """The seed of rank ``rank``: distinct per rank, so augmentation and dropout differ across ranks."""
    return (seed + rank) % 2**32


def seed_everything(seed: int, rank: int = 0) -> int:
    """Seed python ``random``, numpy and torch (CPU and all CUDA devices) for this rank; return the seed."""
    value = rank_seed(seed, rank)
    random.seed(value)
    np.random.seed(value)
    torch.manual_seed(value)  # also seeds every CUDA device
    return value


def barrier() -> None:
    if dist.is_available() and dist.is_initialized():
        if dist.get_backend() == "nccl":
            dist.barrier(device_ids=[torch.cuda.current_device()])
        else:
            dist.barrier()


def broadcast_from_main(value: Any) -> Any:
    """Rank 0's ``value`` on every rank (a picklable object; a collective: call on all ranks)."""
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return value
    box = [value]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def all_reduce_mean(tensor: torch.Tensor) -> torch.Tensor:
    """The mean of ``tensor`` over ranks (a new tensor; integers are averaged as floats)."""
    result = tensor.detach().clone()
    if not result.is_floating_point():
        result = result.double()
    if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
        dist.all_reduce(result, op=dist.ReduceOp.SUM)
        result /= dist.get_world_size()
    return result


def cleanup() -> None:
    """Leave the process group (safe to call when there is none)."""
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()
