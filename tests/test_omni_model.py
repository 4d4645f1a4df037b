"""OmniModel (the OneCAT composition): stream layouts of every task, the training loss, next-scale generation with
the KV cache == teacher forcing, one forward pass per scale with CFG rows batched, batch == per item, save/load."""

import pytest
import torch

from omniar.generation.sampling import SamplingParams
from omniar.modality import Modality
from omniar.model.config import DecoderConfig
from omniar.omni.generate import generate_images, guidance_weights
from omniar.omni.model import Example, OmniConfig, OmniModel
from omniar.stream.collate import IGNORE
from omniar.tokenizers.image import ImageTokenizer, ImageTokenizerConfig
from omniar.tokenizers.text import TextTokenizer

TEXTS = ["a red circle", "a blue square left of a green star", "how many circles are there?", "two",
         "make the circle blue", "there is a small yellow triangle"] * 4


def tiny_model(seed=0, adapter=True, raster=False, bit_ar_width=0, edit_reference=False, prompt_expert=False,
               expert_attention=False, **omni):
    torch.manual_seed(seed)
    text = TextTokenizer.train(TEXTS, vocab_size=300)
    image = ImageTokenizer(ImageTokenizerConfig(image_size=32, channels=16, bits=8, downsample=2,
                                                scales=(8,) if raster else (1, 2, 4, 8)))
    decoder = dict(hidden_size=48, num_layers=2, num_heads=4, num_kv_heads=2, intermediate_size=64,
                   experts=("text", "und", "gen"),
                   routing={"image_und": "und", "image_gen": "gen", "image_raster": "gen"})
    if adapter:
        decoder.update(scale_adapter_rank=2, num_scales=4)
    if prompt_expert:
        decoder.update(experts=(*decoder["experts"], "prompt"), prompt_expert="prompt")
    if expert_attention:
        decoder.update(expert_attention=True)
    model = OmniModel(OmniConfig(decoder=decoder, patch=4, patch_channels=8,
                                 generation="raster" if raster else "next_scale", bit_ar_width=bit_ar_width,
                                 edit_reference=edit_reference, **omni),
                      text, image)
    with torch.no_grad():  # non-zero adapters, bit conditioning and reference embedding: they matter in every check
        for name, p in model.named_parameters():
            if "_lora.B" in name or "bit_head.ar_" in name or "ref_embed" in name or "ground_embed" in name:
                p.normal_(std=0.02 if "_lora.B" in name else 0.5)
    return model.eval()


@pytest.fixture(scope="module", params=[dict(), dict(bit_ar_width=16), dict(prompt_expert=True),
                                        dict(prompt_expert=True, expert_attention=True)],
                ids=["independent-bits", "autoregressive-bits", "prompt-expert", "expert-attention"])
def model(request):
    return tiny_model(**request.param)


def examples(n_img=32):
    g = torch.Generator().manual_seed(0)

    def img():
        return torch.rand(3, n_img, n_img, generator=g)

    return [Example("t2i", "a red circle", image=img()), Example("caption", "a blue square", image=img()),
            Example("vqa", "how many circles are there?", answer="two", image=img()),
            Example("edit", "make the circle blue", image=img(), source=img()), Example("text", "a green star")]


def test_layouts_route_every_image_token_to_its_expert(model):
    got = model.batch(examples())
    batch, bits, *_ = got
    assert got.stream is batch and got.bits is bits and got.teacher is None and got.grounding is None
    mod = batch.meta.modality
    T = 1 + 4 + 16 + 64
    assert int((mod == Modality.IMAGE_GEN).sum()) == 2 * T == len(bits)  # t2i and edit targets
    assert int((mod == Modality.IMAGE_UND).sum()) == 3 * 16  # caption, vqa, edit source: 4 x 4 patch tokens
    scale_of_gen = batch.meta.block[mod == Modality.IMAGE_GEN][:T]
    assert scale_of_gen.tolist() == [0] + [1] * 4 + [2] * 16 + [3] * 64
    loss, parts = model.loss(batch, bits)
    assert set(parts) == {"text", "bits"} and torch.isfinite(loss)


def test_a_short_training_run_lowers_the_loss():
    model = tiny_model(adapter=True).train()
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.Adam(params, lr=3e-3)
    g = torch.Generator().manual_seed(0)
    losses = []
    for _ in range(30):
        batch, bits, *_ = model.batch(examples(), generator=g)
        loss, _ = model.loss(batch, bits)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert sum(losses[-5:]) / 5 < 0.7 * sum(losses[:5]) / 5
    assert all(p.grad is None for p in model.tokenizer.parameters())  # the image tokenizer stays frozen


def teacher_forced_bits(model, prompt, bits):
    """Greedy bits from one uncached forward over the whole image, its inputs built from `bits`."""
    emb = model.scale_embed(model.tokenizer.ar_inputs(bits), batch=1)[0]
    sample = model.sample(Example("t2i", prompt, image=torch.zeros(3, 32, 32)), None, emb)
    from omniar.stream.collate import collate

    batch = collate([sample]).to(model.device)
    with torch.no_grad():
        hidden = model.decoder(**batch.model_inputs()).hidden
    flat = torch.cat([b.flatten(2).transpose(1, 2) for b in bits], 1)[0]  # an autoregressive head reads them
    logits = model.bit_head(hidden[batch.meta.modality == Modality.IMAGE_GEN], flat)
    return logits.argmax(-1).bool()


def test_cached_next_scale_decoding_equals_teacher_forcing(model):
    _, bits = generate_images(model, ["a red circle"], return_bits=True)
    flat = torch.cat([b.flatten(2).transpose(1, 2) for b in bits], 1)[0]
    assert torch.equal(teacher_forced_bits(model, "a red circle", bits), flat)


def test_the_images_are_the_tokenizers_decoding_of_the_drawn_bits(model):
    """The running reconstruction is decoded as it is, not rebuilt from the bits: the same images to the bit, a
    prefix's too; raster decodes its bits."""
    params = SamplingParams(temperature=1.0)
    images, bits = generate_images(model, ["a red circle", "two"], cfg=2.0, params=params, seeds=[1, 2],
                                   return_bits=True)
    assert torch.equal(images, model.tokenizer.decode(bits))
    images, bits = generate_images(model, ["a red circle", "two"], cfg=2.0, params=params, seeds=[1, 2],
                                   prefix=[~b for b in bits[:2]], return_bits=True)
    assert torch.equal(images, model.tokenizer.decode(bits))
    raster = tiny_model(adapter=False, raster=True)
    images, bits = generate_images(raster, ["a red circle"], cfg=2.0, params=params, return_bits=True)
    assert torch.equal(images, raster.tokenizer.decode(bits))


def test_one_forward_pass_per_scale_with_guidance_rows_batched(model):
    calls = []
    hook = model.decoder.register_forward_hook(lambda m, args, kw_out=None: calls.append(1))
    try:
        images = generate_images(model, ["a red circle", "a blue square left of a green star"], cfg=3.0)
    finally:
        hook.remove()
    assert images.shape == (2, 3, 32, 32) and len(calls) == len(model.scales)


def test_batch_generation_equals_one_by_one_with_seeds(model):
    prompts = ["a red circle", "a blue square left of a green star", "two"]
    params = SamplingParams(temperature=1.0, top_p=0.95)
    _, together = generate_images(model, prompts, cfg=2.0, params=params, seeds=[1, 2, 3], return_bits=True)
    for i, p in enumerate(prompts):
        _, alone = generate_images(model, [p], cfg=2.0, params=params, seeds=[i + 1], return_bits=True)
        assert all(torch.equal(a[0], b[i]) for a, b in zip(alone, together))
    _, other = generate_images(model, prompts, cfg=2.0, params=params, seeds=[4, 5, 6], return_bits=True)
    assert not all(torch.equal(a, b) for a, b in zip(other, together))


def test_a_bits_prefix_is_kept_and_the_rest_generated_from_it(model):
    prompts = ["a red circle", "two"]
    params = SamplingParams(temperature=1.0)
    _, bits = generate_images(model, prompts, cfg=2.0, params=params, seeds=[1, 2], return_bits=True)
    # its own coarse scales as the prefix: the same image (a row's draws do not depend on the prefix)
    _, again = generate_images(model, prompts, cfg=2.0, params=params, seeds=[1, 2], prefix=bits[:2],
                               return_bits=True)
    assert all(torch.equal(a, b) for a, b in zip(again, bits))
    other = [~b for b in bits[:2]]  # another layout: kept, and the later scales follow it
    _, forced = generate_images(model, prompts, cfg=2.0, params=params, seeds=[1, 2], prefix=other,
                                return_bits=True)
    assert all(torch.equal(a, b) for a, b in zip(forced[:2], other))
    assert not all(torch.equal(a, b) for a, b in zip(forced[2:], bits[2:]))
    with pytest.raises(ValueError, match="prefix bits of scale 2 must be"):
        generate_images(model, prompts, prefix=[bits[0], bits[1][:, :, :1]])
    with pytest.raises(ValueError, match="a prefix of 5 scales"):
        generate_images(model, prompts, prefix=bits + bits[:1])


def test_on_scale_shows_the_drawing_coarse_to_fine_ending_in_the_image(model, tmp_path):
    """`on_scale` gets, after each scale, the images the scales so far decode to: the tokenizer's decoder of the
    first k scales' summed contributions (bits drawn the same as without it), the last of them the returned images;
    batched as drawn alone; edits too; a raster model and best-of-N refuse it by name."""
    from omniar.omni.evaluate import ImageSampling, draw_scales
    from omniar.omni.rerank import generate_best_of

    prompts = ["a red circle", "two"]
    params = SamplingParams(temperature=1.0)
    shown = []
    images, bits = generate_images(model, prompts, cfg=2.0, params=params, seeds=[1, 2], return_bits=True,
                                   on_scale=lambda k, x: shown.append((k, x.clone())))
    plain = generate_images(model, prompts, cfg=2.0, params=params, seeds=[1, 2])
    assert torch.equal(images, plain)  # watching does not change the drawing
    assert [k for k, _ in shown] == list(range(len(model.scales)))
    q = model.tokenizer.quantizer
    for k, x in shown:
        assert x.shape == images.shape
        f_hat = sum(q.contribution(q.codes(b), j, model.scales[-1]) for j, b in enumerate(bits[: k + 1]))
        assert torch.allclose(x, model.tokenizer.decode_latent(f_hat), atol=1e-6)
    assert torch.equal(shown[-1][1], images)
    assert not torch.allclose(shown[0][1], images)  # the first scale alone is not the image yet
    alone = []
    generate_images(model, prompts[1:], cfg=2.0, params=params, seeds=[2], on_scale=lambda k, x: alone.append(x))
    # drawn alone, row 1 shows what the batch's row 1 bits decode to in a batch of one (the same bits, and the same
    # decoder batch, so the same numbers)
    for k, a in enumerate(alone):
        f_hat = sum(q.contribution(q.codes(b[1:]), j, model.scales[-1]) for j, b in enumerate(bits[: k + 1]))
        assert torch.allclose(a, model.tokenizer.decode_latent(f_hat), atol=1e-6)
    g = torch.Generator().manual_seed(3)
    source = torch.rand(3, 32, 32, generator=g)
    edits = []
    edited = generate_images(model, ["make the circle blue"], sources=[source], on_scale=lambda k, x: edits.append(x))
    assert len(edits) == len(model.scales) and torch.equal(edits[-1], edited)
    with pytest.raises(ValueError, match="best-of-N draws several"):
        generate_best_of(model, prompts, 2, params=params, on_scale=lambda k, x: None)
    with pytest.raises(ValueError, match="single samples"):
        draw_scales(model, tmp_path, 1, sampling=ImageSampling(best_of=2))
    with pytest.raises(ValueError, match="raster tokens"):
        generate_images(tiny_model(raster=True, adapter=False), prompts, on_scale=lambda k, x: None)


def test_image_grid_lays_images_out_in_rows_with_white_gaps():
    """`image_grid` (the CLI's --samples sheet; `scale_strip` is its one-row case): rows of images, `gap` white
    pixels between neighbours both ways; ragged rows are refused by name."""
    import numpy as np

    from omniar.omni.generate import image_grid

    a = [np.full((2, 3, 3), v, np.uint8) for v in range(6)]
    g = image_grid([a[:3], a[3:]], gap=1)
    assert g.shape == (2 * 2 + 1, 3 * 3 + 2, 3)
    assert (g[2] == 255).all() and (g[:, 3] == 255).all() and (g[:, 7] == 255).all()
    for k in range(6):
        i, j = divmod(k, 3)
        assert (g[3 * i:3 * i + 2, 4 * j:4 * j + 3] == k).all()
    with pytest.raises(ValueError, match=r"rows of one length, got \[2, 1\]"):
        image_grid([a[:2], a[2:3]])


def test_editing_reads_the_reference_image(model):
    g = torch.Generator().manual_seed(3)
    a, b = torch.rand(3, 32, 32, generator=g), torch.rand(3, 32, 32, generator=g)
    out = generate_images(model, ["make the circle blue"] * 2, sources=[a, b])
    assert out.shape == (2, 3, 32, 32)
    same = generate_images(model, ["make the circle blue"], sources=[a])
    assert torch.allclose(out[:1], same, atol=1e-5) and not torch.allclose(out[0], out[1])


def test_save_load_round_trip(model, tmp_path):
    model.save_pretrained(tmp_path)
    loaded = OmniModel.from_pretrained(tmp_path)
    a = generate_images(model, ["a red circle"], cfg=2.0)
    b = generate_images(loaded, ["a red circle"], cfg=2.0)
    assert torch.equal(a, b)


def test_guidance_schedule_and_named_errors(model, tmp_path):
    assert guidance_weights(3.0, 5, "linear") == [1.0, 1.5, 2.0, 2.5, 3.0]
    assert guidance_weights(3.0, 2, "constant") == [3.0, 3.0]
    # the last scales unguided: the ramp reaches cfg at the last guided one
    assert guidance_weights(3.0, 6, "linear", unguided=1) == [1.0, 1.5, 2.0, 2.5, 3.0, 1.0]
    assert guidance_weights(3.0, 3, "constant", unguided=2) == [3.0, 1.0, 1.0]
    with pytest.raises(ValueError, match="cfg schedule"):
        guidance_weights(3.0, 2, "cosine")
    with pytest.raises(ValueError, match="unguided scales must be between 0 and the 2 scales, got 3"):
        guidance_weights(3.0, 2, "linear", unguided=3)
    with pytest.raises(ValueError, match="unknown task"):
        Example("draw", "x", image=torch.zeros(3, 32, 32))
    with pytest.raises(ValueError, match="needs an image"):
        Example("caption", "x")
    with pytest.raises(ValueError, match="32x32"):
        model.batch([Example("t2i", "a red circle", image=torch.zeros(3, 64, 64))])
    with pytest.raises(ValueError, match="one per prompt"):
        generate_images(model, ["a", "b"], seeds=[1])
    model.decoder.save_pretrained(tmp_path)
    with pytest.raises(ValueError, match="not a unified model"):
        OmniModel.from_pretrained(tmp_path)


def test_sampled_answers_with_a_generator_per_image_are_those_drawn_alone(model):
    from omniar.omni.understand import describe

    g = torch.Generator().manual_seed(5)
    images = [torch.rand(3, 32, 32, generator=g) for _ in range(3)]
    questions = ["how many circles are there?", "two", "a red circle"]
    params = SamplingParams(temperature=1.5)

    def gens(*seeds):
        return [torch.Generator().manual_seed(s) for s in seeds]

    together = describe(model, images, questions, params, 8, gens(0, 1, 2), return_ids=True)
    alone = [describe(model, [im], [q], params, 8, gens(i), return_ids=True)[0]
             for i, (im, q) in enumerate(zip(images, questions))]
    assert together == alone
    assert describe(model, images, questions, params, 8, torch.Generator().manual_seed(0), return_ids=True) != alone
    with pytest.raises(ValueError, match="2 generators for 3 prompts"):
        describe(model, images, questions, params, 8, gens(0, 1))


def test_describe_decodes_with_the_cache_like_teacher_forcing(model):
    from omniar.omni.understand import describe
    from omniar.stream.collate import collate
    from omniar.stream.segment import Segment

    g = torch.Generator().manual_seed(5)
    images = [torch.rand(3, 32, 32, generator=g) for _ in range(3)]
    questions = ["how many circles are there?", "two", "a red circle"]
    answers = describe(model, images, questions, max_new_tokens=6)
    assert answers == [describe(model, [im], [q], max_new_tokens=6)[0] for im, q in zip(images, questions)]
    # the greedy continuation, re-run without the cache, picks the same tokens (then <eos>, if it stopped)
    for i in range(3):
        ids = describe(model, [images[i]], [questions[i]], max_new_tokens=6, return_ids=True)[0]
        und = model.patch_embed(images[i][None])[0]
        s = model.sample(Example("vqa", questions[i], image=images[i]), und, None)
        s.segments[-1] = Segment("text", ids + [model.ids["eos"]])
        batch = collate([s])
        with torch.no_grad():
            logits = model.decoder(**batch.model_inputs()).logits[0]
        L = logits.shape[0]
        picked = logits[L - len(ids) - 2 : L - 1].argmax(-1).tolist()
        assert picked[:-1] == ids and (len(ids) == 6 or picked[-1] == model.ids["eos"])
    captions = describe(model, images[:2])
    assert len(captions) == 2 and all(isinstance(c, str) for c in captions)
    with pytest.raises(ValueError, match="one per image"):
        describe(model, images, questions[:1])


def test_understanding_learns_to_answer_about_the_image():
    """Two images, one question: after a short run the answer depends on the image (the patch path works)."""
    from omniar.omni.understand import describe

    model = tiny_model(adapter=False).train()
    g = torch.Generator().manual_seed(0)
    red, blue = torch.zeros(3, 32, 32), torch.zeros(3, 32, 32)
    red[0], blue[2] = 1.0, 1.0
    data = [Example("vqa", "a red circle", answer="two", image=red),
            Example("vqa", "a red circle", answer="make the circle blue", image=blue)]
    opt = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=3e-3)
    for _ in range(60):
        batch, bits, *_ = model.batch(data, generator=g)
        loss, _ = model.loss(batch, bits)
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert describe(model, [red, blue], ["a red circle"] * 2, max_new_tokens=8) == ["two", "make the circle blue"]


def test_keep_pulls_an_edit_towards_its_reference_as_the_tokenizer_codes_it(model):
    """`keep`: the bit that keeps the reference (the tokenizer's code of the reference less the running
    reconstruction) gains `keep` in log-probability; overwhelming, it redraws the reference's own code."""
    g = torch.Generator().manual_seed(3)
    sources = [torch.rand(3, 32, 32, generator=g) for _ in range(2)]
    prompts = ["make the circle blue", "remove the circle"]
    code = model.tokenizer.encode(torch.stack(sources))
    _, plain = generate_images(model, prompts, sources=sources, cfg=2.0, return_bits=True)
    assert not all(torch.equal(a, b) for a, b in zip(plain, code))  # the untrained model does not copy
    _, kept = generate_images(model, prompts, sources=sources, cfg=2.0, keep=1e4, return_bits=True)
    assert all(torch.equal(a, b) for a, b in zip(kept, code))
    _, none = generate_images(model, prompts, sources=sources, cfg=2.0, keep=0.0, return_bits=True)
    assert all(torch.equal(a, b) for a, b in zip(none, plain))
    with pytest.raises(ValueError, match="keep pulls an edit"):
        generate_images(model, prompts, keep=1.0)


def test_keep_spares_the_named_object_where_the_model_grounds_one():
    """The pull is zero on every token the named object's map touches (max-pooled to the scale), `keep` elsewhere,
    and its bit is the tokenizer's own code at every scale while the drawing follows that code."""
    from omniar.omni.generate import _NextScale

    model = tiny_model(adapter=False)
    steps = _NextScale(model, 1)
    maps = torch.zeros(1, 4, 4)
    maps[0, 1, 2] = 1.0  # the named object covers one understanding patch
    source = torch.rand(3, 32, 32, generator=torch.Generator().manual_seed(0))
    code = model.tokenizer.encode(source[None])
    reference = model.tokenizer.latents(source[None])[-1]
    for k, s in enumerate(model.scales):
        bias = steps.keep_bias(k, reference, 2.0, maps)  # (1, s^2, d, 2)
        bits = code[k].flatten(2).transpose(1, 2)
        named = torch.nn.functional.adaptive_max_pool2d(maps[:, None], s).flatten(1) > 0
        assert torch.all(bias[named] == 0) and torch.all(bias[~named].sum(-1) == 2.0)
        assert torch.equal(bias[~named][..., 1] > 0, bits[~named])
        steps.add(k, bits)
    assert named.sum() == 4 and (~named).sum() == 60  # the finest scale: 8 x 8 tokens, the patch's 2 x 2


def test_keep_tau_pulls_only_where_the_drawing_so_far_agrees_with_the_reference():
    """With `tau` a token is pulled only where the running reconstruction is within tau (relative to the
    reference's latent norm, max over the token's area of the finest grid) of the reference - brute force over
    each token's adaptive-pooling window; nothing at the first scale, more as the drawing follows the code."""
    from omniar.omni.generate import _NextScale

    model = tiny_model(adapter=False)
    steps = _NextScale(model, 2)
    source = torch.rand(2, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    code = model.tokenizer.encode(source)
    reference = model.tokenizer.latents(source)[-1]
    H, tau, pulled = reference.shape[-1], 0.6, []
    for k, s in enumerate(model.scales):
        bias = steps.keep_bias(k, reference, 2.0, None, tau)  # (2, s^2, d, 2)
        drawn = 0 if steps.f_hat is None else steps.f_hat
        off = (reference - drawn).norm(dim=1) / reference.norm(dim=1)  # (2, H, H)
        for n in range(2):
            for i in range(s):
                for j in range(s):
                    window = off[n, i * H // s: -(-(i + 1) * H // s), j * H // s: -(-(j + 1) * H // s)]
                    want = 2.0 if window.max() < tau else 0.0
                    assert torch.all(bias[n, i * s + j].sum(-1) == want), (k, n, i, j)
        pulled.append(int((bias.sum(-1)[..., 0] > 0).sum()))
        assert torch.equal(steps.keep_bias(k, reference, 2.0, None, float("inf")),
                           steps.keep_bias(k, reference, 2.0, None))  # no gate at infinity
        steps.add(k, code[k].flatten(2).transpose(1, 2))
    assert pulled[0] == 0 and pulled[-1] > 0  # drawn from nothing: distance 1; following the code: it agrees


def test_keep_tau_leaves_the_first_scale_to_the_model(model):
    g = torch.Generator().manual_seed(3)
    sources = [torch.rand(3, 32, 32, generator=g) for _ in range(2)]
    prompts = ["make the circle blue", "remove the circle"]
    _, plain = generate_images(model, prompts, sources=sources, cfg=2.0, return_bits=True)
    _, gated = generate_images(model, prompts, sources=sources, cfg=2.0, keep=1e4, keep_tau=0.9, return_bits=True)
    _, everywhere = generate_images(model, prompts, sources=sources, cfg=2.0, keep=1e4, return_bits=True)
    assert torch.equal(gated[0], plain[0]) and not torch.equal(everywhere[0], plain[0])
    with pytest.raises(ValueError, match="keep_tau must be > 0"):
        generate_images(model, prompts, sources=sources, keep=1.0, keep_tau=0.0)
    for bad, message in ((dict(cfg=-1.0), "cfg must be >= 0, got -1.0 \\(1: no guidance"),
                         (dict(cfg=float("nan")), "cfg must be >= 0, got nan"),
                         (dict(image_cfg=-0.5), "image_cfg must be >= 0"), (dict(keep=-2.0), "keep must be >= 0")):
        with pytest.raises(ValueError, match=message):
            generate_images(model, prompts, sources=sources, **bad)


def test_unguided_finest_scales_drop_their_guidance_rows_and_draw_from_the_conditional_rows(model):
    """A guidance interval: the last scales drawn without guidance run their passes on the conditional rows alone
    (one pass a scale still); the scales before are drawn as with guidance everywhere, the unguided ones as the
    conditional rows draw them after those scales without guidance rows at all."""
    prompts, params, n = ["a red circle", "a blue square left of a green star"], SamplingParams(temperature=1.0), 2
    rows = []
    hook = model.decoder.register_forward_pre_hook(lambda m, args, kw: rows.append(kw["input_ids"].shape[0]),
                                                   with_kwargs=True)
    try:
        _, bits = generate_images(model, prompts, cfg=3.0, cfg_schedule="constant", unguided_scales=2, params=params,
                                  seeds=[1, 2], return_bits=True)
    finally:
        hook.remove()
    assert rows == [2 * n] * (len(model.scales) - 2) + [n] * 2
    _, guided = generate_images(model, prompts, cfg=3.0, cfg_schedule="constant", params=params, seeds=[1, 2],
                                return_bits=True)
    assert all(torch.equal(a, b) for a, b in zip(bits[:-2], guided[:-2]))
    assert not all(torch.equal(a, b) for a, b in zip(bits[-2:], guided[-2:]))
    _, alone = generate_images(model, prompts, params=params, seeds=[1, 2], prefix=bits[:-2], return_bits=True)
    assert all(torch.equal(a, b) for a, b in zip(bits[-2:], alone[-2:]))
    with pytest.raises(ValueError, match="unguided_scales must be between 0 and the model's 4 scales, got 5"):
        generate_images(model, prompts, cfg=3.0, unguided_scales=5)
    # an edit read with its reference's latent and the grounding map: the conditional rows' own
    editor = tiny_model(edit_reference=True, edit_instruction_first=True, grounding_weight=1.0, grounding_input=True)
    sources = [torch.rand(3, 32, 32, generator=torch.Generator().manual_seed(i)) for i in range(n)]
    edits = ["make the circle blue", "remove the star"]
    _, bits = generate_images(editor, edits, sources=sources, cfg=3.0, unguided_scales=1, params=params,
                              seeds=[1, 2], return_bits=True)
    _, alone = generate_images(editor, edits, sources=sources, params=params, seeds=[1, 2], prefix=bits[:-1],
                               return_bits=True)
    assert torch.equal(bits[-1], alone[-1])
    raster = tiny_model(adapter=False, raster=True)
    with pytest.raises(ValueError, match="unguided_scales leaves the finest scales"):
        generate_images(raster, prompts, cfg=3.0, unguided_scales=1)
    from omniar.omni.evaluate import ImageSampling

    assert ImageSampling(unguided_scales=1).unguided(raster) == 0  # the benchmark guides every raster token
    assert ImageSampling(unguided_scales=1).unguided(model) == 1


def test_edits_of_a_raster_model_are_not_pulled_by_default():
    """The benchmark's pull needs scales: a raster model edits without it, and asked for it, says so."""
    from omniar.omni.evaluate import ImageSampling

    model = tiny_model(adapter=False, raster=True)
    assert ImageSampling().pull(model) == {"keep": 0.0, "keep_tau": None}
    source = torch.rand(3, 32, 32, generator=torch.Generator().manual_seed(0))
    assert model.edit_image(source, "remove the circle").shape == (1, 3, 32, 32)
    with pytest.raises(ValueError, match="keep pulls an edit"):
        model.edit_image(source, "remove the circle", keep=1.0)


def test_three_branch_edit_guidance_is_one_batch_and_reduces_to_the_plain_edit(model):
    g = torch.Generator().manual_seed(4)
    sources = [torch.rand(3, 32, 32, generator=g) for _ in range(2)]
    calls = []
    hook = model.decoder.register_forward_hook(lambda m, args, out: calls.append(args))
    try:
        guided = generate_images(model, ["make the circle blue"] * 2, sources=sources, cfg=3.0, image_cfg=1.5)
    finally:
        hook.remove()
    assert guided.shape == (2, 3, 32, 32) and len(calls) == len(model.scales)
    plain = generate_images(model, ["make the circle blue"] * 2, sources=sources)
    # image_cfg 0 and text weight 1: l = l_empty + (l_full - l_empty) = l_full
    reduced = generate_images(model, ["make the circle blue"] * 2, sources=sources, cfg=1.0, image_cfg=0.0)
    assert torch.allclose(reduced, plain, atol=1e-5)
    with pytest.raises(ValueError, match="give `sources`"):
        generate_images(model, ["a red circle"], image_cfg=1.5)


def test_condition_dropout_drops_edit_prompts_and_references():
    model = tiny_model(adapter=False)
    model.config.cfg_dropout = 0.5
    ex = examples()[3]  # the edit
    g = torch.Generator().manual_seed(0)
    layouts = set()
    for _ in range(40):
        batch, _, *_ = model.batch([ex], generator=g)
        mod = batch.meta.modality[0]
        layouts.add((int((mod == Modality.IMAGE_UND).sum()), int((batch.meta.doc[0] >= 0).sum())))
    assert len(layouts) == 4  # with/without the reference x with/without the instruction


def test_prompts_longer_than_the_context_are_named(model):
    from omniar.omni.understand import describe

    long = "a red circle " * 200
    with pytest.raises(ValueError, match=r"prompt 0 \('a red circle.*more than the model's context of 512"):
        generate_images(model, [long])
    with pytest.raises(ValueError, match="t2i example 0 needs"):
        model.batch([Example("t2i", long, image=torch.zeros(3, 32, 32))])
    with pytest.raises(ValueError, match="question 0 needs .* \\+ 1000 to generate"):
        describe(model, [torch.zeros(3, 32, 32)], ["how many circles are there?"], max_new_tokens=1000)


def test_raster_baseline_decodes_token_by_token_like_teacher_forcing():
    """The raster baseline (single-scale tokenizer, next-token decoding): one forward pass per token, CFG rows
    batched; the cached greedy tokens are what one uncached teacher-forced pass predicts."""
    from omniar.stream.collate import collate

    model = tiny_model(adapter=False, raster=True)
    calls = []
    hook = model.decoder.register_forward_hook(lambda m, args, out: calls.append(1))
    try:
        _, bits = generate_images(model, ["a red circle", "two"], cfg=2.0, return_bits=True)
    finally:
        hook.remove()
    assert len(bits) == 1 and bits[0].shape == (2, 8, 8, 8) and len(calls) == 64
    _, plain = generate_images(model, ["a red circle"], return_bits=True)
    codes = model.tokenizer.quantizer.codes(plain[0]).flatten(2).transpose(1, 2)
    emb = model.scale_embed.raster(codes, 0, 64)[0]
    batch = collate([model.sample(Example("t2i", "a red circle", image=torch.zeros(3, 32, 32)), None, emb)])
    with torch.no_grad():
        hidden = model.decoder(**batch.model_inputs()).hidden
    forced = model.bit_head(hidden[batch.meta.modality == Modality.IMAGE_RASTER]).argmax(-1).bool()
    assert torch.equal(forced, plain[0].flatten(2).transpose(1, 2)[0])
    batch, targets, *_ = model.batch(examples())
    loss, parts = model.loss(batch, targets)
    assert int((batch.meta.modality == Modality.IMAGE_RASTER).sum()) == 2 * 64 == len(targets) and "bits" in parts


def test_generation_kind_must_match_the_tokenizer():
    text = TextTokenizer.train(TEXTS, vocab_size=300)
    single = ImageTokenizer(ImageTokenizerConfig(image_size=32, channels=16, bits=8, downsample=2, scales=(8,)))
    with pytest.raises(ValueError, match="next_scale generation needs a multi-scale image tokenizer"):
        OmniModel(OmniConfig(decoder=dict(hidden_size=48, num_layers=1, num_heads=4, num_kv_heads=2)), text, single)
    with pytest.raises(ValueError, match="generation must be one of"):
        OmniConfig(generation="diffusion")


def test_python_api_is_batched_and_broadcasts_one_image(model):
    one = model.generate_image("a red circle", seeds=[3])
    two = model.generate_image(["a red circle", "two blue squares"], seeds=[3, 4])
    assert one.shape == (1, 3, 32, 32) and torch.allclose(one[0], two[0], atol=1e-5)  # independent of its batch
    assert not torch.equal(model.generate_image("a red circle", seeds=[4]), one)  # sampled, as the benchmark does
    edits = model.edit_image(two[0], ["make the circle blue", "remove the circle"], seeds=[0, 1])
    assert edits.shape == (2, 3, 32, 32)
    # greedy: the same bits for any seed and batch (the decoder's convolutions round a batch of 2 differently)
    assert torch.allclose(model.edit_image(two[0], "make the circle blue", seeds=[5])[0], edits[0], atol=1e-5)
    answers = model.answer(two[0], ["how many circles are there?", "two"], max_new_tokens=4)
    assert len(answers) == 2 and all(isinstance(a, str) for a in answers)
    assert len(model.caption(two, max_new_tokens=4)) == 2
    with pytest.raises(ValueError, match="32x32 RGB"):
        model.answer(torch.zeros(3, 16, 16), "how many?")


def test_perceptual_alignment_targets_the_decoders_response_to_each_code():
    """AR-Omni's perceptual alignment: MSE between a projection of the hidden state that predicts an image token
    and the frozen tokenizer's embedding of that token (the decoder's first convolution on a uniform field of the
    code); the weight scales it in the loss, weight 0 removes it."""
    import dataclasses

    import torch.nn.functional as F

    base = tiny_model(adapter=False, raster=True)
    model = OmniModel(dataclasses.replace(base.config, perceptual_weight=0.5), base.text, base.tokenizer)
    model.load_state_dict(base.state_dict(), strict=False)
    batch, bits, *_ = model.batch(examples())
    loss, parts = model.loss(batch, bits)
    base_loss, base_parts = base.loss(batch, bits)
    assert "perceptual" not in base_parts and base.perceptual is None
    assert torch.allclose(loss, base_loss + 0.5 * parts["perceptual"], atol=1e-5)
    conv = model.tokenizer.decoder.net[0]
    field = model.tokenizer.quantizer.codes(bits)[:, :, None, None].expand(-1, -1, 3, 3)
    embedding = conv(field)[:, :, 1, 1]  # the centre of a uniform 3 x 3 field: every tap sees the code
    assert torch.allclose(model.tokenizer.code_embedding(bits), embedding, atol=1e-5)
    with torch.no_grad():
        h = model.decoder(**batch.model_inputs()).hidden[batch.meta.modality == model.gen_modality]
        assert torch.allclose(torch.tensor(parts["perceptual"]), F.mse_loss(model.perceptual(h), embedding),
                              atol=1e-5)
    model.train()
    model.loss(batch, bits)[0].backward()
    assert model.perceptual.weight.grad is not None
    assert all(p.grad is None for p in model.tokenizer.parameters())
    with pytest.raises(ValueError, match="perceptual_weight must be >= 0"):
        OmniConfig(perceptual_weight=-1.0)


def test_further_vqa_turns_extend_the_one_question_layout(model):
    """The first turn is laid out exactly as an answer is asked for; each further turn adds its question (no
    target) and its answer + <eos> (targets)."""
    image = torch.rand(3, 32, 32)
    one = Example("vqa", "how many circles are there?", answer="two", image=image)
    more = Example("vqa", "how many circles are there?", answer="two", image=image,
                   turns=[("what color is the star?", "red"), ("is there a red star?", "yes")])
    (a, *_), (b, *_) = model.batch([one]), model.batch([more])
    n = a.input_ids.shape[1]
    assert torch.equal(b.input_ids[:, :n], a.input_ids) and torch.equal(b.labels[:, :n], a.labels)
    targets = b.labels[b.labels != IGNORE].tolist()
    enc, eos = model.text.encode, model.ids["eos"]
    assert targets == enc("two") + [eos] + enc("red") + [eos] + enc("yes") + [eos]
    with pytest.raises(ValueError, match="turns are for vqa examples, not caption"):
        Example("caption", "a red circle", image=image, turns=[("what color is the circle?", "red")])


@pytest.mark.parametrize("raster,first", [(False, False), (True, False), (False, True)],
                         ids=["next-scale", "raster", "instruction-first"])
def test_edit_reference_latent_enters_each_generation_position_in_training_and_decoding(raster, first):
    """`edit_reference`: every generation position of an edit adds the embedding of the reference's latent at its
    scale and place - in training batches (not when the reference is dropped) and in cached
    decoding, which equals one teacher-forced pass with the same inputs; guidance rows without the reference get
    the plain inputs (three-branch guidance with image_cfg 0 and cfg 1 is the plain edit)."""
    from omniar.stream.collate import collate

    model = tiny_model(adapter=False, raster=raster, edit_reference=True, edit_instruction_first=first)
    plain = tiny_model(adapter=False, raster=raster, edit_instruction_first=first)
    plain.load_state_dict({k: v for k, v in model.state_dict().items() if not k.startswith("ref_embed")})
    g = torch.Generator().manual_seed(5)
    source, target = torch.rand(3, 32, 32, generator=g), torch.rand(3, 32, 32, generator=g)
    ex = Example("edit", "make the circle blue", image=target, source=source)
    ref = model.reference_features([source])[0]
    assert ref.shape == (sum(s * s for s in model.scales), 48) and ref.abs().sum() > 0
    gen = model.gen_modality
    features = [m.batch([ex])[0].features[int(gen)] for m in (model, plain)]
    assert torch.allclose(features[0] - features[1], ref, atol=1e-6)
    model.config.cfg_dropout = 1.0  # reference (and instruction) dropped: nothing of it may leak in
    dropped = model.batch([ex], generator=torch.Generator().manual_seed(0))[0].features[int(gen)]
    model.config.cfg_dropout = 0.1
    plain.config.cfg_dropout = 1.0
    assert torch.equal(dropped, plain.batch([ex], generator=torch.Generator().manual_seed(0))[0].features[int(gen)])

    _, bits = generate_images(model, [ex.text], sources=[source], return_bits=True)
    _, other = generate_images(model, [ex.text], sources=[source.flip(-1)], return_bits=True)
    assert not all(torch.equal(a, b) for a, b in zip(bits, other))
    flat = torch.cat([b.flatten(2).transpose(1, 2) for b in bits], 1)[0]
    if raster:
        emb = model.scale_embed.raster(model.tokenizer.quantizer.codes(bits[0]).flatten(2).transpose(1, 2), 0, 64)[0]
    else:
        emb = model.scale_embed(model.tokenizer.ar_inputs(bits), batch=1)[0]
    und = model.und_features(source[None])[0]
    batch = collate([model.sample(Example("edit", ex.text, image=target, source=source), und, emb + ref)])
    with torch.no_grad():
        hidden = model.decoder(**batch.model_inputs()).hidden
    forced = model.bit_head(hidden[batch.meta.modality == gen], flat).argmax(-1).bool()
    assert torch.equal(forced, flat)
    reduced = generate_images(model, [ex.text], sources=[source], cfg=1.0, image_cfg=0.0, return_bits=True)[1]
    assert all(torch.equal(a, b) for a, b in zip(reduced, bits))

    def first_pass_inputs(m):  # the generation inputs of the first pass: rows full / text-only / empty
        seen = []
        hook = m.decoder.register_forward_hook(lambda mod, args, kw, out: seen.append(kw["features"][int(gen)]),
                                               with_kwargs=True)
        try:
            generate_images(m, [ex.text], sources=[source], cfg=3.0, image_cfg=1.5)
        finally:
            hook.remove()
        return seen[0].reshape(3, -1)

    with_ref, without = first_pass_inputs(model), first_pass_inputs(plain)
    assert not torch.allclose(with_ref[0], without[0]) and torch.equal(with_ref[1:], without[1:])


def test_instruction_first_edits_let_the_reference_tokens_read_the_instruction():
    """`edit_instruction_first`: <edit> instruction <ref> image </ref> <boi>: the reference's tokens come after the
    instruction and change with it; in the default layout they precede it and cannot."""
    g = torch.Generator().manual_seed(6)
    source, target = torch.rand(3, 32, 32, generator=g), torch.rand(3, 32, 32, generator=g)
    for first in (False, True):
        model = tiny_model(edit_instruction_first=first)
        hidden = []
        for text in ("make the circle blue", "remove the red square"):
            batch, _, *_ = model.batch([Example("edit", text, image=target, source=source)])
            mod = batch.meta.modality[0]
            und = (mod == Modality.IMAGE_UND).nonzero().flatten()
            instruction = ((mod == Modality.TEXT) & (torch.arange(len(mod)) < int(und[0]))).sum()
            assert int(instruction) == 2 + (len(model.text.encode(text)) if first else 0)  # <edit> <ref> (+ words)
            with torch.no_grad():
                hidden.append(model.decoder(**batch.model_inputs()).hidden[0, und])
        assert torch.allclose(*hidden) != first


def test_grounding_teaches_the_reference_tokens_where_the_named_object_is(tmp_path):
    from omniar.data.shapeworld.dataset import make_sample
    from omniar.omni.train import shapeworld_example

    with pytest.raises(ValueError, match="needs edit_instruction_first"):
        OmniConfig(grounding_weight=1.0)
    model = tiny_model(edit_instruction_first=True, grounding_weight=1.0)
    ex = [e for e in examples() if e.task in ("caption", "edit")]
    mask = torch.zeros(32, 32)
    mask[:8, :16] = 1  # the top-left 8 x 8 pixel patches, two of them (a 4 x 4 grid of patches)
    ex[1].grounding = mask
    batch, bits, taught, target = model.batch(ex)
    assert taught is None and target.shape == (2 * 16,)
    assert target[:16].isnan().all()  # the caption's image: nothing taught
    assert target[16:].tolist() == [1.0, 1.0] + [0.0] * 14
    loss, parts = model.loss(batch, bits, taught, target)
    assert "grounding" in parts and parts["grounding"] > 0
    loss.backward()
    assert model.grounding_head.weight.grad.abs().sum() > 0
    model.config.cfg_dropout = 1.0  # the instruction (and reference) dropped: nothing to learn where
    *_, dropped = model.batch(ex, generator=torch.Generator().manual_seed(0))
    assert dropped.isnan().all()
    model.config.cfg_dropout = 0.1
    # ShapeWorld's edits name one object; its coverage is the target (none for an add, which names no object)
    kinds = {i: (s["edit"] or {}).get("instruction", "") for i in range(100) if (s := make_sample("train", i))}
    edit = shapeworld_example("edit", next(i for i, t in kinds.items() if t and "add" not in t), 64)
    assert edit.grounding.shape == (64, 64) and 0 < edit.grounding.max() <= 1 and edit.grounding.sum() > 20
    add = shapeworld_example("edit", next(i for i, t in kinds.items() if "add" in t), 64)
    assert add.grounding.shape == (64, 64) and not add.grounding.any()  # nothing named is there: all zero
    model.save_pretrained(tmp_path)
    loaded = OmniModel.from_pretrained(tmp_path)
    assert torch.equal(loaded.grounding_head.weight, model.grounding_head.weight)


def test_grounding_input_gives_the_drawing_the_named_objects_map():
    """`grounding_input`: in training the true map enters each generation position of an edit (zero when the
    instruction is dropped); at generation the head's map from the prompt's prefill does, at the cost of that one
    pass, and cached decoding equals one teacher-forced pass fed the same map."""
    from omniar.stream.collate import collate

    with pytest.raises(ValueError, match="needs grounding_weight"):
        OmniConfig(grounding_input=True)
    model = tiny_model(adapter=False, edit_reference=True, edit_instruction_first=True, grounding_weight=1.0,
                       grounding_input=True, prompt_expert=True, expert_attention=True)  # the preset's routing
    with torch.no_grad():
        model.ground_embed.weight.normal_(std=0.5)
        model.grounding_head.weight.normal_(std=0.5)
    g = torch.Generator().manual_seed(7)
    source, target = torch.rand(3, 32, 32, generator=g), torch.rand(3, 32, 32, generator=g)
    mask = torch.zeros(32, 32)
    mask[8:24, 8:16] = 1
    ex = Example("edit", "make the circle blue", image=target, source=source, grounding=mask)
    gen = int(model.gen_modality)
    told = model.batch([ex])[0].features[gen]
    blind = model.batch([Example("edit", ex.text, image=target, source=source)])[0].features[gen]
    grid = model.patch_embed.grid()
    named = model.grounding_target(ex, grid).reshape(1, *grid)
    expected = (model.grounding_features(named) - model.grounding_features(torch.zeros_like(named)))[0]
    assert expected.abs().sum() > 0 and torch.allclose(told - blind, expected, atol=1e-6)
    def text_positions(e, generator=None):
        return int((model.batch([e], generator=generator)[0].meta.modality[0] == Modality.TEXT).sum())

    bare = text_positions(Example("edit", "", image=target, source=source))  # markers only
    assert text_positions(ex) == bare + len(model.text.encode(ex.text))
    model.config.cfg_dropout = 0.5  # the same draws for both: the map only where instruction and reference stay
    seen = set()
    for seed in range(30):
        a, b = (model.batch([e], generator=torch.Generator().manual_seed(seed))[0] for e in (ex, Example(
            "edit", ex.text, image=target, source=source)))
        mod = a.meta.modality[0]
        kept = (int((mod == Modality.IMAGE_UND).sum()) > 0, int((mod == Modality.TEXT).sum()) > bare)
        seen.add(kept)
        assert torch.allclose(a.features[gen], b.features[gen], atol=1e-6) != all(kept)
    model.config.cfg_dropout = 0.1
    assert seen == {(True, True), (True, False), (False, True), (False, False)}

    calls = []
    hook = model.decoder.register_forward_hook(lambda m, args, out: calls.append(1))
    try:
        _, bits = generate_images(model, [ex.text], sources=[source], return_bits=True)
    finally:
        hook.remove()
    assert len(calls) == len(model.scales) + 1  # the prefill, then one pass per scale
    emb = model.scale_embed(model.tokenizer.ar_inputs(bits), batch=1)[0] + model.reference_features([source])[0]
    sample = lambda feats: collate([model.sample(Example("edit", ex.text, image=target, source=source),  # noqa
                                                 model.und_features(source[None])[0], feats)])
    with torch.no_grad():
        first = sample(emb)
        hidden = model.decoder(**first.model_inputs()).hidden[first.meta.modality == Modality.IMAGE_UND]
        heads = torch.sigmoid(model.grounding_head(hidden)).reshape(1, *grid)
        full = sample(emb + model.grounding_features(heads)[0])
        hidden = model.decoder(**full.model_inputs()).hidden
    flat = torch.cat([b.flatten(2).transpose(1, 2) for b in bits], 1)[0]
    assert torch.equal(model.bit_head(hidden[full.meta.modality == gen], flat).argmax(-1).bool(), flat)
    guided = generate_images(model, [ex.text] * 2, sources=[source, source.flip(-1)], cfg=3.0, image_cfg=1.5)
    assert guided.shape == (2, 3, 32, 32)


def test_prompt_expert_serves_the_text_of_generating_documents_only():
    """`DecoderConfig.prompt_expert`: the routing rule against a brute-force reading of it, on packed rows, and
    only generating documents' losses reach that expert."""
    from omniar.model.experts import prompt_positions

    model = tiny_model(prompt_expert=True).train()
    batch, bits, *_ = model.batch(examples() * 2, pack=True)
    meta = batch.meta
    got = prompt_positions(meta.modality, meta.doc)
    for b in range(meta.doc.shape[0]):
        for t in range(meta.doc.shape[1]):
            d = int(meta.doc[b, t])
            generating = bool(((meta.doc[b] == d) & (meta.modality[b] == Modality.IMAGE_GEN)).any())
            assert bool(got[b, t]) == (d >= 0 and int(meta.modality[b, t]) == Modality.TEXT and generating)
    assert 0 < int(got.sum()) < int((meta.modality == Modality.TEXT).sum())  # prompts, and other text too

    def prompt_grad(exs):
        model.zero_grad()
        b, target, *_ = model.batch(exs, pack=True)
        model.loss(b, target)[0].backward()
        return sum(p.grad.abs().sum().item() for n, p in model.named_parameters()
                   if ".experts.3." in n and p.grad is not None)

    caption, t2i = examples()[1], examples()[0]
    assert prompt_grad([caption, examples()[2]]) == 0  # understanding only: the text expert's
    assert prompt_grad([t2i]) > 0
    with pytest.raises(ValueError, match="prompt_expert 'prompt' is not an expert"):
        DecoderConfig(experts=("text", "gen"), prompt_expert="prompt")


def test_decoding_in_bf16_runs_every_task_close_to_fp32_and_refuses_training_and_saving(tmp_path):
    """`decode_in(torch.bfloat16)` / `from_pretrained(dtype=...)`: the decoder and the heads on its hidden states in
    bf16, the tokenizers and input embeddings fp32; every task runs, teacher-forced logits stay within bf16's
    rounding of fp32's, and training and saving are refused by name."""
    fp32 = tiny_model(edit_instruction_first=True, grounding_weight=1.0, grounding_input=True, edit_reference=True)
    fp32.save_pretrained(tmp_path)
    bf16 = OmniModel.from_pretrained(tmp_path, dtype=torch.bfloat16)
    assert bf16.decoder.embed.weight.dtype == bf16.bit_head.proj.weight.dtype == torch.bfloat16
    assert bf16.grounding_head.weight.dtype == torch.bfloat16
    assert bf16.patch_embed.proj.weight.dtype == next(bf16.tokenizer.parameters()).dtype == torch.float32
    batch = fp32.batch(examples()).stream
    want = fp32.decoder(**batch.model_inputs())
    got = bf16.decoder(**batch.model_inputs())
    assert got.logits.dtype == torch.bfloat16
    scale = want.logits.abs().max()
    assert (got.logits.float() - want.logits).abs().max() < 0.05 * scale  # bf16 keeps 8 bits of mantissa
    assert (got.logits.float() - want.logits).abs().max() > 0  # it really ran in bf16
    g = torch.Generator().manual_seed(0)
    pictures = torch.rand(2, 3, 32, 32, generator=g)
    images = bf16.generate_image(["a red circle", "two"], cfg=2.0, seeds=[0, 1])
    edits = bf16.edit_image(pictures[0], ["make the circle blue", "a red circle"])
    for out in (images, edits):
        assert out.dtype == torch.float32 and out.shape == (2, 3, 32, 32) and 0 <= out.min() <= out.max() <= 1
    assert len(bf16.answer(pictures[0], "how many circles are there?")) == 1 and len(bf16.caption(pictures)) == 2
    with pytest.raises(ValueError, match="training needs fp32 weights"):
        bf16.batch(examples())
    with pytest.raises(ValueError, match="floating-point dtype"):
        fp32.decode_in(torch.int64)
    with pytest.raises(ValueError, match="holds bfloat16 weights"):  # they would load back as the rounded ones
        bf16.save_pretrained(tmp_path / "again")
    assert not (tmp_path / "again").exists()


def test_onecat_gpu_sizes_are_onecat_tiny_scaled_and_run_every_task():
    """`onecat-small` and `onecat-base` are `onecat-tiny`'s composition at other sizes - every other config field the
    same (experts, prompt expert, expert attention, adapter, edit reference, grounding) - and `onecat-small` trains
    (every expert gets gradients) and runs every task as `onecat-tiny` does."""
    import dataclasses

    from omniar.omni.model import omni_preset

    sizes = {"hidden_size", "num_layers", "num_heads", "num_kv_heads", "intermediate_size", "scale_adapter_rank"}
    tiny = dataclasses.asdict(omni_preset("onecat-tiny"))
    for name in ("onecat-small", "onecat-base"):
        cfg = dataclasses.asdict(omni_preset(name))
        assert cfg["decoder"]["hidden_size"] > tiny["decoder"]["hidden_size"]
        assert {k: v for k, v in cfg["decoder"].items() if k not in sizes} == {
            k: v for k, v in tiny["decoder"].items() if k not in sizes}
        assert {k: v for k, v in cfg.items() if k not in ("decoder", "preset", "patch_channels")} == {
            k: v for k, v in tiny.items() if k not in ("decoder", "preset", "patch_channels")}
    torch.manual_seed(0)
    model = OmniModel(omni_preset("onecat-small"), TextTokenizer.train(TEXTS, vocab_size=300),
                      ImageTokenizer(ImageTokenizerConfig()))
    got = model.batch(examples(64))
    loss, parts = model.loss(got.stream, got.bits, grounding=got.grounding)
    loss.backward()
    assert torch.isfinite(loss) and set(parts) >= {"text", "bits"}
    block = model.decoder.blocks[0]
    for i, name in enumerate(model.decoder.config.experts):  # each expert's FFN and attention projections learn
        assert block.ffn.experts[i].down.weight.grad.abs().sum() > 0, name
        assert block.mixer.qkv[i].weight.grad.abs().sum() > 0, name
    model.eval()
    picture = torch.rand(3, 64, 64, generator=torch.Generator().manual_seed(0))
    assert model.generate_image("a red circle", seeds=[0]).shape == (1, 3, 64, 64)
    assert model.edit_image(picture, "make the circle blue").shape == (1, 3, 64, 64)
    assert len(model.answer(picture, "how many circles are there?")) == 1 and len(model.caption(picture)) == 1
