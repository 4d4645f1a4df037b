"""Stopping a training run cleanly: the first Ctrl-C (SIGINT) or SIGTERM is only recorded, so the loop can finish
the step in progress, save a checkpoint and then stop; a second Ctrl-C stops at once.

Used by every training loop (`Trainer.fit`, the image tokenizer's and the speech codec's), so that a run cut short
by a user, a scheduler's SIGTERM or `timeout` resumes from where it stopped.
"""

from __future__ import annotations

import signal
import sys
import threading
from collections.abc import Callable
from pathlib import Path
from typing import NoReturn

from tqdm.auto import tqdm

INTERRUPTED, TERMINATED = 130, 143  # the exit codes after Ctrl-C and after SIGTERM (the shell's 128 + signal)


class GracefulStop:
    """Within `with`, the first SIGINT or SIGTERM is recorded in `signal` instead of raising; a second SIGINT raises
    KeyboardInterrupt at once. Handlers can only be set in the main thread; elsewhere, or when not `enabled`
    (nowhere to save), signals act as usual. The previous handlers come back on exit."""

    def __init__(self, enabled: bool = True):
        self.enabled, self.signal, self.previous = enabled, None, {}

    def __enter__(self) -> GracefulStop:
        if self.enabled and threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGINT, signal.SIGTERM):
                self.previous[sig] = signal.signal(sig, self._handle)
        return self

    def _handle(self, signum: int, frame) -> None:
        if self.signal is not None and signum == signal.SIGINT:
            raise KeyboardInterrupt
        self.signal = signum
        tqdm.write(f"{signal.Signals(signum).name}: stopping after this step with a checkpoint (Ctrl-C again to "
                   f"stop at once, without one)", file=sys.stderr)  # on its own line, the progress bar below it

    def __exit__(self, *exc) -> None:
        for sig, handler in self.previous.items():
            signal.signal(sig, handler)
        self.previous = {}

    def stop(self, step: int, until: int, checkpoint: str | Path, announce: bool = True) -> NoReturn:
        """Say where the run stopped and raise what the signal would have: SystemExit(143) for SIGTERM,
        KeyboardInterrupt otherwise (also where another process of a data-parallel run had the signal)."""
        if announce:
            tqdm.write(f"stopped at step {step} of {until}; the checkpoint in {checkpoint} resumes it (run the "
                       f"same command again)", file=sys.stderr)
        if self.signal == signal.SIGTERM:
            raise SystemExit(TERMINATED)
        raise KeyboardInterrupt


def run_in_chunks(stop: GracefulStop, total: int, done: int, chunk: int, every: int, run: Callable[[int, int], None],
                  save: Callable[[int], None], directory: str | Path, progress: bool, desc: str, unit: str) -> None:
    """Resumable work on items done..total (the models' drawings for post-training): `run(start, end)` a chunk of at
    most `chunk` at a time, `save(done)` every `every` items, at the end and on a signal, which then stops the run
    (`GracefulStop.stop`) with `directory` named as what keeps the work so far."""
    saved = done
    bar = tqdm(total=total, initial=done, disable=not progress, desc=desc, unit=unit)
    while done < total:
        end = min(total, done + chunk)
        run(done, end)
        bar.update(end - done)
        done = end
        if done - saved >= every or done == total or stop.signal is not None:
            save(done)
            saved = done
        if stop.signal is not None:
            bar.close()
            tqdm.write(f"stopped after {done} of {total} {unit}s; {directory} keeps them (run the same command "
                       "again)", file=sys.stderr)
            stop.stop(0, 0, directory, announce=False)
    bar.close()
