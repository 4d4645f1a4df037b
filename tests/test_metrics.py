"""The metrics log: JSON lines, TensorBoard scalars of the same numbers where asked for, both cut back to the
checkpoint's step on resume; the switch (OMNIAR_TENSORBOARD, --tensorboard) and its named errors."""

import json
import os

import pytest

from omniar.cli import main
from omniar.train.metrics import TENSORBOARD_ENV, MetricsLog, scalars, tensorboard_wanted

event_accumulator = pytest.importorskip("tensorboard.backend.event_processing.event_accumulator")


def read_scalars(directory) -> dict[str, list[tuple[int, float]]]:
    acc = event_accumulator.EventAccumulator(str(directory))
    acc.Reload()
    return {tag: [(e.step, e.value) for e in acc.Scalars(tag)] for tag in acc.Tags()["scalars"]}


def test_scalars_are_the_numbers_of_a_step():
    m = {"step": 3, "loss": 1.5, "tasks": {"t2i": 0.25, "vqa": {"count": 2}}, "ok": True, "name": "x", "lr": 1e-3}
    assert scalars(m) == {"loss": 1.5, "tasks/t2i": 0.25, "tasks/vqa/count": 2.0, "lr": 1e-3}


def test_tensorboard_gets_what_the_json_log_gets_and_a_resume_cuts_both_back(tmp_path):
    path = tmp_path / "run" / "metrics.jsonl"
    path.parent.mkdir()
    with MetricsLog(path, 0, tensorboard=True) as log:
        for step in (1, 2, 3):
            log.write({"step": step, "loss": 1.0 / step, "parts": {"bits": 0.5 * step}})
    # a run that stopped after its checkpoint at step 2 logged step 3 and more: the resumed run logs them again
    with MetricsLog(path, 2, tensorboard=True) as log:
        log.write({"step": 3, "loss": 9.0, "parts": {"bits": 7.0}})
    lines = [json.loads(line) for line in path.read_text().splitlines()]
    assert [(m["step"], m["loss"]) for m in lines] == [(1, 1.0), (2, 0.5), (3, 9.0)]
    seen = read_scalars(tmp_path / "run" / "tensorboard")
    assert seen["loss"] == [(1, 1.0), (2, 0.5), (3, 9.0)]
    assert seen["parts/bits"] == [(1, 0.5), (2, 1.0), (3, 7.0)]
    (tmp_path / "plain").mkdir()
    with MetricsLog(tmp_path / "plain" / "metrics.jsonl", 0, tensorboard=False) as log:
        log.write({"step": 1, "loss": 2.0})
    assert not (tmp_path / "plain" / "tensorboard").exists()


def test_the_environment_switch(monkeypatch, tmp_path):
    monkeypatch.delenv(TENSORBOARD_ENV, raising=False)
    assert not tensorboard_wanted()
    for value, wanted in (("1", True), ("true", True), ("0", False), ("", False)):
        monkeypatch.setenv(TENSORBOARD_ENV, value)
        assert tensorboard_wanted() is wanted
    monkeypatch.setenv(TENSORBOARD_ENV, "1")
    with MetricsLog(tmp_path / "metrics.jsonl", 0) as log:
        log.write({"step": 1, "loss": 2.0})
    assert read_scalars(tmp_path / "tensorboard")["loss"] == [(1, 2.0)]
    monkeypatch.setenv(TENSORBOARD_ENV, "maybe")
    with pytest.raises(ValueError, match="OMNIAR_TENSORBOARD must be 1 or 0, got 'maybe'"):
        MetricsLog(tmp_path / "other.jsonl", 0)


def test_the_command_line_flag_logs_every_run_of_the_command_and_only_that(tmp_path, monkeypatch):
    monkeypatch.delenv(TENSORBOARD_ENV, raising=False)
    main(["train", "text", "--out", str(tmp_path / "tb"), "--steps", "3", "--tensorboard"])
    assert TENSORBOARD_ENV not in os.environ  # set while the command ran, not after
    logged = [json.loads(line) for line in (tmp_path / "tb" / "metrics.jsonl").read_text().splitlines()]
    seen = read_scalars(tmp_path / "tb" / "tensorboard")
    assert seen["loss"] == [(m["step"], pytest.approx(m["loss"])) for m in logged] and logged
    main(["train", "text", "--out", str(tmp_path / "plain"), "--steps", "3"])
    assert not (tmp_path / "plain" / "tensorboard").exists()


def test_without_the_package_the_flag_is_a_named_error(tmp_path, monkeypatch):
    import builtins

    real = builtins.__import__

    def no_tensorboard(name, *args, **kw):
        if name.startswith("torch.utils.tensorboard") or name.startswith("tensorboard"):
            raise ImportError(f"No module named {name!r}")
        return real(name, *args, **kw)

    monkeypatch.setattr(builtins, "__import__", no_tensorboard)
    with pytest.raises(SystemExit, match=r"TensorBoard logging needs the tensorboard package: pip install"):
        main(["train", "text", "--out", str(tmp_path / "x"), "--steps", "3", "--tensorboard"])
    assert not (tmp_path / "x").exists()  # refused before anything trained
    with pytest.raises(ImportError, match="omniar\\[tensorboard\\]"):
        MetricsLog(tmp_path / "metrics.jsonl", 0, tensorboard=True)
