"""OneCAT's parts: patch embedding (understanding input), next-scale input embedding and bitwise head, and the
Scale-Aware Adapter (per-scale LoRA on the generation expert)."""

import pytest
import torch

from omniar import OmniDecoder, Segment, collate
from omniar.generation.sampling import SamplingParams
from omniar.model.adapter import ScaleAdaptedSwiGLU
from omniar.model.bitwise import BitwiseHead, ScaleInputEmbed, bitwise_loss, sample_bits
from omniar.model.patch_embed import PatchEmbed
from omniar.stream.segment import Sample
from omniar.tokenizers.image import ImageTokenizer, ImageTokenizerConfig
from tests.streams import BOI, EOI, T2I, mixed_config, mixed_sample

D = 48


# ---- patch embedding ----------------------------------------------------------------------------------------------
def test_patch_embed_shapes_grid_and_other_sizes():
    pe = PatchEmbed(D, patch=4, channels=16, image_size=64)
    assert pe(torch.rand(2, 3, 64, 64)).shape == (2, 64, D) and pe.grid() == (8, 8)
    assert pe(torch.rand(1, 3, 32, 32)).shape == (1, 16, D) and pe.grid(32) == (4, 4)  # position table resized


def test_each_patch_token_reads_only_its_own_pixels():
    """Conv stride = kernel, then 2x2 unshuffle: token (r, c) sees exactly pixels [8r, 8r + 8) x [8c, 8c + 8)."""
    pe = PatchEmbed(D, patch=4, channels=16, image_size=64)
    x = torch.rand(1, 3, 64, 64)
    y = x.clone()
    y[:, :, 8:16, 24:32] = torch.rand(3, 8, 8)  # the pixels of token (1, 3)
    changed = (pe(x) - pe(y)).abs().amax(-1)[0]
    assert changed[1 * 8 + 3] > 0
    changed[1 * 8 + 3] = 0
    assert changed.max() == 0


@pytest.mark.parametrize("bad, message", [
    (torch.rand(1, 1, 64, 64), "(B, 3, S, S)"),
    (torch.rand(1, 3, 64, 48), "square"),
    (torch.rand(1, 3, 60, 60), "multiple of 8"),
    (torch.zeros(1, 3, 64, 64, dtype=torch.uint8), "float"),
])
def test_patch_embed_names_bad_images(bad, message):
    with pytest.raises(ValueError, match=message.replace("(", r"\(").replace(")", r"\)")):
        PatchEmbed(D, patch=4, channels=16)(bad)


def test_patch_features_enter_the_decoder_and_train():
    pe = PatchEmbed(D, patch=4, channels=16, image_size=32)
    model = OmniDecoder(mixed_config(feature_dims={"image_und": D}))
    feats = pe(torch.rand(1, 3, 32, 32))[0]
    sample = Sample(task=T2I, segments=[Segment("image_und", features=feats, grid=pe.grid(32), begin=BOI, end=EOI),
                                        Segment("text", [5, 6, 7], loss=True)])
    batch = collate([sample])
    out = model(**batch.model_inputs())
    out.logits[0, -2].logsumexp(-1).backward()
    assert pe.conv.weight.grad.abs().sum() > 0 and pe.pos.grad.abs().sum() > 0


# ---- next-scale inputs and the bitwise head -------------------------------------------------------------------------
@pytest.fixture(scope="module")
def tokenizer():
    torch.manual_seed(0)
    return ImageTokenizer(ImageTokenizerConfig(image_size=32, channels=16, bits=8, downsample=2,
                                               scales=(1, 2, 4, 8))).eval()


def gen_sample(embed, scales):
    return Sample(task=T2I, segments=[Segment("text", [3, 4, 5]),
                                      Segment("image_gen", features=embed, scales=[(s, s) for s in scales],
                                              begin=BOI, end=EOI)])


def test_scale_inputs_follow_the_tokenizer_and_no_scale_sees_a_later_one(tokenizer):
    """Teacher forcing: the hidden states of scales <= k do not depend on the inputs of scales > k."""
    torch.manual_seed(1)
    scales = tokenizer.config.scales
    emb = ScaleInputEmbed(8, D, len(scales))
    model = OmniDecoder(mixed_config(feature_dims={"image_gen": D})).eval()
    bits = tokenizer.encode(torch.rand(2, 3, 32, 32))
    inputs = tokenizer.ar_inputs(bits)
    x = emb(inputs, batch=2)
    assert x.shape == (2, sum(s * s for s in scales), D)
    changed = [i.clone() for i in inputs]
    changed[2] = changed[2] + 1.0  # the input of scale 3 (8 x 8)
    y = emb(changed, batch=2)
    with torch.no_grad():
        hx = model(**collate([gen_sample(x[0], scales)]).model_inputs()).hidden[0]
        hy = model(**collate([gen_sample(y[0], scales)]).model_inputs()).hidden[0]
    first_gen = 3 + 1  # text, then <boi>
    before = first_gen + 1 + 4 + 16  # scales 0, 1, 2
    assert (hx[:before] - hy[:before]).abs().max() == 0
    assert (hx[before : before + 64] - hy[before : before + 64]).abs().max() > 1e-3


def test_scale_input_embedding_names_bad_inputs(tokenizer):
    emb = ScaleInputEmbed(8, D, 4)
    with pytest.raises(ValueError, match="must be"):
        emb([torch.zeros(2, 5, 2, 2)], batch=2)
    with pytest.raises(ValueError, match="beyond"):
        emb([torch.zeros(1, 8, 2, 2)] * 4, batch=1)


def test_bitwise_loss_is_binary_cross_entropy_per_bit():
    torch.manual_seed(0)
    head = BitwiseHead(D, 8)
    logits = head(torch.randn(5, D))
    bits = torch.rand(5, 8) > 0.5
    p1 = logits.softmax(-1)[..., 1]
    manual = -(bits * p1.log() + (~bits) * (1 - p1).log()).mean()
    assert torch.allclose(bitwise_loss(logits, bits), manual, atol=1e-6)
    w = torch.tensor([1.0, 0, 0, 0, 0])
    assert torch.allclose(bitwise_loss(logits, bits, w), bitwise_loss(logits[:1], bits[:1]), atol=1e-6)
    with pytest.raises(ValueError, match="do not match"):
        bitwise_loss(logits, bits[:, :4])


def test_bit_sampling_greedy_top_p_and_frequencies():
    logits = torch.zeros(2, 4000, 1, 2)
    logits[..., 1] = 1.0  # P(bit = 1) = sigmoid(1) = 0.731
    assert sample_bits(logits, SamplingParams(temperature=0)).all()
    assert sample_bits(logits, SamplingParams(top_p=0.7)).all()  # the likelier bit reaches p alone
    g = torch.Generator().manual_seed(0)
    freq = sample_bits(logits, SamplingParams(temperature=1.0), g).float().mean()
    assert abs(freq - 0.731) < 0.02
    mixed = sample_bits(logits, SamplingParams(temperature=torch.tensor([0.0, 1.0])), g)  # per-row knobs
    assert mixed[0].all() and not mixed[1].all()


# ---- the Scale-Aware Adapter ----------------------------------------------------------------------------------------
def adapted(rank=4, scales=4):
    torch.manual_seed(0)
    ffn = ScaleAdaptedSwiGLU(16, 24, scales, rank, alpha=8.0)
    with torch.no_grad():
        for lora in (ffn.gate_up_lora, ffn.down_lora):
            lora.B.normal_()
    return ffn


def test_adapter_is_lora_of_the_tokens_own_scale():
    ffn = adapted()
    x, scale = torch.randn(10, 16), torch.tensor([0, 1, 2, 3, 0, 1, 2, 3, 3, 3])
    out = ffn(x, scale)
    for i in range(10):
        k = int(scale[i])
        wg = ffn.gate_up.weight + 2.0 * ffn.gate_up_lora.B[k] @ ffn.gate_up_lora.A[k]
        wd = ffn.down.weight + 2.0 * ffn.down_lora.B[k] @ ffn.down_lora.A[k]
        gate, up = (wg @ x[i]).split(24)
        assert torch.allclose(out[i], wd @ (torch.nn.functional.silu(gate) * up), atol=1e-5)
    ffn.enabled = False
    assert torch.allclose(ffn(x, scale), super(ScaleAdaptedSwiGLU, ffn).forward(x))


def test_a_new_adapter_changes_nothing_and_merging_changes_nothing():
    torch.manual_seed(0)
    ffn = ScaleAdaptedSwiGLU(16, 24, 4, 4, 8.0)
    x = torch.randn(6, 16)
    assert torch.equal(ffn(x, torch.full((6,), 2)), super(ScaleAdaptedSwiGLU, ffn).forward(x))  # B starts at 0
    ffn = adapted().eval()
    scale = torch.full((6,), 2)
    unmerged = ffn(x, scale)
    ffn.merge()
    assert torch.allclose(ffn(x, scale), unmerged, atol=1e-5)
    mixed = torch.tensor([0, 1, 2, 3, 2, 1])
    assert torch.allclose(ffn(x, mixed), adapted()(x, mixed), atol=1e-6)  # mixed scales use the LoRA path
    merged = ffn._merged
    ffn.merge()
    assert ffn._merged is merged  # unchanged weights: nothing recomputed
    with torch.no_grad():
        ffn.down_lora.B.mul_(2)  # weights changed in place (an optimizer step, load_state_dict)
    ffn.merge()
    assert ffn._merged is not merged
    fresh = ffn(x, scale)
    ffn._merged = {}
    assert torch.allclose(fresh, ffn(x, scale), atol=1e-5) and not torch.allclose(fresh, unmerged, atol=1e-3)
    ffn.train()
    assert not ffn._merged


def test_decoder_adapter_serves_only_generation_tokens_and_round_trips(tmp_path):
    cfg = mixed_config(scale_adapter_rank=4, num_scales=3)
    model = OmniDecoder(cfg)
    batch = collate([mixed_sample(0)])
    model(**batch.model_inputs()).logits.sum().backward()
    gen = model.blocks[0].ffn.experts[cfg.experts.index("gen")]
    assert isinstance(gen, ScaleAdaptedSwiGLU)
    # B starts at 0, so A gets no gradient yet; B's gradient comes from every scale that had tokens
    assert all(gen.gate_up_lora.B.grad[k].abs().sum() > 0 for k in range(3))
    model.zero_grad()
    text_only = collate([Sample(task=T2I, segments=[Segment("text", [1, 2, 3, 4], loss=True)])])
    model(**text_only.model_inputs()).logits.sum().backward()
    assert gen.gate_up_lora.B.grad is None or gen.gate_up_lora.B.grad.abs().sum() == 0
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.01)
    model.eval()
    model.save_pretrained(tmp_path)
    loaded = OmniDecoder.from_pretrained(tmp_path)
    with torch.no_grad():
        a = model(**batch.model_inputs()).logits
        b = loaded(**batch.model_inputs()).logits
        model.set_scale_adapter(False)
        c = model(**batch.model_inputs()).logits
    assert torch.equal(a, b)
    assert (a - c).abs().max() > 1e-4  # switching the adapter off changes the generation positions


def test_adapter_config_errors():
    with pytest.raises(ValueError, match="not an expert"):
        mixed_config(scale_adapter_rank=4, num_scales=3, scale_adapter_expert="vision")
    with pytest.raises(ValueError, match="num_scales"):
        mixed_config(scale_adapter_rank=4)
    with pytest.raises(ValueError, match=r"scale ids must be in \[0, 4\)"):
        adapted()(torch.randn(2, 16), torch.tensor([0, 4]))


def test_autoregressive_bit_head_reads_only_earlier_bits():
    torch.manual_seed(0)
    head = BitwiseHead(D, 8, ar_width=24)
    with torch.no_grad():
        head.ar_out.normal_()
        head.ar_direct.normal_()
    h, bits = torch.randn(5, D), torch.rand(5, 8) > 0.5
    base = head(h, bits)
    for j in range(8):  # brute force: flipping bit j changes exactly the logits of the bits after it
        flipped = bits.clone()
        flipped[:, j] ^= True
        changed = (head(h, flipped) - base).abs().amax(dim=(0, 2)) > 0
        assert changed.tolist() == [i > j for i in range(8)]
    with pytest.raises(ValueError, match="needs the token's bits"):
        head(h)


def test_autoregressive_bits_draw_one_mode_where_independent_bits_blend_them():
    """Tokens that are all ones or all zeros, half and half: independent bits (the right marginals, 1/2 each) draw
    a blend, 2 of 2^8 patterns by chance; the autoregressive head learns the joint and draws whole tokens."""
    torch.manual_seed(0)
    h = torch.zeros(256, D)
    target = (torch.arange(256) % 2).bool()[:, None].expand(256, 8)
    drawn = {}
    for width in (0, 16):
        head = BitwiseHead(D, 8, ar_width=width)
        opt = torch.optim.Adam(head.parameters(), lr=0.05)
        for _ in range(150):
            loss = bitwise_loss(head(h, target), target)
            opt.zero_grad()
            loss.backward()
            opt.step()
        g = torch.Generator().manual_seed(1)
        with torch.no_grad():
            bits = head.draw(h[:, None], 1, lambda logp: logp[0],
                             lambda logp, g=g: sample_bits(logp, SamplingParams(temperature=1.0), g))[:, 0]
        whole = (bits.all(-1) | ~bits.any(-1)).float().mean().item()
        drawn[width] = (whole, bits.float().mean().item())
    assert drawn[16][0] > 0.95 and drawn[0][0] < 0.1  # whole tokens vs blends
    assert 0.3 < drawn[16][1] < 0.7 and 0.3 < drawn[0][1] < 0.7  # both keep the marginals
