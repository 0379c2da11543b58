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
    """Names of the floating-point tensors holding a NaN or an infinity (one host sync in all)."""
    names = [name for name, t in tensors.items() if isinstance(t, torch.Tensor) and t.is_floating_point()]
    if not names:
        return []
    flags = [torch.isfinite(tensors[name]).all() for name in names]
    finite = torch.stack([flag.to(flags[0].device) for flag in flags]).tolist()
    return [name for name, ok in zip(names, finite) if not ok]


def stopping_streak(consecutive: int, steps_run: int, limit: int, finished: bool) -> int | None:
    """The streak of non-finite steps that stops the run now, or None to go on.

    ``consecutive``: skipped steps in a row up to now; ``steps_run``: steps since this run started or
    resumed; ``finished``: the run is about to write its final files."""
    if consecutive >= limit:
        return consecutive
    if finished and steps_run > 0 and consecutive >= steps_run:
        return consecutive
    return None
