"""An OmniModel on an accelerator does what it does on the CPU: the same training loss and update, the same
generated bits for the same seeds (random draws stay on the CPU generators), the same answers, cached decoding
== teacher forcing there too, and checkpoints written from the device load on the CPU with identical outputs.

The device checks run where torch sees a CUDA device (a GPU machine; CI has none, so they are skipped there);
the named errors of `--device` run everywhere."""

import pytest
import torch

from omniar.generation.sampling import SamplingParams
from omniar.omni.generate import generate_images
from omniar.omni.model import OmniModel
from omniar.omni.train import Recipe, train_omni
from omniar.omni.understand import describe
from omniar.train.trainer import TrainConfig, Trainer

from .test_omni_model import examples, teacher_forced_bits, tiny_model

cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
# what the onecat-tiny preset composes beyond plain next-scale: the prompt expert, attention projections per
# expert (routed dispatch) and the edit reference's latent
ONECAT_PARTS = dict(prompt_expert=True, edit_reference=True, expert_attention=True)
# edits told the named object: the grounding head's map, read in a pass over the prompt, feeds the generation
# positions (with the prompt expert, whose routing that pass must keep)
GROUNDED = dict(ONECAT_PARTS, edit_instruction_first=True, grounding_weight=1.0, grounding_input=True)


@pytest.fixture(autouse=True)
def exact_fp32():
    """TF32 rounds fp32 matmuls and convolutions to 10-bit mantissas: off, so the CPU comparison is tight."""
    saved = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    yield
    torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = saved


def pair(**kw):
    return tiny_model(**kw), tiny_model(**kw).to("cuda")


@cuda
@pytest.mark.parametrize("kw", [dict(), ONECAT_PARTS, dict(raster=True)],
                         ids=["next-scale", "onecat-tiny-parts", "raster"])
def test_a_training_step_on_the_device_equals_the_cpus(kw):
    cpu, gpu = pair(**kw)
    losses, grads = [], []
    for model in (cpu, gpu):
        def step(s, model=model):
            return model.batch([e for e in examples() if not (kw.get("raster") and e.task == "edit")],
                               generator=torch.Generator().manual_seed(s), pack=True)

        batch = step(0)
        assert batch[0].input_ids.device.type == batch[1].device.type == model.device.type
        model.train().loss(*batch)[0].backward()
        grads.append({n: p.grad.cpu() for n, p in model.named_parameters() if p.grad is not None})
        model.zero_grad(set_to_none=True)
        trainer = Trainer(model, step, TrainConfig(steps=3, lr=1e-3, warmup=1, optimizer="muon"), progress=False,
                          loss_fn=lambda m, b: m.loss(*b))
        losses.append([trainer.train_step(trainer.batches(s))["loss"] for s in range(3)])
    # the same gradients (fp32 sums in another order: relative to each tensor's largest entry) ...
    assert grads[0].keys() == grads[1].keys()
    for name, g in grads[0].items():
        diff = float((g - grads[1][name]).abs().max())
        assert diff <= 1e-4 * float(g.abs().max()) + 1e-7, f"{name}: {diff:.2e} of {float(g.abs().max()):.2e}"
    # ... and the same losses over three updates (Muon orthogonalises in bf16, whose rounding differs between the
    # CPU's and the GPU's matmuls, so the weights agree to that precision, not to fp32's)
    assert losses[0] == pytest.approx(losses[1], rel=1e-4, abs=1e-5)


@cuda
@pytest.mark.parametrize("kw", [dict(), ONECAT_PARTS, GROUNDED, dict(bit_ar_width=16), dict(raster=True)],
                         ids=["next-scale", "onecat-tiny-parts", "grounded-edits", "autoregressive-bits", "raster"])
def test_generation_on_the_device_draws_the_cpus_bits(kw):
    cpu, gpu = pair(**kw)
    prompts = ["a red circle", "a blue square left of a green star"]
    params = SamplingParams(temperature=1.0, top_p=0.95)
    out = [generate_images(m, prompts, cfg=3.0, params=params, seeds=[1, 2], return_bits=True) for m in (cpu, gpu)]
    (im_c, bits_c), (im_g, bits_g) = out
    assert im_g.device.type == "cuda"
    assert all(torch.equal(a, b.cpu()) for a, b in zip(bits_c, bits_g))
    assert torch.allclose(im_c, im_g.cpu(), atol=1e-4)
    if not kw.get("raster"):
        source = torch.rand(3, 32, 32, generator=torch.Generator().manual_seed(0))
        edits = [generate_images(m, ["make the circle blue"], sources=[source], cfg=3.0, image_cfg=1.5,
                                 return_bits=True)[1] for m in (cpu, gpu)]
        assert all(torch.equal(a, b.cpu()) for a, b in zip(*edits))


@cuda
def test_cached_decoding_equals_teacher_forcing_on_the_device():
    model = tiny_model(bit_ar_width=16).to("cuda")
    _, bits = generate_images(model, ["a red circle"], cfg=2.0, return_bits=True)
    flat = torch.cat([b.flatten(2).transpose(1, 2) for b in bits], 1)[0]
    assert torch.equal(teacher_forced_bits(model, "a red circle", bits), flat)


@cuda
def test_answers_and_captions_on_the_device_are_the_cpus():
    cpu, gpu = pair()
    images = torch.rand(2, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    for questions in (None, ["how many circles are there?", "two"]):
        assert describe(cpu, images, questions, max_new_tokens=6) == describe(gpu, images, questions,
                                                                              max_new_tokens=6)


@cuda
def test_training_on_the_device_saves_a_checkpoint_the_cpu_loads(tmp_path):
    model = tiny_model().to("cuda")
    logs = train_omni(model, tmp_path, Recipe(tasks={"t2i": 1, "caption": 1}, examples_per_step=4, steps=3,
                                              warmup=1), progress=False)
    assert len(logs) >= 1 and model.device.type == "cuda"
    loaded = OmniModel.from_pretrained(tmp_path / "checkpoint")
    assert loaded.device.type == "cpu"
    a = generate_images(model, ["a red circle"], cfg=2.0, return_bits=True)[1]
    b = generate_images(loaded, ["a red circle"], cfg=2.0, return_bits=True)[1]
    assert all(torch.equal(x.cpu(), y) for x, y in zip(a, b))


def test_device_option_names_a_device_that_is_not_here(capsys):
    from omniar.cli import main

    for argv in (["eval", "model", "--model", "nowhere", "--out", "x"], ["demo", "--out", "nowhere/demo"]):
        with pytest.raises(SystemExit) as e:
            main([*argv, "--device", "tpu-or-not"])
        assert "--device" in str(e.value.code)
    if not torch.cuda.is_available():
        with pytest.raises(SystemExit) as e:
            main(["generate", "image", "a red circle", "--model", "nowhere", "--device", "cuda"])
        assert "sees no CUDA device" in str(e.value.code)
