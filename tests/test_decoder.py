"""The decoder's invariants: cached == uncached for every mask kind, packing isolation, expert routing."""

import pytest
import torch

from omniar import Modality, OmniDecoder, PositionMeta, Sample, Segment, collate, preset
from omniar.model import PRESETS
from omniar.model.experts import upcycle_experts
from tests.streams import FEAT, mixed_config, mixed_sample, random_sinks

TOL = 1e-4


def boundaries(batch):
    """Chunk ends that never split a bidirectional segment or a scale: (row 0's layout; rows are aligned)."""
    meta = batch.meta
    cuts, L = [], meta.shape[1]
    for t in range(1, L):
        same_seg = meta.segment[:, t] == meta.segment[:, t - 1]
        grouped = (meta.pattern[:, t] == 1) | ((meta.pattern[:, t] == 2) & (meta.block[:, t] == meta.block[:, t - 1]))
        if not (same_seg & grouped).any():
            cuts.append(t)
    return cuts + [L]


@pytest.mark.parametrize("norm,sink,mot", [("pre", False, False), ("swin", False, False), ("pre", True, False),
                                           ("pre", False, True)])
def test_cached_steps_equal_full_forward_on_mixed_modalities(norm, sink, mot):
    """Prefill, then steps of one token, whole scales and whole understanding images, rows of unequal lengths;
    `mot`: each expert with attention projections of its own (steps that hold tokens of several experts)."""
    model = OmniDecoder(mixed_config(norm_placement=norm, qk_norm=norm == "swin", attention_sink=sink,
                                     expert_attention=mot)).eval()
    if sink:
        random_sinks(model)
    batch = collate([mixed_sample(0, text_len=4), mixed_sample(1, text_len=1)], pad_side="left")
    with torch.no_grad():
        full = model(**batch.model_inputs()).logits
        cache = model.new_cache()
        cuts = boundaries(batch)
        prefill = cuts[len(cuts) // 3]
        chunks = [model(**batch.slice(0, prefill).model_inputs(), cache=cache).logits]
        start = prefill
        sizes = set()
        for stop in [c for c in cuts if c > prefill]:
            sizes.add(stop - start)
            chunks.append(model(**batch.slice(start, stop).model_inputs(), cache=cache).logits)
            start = stop
    assert {1, 4, 9} <= sizes  # one-token steps and whole scales were exercised
    real = batch.meta.doc >= 0
    diff = (torch.cat(chunks, 1) - full).abs()[real]
    assert diff.max() <= TOL


@pytest.mark.parametrize("sink", [False, True])
def test_cached_decoding_of_plain_text_without_metadata(sink):
    model = OmniDecoder(preset("experts-tiny", num_layers=2, vocab_size=256, attention_sink=sink)).eval()
    if sink:
        random_sinks(model)
    ids = torch.randint(0, 256, (3, 17))
    with torch.no_grad():
        full = model(ids).logits
        cache = model.new_cache()
        steps = [model(ids[:, :9], cache=cache).logits]
        steps += [model(ids[:, t : t + 1], cache=cache).logits for t in range(9, 12)]
        steps.append(model(ids[:, 12:], cache=cache).logits)  # multi-token step after a prefill
    assert (torch.cat(steps, 1) - full).abs().max() <= TOL


def test_cache_reset_and_reuse_give_the_same_logits():
    model = OmniDecoder(mixed_config()).eval()
    ids = torch.randint(0, 80, (2, 12))
    cache = model.new_cache()
    with torch.no_grad():
        first = model(ids, cache=cache).logits
        cache.reset()
        again = model(ids, cache=cache).logits
        cache.reset()
        part = torch.cat([model(ids[:, :5], cache=cache).logits, model(ids[:, 5:], cache=cache).logits], 1)
        cache.select(torch.tensor([1]))  # keep row 1 only and continue it
        nxt = model(ids[1:, :1], cache=cache).logits
        ref = model(torch.cat([ids[1:], ids[1:, :1]], 1)).logits[:, -1:]
    assert torch.equal(first, again)
    assert (part - first).abs().max() <= TOL
    assert (nxt - ref).abs().max() <= TOL


def test_truncated_cache_continues_as_if_the_forgotten_positions_never_ran():
    """A pass over a prefix and a guess of what follows, cut back to the prefix, then the real continuation ==
    one full forward (the guess's keys, values and metadata are forgotten); then positions must be given."""
    model = OmniDecoder(mixed_config(expert_attention=True)).eval()
    batch = collate([mixed_sample(0, text_len=4), mixed_sample(1, text_len=1)], pad_side="left")
    cuts = boundaries(batch)
    keep, guess = cuts[len(cuts) // 3], cuts[len(cuts) // 3 + 2]
    wrong = batch.slice(0, guess).model_inputs()
    wrong["input_ids"] = wrong["input_ids"].clone()
    wrong["input_ids"][:, keep:] = (wrong["input_ids"][:, keep:] + 7) % 80  # a guess that is not the real tail
    with torch.no_grad():
        full = model(**batch.model_inputs()).logits
        cache = model.new_cache()
        head = model(**wrong, cache=cache).logits[:, :keep]
        cache.truncate(keep)
        assert cache.length == keep
        tail = model(**batch.slice(keep, batch.meta.shape[1]).model_inputs(), cache=cache).logits
        real = batch.meta.doc >= 0
        assert (torch.cat([head, tail], 1) - full).abs()[real].max() <= TOL
        cache.truncate(keep)
        with pytest.raises(ValueError, match="give positions"):
            model(torch.zeros(2, 1, dtype=torch.long), cache=cache)
    with pytest.raises(ValueError, match="cannot truncate"):
        cache.truncate(cache.length + 1)


def test_cache_grows_past_its_first_capacity():
    model = OmniDecoder(mixed_config(num_layers=1)).eval()
    ids = torch.randint(0, 80, (1, 150))
    cache = model.new_cache()
    with torch.no_grad():
        full = model(ids).logits
        steps = [model(ids[:, :60], cache=cache).logits] + [model(ids[:, t : t + 1], cache=cache).logits
                                                              for t in range(60, 150)]
    assert (torch.cat(steps, 1) - full).abs().max() <= TOL


def test_attention_sink_is_one_more_softmax_entry_with_a_zero_value():
    """Brute force: softmax over [q.k / sqrt(d) where the causal mask allows, sink_h] of [v, 0]; a sink at -inf
    gives the plain model back exactly, and the sinks learn (they get gradients)."""
    config = preset("experts-tiny", num_layers=1, vocab_size=64, attention_sink=True)
    model = random_sinks(OmniDecoder(config))
    attn = model.blocks[0].mixer
    x = torch.randn(2, 7, config.hidden_size)
    rope = model.rope(torch.arange(7.0).expand(2, 7))
    H, Hkv, D = attn.num_heads, attn.num_kv_heads, attn.head_dim
    qkv = attn.qkv(x).view(2, 7, H + 2 * Hkv, D)
    from omniar.model.rope import apply_rotary

    q, k = apply_rotary(qkv[:, :, : H + Hkv], *rope).split([H, Hkv], dim=2)
    v = qkv[:, :, H + Hkv :]
    q, k, v = q.transpose(1, 2), k.transpose(1, 2).repeat_interleave(H // Hkv, 1), v.transpose(1, 2)
    v = v.repeat_interleave(H // Hkv, 1)
    scores = (q @ k.transpose(-1, -2) / D**0.5).masked_fill(~torch.ones(7, 7, dtype=torch.bool).tril(), -torch.inf)
    weights = torch.cat([scores, attn.sink[None, :, None, None].expand(2, H, 7, 1)], -1).softmax(-1)[..., :-1]
    expected = attn.o((weights @ v).transpose(1, 2).reshape(2, 7, -1))
    got = attn(x, rope, "causal")
    assert (got - expected).abs().max() <= TOL
    got.square().sum().backward()
    assert attn.sink.grad is not None and attn.sink.grad.abs().min() > 0

    plain = OmniDecoder(preset("experts-tiny", num_layers=1, vocab_size=64)).eval()
    state = {k: v for k, v in model.state_dict().items() if not k.endswith("sink")}
    plain.load_state_dict(state)
    with torch.no_grad():
        attn.sink.fill_(-torch.inf)
        ids = torch.randint(0, 64, (2, 9))
        assert (model.eval()(ids).logits - plain(ids).logits).abs().max() <= TOL


@pytest.mark.parametrize("sink", [False, True])
def test_packed_rows_equal_documents_run_alone(sink):
    model = OmniDecoder(mixed_config(attention_sink=sink)).eval()
    if sink:
        random_sinks(model)
    samples = [mixed_sample(i, text_len=2 + i) for i in range(3)]
    packed = collate(samples, max_len=200)
    assert packed.input_ids.shape[0] == 1
    with torch.no_grad():
        together = model(**packed.model_inputs()).logits[0]
        at = 0
        for s in samples:
            alone = model(**collate([s]).model_inputs()).logits[0]
            assert (together[at : at + len(alone)] - alone).abs().max() <= TOL
            at += len(alone)


def test_routing_sends_each_token_to_its_expert_only():
    model = OmniDecoder(mixed_config(num_layers=1))
    s = Sample([Segment("text", [1, 2, 3]), Segment("image_gen", [4, 5, 6, 7, 8], scales=[(1, 1), (2, 2)])])
    batch = collate([s])
    model(**batch.model_inputs()).logits.sum().backward()
    experts = model.blocks[0].ffn.experts
    names = model.config.experts
    grads = {n: e.down.weight.grad for n, e in zip(names, experts)}
    assert grads["text"] is not None and grads["text"].abs().sum() > 0
    assert grads["gen"] is not None and grads["gen"].abs().sum() > 0
    assert grads["und"] is None and grads["speech"] is None


def test_each_expert_computes_exactly_its_tokens():
    """Mixed rows through the gather/scatter path equal applying each token's expert by hand."""
    model = OmniDecoder(mixed_config(num_layers=1))
    ffn = model.blocks[0].ffn
    x = torch.randn(2, 7, 48)
    modality = torch.tensor([[0, 2, 2, 4, 0, 1, 1], [4, 4, 0, 2, 1, 0, 0]])
    x1, x2 = x.clone().requires_grad_(), x.clone().requires_grad_()
    out = ffn(x1, model.router(modality))
    table = {0: 0, 1: 1, 2: 2, 4: 3}
    ref = torch.stack([torch.stack([ffn.experts[table[int(modality[b, t])]](x2[b, t]) for t in range(7)])
                       for b in range(2)])
    assert torch.allclose(out, ref, atol=1e-6)
    w = torch.randn_like(out)  # and the gradients go back to each token through the same expert
    (out * w).sum().backward()
    (ref * w).sum().backward()
    assert torch.allclose(x1.grad, x2.grad, atol=1e-6)


@pytest.mark.parametrize("pad_side", ["right", "left"])
@pytest.mark.parametrize("mot", [False, True])
def test_padding_takes_no_experts_work_and_changes_no_output(pad_side, mot):
    """Padding positions (never a key, never a target) pass through no expert - FFN or, with expert attention,
    projection - and every real position's logits and gradients are those of its document run alone."""
    model = OmniDecoder(mixed_config(expert_attention=mot))
    samples = [mixed_sample(0, text_len=9), mixed_sample(1, text_len=1)]
    batch = collate(samples, pad_side=pad_side)
    real = batch.meta.doc >= 0
    seen = []
    hooks = [m.register_forward_hook(lambda m, args, out: seen.append(args[0].shape[0]))
             for block in model.blocks for m in [*block.ffn.experts, *(block.mixer.qkv if mot else [])]]
    logits = model(**batch.model_inputs()).logits
    for h in hooks:
        h.remove()
    layers = len(model.blocks) * (2 if mot else 1)
    assert sum(seen) == layers * int(real.sum()) < layers * real.numel()
    weights = torch.randn(logits.shape[-1])
    (logits[real] @ weights).sum().backward()
    grads = [p.grad.clone() for p in model.parameters() if p.grad is not None]
    model.zero_grad()
    alone = [model(**collate([s]).model_inputs()).logits[0] for s in samples]
    assert (logits[real] - torch.cat(alone)).abs().max() <= TOL
    (torch.cat(alone) @ weights).sum().backward()
    for g, p in zip(grads, [p for p in model.parameters() if p.grad is not None], strict=True):
        assert (g - p.grad).abs().max() <= TOL * max(1.0, float(p.grad.abs().max()))


def test_expert_attention_projects_each_token_with_its_experts_weights():
    """Mixture-of-Transformers: QKV and output projections through the gather/scatter path equal applying each
    token's expert by hand, and a batch without an expert's tokens leaves that expert's projections untouched."""
    model = OmniDecoder(mixed_config(num_layers=1, expert_attention=True))
    attn = model.blocks[0].mixer
    x = torch.randn(2, 7, 48)
    modality = torch.tensor([[0, 2, 2, 4, 0, 1, 1], [4, 4, 0, 2, 1, 0, 0]])
    routing = model.router(modality)
    for proj in (attn.qkv, attn.o):
        out = attn._project(proj, x, routing)
        ref = torch.stack([torch.stack([proj[{0: 0, 1: 1, 2: 2, 4: 3}[int(modality[b, t])]](x[b, t])
                                        for t in range(7)]) for b in range(2)])
        assert torch.allclose(out, ref, atol=1e-6)
    s = Sample([Segment("text", [1, 2, 3]), Segment("image_gen", [4, 5, 6, 7, 8], scales=[(1, 1), (2, 2)])])
    model(**collate([s]).model_inputs()).logits.sum().backward()
    names = model.config.experts
    for proj in (attn.qkv, attn.o):
        grads = {n: p.weight.grad for n, p in zip(names, proj)}
        assert grads["text"].abs().sum() > 0 and grads["gen"].abs().sum() > 0
        assert grads["und"] is None and grads["speech"] is None


@pytest.mark.parametrize("attention", [False, True])
def test_upcycling_copies_the_dense_weights_and_keeps_every_output(attention):
    dense = OmniDecoder(mixed_config(experts=("shared",), routing={})).eval()
    b = collate([mixed_sample(0), mixed_sample(1, text_len=2)])
    moe = upcycle_experts(dense, ("text", "und", "gen", "speech"), mixed_config().routing, attention=attention)
    assert moe.config.expert_attention is attention
    assert isinstance(moe.blocks[0].mixer.qkv, torch.nn.ModuleList) is attention
    real = b.meta.doc >= 0  # the outputs; padding's (which the experts skip) are nobody's
    assert not real.all()
    with torch.no_grad():
        ref = dense(**b.model_inputs()).logits[real]
        assert (moe(**b.model_inputs()).logits[real] - ref).abs().max() <= TOL
        if attention:  # the copies are parameters of their own: changing the text expert's moves the outputs
            moe.blocks[0].mixer.o[0].weight.add_(0.5)
            out = moe(**b.model_inputs()).logits[real]
            assert (out - ref).abs().max() > 1e-3


def test_active_and_total_parameters():
    dense = OmniDecoder(preset("experts-tiny", experts=("shared",), routing={}))
    moe = OmniDecoder(preset("experts-tiny"))
    d, m = dense.num_parameters(), moe.num_parameters()
    assert d["total"] == d["active"] == m["active"]
    per_expert = sum(p.numel() for p in moe.blocks[0].ffn.experts[0].parameters())
    assert m["total"] - m["active"] == 2 * per_expert * moe.config.num_layers
    mot = OmniDecoder(preset("experts-tiny", expert_attention=True)).num_parameters()
    per_attention = sum(p.numel() for p in dense.blocks[0].mixer.parameters())
    assert mot["active"] == m["active"]
    assert mot["total"] - m["total"] == 2 * per_attention * moe.config.num_layers


def test_features_enter_at_their_positions():
    model = OmniDecoder(mixed_config()).eval()
    s = mixed_sample(3)
    b = collate([s])
    with torch.no_grad():
        base = model(**b.model_inputs()).logits
        feats = {k: v + 1.0 for k, v in b.features.items()}
        moved = model(b.input_ids, meta=b.meta, positions=b.positions, features=feats).logits
    first_image = int((b.meta.modality[0] == Modality.IMAGE_UND).nonzero()[0])
    assert torch.equal(base[:, :first_image], moved[:, :first_image])  # causal: nothing before the image changes
    assert not torch.allclose(base[:, first_image:], moved[:, first_image:])


@pytest.mark.parametrize("call, error, message", [
    (lambda m, b: m(torch.tensor([[1, 500]])), ValueError, "token id 500 is out of range for vocab_size 128"),
    (lambda m, b: m(torch.tensor([[-1, 2]])), ValueError, "token id -1 is out of range"),
    (lambda m, b: m(torch.tensor([[1.0, 2.0]])), TypeError, "integer tensor"),
    (lambda m, b: m(torch.tensor([1, 2])), ValueError, r"\(batch, length\)"),
    (lambda m, b: m(b.input_ids, meta=b.meta), ValueError, "6 image_und positions but no image_und features"),
    (lambda m, b: m(b.input_ids, meta=b.meta, features={1: torch.zeros(6, FEAT + 1)}), ValueError, "width 12"),
    (lambda m, b: m(b.input_ids, meta=b.meta, features={1: torch.zeros(6, FEAT, dtype=torch.long)}), ValueError,
     "float tensor"),
    (lambda m, b: m(b.input_ids, meta=b.meta, features={"speech": torch.zeros(5, 3)}), ValueError,
     "reads as token ids"),
    (lambda m, b: m(b.input_ids[:, :3], meta=b.meta), ValueError, "meta has shape"),
    (lambda m, b: m(b.input_ids, meta=b.meta, positions=b.positions[..., :1], features=b.features), ValueError,
     "positions must have shape"),
])
def test_bad_inputs_are_named(call, error, message):
    model = OmniDecoder(mixed_config(num_layers=1))
    batch = collate([mixed_sample(0)])
    with pytest.raises(error, match=message):
        call(model, batch)


def test_text_meta_builder_is_plain():
    meta = PositionMeta.text(2, 5)
    assert meta.is_plain_causal() and meta.shape == (2, 5)


def test_text_appended_after_packed_documents_joins_the_last_one():
    """Continuing a packed row without metadata equals running its last document alone."""
    model = OmniDecoder(mixed_config()).eval()
    first, last = Sample([Segment("text", [1, 2, 3, 4])]), Sample([Segment("text", [5, 6, 7])])
    packed = collate([first, last], max_len=16)
    with torch.no_grad():
        cache = model.new_cache()
        model(**packed.model_inputs(), cache=cache)
        step = model(torch.tensor([[8]]), cache=cache).logits
        alone = model(torch.tensor([[5, 6, 7, 8]])).logits[:, -1:]
    assert (step - alone).abs().max() <= TOL


def test_continuing_a_right_padded_row_is_an_error():
    model = OmniDecoder(mixed_config()).eval()
    batch = collate([Sample([Segment("text", [1, 2, 3])]), Sample([Segment("text", [4])])])  # right padding
    cache = model.new_cache()
    with torch.no_grad():
        model(**batch.model_inputs(), cache=cache)
        with pytest.raises(ValueError, match="pad prompts on the left"):
            model(torch.tensor([[5], [6]]), cache=cache)


def test_decode_fast_path_equals_f_linear_and_follows_weight_changes():
    """The CPU slab path (inference, few rows) computes what F.linear computes, also after the weight changes."""
    from omniar.model.linear import Linear

    layer = Linear(24, 10, bias=True)
    threads = torch.get_num_threads()
    try:
        for n_threads, rows in ((1, 1), (2, 1), (2, 3), (3, 2)):  # 3 threads do not divide 10: one slab
            torch.set_num_threads(n_threads)
            x = torch.randn(2, rows, 24)
            with torch.no_grad():
                assert torch.allclose(layer(x), torch.nn.functional.linear(x, layer.weight, layer.bias), atol=1e-6)
                layer.weight.mul_(2.0)  # in-place change: the cached slabs must be rebuilt
                assert torch.allclose(layer(x), torch.nn.functional.linear(x, layer.weight, layer.bias), atol=1e-6)
    finally:
        torch.set_num_threads(threads)
    assert "_decode_slabs" in layer.__dict__
    model = OmniDecoder(mixed_config(num_layers=1)).eval()
    with torch.no_grad():
        model(torch.tensor([[1, 2]]))
    assert any("_decode_slabs" in m.__dict__ for m in model.modules())
    model.train()
    assert not any("_decode_slabs" in m.__dict__ for m in model.modules())


def test_linear_paths_equal_f_linear_with_their_gradients(monkeypatch):
    """Every path of `linear` (slab, oneDNN, F.linear) computes F.linear's product, and in training its gradients:
    for the input, the weight and the bias, and for an input alone through a frozen layer."""
    import omniar.model.linear as linear_module
    from omniar.model.linear import FAST_ROWS, Linear

    layer = Linear(24, 10, bias=True)
    available = linear_module.ONEDNN
    for onednn in (True, False):  # oneDNN in training too, whatever this CPU would choose (ONEDNN_TRAINING)
        monkeypatch.setattr(linear_module, "ONEDNN", onednn and available)
        monkeypatch.setattr(linear_module, "ONEDNN_TRAINING", onednn and available)
        for rows in (1, FAST_ROWS, FAST_ROWS + 1, 40):
            x = torch.randn(2, rows, 24)
            with torch.inference_mode():
                out = layer(x)
            assert out.shape == (2, rows, 10)
            assert torch.allclose(out, torch.nn.functional.linear(x, layer.weight, layer.bias), atol=1e-5)
            grad = torch.randn(2, rows, 10)
            got = _linear_grads(layer, x, grad, layer)
            want = _linear_grads(layer, x, grad, lambda t: torch.nn.functional.linear(t, layer.weight, layer.bias))
            for g, w in zip(got, want):
                assert torch.allclose(g, w, atol=1e-4)
            layer.requires_grad_(False)  # frozen, and an input that needs its gradient (e.g. a saliency map)
            x.requires_grad_(True)
            layer(x).sum().backward()
            assert torch.allclose(x.grad, layer.weight.sum(0).expand_as(x))
            layer.requires_grad_(True)


def test_training_takes_onednn_only_where_the_cpu_flag_says(monkeypatch):
    """Training rows go through oneDNN (`_OneDNNLinear`) only with `ONEDNN_TRAINING` (AVX-512 CPUs); without it,
    F.linear's autograd, while inference keeps oneDNN's matmul (`ONEDNN`)."""
    import omniar.model.linear as linear_module
    from omniar.model.linear import FAST_ROWS, Linear

    if not linear_module.ONEDNN:
        pytest.skip("this torch build has no oneDNN matmul")
    assert linear_module.ONEDNN_TRAINING == (torch.backends.cpu.get_cpu_capability() == "AVX512")
    layer = Linear(24, 10)
    x = torch.randn(FAST_ROWS + 4, 24)
    for training, backward in ((True, "_OneDNNLinearBackward"), (False, "AddmmBackward0")):
        monkeypatch.setattr(linear_module, "ONEDNN_TRAINING", training)
        assert type(layer(x).grad_fn).__name__ == backward
    calls = []
    real = torch.ops.mkldnn._linear_pointwise
    monkeypatch.setattr(linear_module.torch.ops.mkldnn, "_linear_pointwise", lambda *a: calls.append(1) or real(*a))
    with torch.no_grad():
        layer(x)
    assert calls  # inference: oneDNN either way


def _linear_grads(layer, x, grad, fn):
    x = x.clone().requires_grad_(True)
    layer.zero_grad(set_to_none=True)
    out = fn(x)
    out.backward(grad)
    return out.detach(), x.grad, layer.weight.grad, layer.bias.grad


def test_bfloat16_model_runs_and_tracks_float32():
    model = OmniDecoder(mixed_config()).eval()
    batch = collate([mixed_sample(0), mixed_sample(1)], pad_side="left")
    half = OmniDecoder(mixed_config()).eval()
    half.load_state_dict(model.state_dict())
    half = half.to(torch.bfloat16)
    with torch.no_grad():
        ref = model(**batch.model_inputs()).logits
        got = half(**batch.model_inputs()).logits
        cache = half.new_cache()
        cuts = boundaries(batch)
        steps = [half(**batch.slice(0, cuts[3]).model_inputs(), cache=cache).logits]
        steps.append(half(**batch.slice(cuts[3], batch.input_ids.shape[1]).model_inputs(), cache=cache).logits)
    assert got.dtype == torch.bfloat16
    real = batch.meta.doc >= 0
    assert (got.float() - ref).abs()[real].max() < 0.1 * ref.abs().max()
    assert (torch.cat(steps, 1).float() - got.float()).abs()[real].max() < 0.05 * ref.abs().max()


@pytest.mark.parametrize("name", sorted(PRESETS))
def test_every_preset_builds_and_runs(name):
    model = OmniDecoder(preset(name, num_layers=1)).eval()
    with torch.no_grad():
        logits = model(torch.randint(0, model.config.vocab_size, (2, 5))).logits
    assert logits.shape == (2, 5, model.config.vocab_size) and torch.isfinite(logits).all()
