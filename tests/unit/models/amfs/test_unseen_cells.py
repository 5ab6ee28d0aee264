"""AMFS leaves the cells the photograph did not show out of the image score (issue 12's seam remedy)."""

import numpy as np
import pytest
import torch


def _model(**kwargs):
    from anomalib_ext.models.amfs.torch_model import AMFSModel

    return AMFSModel("tf_efficientnet_lite0", pre_trained=False, positional={"radius": 0, **kwargs})


def _left_strip_unseen(columns_px: int, size: int = 64) -> torch.Tensor:
    covered = torch.ones(1, 1, size, size)
    covered[..., :columns_px] = 0
    return covered


def test_worst_patch_skips_unseen_cells_and_their_margin():
    patch = torch.zeros(1, 1, 8, 8)  # 8 px cells on a 64 px image
    patch[0, 0, 4, 2] = 5.0  # two cells right of the partly unseen column 0: inside a margin of 2
    patch[0, 0, 4, 3] = 3.0  # three cells right: outside it
    covered = _left_strip_unseen(4)  # column 0 of the cells half covered
    assert _model(unseen_margin=2).worst_seen_patch(patch, covered).item() == 3.0
    assert _model(unseen_margin=1).worst_seen_patch(patch, covered).item() == 5.0
    assert _model(unseen_margin=None).worst_seen_patch(patch, covered).item() == 5.0
    assert _model(unseen_margin=2).worst_seen_patch(patch, torch.ones_like(covered)).item() == 5.0


def test_worst_patch_of_all_when_nothing_is_seen():
    patch = torch.arange(64.0).reshape(1, 1, 8, 8)
    assert _model(unseen_margin=0).worst_seen_patch(patch, torch.zeros(1, 1, 64, 64)).item() == 63.0


def test_fill_unseen_puts_the_reference_where_the_marks_are():
    from anomalib_ext.transforms.align import UNSEEN

    model = _model()
    model.reference = torch.full((16, 16, 3), 51, dtype=torch.uint8)  # 0.2 everywhere
    images = torch.full((2, 3, 16, 16), 0.7)
    images[0, :, :, :5] = UNSEEN
    filled, covered = model.fill_unseen(images)
    assert torch.allclose(filled[0, :, :, :5], torch.tensor(0.2)) and torch.equal(filled[1], images[1])
    assert covered[0, 0, :, :5].sum() == 0 and covered[0, 0, :, 5:].all() and covered[1].all()


def test_unseen_margin_must_not_be_negative():
    with pytest.raises(ValueError, match="unseen_margin"):
        _model(unseen_margin=-1)


def test_alignment_step_marks_exactly_what_the_photo_does_not_cover():
    """With ``mark_unseen`` the align step writes UNSEEN outside the warped photo, the photo elsewhere."""
    from anomalib_ext.data.garment_print import make_design, photograph, render_design
    from anomalib_ext.transforms.align import UNSEEN, AlignmentStep, ORBSettings

    rng = np.random.default_rng(0)
    design = make_design(rng, 256)
    image, mask = render_design(design, rng, None)
    reference = (np.clip(image, 0, 1) * 255).round().astype(np.uint8)
    photo, _ = photograph(image, mask, design, rng)
    tensor = torch.from_numpy(np.ascontiguousarray(photo, dtype=np.float32)).permute(2, 0, 1)[None]
    marked, _ = AlignmentStep(reference, ORBSettings(n_features=800), mark_unseen=True).prepare(tensor)
    filled, _ = AlignmentStep(reference, ORBSettings(n_features=800)).prepare(tensor)
    unseen, seen = (marked == UNSEEN).all(1)[0], (marked >= 0).all(1)[0]
    assert 0 < unseen.float().mean() < 0.5  # the random pose leaves part of the frame without photo
    assert torch.equal(seen, ~unseen)  # every pixel is the photo's, or marked in every channel
    assert torch.equal(marked[0][:, seen], filled[0][:, seen])  # seen pixels are untouched by the marks
    # Marked: the pixels outside the warped photo's outline, i.e. where the reference fill sits (the
    # outline's edge row, where bilinear warping blends photo and fill, counts as seen).
    fill = torch.from_numpy(reference).permute(2, 0, 1).float() / 255
    is_fill = torch.isclose(filled[0], fill).all(0)
    near_fill = torch.nn.functional.max_pool2d(is_fill[None, None].float(), 3, stride=1, padding=1)[0, 0] > 0
    assert not (unseen & ~near_fill).any()
    assert (is_fill & seen).float().mean() < 0.01  # fill left unmarked: at most that border row
