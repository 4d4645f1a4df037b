"""Collating samples into the token stream: layout, positions, labels, packing, features, errors."""

import pytest
import torch

from omniar import Modality, Pattern, Sample, Segment, collate
from omniar.stream import IGNORE
from tests.streams import BOI, EOI, FEAT, T2I, mixed_sample


def test_layout_of_a_mixed_sample():
    b = collate([mixed_sample(0)])
    mod = b.meta.modality[0].tolist()
    # task + 4 text + <boi> 6 patches <eoi> + 3 text + <boi> 14 gen <eoi> + <boa> 5 speech <eoa> + 2 text
    assert len(mod) == 1 + 4 + 8 + 3 + 16 + 7 + 2
    assert b.input_ids[0, 0] == T2I and b.input_ids[0, 5] == BOI and b.input_ids[0, 12] == EOI
    assert mod[6:12] == [Modality.IMAGE_UND] * 6 and mod[17:31] == [Modality.IMAGE_GEN] * 14
    assert b.meta.pattern[0, 6:12].eq(Pattern.BIDIRECTIONAL).all()
    assert b.meta.block[0, 17:31].tolist() == [0] + [1] * 4 + [2] * 9
    assert b.features[int(Modality.IMAGE_UND)].shape == (6, FEAT)


def test_positions_are_2d_for_images_and_scaled_for_scales():
    s = Sample([Segment("text", [1, 2]), Segment("image_und", features=torch.zeros(6, 4), grid=(2, 3)),
                Segment("image_gen", list(range(5)), scales=[(1, 1), (2, 2)]), Segment("text", [3])])
    p = collate([s]).positions[0]
    assert p[:2].tolist() == [[0, 0, 0], [1, 1, 1]]
    # 2x3 grid at t=2: rows 2..3, cols 2..4
    assert p[2].tolist() == [2, 2, 2] and p[7].tolist() == [2, 3, 4]
    # next image starts at 2 + max(2, 3) = 5; the 1x1 scale sits at the centre of the 2x2 final grid
    assert p[8].tolist() == [5, 5.5, 5.5]
    assert p[9].tolist() == [5, 5, 5] and p[12].tolist() == [5, 6, 6]
    assert p[13].tolist() == [7, 7, 7]  # text resumes at 5 + 2


def test_labels_are_shifted_and_follow_the_loss_mask():
    s = Sample([Segment("text", [10, 11]), Segment("speech", [20, 21], begin=BOI, end=EOI, loss=True, weight=2.0)],
               task=T2I)
    b = collate([s])
    # ids: T2I 10 11 BOI 20 21 EOI; loss on BOI 20 21 EOI
    assert b.labels[0].tolist() == [IGNORE, IGNORE, BOI, 20, 21, EOI, IGNORE]
    assert b.loss_weights[0].tolist() == [0, 0, 2, 2, 2, 2, 0]


def test_features_never_become_labels():
    s = Sample([Segment("text", [1]), Segment("image_und", features=torch.zeros(2, 3), loss=True)])
    assert collate([s]).labels[0].tolist() == [IGNORE, IGNORE, IGNORE]


def test_packing_isolates_documents_and_restarts_positions():
    a, c = Sample([Segment("text", [1, 2, 3], loss=True)]), Sample([Segment("text", [4, 5], loss=True)])
    b = collate([a, c, a], max_len=6)
    assert b.input_ids.shape == (2, 5)
    assert b.meta.doc[0].tolist() == [0, 0, 0, 1, 1] and b.meta.doc[1].tolist() == [0, 0, 0, -1, -1]
    assert b.positions[0, :, 0].tolist() == [0, 1, 2, 0, 1]
    assert b.labels[0].tolist() == [2, 3, IGNORE, 5, IGNORE]  # no label crosses a document boundary
    assert len(set(b.meta.segment[0].tolist())) == 2  # segment ids stay unique in a packed row


def test_left_padding_aligns_row_ends():
    b = collate([Sample([Segment("text", [1, 2, 3])]), Sample([Segment("text", [4])])], pad_side="left")
    assert b.input_ids[1].tolist() == [0, 0, 4] and b.meta.doc[1].tolist() == [-1, -1, 0]


def test_features_follow_row_major_order_across_rows_and_slices():
    f1, f2 = torch.randn(2, 3), torch.randn(3, 3)
    s1 = Sample([Segment("text", [1]), Segment("image_und", features=f1)])
    s2 = Sample([Segment("image_und", features=f2), Segment("text", [2])])
    b = collate([s1, s2])
    assert torch.equal(b.features[int(Modality.IMAGE_UND)], torch.cat([f1, f2]))
    part = b.slice(1, 3)  # row 0: features 0..1; row 1: features 1..2 of f2
    assert torch.equal(part.features[int(Modality.IMAGE_UND)], torch.cat([f1, f2[1:3]]))
    moved = b.to("cpu")
    assert torch.equal(moved.meta.stack(), b.meta.stack()) and torch.equal(moved.labels, b.labels)


@pytest.mark.parametrize("make, message", [
    (lambda: Segment("text"), "exactly one of"),
    (lambda: Segment("image_und", features=torch.zeros(4, 3, dtype=torch.long)), "float tensor"),
    (lambda: Segment("image_und", features=torch.zeros(5, 3), grid=(2, 2)), "layout needs 4"),
    (lambda: Segment("image_gen", [1, 2], scales=[(1, 1), (2, 2)]), "layout needs 5"),
    (lambda: Segment("video", [1]), "unknown modality 'video'"),
    (lambda: collate([Sample([Segment("text", [1, 2, 3])])], max_len=2), "more than max_len=2"),
    (lambda: collate([Sample([Segment("image_und", features=torch.zeros(1, 3))]),
                      Sample([Segment("image_und", features=torch.zeros(1, 4))])]), "different widths"),
])
def test_bad_segments_are_named(make, message):
    with pytest.raises(ValueError, match=message):
        make()
