"""Speech in the unified stream (AR-Omni): layouts of tts / asr / spoken VQA, the joint id space, the speech expert,
joint vs decoupled vocabularies against a brute-force loss, task-aware reweighting with response tails,
save/load, and the named errors."""

import dataclasses

import pytest
import torch
import torch.nn.functional as F

from omniar.modality import Modality
from omniar.omni.model import Example, OmniConfig, OmniModel, Reweighting
from omniar.stream.collate import IGNORE
from omniar.tokenizers.image import ImageTokenizer, ImageTokenizerConfig
from omniar.tokenizers.speech import SpeechCodec, SpeechCodecConfig
from tests.test_omni_model import TEXTS

K = 32  # codebook of the tiny codec


def speech_model(seed=0, vocab="joint", expert=True, codec=True):
    torch.manual_seed(seed)
    from omniar.tokenizers.text import TextTokenizer

    text = TextTokenizer.train(TEXTS, vocab_size=300)
    image = ImageTokenizer(ImageTokenizerConfig(image_size=32, channels=16, bits=8, downsample=2, scales=(8,)))
    speech = SpeechCodec(SpeechCodecConfig(channels=16, codebook_size=K, code_dim=8, encoder_blocks=1,
                                           decoder_blocks=1)) if codec else None
    decoder = dict(hidden_size=48, num_layers=2, num_heads=4, num_kv_heads=2, intermediate_size=64,
                   experts=("text", "und", "gen"), routing={"image_und": "und", "image_raster": "gen"})
    cfg = OmniConfig(decoder=decoder, patch=4, patch_channels=8, generation="raster", speech_vocab=vocab,
                     speech_expert=expert)
    return OmniModel(cfg, text, image, speech).eval()


def codes(n, seed=0):
    return torch.randint(0, K, (n,), generator=torch.Generator().manual_seed(seed))


def speech_examples():
    img = torch.rand(3, 32, 32, generator=torch.Generator().manual_seed(0))
    return [Example("tts", "a red circle", speech=codes(7, 1)), Example("asr", "a blue square", speech=codes(9, 2)),
            Example("svqa", "how many circles are there?", answer="two", image=img, speech=codes(5, 3)),
            Example("caption", "a green star", image=img)]


@pytest.fixture(scope="module")
def model():
    return speech_model()


def test_speech_segments_sit_between_markers_and_go_through_the_speech_expert(model):
    batch, _, *_ = model.batch(speech_examples())
    ids, mod, labels = batch.input_ids, batch.meta.modality, batch.labels
    off, boa, eoa = model.speech_offset, model.ids["boa"], model.ids["eoa"]
    assert model.decoder.config.vocab_size == off + K
    assert model.decoder.config.experts == ("text", "und", "gen", "speech")
    assert model.decoder.config.expert_of(Modality.SPEECH) == 3
    for row, (n, c) in enumerate([(7, codes(7, 1)), (9, codes(9, 2)), (5, codes(5, 3))]):
        speech = (mod[row] == Modality.SPEECH).nonzero().squeeze(1)
        assert len(speech) == n and torch.equal(ids[row, speech], c + off)
        first, last = int(speech[0]), int(speech[-1])
        assert ids[row, first - 1] == boa and ids[row, last + 1] == eoa
        if row == 0:  # tts: the speech (and its <eoa>) is the target
            assert torch.equal(labels[row, first - 1: last], c + off) and labels[row, last] == eoa
        else:  # asr / svqa: speech is input only
            assert (labels[row, first - 1: last + 1] == IGNORE).all()
    assert (labels[1] != IGNORE).sum() == len(model.text.encode("a blue square")) + 1  # transcript + <eos>
    answer = labels[2][labels[2] != IGNORE].tolist()
    assert answer == model.text.encode("two") + [model.ids["eos"]]
    loss, parts = model.loss(*model.batch(speech_examples()))
    assert set(parts) == {"text", "speech"} and torch.isfinite(loss)


def test_prompts_end_where_generation_starts(model):
    tts = model.sample(Example("tts", "a red circle"), None, None)
    assert tts.segments[-1].ids.tolist() == [model.ids["boa"]]
    asr = model.sample(Example("asr", speech=codes(4)), None, None)
    assert asr.segments[-1].modality == Modality.SPEECH and asr.segments[-1].end == model.ids["eoa"]
    with pytest.raises(ValueError, match="tts example 0 has no target"):
        model.batch([Example("tts", "a red circle")])


@pytest.mark.parametrize("vocab", ["joint", "decoupled"])
def test_the_token_loss_matches_a_brute_force_softmax(vocab):
    m = speech_model(vocab=vocab)
    batch, bits, *_ = m.batch(speech_examples())
    loss, parts = m.loss(batch, bits)
    out = m.decoder(**batch.model_inputs())
    logits, labels = out.logits, batch.labels
    V, off, eoa = logits.shape[-1], m.speech_offset, m.ids["eoa"]
    terms = []
    for b, t in (labels != IGNORE).nonzero().tolist():
        y = int(labels[b, t])
        ids = torch.arange(V)
        if vocab == "decoupled":  # its own modality's ids only: speech codes + <eoa>, or the text ids but <eoa>
            speech = y >= off or y == eoa
            keep = ((ids >= off) | (ids == eoa)) if speech else ((ids < off) & (ids != eoa))
            ids = ids[keep]
        terms.append(-F.log_softmax(logits[b, t, ids], -1)[(ids == y).nonzero()[0, 0]])
    token_loss = torch.stack(terms).mean()
    assert len(bits) == 0 and torch.allclose(loss, token_loss, atol=1e-5)  # no image is generated here
    if vocab == "decoupled":  # a strictly smaller normaliser: each term is lower than under the joint softmax
        joint = speech_model(vocab="joint")
        joint.load_state_dict(m.state_dict())
        assert parts["speech"] < joint.loss(batch, bits)[1]["speech"]


def test_tail_reweighting_weights_the_last_response_tokens():
    m = speech_model()
    ex = [Example("caption", "a blue square left of a green star", image=torch.rand(3, 32, 32)),
          Example("asr", "a red circle", speech=codes(6)), Example("tts", "a red circle", speech=codes(5))]
    plain, _, *_ = m.batch(ex)
    rw = Reweighting(task={"tts": 0.5}, tail=3, tail_weight=2.0)
    tailed, bits, *_ = m.batch(ex, reweight=rw)
    assert torch.equal(plain.labels, tailed.labels)
    for row in range(2):  # caption and asr: the last 3 targets (the last text tokens and <eos>) weigh 2
        w = tailed.loss_weights[row][tailed.labels[row] != IGNORE]
        assert w.tolist() == [1.0] * (len(w) - 3) + [2.0] * 3
    assert set(tailed.loss_weights[2][tailed.labels[2] != IGNORE].tolist()) == {0.5}  # tts: its task weight
    with torch.no_grad():  # splitting the target into two segments changes no logit
        assert torch.allclose(m.decoder(**plain.model_inputs()).logits, m.decoder(**tailed.model_inputs()).logits)
        loss, _ = m.loss(tailed, bits)
        out = m.decoder(**tailed.model_inputs())
        ce = F.cross_entropy(out.logits.flatten(0, 1), tailed.labels.flatten(), reduction="none",
                             ignore_index=IGNORE)
        w = tailed.loss_weights.flatten()
        assert len(bits) == 0 and torch.allclose(loss, (ce * w).sum() / w.sum(), atol=1e-5)


def test_a_short_training_run_lowers_the_speech_loss():
    m = speech_model().train()
    opt = torch.optim.Adam([p for p in m.parameters() if p.requires_grad], lr=3e-3)
    first = last = None
    for step in range(25):
        loss, parts = m.loss(*m.batch(speech_examples(), generator=torch.Generator().manual_seed(step)))
        opt.zero_grad()
        loss.backward()
        opt.step()
        first = first or parts["speech"]
        last = parts["speech"]
    assert last < 0.7 * first
    assert all(p.grad is None for p in m.speech_codec.parameters())  # the codec stays frozen


def test_save_load_round_trip_keeps_the_codec_and_the_outputs(model, tmp_path):
    model.save_pretrained(tmp_path / "m")
    back = OmniModel.from_pretrained(tmp_path / "m")
    assert back.config.speech_vocab == model.config.speech_vocab and back.speech_codec is not None
    batch, _, *_ = model.batch(speech_examples())
    with torch.no_grad():
        assert torch.equal(model.decoder(**batch.model_inputs()).logits, back.decoder(**batch.model_inputs()).logits)
    wav = torch.randn(1, 3200)
    assert torch.equal(model.speech_codec.encode(wav), back.speech_codec.encode(wav))


def test_speech_errors_are_named(model):
    plain = speech_model(codec=False)
    with pytest.raises(ValueError, match="has no speech codec"):
        plain.batch([Example("asr", "a red circle", speech=codes(4))])
    with pytest.raises(ValueError, match="an svqa example needs its speech"):
        Example("svqa", "how many?", answer="two", image=torch.rand(3, 32, 32))
    with pytest.raises(ValueError, match=r"speech codes must be in \[0, 32\)"):
        model.batch([Example("asr", "a red circle", speech=[3, 40])])
    with pytest.raises(ValueError, match="speech is empty"):
        Example("tts", "a red circle", speech=[])
    with pytest.raises(ValueError, match="describes a speech codec .* but none was given"):
        OmniModel(dataclasses.replace(plain.config, speech={"channels": 16}), plain.text, plain.tokenizer)
    with pytest.raises(ValueError, match="speech_vocab must be one of joint, decoupled"):
        OmniConfig(speech_vocab="shared")
    from omniar.omni.train import Recipe, train_omni

    with pytest.raises(ValueError, match=r"trains speech tasks \(asr\) but the model has no speech codec"):
        train_omni(plain, "unused", Recipe(tasks={"asr": 1.0}, steps=1), progress=False)


# ---- decoding: speak / stream / transcribe ------------------------------------------------------------------------
def test_tts_decoding_with_the_cache_equals_teacher_forcing(model):
    from omniar.omni.decode import steps

    text = "a blue square left of a green star"
    prompt = model.sample(Example("tts", text), None, None)
    with torch.no_grad():
        run = list(steps(model, [prompt], greedy=[True], max_new_tokens=10, stops=[model.ids["eoa"]]))
    got = torch.stack([s.tokens[0] for s in run])
    got = got[got != model.ids["eoa"]] - model.speech_offset
    batch, _, *_ = model.batch([Example("tts", text, speech=got)])
    with torch.no_grad():
        logits = model.decoder(**batch.model_inputs()).logits[0]
    speech = (batch.meta.modality[0] == Modality.SPEECH).nonzero().squeeze(1)
    # the logits after <boa> and after each code (through the speech expert) are the teacher-forced ones
    cached = torch.stack([s.logits[0] for s in run])[: len(speech)]
    assert torch.allclose(cached, logits[speech - 1], atol=1e-5)


def _row_logits(model, prompts, **kw) -> list[torch.Tensor]:
    """Each row's logits at every step until it finished (omni.decode.steps)."""
    from omniar.omni.decode import steps

    rows = [[] for _ in prompts]
    done = [False] * len(prompts)  # finished before this step
    with torch.no_grad():
        for step in steps(model, prompts, **kw):
            for b in range(len(prompts)):
                if not done[b]:
                    rows[b].append(step.logits[b])
            done = step.finished.tolist()
    return [torch.stack(r) for r in rows]


def test_batched_speech_decoding_equals_one_by_one(model):
    from omniar.omni.speech import _tts_samples, speak_codes

    texts = ["a red circle", "a blue square left of a green star", "two"]
    together = speak_codes(model, texts, max_seconds=0.3)
    for t, c in zip(texts, together):
        assert torch.equal(speak_codes(model, [t], max_seconds=0.3)[0], c)
    # the same logits, not only the same greedy codes: left padding changes nothing a row computes
    kw = dict(greedy=[True], max_new_tokens=15, stops=[model.ids["eoa"]])
    batched = _row_logits(model, _tts_samples(model, texts), **{**kw, "greedy": [True] * 3})
    for t, rows in zip(texts, batched):
        alone = _row_logits(model, _tts_samples(model, [t]), **kw)[0]
        assert torch.allclose(rows[: len(alone)], alone, atol=1e-5)


def test_rows_of_different_tasks_decode_together_as_alone(model):
    from omniar.omni.decode import decode

    prompts = [model.sample(Example("tts", "a red circle"), None, None),
               model.sample(Example("asr", speech=codes(12, 5)), None, None)]
    stops = [model.ids["eoa"], model.ids["eos"]]
    together = decode(model, prompts, greedy=[True, True], max_new_tokens=12, stops=stops)
    for p, row in zip(prompts, together):
        assert decode(model, [p], greedy=[True], max_new_tokens=12, stops=stops)[0] == row
    assert all(t >= model.speech_offset for t in together[0])  # the tts row stays in speech codes
    assert all(t < model.speech_offset for t in together[1])  # the asr row writes text
    mixed = _row_logits(model, prompts, greedy=[True, True], max_new_tokens=12, stops=stops)
    for p, rows in zip(prompts, mixed):  # a speech row and a text row in one step compute what they compute alone
        alone = _row_logits(model, [p], greedy=[True], max_new_tokens=12, stops=stops)[0]
        assert torch.allclose(rows[: len(alone)], alone, atol=1e-5)


def test_streamed_speech_equals_the_whole_decode(model):
    from omniar.omni.speech import speak_codes, speak_stream
    from omniar.tokenizers.speech import STREAM_TOLERANCE

    text = "a small yellow triangle"
    timings = {}
    chunks = list(speak_stream(model, text, max_seconds=0.5, chunk=3, timings=timings))
    codes_ = speak_codes(model, [text], max_seconds=0.5)[0]
    whole = model.speech_codec.decode(codes_[None])[0]
    streamed = torch.cat(chunks)
    assert streamed.shape == whole.shape
    assert (streamed - whole).abs().max() <= STREAM_TOLERANCE
    assert timings["audio_s"] == pytest.approx(len(codes_) * 0.02) and timings["first_chunk_s"] > 0
    assert timings["rtf"] > 0


def test_transcribe_and_spoken_answers_batch_and_name_bad_audio(model):
    from omniar.omni.speech import answer_spoken, speak, transcribe

    wavs = [w.numpy() + 0.01 for w in speak(model, ["a red circle", "two"], max_seconds=0.3)]
    texts = transcribe(model, wavs)
    assert len(texts) == 2 and all(isinstance(t, str) for t in texts)
    assert transcribe(model, wavs[1:]) == texts[1:]
    answers = answer_spoken(model, torch.rand(3, 32, 32), wavs)
    assert len(answers) == 2
    with pytest.raises(ValueError, match="must be 16000 Hz, got 8000 Hz"):
        transcribe(model, wavs, sample_rate=8000)
    with pytest.raises(ValueError, match="clip 0 is empty"):
        transcribe(model, [[]])
    with pytest.raises(ValueError, match="clip 0 is silent"):
        transcribe(model, [torch.zeros(1600)])
    with pytest.raises(ValueError, match="at most 30 s"):
        transcribe(model, [torch.ones(16000 * 31)])
    with pytest.raises(ValueError, match="must be non-empty"):
        speak(model, [" "])
    with pytest.raises(ValueError, match="has no speech codec"):
        speak(speech_model(codec=False), ["a red circle"])


def test_text_outputs_never_open_speech_or_images(model, monkeypatch):
    """Transcripts and written answers are text: a model that would rather open speech or an image (<boa>, <boi>
    and the speech codes made the likeliest tokens) still gives text, the decoder keeping those spans closed."""
    from omniar.omni.speech import answer_spoken, speak, transcribe

    wavs = [w.numpy() + 0.01 for w in speak(model, ["a red circle", "two"], max_seconds=0.3)]
    bias = torch.zeros(model.decoder.config.vocab_size)
    bias[[model.ids["boa"], model.ids["boi"]]] = 1e3
    bias[model.speech_offset:] = 500.0
    head = model.decoder.head
    monkeypatch.setattr(model.decoder, "head", lambda h: head(h) + bias)
    for texts in (transcribe(model, wavs, max_new_tokens=6), answer_spoken(model, torch.rand(2, 3, 32, 32), wavs,
                                                                          max_new_tokens=6)):
        assert len(texts) == 2 and all(isinstance(t, str) for t in texts)  # (it raised on speech ids before)


def test_the_benchmark_scores_speech_with_the_independent_judge(model, tmp_path):
    """tts / asr / spoken VQA predictions of the model go through the ShapeWorld benchmark: the tts record carries
    the ground-truth speech of the same text, on which the recognizer must do well (the ratio's denominator)."""
    import json

    from omniar.omni.evaluate import evaluate_model

    result = evaluate_model(model, tmp_path, num=3, tasks=("tts", "asr", "svqa"), split="test", progress=False)
    scores = result["scores"]
    assert scores["tts"]["count"] == scores["asr"]["count"] == scores["svqa"]["count"] == 3
    assert scores["tts"]["wer_reference"] <= 0.25  # espeak-ng's speech of the captions is understood
    assert scores["tts"]["wer"] >= 0.5  # an untrained model says nothing the judge understands
    assert scores["tts"]["wer_ratio"] == pytest.approx(scores["tts"]["wer"] / max(scores["tts"]["wer_reference"],
                                                                                   1e-9))
    records = [json.loads(line) for line in (tmp_path / "test" / "predictions.jsonl").read_text().splitlines()]
    assert {r["task"] for r in records} == {"tts", "asr", "svqa"}
    assert all((tmp_path / "test" / r["audio"]).is_file() for r in records if r["task"] == "tts")
    with pytest.raises(ValueError, match="speech tasks need a model with a speech codec"):
        evaluate_model(speech_model(codec=False), tmp_path / "x", num=1, tasks=("asr",), progress=False)
    from omniar.omni.report import write_report

    page = write_report(tmp_path / "report.html", result, tmp_path, tmp_path).read_text()
    assert page.count("<audio controls") == 6  # the model's and the reference speech of 3 captions
    assert "Speech recognition" in page and "Spoken questions" in page
    assert "&gt; 1.5" in page  # the TTS WER ratio misses its (upper) target


def test_speech_examples_come_from_a_pool_spoken_and_encoded_once(model):
    from omniar.data.shapeworld.dataset import make_sample
    from omniar.omni.train import Recipe, examples_for_step

    recipe = Recipe(tasks={"tts": 1.0, "asr": 1.0, "svqa": 1.0, "t2i": 0.5}, examples_per_step=8, speech_pool=2)
    steps = [examples_for_step(recipe, step, 32, speech=model.speech_codec) for step in range(3)]
    pool = {make_sample("train", i)["caption"] for i in range(2)} | {make_sample("train", i)["question"]
                                                                      for i in range(2)}
    speech = [ex for exs in steps for ex in exs if ex.task in ("tts", "asr", "svqa")]
    assert speech and all(ex.text in pool for ex in speech)
    by_text = {}
    for ex in speech:  # one encoding per utterance (and voice): repeats share the very same memory
        if ex.task != "svqa":
            key = (ex.task == "tts", ex.text)
            assert by_text.setdefault(key, ex.speech.data_ptr()) == ex.speech.data_ptr()
    assert len(by_text) < sum(ex.task != "svqa" for ex in speech)  # there were repeats
    from omniar.data.shapeworld.speech import NARRATOR
    from omniar.omni.train import spoken_codes

    tts = next(ex for ex in speech if ex.task == "tts")  # the model is taught one voice: the narrator's
    narrated = spoken_codes(model.speech_codec, tts.text, tuple(sorted(vars(NARRATOR).items())))  # memoized
    assert tts.speech.data_ptr() == narrated.data_ptr()
    with pytest.raises(ValueError, match="speech_pool must be >= 1"):
        Recipe(speech_pool=0)


def test_a_spoken_conversation_answers_in_speech_after_turn_markers(model):
    """chat: <user> image, spoken question <eot> <assistant> spoken answer <eot>; the assistant's speech, its
    markers and the final <eot> are the targets; answer_spoken(spoken=True) decodes that layout to audio."""
    from omniar.omni.speech import answer_spoken

    img = torch.rand(3, 32, 32)
    ex = Example("chat", image=img, speech=codes(6, 1), answer_speech=codes(4, 2))
    batch, _, *_ = model.batch([ex])
    ids, labels, ids_of = batch.input_ids[0], batch.labels[0], model.ids
    assert ids[0] == ids_of["user"]
    turn = (ids == ids_of["assistant"]).nonzero()[0, 0]
    assert ids[turn - 1] == ids_of["eot"]
    targets = labels[labels != IGNORE].tolist()
    assert targets == [ids_of["boa"], *(codes(4, 2) + model.speech_offset).tolist(), ids_of["eoa"], ids_of["eot"]]
    prompt = model.sample(Example("chat", image=img, speech=codes(6, 1)), model.und_features(img[None])[0], None)
    assert prompt.segments[-1].ids.tolist() == [ids_of["eot"], ids_of["assistant"]]
    wav = model.speech_codec.decode(codes(20, 3)[None])[0].numpy() + 0.01
    audio = answer_spoken(model, img, [wav], spoken=True, max_new_tokens=8)
    assert len(audio) == 1 and audio[0].dim() == 1
    with pytest.raises(ValueError, match="chat example 0 has no target"):
        model.batch([Example("chat", image=img, speech=codes(6, 1))])


def test_an_image_drawn_inside_a_conversation_equals_teacher_forcing(model):
    """s2i (a spoken prompt, the assistant answers with an image): after <boi> the decoder draws exactly the
    image's token count with the bitwise head, one code per step through the raster inputs, then <eoi> is forced;
    the hidden state behind each code is the one a full uncached pass over the finished layout computes."""
    from omniar.omni.decode import decode, steps
    from omniar.stream.collate import collate
    from omniar.stream.segment import Segment

    side = model.scales[-1]
    prompt = model.sample(Example("s2i", speech=codes(7, 4)), None, None)
    assert prompt.segments[-1].ids.tolist() == [model.ids["eot"], model.ids["assistant"]]
    opened = dataclasses.replace(prompt, segments=[*prompt.segments, Segment("text", [model.ids["boi"]])])
    with torch.no_grad():
        run = list(steps(model, [opened], max_new_tokens=side * side + 3))
    drew = [s for s in run if s.drew[0]]
    assert len(drew) == side * side and run[0].tokens[0] == -1  # the first step opens the image
    closing = run[side * side]
    assert closing.drew[0] and closing.tokens[0] == model.ids["eoi"]  # forced in the step of the last code
    bits = torch.stack([s.bits[0] for s in drew])  # (N, d) row-major
    inputs = model.scale_embed.raster(model.tokenizer.quantizer.codes(bits)[None], 0, side * side)[0]
    full = dataclasses.replace(opened, segments=[*opened.segments, model.gen_segment(inputs, begin=False)])
    batch = collate([full])
    with torch.no_grad():
        hidden = model.decoder(**batch.model_inputs()).hidden[0]
    cells = batch.meta.modality[0] == Modality.IMAGE_RASTER
    assert torch.allclose(torch.stack([s.hidden[0] for s in drew]), hidden[cells], atol=1e-5)
    ids, images = decode(model, [opened], max_new_tokens=side * side + 3, images=True)
    assert len(images[0]) == 1 and images[0][0].shape == (model.tokenizer.config.bits, side, side)
    assert ids[0][0] == model.ids["eoi"]  # text resumes after the image: its first id is the forced <eoi>


def test_s2i_training_layout_and_its_named_error():
    m = speech_model()
    img = torch.rand(3, 32, 32)
    batch, bits, *_ = m.batch([Example("s2i", image=img, speech=codes(7, 4))])
    ids, labels = batch.input_ids[0], batch.labels[0]
    assert labels[labels != IGNORE].tolist() == [m.ids["boi"], m.ids["eot"]]  # <eoi> is forced, never learnt
    assert int((batch.meta.modality[0] == Modality.IMAGE_RASTER).sum()) == len(bits) == 64
    eoi = (ids == m.ids["eoi"]).nonzero()[0, 0]
    assert batch.positions[0, eoi, 0] == batch.positions[0, eoi - 1, 0] + 8  # the grid's side after its start
    from tests.test_omni_model import tiny_model

    with pytest.raises(ValueError, match="s2i .* needs raster generation"):
        tiny_model().sample(Example("s2i", speech=codes(3)), None, None)
