"""Muon: Newton-Schulz orthogonalisation, which parameters it takes, and its AdamW half equals torch's AdamW."""

import pytest
import torch

from omniar import OmniDecoder, preset
from omniar.train import TrainConfig, muon
from omniar.train.muon import Muon, orthogonalize
from omniar.train.trainer import make_optimizer

SMALL = dict(num_layers=2, hidden_size=64, num_heads=4, num_kv_heads=2, intermediate_size=128)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("shape", [(48, 48), (96, 32), (32, 96), (3, 40, 24)])
def test_orthogonalize_is_near_the_polar_factor(shape, dtype):
    g = torch.randn(*shape, generator=torch.Generator().manual_seed(0))
    u = orthogonalize(g, dtype=dtype).float()
    assert u.shape == g.shape
    sv = torch.linalg.svdvals(u)
    assert sv.min() > 0.6 and sv.max() < 1.25  # every direction moves at about the same rate
    left, _, right = torch.linalg.svd(g, full_matrices=False)
    polar = left @ right
    cos = (u * polar).sum((-2, -1)) / (u.norm(dim=(-2, -1)) * polar.norm(dim=(-2, -1)))
    assert (cos > 0.95).all()  # and the same directions as U V^T
    # the update does not depend on the gradient's scale (a power of two: exact in bf16)
    assert torch.allclose(orthogonalize(64 * g, dtype=dtype).float(), u, atol=1e-2)


def _spread(shape, seed, decades):
    """A float64 matrix of `shape` whose singular values span `decades` powers of ten (0: Gaussian)."""
    g = torch.randn(*shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    if not decades:
        return g
    u, s, vh = torch.linalg.svd(g, full_matrices=False)
    return u @ torch.diag(torch.logspace(0, -decades, s.numel(), dtype=torch.float64)) @ vh


@pytest.mark.parametrize("shape", [(32, 96), (48, 96), (64, 256)])
@pytest.mark.parametrize("decades", [0, 4])
def test_gram_space_iterations_are_the_direct_iterations(shape, decades):
    x = _spread(shape, 0, decades)
    x = x / x.norm()
    direct = muon._iterations(x, 5)
    # the same polynomial: equal to float64's rounding
    assert torch.allclose(muon._gram_iterations(x, 5), direct, rtol=0, atol=1e-11)
    # in fp32 its rounding grows with Q on the weakest directions: 5e-7 on a Gaussian matrix (as the direct form's),
    # at most 1.5e-4 of entries ~0.27 when the singular values span 10^4 (the direct form: 4e-6); bf16 is ~1e-2
    err = (muon._gram_iterations(x.float(), 5).double() - direct).abs().max()
    assert err < (2e-6 if not decades else 3e-4)


def test_orthogonalize_takes_the_gram_space_for_wide_fp32_matrices(monkeypatch):
    calls = []
    monkeypatch.setattr(muon, "_gram_iterations", lambda x, steps: calls.append(tuple(x.shape)) or x)
    for shape, dtype in [((40, 24), torch.float32), ((48, 96), torch.float32), ((2, 200, 64), torch.float32),
                         ((48, 96), torch.bfloat16), ((64, 256), torch.bfloat16)]:
        orthogonalize(torch.ones(shape), dtype=dtype)
    assert calls == [(48, 96), (2, 64, 200)]  # twice as wide (either way round), in fp32 only


@pytest.mark.parametrize("native", [False, True])
def test_orthogonalize_iterates_in_bf16_only_where_its_matmuls_are_native(monkeypatch, native):
    g = torch.randn(40, 24, generator=torch.Generator().manual_seed(0))
    monkeypatch.setattr(muon, "fast_bf16", lambda device: native)
    want = orthogonalize(g, dtype=torch.bfloat16 if native else torch.float32)
    assert torch.equal(orthogonalize(g), want)
    assert not torch.equal(want, orthogonalize(g, dtype=torch.float32 if native else torch.bfloat16))


def test_muon_takes_the_hidden_matrices_and_adamw_the_rest():
    model = OmniDecoder(preset("text-tiny", vocab_size=300, **SMALL))
    opt = make_optimizer(model, TrainConfig(optimizer="muon"))
    names = {id(p): n for n, p in model.named_parameters()}
    muon = {names[id(p)] for g in opt.param_groups if g["muon"] for p in g["params"]}
    rest = {names[id(p)] for g in opt.param_groups if not g["muon"] for p in g["params"]}
    assert muon and all(n.startswith("blocks.") and model.get_parameter(n).dim() == 2 for n in muon)
    assert not muon & rest and muon | rest == set(names.values())
    assert any("embed" in n for n in rest) and any("norm" in n for n in rest)
    with pytest.raises(ValueError, match="unknown optimizer 'sgd'"):
        make_optimizer(model, TrainConfig(optimizer="sgd"))
    with pytest.raises(ValueError, match="Muon needs matrices"):
        Muon([{"params": [torch.nn.Parameter(torch.zeros(4))], "muon": True}])


def test_muon_groups_without_muon_are_torch_adamw():
    torch.manual_seed(0)
    a = [torch.nn.Parameter(torch.randn(8, 4)), torch.nn.Parameter(torch.randn(4))]
    b = [torch.nn.Parameter(p.detach().clone()) for p in a]
    ours = Muon([{"params": a[:1], "weight_decay": 0.1}, {"params": a[1:]}], lr=1e-2, betas=(0.9, 0.95))
    ref = torch.optim.AdamW([{"params": b[:1], "weight_decay": 0.1}, {"params": b[1:], "weight_decay": 0.0}],
                            lr=1e-2, betas=(0.9, 0.95), eps=1e-8)
    for step in range(5):
        for params, opt in ((a, ours), (b, ref)):
            opt.zero_grad()
            (params[0].sin().sum() * (step + 1) + (params[1] ** 2).sum()).backward()
            opt.step()
    for p, q in zip(a, b):
        torch.testing.assert_close(p, q, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("shape", [(32, 96), (96, 32)])
def test_muon_update_has_adamw_like_rms(shape):
    """Scaled by 0.2 sqrt(max(rows, cols)), an orthogonal update's RMS is 0.2 whatever the shape (Liu et al.), so
    the stage recipes' AdamW rates carry over; weight decay is decoupled, as in AdamW."""
    p = torch.nn.Parameter(torch.randn(*shape))
    before = p.detach().clone()
    opt = Muon([{"params": [p], "muon": True, "weight_decay": 0.5}], lr=1e-2, nesterov=False)
    p.grad = torch.randn(*shape)
    opt.step()
    change = p.detach() - before * (1 - 1e-2 * 0.5)
    rms = change.pow(2).mean().sqrt() / 1e-2
    assert 0.15 < rms < 0.25


def test_matrices_of_one_shape_are_orthogonalised_together_as_each_alone():
    """The step batches same-shaped matrices into one Newton-Schulz run: every update equals that matrix's own
    orthogonalised Nesterov momentum (a 3-D parameter: each of its matrices alone), over several steps."""
    g = torch.Generator().manual_seed(0)
    shapes = [(24, 40), (24, 40), (40, 24), (3, 24, 40), (24, 40), (16, 16)]
    params = [torch.nn.Parameter(torch.randn(*s, generator=g)) for s in shapes]
    ref = [p.detach().clone() for p in params]
    bufs = [torch.zeros_like(p) for p in params]
    opt = Muon([{"params": params, "muon": True, "weight_decay": 0.1}], lr=1e-2, momentum=0.9)
    for _ in range(3):
        grads = [torch.randn(*s, generator=g) for s in shapes]
        for p, gr in zip(params, grads):
            p.grad = gr
        params[-1].grad = None  # a matrix without a gradient is left alone
        opt.step()
        for i, (r, gr) in enumerate(zip(ref, grads)):
            if i == len(shapes) - 1:
                continue
            bufs[i].mul_(0.9).add_(gr)
            mats = (gr + 0.9 * bufs[i]).reshape(-1, *r.shape[-2:])
            u = torch.stack([orthogonalize(m) for m in mats]).reshape(r.shape)
            r.mul_(1 - 1e-2 * 0.1).add_(u * 0.2 * max(r.shape[-2:]) ** 0.5, alpha=-1e-2)
    for p, r in zip(params, ref):
        torch.testing.assert_close(p.detach(), r, rtol=0, atol=1e-6)


def test_flatten_orthogonalises_each_filter_bank_as_one_matrix():
    """With `flatten` a convolution's filters (out, in, k, k) are one (out, in k k) matrix: the update is that
    matrix's orthogonalised Nesterov momentum at the RMS-matched scale; filter banks of one shape go as one batch,
    each as alone; a group without the key (saved before it) is the batch-of-matrices rule."""
    g = torch.Generator().manual_seed(0)
    shapes = [(8, 4, 3, 3), (8, 4, 3, 3), (16, 8, 3, 3)]
    params = [torch.nn.Parameter(torch.randn(*s, generator=g)) for s in shapes]
    ref = [p.detach().clone() for p in params]
    opt = Muon([{"params": params, "muon": True, "flatten": True}], lr=1e-2, nesterov=False)
    grads = [torch.randn(*s, generator=g) for s in shapes]
    for p, gr in zip(params, grads):
        p.grad = gr
    opt.step()
    for p, r, gr in zip(params, ref, grads):
        matrix = gr.reshape(gr.shape[0], -1)
        u = orthogonalize(matrix).reshape(gr.shape) * 0.2 * max(matrix.shape) ** 0.5
        torch.testing.assert_close(p.detach(), r - 1e-2 * u, rtol=0, atol=1e-6)
    assert not torch.allclose(orthogonalize(grads[0].reshape(-1, 3, 3)).reshape(shapes[0]),
                              orthogonalize(grads[0].reshape(8, -1)).reshape(shapes[0]), atol=1e-2)
    del opt.param_groups[0]["flatten"]
    before = [p.detach().clone() for p in params]
    opt.step()
    buf = grads[2] * (1 + 0.95)  # the momentum buffer after the second step: 0.95 g + g
    u = orthogonalize(buf.reshape(-1, 3, 3)).reshape(shapes[2]) * 0.2 * 3 ** 0.5  # 128 matrices of 3 x 3
    torch.testing.assert_close(params[2].detach(), before[2] - 1e-2 * u, rtol=0, atol=1e-6)
