"""Best-of-N text-to-image (omni/rerank.py): the caption score is the captioning loss of training, per pair and
independent of the batch; the chosen image is the best-scoring candidate, each candidate the plain sample of its
seed; best_of=1 is plain generation."""

import pytest
import torch

from omniar.generation.sampling import SamplingParams
from omniar.omni.generate import generate_images
from omniar.omni.model import Example
from omniar.omni.rerank import SEED_STRIDE, caption_scores, generate_best_of
from tests.test_omni_model import tiny_model

PROMPTS = ["a red circle", "a blue square left of a green star", "there is a small yellow triangle"]
SAMPLED = SamplingParams(temperature=1.0)


@pytest.fixture(scope="module")
def model():
    return tiny_model()


def images(n, seed=0):
    return torch.rand(n, 3, 32, 32, generator=torch.Generator().manual_seed(seed))


def test_caption_score_is_the_captioning_loss_of_each_pair_whatever_the_batch(model):
    pix = images(3)
    together = caption_scores(model, pix, PROMPTS)
    for i, text in enumerate(PROMPTS):
        batch, _, *_ = model.batch([Example("caption", text, image=pix[i])])
        with torch.no_grad():
            loss, _ = model.loss(batch, torch.zeros(0, 8, dtype=torch.bool))
        targets = len(model.text.encode(text)) + 1  # the text and <eos>
        alone = caption_scores(model, pix[i : i + 1], [text])
        assert torch.allclose(alone, -loss * targets, atol=1e-4)
        assert torch.allclose(together[i], alone[0], atol=1e-4)  # padding of the longer rows changes nothing
    # the image matters: the same text scores differently on another image
    assert not torch.allclose(caption_scores(model, images(3, seed=1), PROMPTS), together)


def test_the_chosen_image_is_the_best_scoring_candidate_each_drawn_with_its_own_seed(model):
    seeds = [5, 9, 2]
    chosen, scores = generate_best_of(model, PROMPTS, 3, params=SAMPLED, cfg=2.0, seeds=seeds, return_scores=True)
    assert scores.shape == (3, 3)
    candidates = [generate_images(model, PROMPTS, params=SAMPLED, cfg=2.0, seeds=[s + j * SEED_STRIDE for s in seeds])
                  for j in range(3)]
    assert len({c.sum().item() for c in candidates}) == 3  # sampled: the candidates differ
    for j, c in enumerate(candidates):
        assert torch.allclose(scores[:, j], caption_scores(model, c, PROMPTS), atol=1e-4)
    best = scores.argmax(1)
    for i in range(3):
        assert torch.equal(chosen[i], candidates[best[i]][i])
    # one prompt alone picks the same image: rows do not depend on their batch
    one = generate_best_of(model, PROMPTS[1:2], 3, params=SAMPLED, cfg=2.0, seeds=seeds[1:2])
    assert torch.equal(one[0], chosen[1])


def test_best_of_one_is_plain_generation_and_misuse_is_named(model):
    plain = generate_images(model, PROMPTS, params=SAMPLED, cfg=2.0, seeds=[1, 2, 3])
    assert torch.equal(model.generate_image(PROMPTS, cfg=2.0, params=SAMPLED, seeds=[1, 2, 3]), plain)
    _, scores = generate_best_of(model, PROMPTS, 1, params=SAMPLED, cfg=2.0, seeds=[1, 2, 3], return_scores=True)
    assert torch.allclose(scores[:, 0], caption_scores(model, plain, PROMPTS), atol=1e-4)
    with pytest.raises(ValueError, match="temperature > 0"):
        model.generate_image(PROMPTS, best_of=2, params=SamplingParams(temperature=0.0))
    with pytest.raises(ValueError, match="best_of must be >= 1"):
        generate_best_of(model, PROMPTS, 0, params=SAMPLED)
    with pytest.raises(ValueError, match="edits have no caption"):
        generate_best_of(model, PROMPTS, 2, params=SAMPLED, sources=images(3))
    with pytest.raises(ValueError, match="one image per text"):
        caption_scores(model, images(2), PROMPTS)
