"""Checkpoints on disk: `config.json` + `model.safetensors`, written atomically, read back strictly.

Atomic: each file is written to a temporary name in the same directory and renamed over the old one, weights
first, so an interrupted save never leaves a torn file behind; a training checkpoint (several files that must agree:
weights, optimizer state, step) is written whole beside the old one and swapped in (`save_training_checkpoint`).
Safetensors only: nothing is unpickled.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch import Tensor, nn

CONFIG_NAME = "config.json"
WEIGHTS_NAME = "model.safetensors"


def atomic_write(path: Path, write) -> None:
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        write(tmp)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _staging_directory(path: str | Path) -> Path:
    """An empty directory beside `path` to write its next version into (then `_replace_directory`)."""
    path = Path(path)
    staging = path.with_name(f".{path.name}.saving")
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    return staging


def _replace_directory(new: Path, path: str | Path) -> None:
    """Put the directory `new` in `path`'s place, so that a reader finds the old version or the new one, never a mix
    of their files. The old one is moved aside first and removed once the new one is in place; a crash between the
    two renames leaves it at `.<name>.old`, which `recover_directory` puts back."""
    path = Path(path)
    old = path.with_name(f".{path.name}.old")
    shutil.rmtree(old, ignore_errors=True)
    if path.exists():
        os.replace(path, old)
    os.replace(new, path)
    shutil.rmtree(old, ignore_errors=True)


def recover_directory(path: str | Path) -> None:
    """Undo a `_replace_directory` cut short between its renames: `path` missing, its old version beside it."""
    path = Path(path)
    old = path.with_name(f".{path.name}.old")
    if not path.exists() and old.is_dir():
        os.replace(old, path)


def write_directory(directory: str | Path, write: Callable[[Path], None]) -> Path:
    """Have `write(staging)` write a directory's files into an empty directory beside `directory`, then swap it in
    whole, so that a write cut short (a crash, a full disk, a second Ctrl-C) leaves the previous version, never a mix
    of old and new files (`recover_directory` finishes a swap cut short)."""
    staging = _staging_directory(directory)
    write(staging)
    _replace_directory(staging, directory)
    return Path(directory)


def write_tensors(path: str | Path, tensors: dict[str, Tensor]) -> None:
    """Write a safetensors file atomically."""
    flat = {k: v.detach().contiguous().cpu() for k, v in tensors.items()}
    atomic_write(Path(path), lambda p: save_file(flat, p, metadata={"format": "pt"}))


def save_checkpoint(directory: str | Path, config: dict, tensors: dict[str, Tensor]) -> Path:
    """Write `tensors` and `config` into `directory` (created if needed), weights first; return the directory."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    write_tensors(directory / WEIGHTS_NAME, tensors)
    text = json.dumps(config, indent=2, sort_keys=True) + "\n"
    atomic_write(directory / CONFIG_NAME, lambda p: Path(p).write_text(text))
    return directory


def read_tensors(path: str | Path) -> dict[str, Tensor]:
    """Load a safetensors file; a missing or corrupt file is an error that names it."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint weights not found: {path}")
    try:
        return load_file(str(path))
    except (SafetensorError, OSError, ValueError) as e:
        raise ValueError(f"corrupt checkpoint file {path}: {e}") from None


def load_state_strict(module: nn.Module, tensors: dict[str, Tensor], source: str = "checkpoint") -> None:
    """Copy tensors into `module`, naming every missing, unexpected or mis-shaped tensor if there are any."""
    expected = module.state_dict()
    problems = []
    missing = sorted(set(expected) - set(tensors))
    unexpected = sorted(set(tensors) - set(expected))
    if missing:
        problems.append(f"missing tensors: {', '.join(missing[:8])}" + (" ..." if len(missing) > 8 else ""))
    if unexpected:
        problems.append(f"unexpected tensors: {', '.join(unexpected[:8])}" + (" ..." if len(unexpected) > 8 else ""))
    for name in sorted(set(expected) & set(tensors)):
        want, got = expected[name].shape, tensors[name].shape
        if want != got:
            problems.append(f"tensor {name!r} has shape {tuple(got)} in {source} but the model expects {tuple(want)}")
    if problems:
        raise ValueError(f"{source} does not match the model: " + "; ".join(problems))
    with torch.no_grad():
        for name, t in expected.items():
            t.copy_(tensors[name])


def read_config(directory: str | Path, model_type: str, what: str) -> dict:
    """The config dict of a `save_checkpoint` directory holding a `model_type` model (a `what`), without the
    model_type key; named errors for a missing or malformed file and for another kind of checkpoint."""
    path = Path(directory) / CONFIG_NAME
    if not path.is_file():
        nested = sorted(p.parent for p in Path(directory).glob(f"**/{CONFIG_NAME}"))[:3]
        hint = f" (found one in {', '.join(map(str, nested))})" if nested else ""
        raise FileNotFoundError(f"no {CONFIG_NAME} in {directory}: it is not a saved {what}{hint}")
    try:
        d = json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise ValueError(f"{path} is not valid JSON: {e}") from None
    kind = d.pop("model_type", None) if isinstance(d, dict) else None
    if kind != model_type:
        raise ValueError(f"{path} is not a {what} config: model_type {kind!r}, expected {model_type!r}")
    return d


TRAINER_NAME = "trainer.json"
OPTIMIZER_NAME = "optimizer.safetensors"


def save_training_state(directory: str | Path, optimizer: torch.optim.Optimizer, step: int, **extra) -> None:
    """Optimizer state (tensors in safetensors, hyper-parameters in JSON) and the step, beside a saved model."""
    directory = Path(directory)
    state = optimizer.state_dict()
    tensors = {f"{pid}.{k}": v if torch.is_tensor(v) else torch.tensor(v)
               for pid, st in state["state"].items() for k, v in st.items()}
    write_tensors(directory / OPTIMIZER_NAME, tensors)
    meta = {"step": step, "param_groups": state["param_groups"], **extra}
    atomic_write(directory / TRAINER_NAME, lambda p: Path(p).write_text(json.dumps(meta, indent=2)))


def save_training_checkpoint(directory: str | Path, model: nn.Module, optimizer: torch.optim.Optimizer, step: int,
                             **extra) -> Path:
    """`model.save_pretrained`'s files, the optimizer state and the step, written together into a directory beside
    `directory` and swapped in, so that a save cut short (a crash, a full disk, a second Ctrl-C) leaves the previous
    checkpoint whole rather than new weights beside an old step."""
    def write(staging: Path) -> None:
        model.save_pretrained(staging)
        save_training_state(staging, optimizer, step, **extra)

    return write_directory(directory, write)


def load_training_state(directory: str | Path, optimizer: torch.optim.Optimizer) -> dict:
    """Restore `optimizer` from `save_training_state`'s files; return the JSON metadata (step, ...)."""
    directory = Path(directory)
    meta_path = directory / TRAINER_NAME
    if not meta_path.is_file():
        raise FileNotFoundError(f"no {TRAINER_NAME} in {directory}: not a training checkpoint")
    meta = json.loads(meta_path.read_text())
    state: dict = {}
    for key, t in read_tensors(directory / OPTIMIZER_NAME).items():
        pid, name = key.split(".", 1)
        state.setdefault(int(pid), {})[name] = t
    optimizer.load_state_dict({"state": state, "param_groups": meta["param_groups"]})
    return meta


def weights_digest(module: torch.nn.Module, skip: str | None = None) -> str:
    """A digest (sha256, 16 hex digits) of every tensor of `module.state_dict()` - names and bytes - but those whose
    name starts with `skip`: what tells one set of weights from another (the model a run's draws belong to)."""
    h = hashlib.sha256()
    for name, t in sorted(module.state_dict().items()):
        if skip is None or not name.startswith(skip):
            h.update(name.encode())
            h.update(t.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()[:16]
