"""Non-finite numbers: the rules that stop a run rather than let it train or export on them.

Pretraining and fine-tuning share them. A step with a non-finite loss or gradient is skipped on the
device and changes nothing (pretrain/engine.py); a run stops with one error line when

- ``limit`` steps in a row were skipped (the run is diverging), or
- it finished without one finite step since it started or resumed (it never trained: exporting
  its weights would pass off the starting point as a result),

and weights holding NaN or inf are refused where they enter (a checkpoint or an ``init`` file)
and where they leave (the trunk export).
"""
from __future__ import annotations

from typing import Mapping

import torch


def nonfinite_tensors(tensors: Mapping[str, torch.Tensor]) -> list[str]:
    """Names of the floating-point tensors holding a NaN or an infinity.

    One fused norm per tensor (``torch._foreach_norm``, one host sync in all: 0.13 s for ResNeXt-101
    32x8d on 2 CPU cores, where ``isfinite(t).all()`` per tensor takes seconds) finds the suspects:
    a NaN or inf makes the norm non-finite. The norm of huge finite values can overflow too, so
    each suspect is confirmed element by element."""
    named = [(name, t) for name, t in tensors.items() if isinstance(t, torch.Tensor) and t.is_floating_point()]
    if not named:
        return []
    norms = torch._foreach_norm([t for _, t in named])
    finite = torch.isfinite(torch.stack([n.float().to(norms[0].device) for n in norms])).tolist()
    return [name for (name, t), ok in zip(named, finite) if not ok and not torch.isfinite(t).all()]


def stopping_streak(consecutive: int, steps_run: int, limit: int, finished: bool) -> int | None:
    """The streak of non-finite steps that stops the run now, or None to go on.

    ``consecutive``: skipped steps in a row up to now; ``steps_run``: steps since this run started or
    resumed; ``finished``: the run is about to write its final files."""
    if consecutive >= limit:
        return consecutive
    if finished and steps_run > 0 and consecutive >= steps_run:
        return consecutive
    return None
