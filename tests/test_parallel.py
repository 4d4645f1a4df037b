"""Data parallelism: two gloo processes == one process accumulating the same pieces; the processes stay in sync,
also when one of them is stopped."""

import json
import os
import signal

import pytest
import torch
from safetensors.torch import load_file, save_file

from omniar import OmniDecoder, preset
from omniar.data.toy import corpus
from omniar.omni.model import OmniModel
from omniar.omni.train import Recipe, train_omni
from omniar.tokenizers.bytes import ByteTokenizer
from omniar.train.parallel import DataParallel, launch
from omniar.train.text import text_batches
from omniar.train.trainer import TrainConfig, Trainer
from tests.test_omni_model import tiny_model

RECIPE = dict(tasks={"t2i": 1, "caption": 1, "vqa": 1, "edit": 1, "text": 1}, examples_per_step=4, steps=3,
              lr=2e-3, warmup=1, shards=2)


def _data_parallel_worker(out: str) -> None:
    parallel = DataParallel()
    model = tiny_model(seed=1 + parallel.rank)  # rank 1 starts elsewhere: the broadcast must fix that
    train_omni(model, out, Recipe(**RECIPE), progress=False, parallel=parallel)
    save_file(dict(model.state_dict()), f"{out}/rank{parallel.rank}.safetensors")


def test_two_processes_equal_one_process_accumulating(tmp_path):
    single = tiny_model(seed=1)
    log = train_omni(single, tmp_path / "single", Recipe(**RECIPE), progress=False)
    launch(_data_parallel_worker, 2, str(tmp_path / "dp"))
    rank0, rank1 = (load_file(tmp_path / "dp" / f"rank{r}.safetensors") for r in (0, 1))
    saved = OmniModel.from_pretrained(tmp_path / "dp" / "checkpoint").state_dict()
    changed = 0
    for name, p in single.state_dict().items():
        assert torch.equal(rank0[name], rank1[name]), f"{name}: the processes drifted apart"
        assert torch.equal(rank0[name], saved[name]), name
        torch.testing.assert_close(rank0[name], p, rtol=1e-4, atol=1e-6, msg=name)
        changed += not torch.equal(p, tiny_model(seed=1).state_dict()[name])
    assert changed > 10  # training moved the weights, so the comparison means something
    lines = (tmp_path / "dp" / "metrics.jsonl").read_text().splitlines()
    assert len(lines) == 1 and log[-1]["step"] == 3  # one writer; log_every 10 -> the final step only


def test_shards_must_split_evenly_and_parallel_needs_a_group():
    model = tiny_model()
    with pytest.raises(ValueError, match="shards must be between 1 and examples_per_step"):
        Recipe(examples_per_step=4, shards=5)
    with pytest.raises(ValueError, match="cannot be shared out evenly"):
        Trainer(model, lambda step: None, TrainConfig(), shards=0)
    with pytest.raises(RuntimeError, match="needs a process group"):
        DataParallel()


def _interrupted_worker(out: str) -> None:
    parallel = DataParallel()
    torch.manual_seed(0)
    tok = ByteTokenizer()
    model = OmniDecoder(preset("text-tiny", vocab_size=tok.vocab_size, num_layers=1, hidden_size=32, num_heads=2,
                               num_kv_heads=1, intermediate_size=64))
    data = text_batches(corpus(100), tok, rows=2, seq_len=32)

    def batch_for_step(step: int, shard: int, shards: int):
        if step == 1 and parallel.rank == 1:  # only one process sees the Ctrl-C
            os.kill(os.getpid(), signal.SIGINT)
        return data(step * shards + shard)

    Trainer(model, batch_for_step, TrainConfig(steps=6, warmup=1), out_dir=out, progress=False, shards=2,
            parallel=parallel).fit()


def test_a_ctrl_c_in_one_process_stops_all_at_the_same_step_with_a_checkpoint(tmp_path):
    with pytest.raises(KeyboardInterrupt):
        launch(_interrupted_worker, 2, str(tmp_path), timeout=120)  # a disagreement fails in 2 min, not 30
    assert json.loads((tmp_path / "checkpoint" / "trainer.json").read_text())["step"] == 2
