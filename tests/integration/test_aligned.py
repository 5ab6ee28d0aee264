"""``AlignedMixin`` around an anomalib model whose pre-processor normalises (Patchcore): align in pixel space."""

import numpy as np
import torch


def _photographs(count: int) -> torch.Tensor:
    from anomalib_ext.data.garment_print import make_design, photograph, render_design

    design = make_design(np.random.default_rng(3), 256)
    shots = []
    for i in range(count):
        rng = np.random.default_rng([3, i])
        shots.append(photograph(*render_design(design, rng, None), design, rng)[0])
    return torch.from_numpy(np.stack(shots).transpose(0, 3, 1, 2).astype(np.float32))


def test_batches_normalised_by_the_pre_processor_align_as_their_pixels_do():
    # anomalib's PreProcessor hands training_step / test_step ImageNet-normalised images; aligning those
    # as if they were pixels clamps most of the print away and the warp fails (158 of 190 on SyntheticGPD).
    from anomalib_ext import register
    from anomalib_ext.models import AlignedPatchcore

    register()  # offline lite0 weights for anomalib's own feature extractor
    images = _photographs(6)
    model = AlignedPatchcore(
        backbone="tf_efficientnet_lite0",
        layers=["blocks.2", "blocks.4"],
        pre_processor=AlignedPatchcore.configure_pre_processor((256, 256)),
    )
    model._set_reference(list(images[:4]))
    normalised = model.pre_processor.transform(images)
    assert normalised.min() < -0.5  # the pre-processor does normalise: the case under test

    aligned_normalised, _ = model.prepare_batch_images(normalised)
    aligner = model.host_steps().steps[0].aligner
    assert aligner.failures == 0 and aligner.total == 6

    aligned_pixels, _ = model.host_steps().prepare(images)
    expected = model.pre_processor.transform(aligned_pixels)
    torch.testing.assert_close(aligned_normalised, expected, atol=1e-4, rtol=0)
