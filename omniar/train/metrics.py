"""A training run's metrics log: JSON lines beside its checkpoint, and TensorBoard scalars where asked for.

Every trainer (`Trainer.fit` - text, OmniModel and ConvNet teacher runs -, the image and speech tokenizers, decoder
post-training) writes one dict per logged step, with its "step", to out/metrics.jsonl. With TensorBoard on -
`MetricsLog(..., tensorboard=True)`, or the environment variable OMNIAR_TENSORBOARD=1, which `omniar train|tokenizer
train|demo --tensorboard` sets so that every run of the command (the demo's stages, data-parallel workers) logs -
the same numbers also go to out/tensorboard as scalars (nested dicts as "outer/inner" tags), for `tensorboard --logdir
<runs>`. It needs the optional `tensorboard` package (`pip install 'omniar[tensorboard]'`). A resumed run drops the
steps after its checkpoint from both: those lines are cut from the JSON log, and TensorBoard is told to purge those
events (they are trained and logged again).
"""

from __future__ import annotations

import json
import os
from pathlib import Path

TENSORBOARD_ENV = "OMNIAR_TENSORBOARD"


def tensorboard_wanted() -> bool:
    """Whether OMNIAR_TENSORBOARD asks every run for TensorBoard scalars ("1", "true", "yes"; "0", "" or unset: no)."""
    value = os.environ.get(TENSORBOARD_ENV, "").strip().lower()
    if value not in ("", "0", "false", "no", "1", "true", "yes"):
        raise ValueError(f"{TENSORBOARD_ENV} must be 1 or 0, got {os.environ[TENSORBOARD_ENV]!r}")
    return value in ("1", "true", "yes")


def require_tensorboard() -> None:
    """Fail early, naming the fix, where TensorBoard logging is asked for without the package."""
    try:
        from torch.utils.tensorboard import SummaryWriter  # noqa: F401
    except ImportError:
        raise ImportError("TensorBoard logging needs the tensorboard package: pip install 'omniar[tensorboard]'") \
            from None


def scalars(m: dict, prefix: str = "") -> dict[str, float]:
    """The numbers of a metrics dict as TensorBoard tags ("step" left out, nested dicts as outer/inner tags)."""
    out = {}
    for key, value in m.items():
        tag = f"{prefix}{key}"
        if isinstance(value, dict):
            out.update(scalars(value, tag + "/"))
        elif isinstance(value, (int, float)) and not isinstance(value, bool) and tag != "step":
            out[tag] = float(value)
    return out


class MetricsLog:
    """out/metrics.jsonl opened for appending by a run at `step` - the lines of later steps, left by a run that
    stopped after its last checkpoint, are dropped first, as is a line cut short by a crash - and, with
    `tensorboard` (None: `tensorboard_wanted()`), a TensorBoard writer on path.parent / "tensorboard"."""

    def __init__(self, path: str | Path, step: int, tensorboard: bool | None = None):
        self.path = Path(path)
        if self.path.is_file():
            lines = self.path.read_text().splitlines()
            kept = [line for line in lines if _at_or_before(line, step)]
            if len(kept) != len(lines):
                self.path.write_text("".join(line + "\n" for line in kept))
        self.writer = None
        if tensorboard_wanted() if tensorboard is None else tensorboard:
            require_tensorboard()
            from torch.utils.tensorboard import SummaryWriter

            # purge_step: events of steps after the checkpoint, from a run that went on past it, are dropped
            self.writer = SummaryWriter(str(self.path.parent / "tensorboard"), purge_step=step + 1 if step else None)
        self.file = self.path.open("a")

    def write(self, m: dict) -> None:
        """Log one step's metrics (a dict with its "step"), flushed at once: a crash loses nothing logged."""
        self.file.write(json.dumps(m) + "\n")
        self.file.flush()
        if self.writer is not None:
            for tag, value in scalars(m).items():
                self.writer.add_scalar(tag, value, m["step"])
            self.writer.flush()

    def close(self) -> None:
        self.file.close()
        if self.writer is not None:
            self.writer.close()

    def __enter__(self) -> MetricsLog:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def _at_or_before(line: str, step: int) -> bool:
    try:
        return json.loads(line).get("step", 0) <= step
    except (json.JSONDecodeError, AttributeError):
        return False
