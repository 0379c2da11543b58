"""Experiment tracking: ``metrics.jsonl`` in the run directory always, Weights & Biases when asked.

Only the main rank tracks; on other ranks a :class:`Tracker` does nothing, so training code calls it
unconditionally. ``metrics.jsonl`` holds one JSON object per log step (``step``, ``time`` and the
metrics; non-finite numbers become null so every line is strict JSON), appended and flushed at once,
so a crash loses nothing already logged.

wandb: ``online``, ``offline`` (written under ``<run dir>/wandb``; :attr:`Tracker.sync_command` is the
upload command to print) or ``disabled``. The wandb run id is kept in ``<run dir>/wandb-run-id.txt``, so
a restarted job resumes the same wandb run. Metrics are plotted against our own ``step`` (declared
as wandb's step metric), so steps re-logged after resuming from a checkpoint are not dropped.
"""
from __future__ import annotations

import json
import math
import numbers
import secrets
import shlex
import string
import time
from pathlib import Path
from typing import Any, Mapping, Sequence

from data.atomic_write import write_json, write_text
from data.errors import UserError

METRICS_FILE = "metrics.jsonl"
SUMMARY_FILE = "summary.json"
WANDB_ID_FILE = "wandb-run-id.txt"


def plain_value(value: Any, key: str) -> Any:
    """A JSON-ready scalar: tensors and numpy numbers as Python numbers, NaN/inf as None."""
    if hasattr(value, "item") and callable(value.item) and getattr(value, "ndim", 0) == 0:
        value = value.item()
    if isinstance(value, bool) or value is None or isinstance(value, str):
        return value
    if isinstance(value, numbers.Integral):
        return int(value)
    if isinstance(value, numbers.Real):
        value = float(value)
        return value if math.isfinite(value) else None
    if isinstance(value, Mapping):
        return {str(k): plain_value(v, f"{key}.{k}") for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [plain_value(v, f"{key}[{i}]") for i, v in enumerate(value)]
    raise TypeError(f"metric {key!r} has a value of type {type(value).__name__}; log numbers, strings, "
                    "lists or dicts of them")


def plain_metrics(metrics: Mapping[str, Any]) -> dict[str, Any]:
    return {str(key): plain_value(value, str(key)) for key, value in metrics.items()}


def new_run_id(length: int = 8) -> str:
    """A wandb-style run id (lowercase letters and digits)."""
    alphabet = string.ascii_lowercase + string.digits
    return "".join(secrets.choice(alphabet) for _ in range(length))


def read_metrics(run_dir: str | Path) -> list[dict[str, Any]]:
    """The rows of ``<run_dir>/metrics.jsonl`` (a torn last line from a crash is ignored)."""
    path = Path(run_dir) / METRICS_FILE
    if not path.is_file():
        return []
    rows = []
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError:
            continue
    return rows


class Tracker:
    """Log metrics of one run: metrics.jsonl always, wandb when ``wandb_mode`` is not ``disabled``.

    ``wandb_mode`` is ``tracking.wandb`` (the config schema restricts it to the three modes).
    ``resume_step``: the step of the checkpoint a restarted run continues from; rows logged after it
    by the interrupted process are removed from metrics.jsonl, since the run recomputes those steps.
    """

    def __init__(self, run_dir: str | Path, config_dict: Mapping[str, Any], wandb_mode: str = "disabled",
                 project: str = "openwsl", entity: str | None = None, name: str | None = None,
                 tags: Sequence[str] = (), is_main: bool = True, resume_id: str | None = None,
                 resume_step: int | None = None) -> None:
        self.run_dir = Path(run_dir)
        self.is_main = is_main
        self.mode = wandb_mode
        self._last_step = 0
        self._file = None
        self._run = None
        self._wandb = None
        if not is_main:
            return
        self.run_dir.mkdir(parents=True, exist_ok=True)
        if resume_step is not None:
            self._drop_rows_after(resume_step)
        self._file = open(self.run_dir / METRICS_FILE, "a", encoding="utf-8")
        if wandb_mode != "disabled":
            try:
                self._start_wandb(dict(config_dict), project, entity, name, list(tags), resume_id)
            except BaseException:
                self.finish()
                raise

    # -- wandb -----------------------------------------------------------------------------------

    def _start_wandb(self, config: dict[str, Any], project: str, entity: str | None, name: str | None,
                     tags: list[str], resume_id: str | None) -> None:
        import wandb  # imported only when used: it is slow to import

        run_id = resume_id or self.stored_wandb_id() or new_run_id()
        write_text(self.run_dir / WANDB_ID_FILE, run_id + "\n")
        try:
            self._run = wandb.init(project=project, entity=entity, name=name, tags=tags or None, config=config,
                                   id=run_id, resume="allow", mode=self.mode, dir=str(self.run_dir))
        except wandb.errors.Error as err:
            raise UserError(f"wandb ({self.mode}) could not start: {str(err).splitlines()[0].rstrip('.')}; run `wandb login` "
                            "or set WANDB_API_KEY for online mode, or use tracking.wandb=offline") from None
        self._wandb = wandb
        # Plot everything against our step, not wandb's own counter, which refuses to go backwards
        # when a resumed run re-logs steps after its checkpoint.
        self._run.define_metric("step")
        self._run.define_metric("*", step_metric="step")

    def stored_wandb_id(self) -> str | None:
        path = self.run_dir / WANDB_ID_FILE
        if not path.is_file():
            return None
        return path.read_text(encoding="utf-8").strip() or None

    @property
    def wandb_dir(self) -> Path | None:
        """The wandb run's own directory (offline-run-… / run-…), when wandb is on."""
        return Path(self._run.dir).parent if self._run is not None else None

    @property
    def sync_command(self) -> str | None:
        """The command that uploads an offline run (None unless offline)."""
        if self.mode != "offline" or self.wandb_dir is None:
            return None
        return f"wandb sync {shlex.quote(str(self.wandb_dir))}"

    # -- logging ---------------------------------------------------------------------------------

    def _write_row(self, row: dict[str, Any]) -> None:
        self._file.write(json.dumps(row, ensure_ascii=False, allow_nan=False) + "\n")
        self._file.flush()

    def log(self, step: int, metrics: Mapping[str, Any]) -> None:
        """One row: ``step`` (the optimiser step), wall-clock ``time`` and ``metrics``."""
        if not self.is_main:
            return
        values = plain_metrics(metrics)
        self._last_step = int(step)
        self._write_row({"step": int(step), "time": round(time.time(), 3), **values})
        if self._run is not None:
            self._run.log({**values, "step": int(step)})

    def log_image(self, key: str, png_path: str | Path, step: int | None = None) -> None:
        """A plot: its path goes to metrics.jsonl, the image itself to wandb."""
        if not self.is_main:
            return
        step = self._last_step if step is None else int(step)
        path = Path(png_path)
        if not path.is_file():
            raise FileNotFoundError(f"image to log {path} does not exist")
        shown = str(path.relative_to(self.run_dir)) if path.is_relative_to(self.run_dir) else str(path)
        self._write_row({"step": step, "time": round(time.time(), 3), key: shown})
        if self._run is not None:
            self._run.log({key: self._wandb.Image(str(path)), "step": step})

    def summary(self, values: Mapping[str, Any]) -> None:
        """Final figures of the run: merged into summary.json and the wandb run summary."""
        if not self.is_main:
            return
        plain = plain_metrics(values)
        path = self.run_dir / SUMMARY_FILE
        merged = json.loads(path.read_text(encoding="utf-8")) if path.is_file() else {}
        merged.update(plain)
        write_json(path, merged)
        if self._run is not None:
            self._run.summary.update(plain)

    def finish(self, exit_code: int = 0) -> None:
        """Close metrics.jsonl and the wandb run (idempotent)."""
        if self._file is not None:
            self._file.close()
            self._file = None
        if self._run is not None:
            self._run.finish(exit_code=exit_code)
            self._run = None

    def __enter__(self) -> "Tracker":
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        self.finish(exit_code=0 if exc_type is None else 1)

    def _drop_rows_after(self, step: int) -> None:
        path = self.run_dir / METRICS_FILE
        if not path.is_file():
            return
        lines = path.read_text(encoding="utf-8").splitlines()
        kept = [line for line in lines if _row_step(line) is not None and _row_step(line) <= step]
        if len(kept) != len(lines):
            write_text(path, "".join(line + "\n" for line in kept))


def _row_step(line: str) -> int | None:
    try:
        row = json.loads(line)
    except json.JSONDecodeError:
        return None  # a line torn by the crash
    return row.get("step") if isinstance(row, dict) and isinstance(row.get("step"), int) else None
