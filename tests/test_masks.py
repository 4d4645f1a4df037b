"""The mask builder against the rules of MECHANISMS.md written out pair by pair."""

import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from omniar import Pattern, PositionMeta, Sample, Segment, build_attention_mask, collate
from omniar.masks import PAD_DOC


def reference_mask(q: PositionMeta, k: PositionMeta) -> torch.Tensor:
    """One pair at a time, straight from the definitions."""
    B, Lq = q.shape
    Lk = k.shape[1]
    out = torch.zeros(B, Lq, Lk, dtype=torch.bool)
    for b in range(B):
        for i in range(Lq):
            for j in range(Lk):
                qi, kj = int(q.index[b, i]), int(k.index[b, j])
                if int(q.doc[b, i]) == PAD_DOC:
                    out[b, i, j] = qi == kj  # padding sees itself only
                elif int(k.doc[b, j]) != int(q.doc[b, i]):
                    out[b, i, j] = False  # document isolation (and padding keys)
                elif int(q.segment[b, i]) != int(k.segment[b, j]):
                    out[b, i, j] = kj <= qi  # across segments: causal
                elif int(q.pattern[b, i]) == Pattern.CAUSAL:
                    out[b, i, j] = kj <= qi
                elif int(q.pattern[b, i]) == Pattern.BIDIRECTIONAL:
                    out[b, i, j] = True
                elif int(q.pattern[b, i]) == Pattern.BLOCK_CAUSAL:
                    out[b, i, j] = int(k.block[b, j]) <= int(q.block[b, i])
                else:
                    raise AssertionError("unknown pattern")
    return out


segment_st = st.one_of(
    st.builds(lambda n: Segment("text", list(range(n))), st.integers(1, 4)),
    st.builds(lambda h, w: Segment("image_und", features=torch.zeros(h * w, 3), grid=(h, w)),
              st.integers(1, 3), st.integers(1, 3)),
    st.builds(lambda s: Segment("image_gen", list(range(sum(k * k for k in s))), scales=[(k, k) for k in s]),
              st.lists(st.integers(1, 3), min_size=1, max_size=3).map(sorted)),
    st.builds(lambda n: Segment("speech", list(range(n)), begin=1, end=2), st.integers(1, 3)),
)
sample_st = st.builds(lambda segs, task: Sample(segs, task=task), st.lists(segment_st, min_size=1, max_size=4),
                      st.one_of(st.none(), st.just(7)))


@settings(max_examples=60, deadline=None)
@given(st.lists(sample_st, min_size=1, max_size=5), st.sampled_from(["left", "right"]), st.booleans())
def test_mask_matches_reference_on_collated_streams(samples, pad_side, packed):
    batch = collate(samples, max_len=128 if packed else None, pad_side=pad_side)
    got = build_attention_mask(batch.meta, batch.meta)
    assert torch.equal(got, reference_mask(batch.meta, batch.meta))


@settings(max_examples=60, deadline=None)
@given(st.data())
def test_mask_matches_reference_on_arbitrary_metadata(data):
    """Any metadata at all, including layouts no collator makes, and queries that are a suffix of the keys."""
    B, L = data.draw(st.integers(1, 3)), data.draw(st.integers(1, 10))
    small = st.lists(st.integers(0, 3), min_size=B * L, max_size=B * L)

    def field(values):
        return torch.tensor(values).view(B, L)

    keys = PositionMeta(index=torch.arange(L).expand(B, L), doc=field(data.draw(small)) - 1,
                        segment=field(data.draw(small)), modality=torch.zeros(B, L, dtype=torch.long),
                        pattern=field(data.draw(st.lists(st.integers(0, 2), min_size=B * L, max_size=B * L))),
                        block=field(data.draw(small)))
    start = data.draw(st.integers(0, L - 1))
    queries = keys[:, start:]
    assert torch.equal(build_attention_mask(queries, keys), reference_mask(queries, keys))


def test_mask_shapes_the_patterns_on_a_known_layout():
    """Hand-checked: text(2) | understanding image 2x1 | gen scales 1x1, 2x1... on one row."""
    sample = Sample([Segment("text", [5, 6]), Segment("image_und", features=torch.zeros(2, 3), grid=(2, 1)),
                     Segment("image_gen", [1, 2, 3, 4, 5], scales=[(1, 1), (2, 2)])])
    m = build_attention_mask(collate([sample]).meta, collate([sample]).meta)[0]
    assert m[0, 1].item() is False and m[1, 0].item() is True  # causal text
    assert m[2, 3].item() is True  # understanding image: earlier patch sees later patch
    assert m[4, 5].item() is False  # coarse scale does not see the finer one
    assert m[5, 8].item() is True and m[5, 4].item() is True  # a scale sees itself entirely and coarser scales
    assert m[4, 0:4].all()  # generation tokens see the whole earlier context


def test_plain_causal_detection():
    text = collate([Sample([Segment("text", [1, 2, 3])])]).meta
    assert text.is_plain_causal()
    packed = collate([Sample([Segment("text", [1, 2])]), Sample([Segment("text", [3])])], max_len=8).meta
    assert not packed.is_plain_causal()
    padded = collate([Sample([Segment("text", [1, 2])]), Sample([Segment("text", [3])])]).meta
    assert not padded.is_plain_causal()
