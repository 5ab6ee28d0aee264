import numpy as np
import pytest
import torch

from anomalib_ext.components import MemoryBank, coverage_radius, greedy_coreset_indices, torch_knn
from anomalib_ext.components.synthesis import (
    cutpaste,
    cutpaste_scar,
    free_form_mask,
    paste_region,
    perlin_anomaly_generator,
)


def _brute_force_greedy(x: torch.Tensor, k: int, first: int) -> list[int]:
    chosen = [first]
    dist = torch.linalg.vector_norm(x - x[first], dim=1)
    for _ in range(k - 1):
        nxt = int(torch.argmax(dist))
        chosen.append(nxt)
        dist = torch.minimum(dist, torch.linalg.vector_norm(x - x[nxt], dim=1))
    return chosen


def test_fast_greedy_equals_brute_force_greedy():
    torch.manual_seed(0)
    x = torch.cat([torch.randn(1500, 16) * s + s for s in (0.5, 1.0, 3.0)])
    ours = greedy_coreset_indices(x, coreset_size=60, project=False, seed=3, progress=False)
    assert ours.tolist() == _brute_force_greedy(x, 60, int(ours[0]))


def test_a_projected_coreset_depends_on_its_seed_only():
    x = torch.randn(300, 200)  # 200 dims > the projection's ~140 for 300 points: the projection is used
    torch.manual_seed(1)
    first = greedy_coreset_indices(x, coreset_size=20, seed=5, progress=False)
    torch.manual_seed(2)  # another global RNG state
    again = greedy_coreset_indices(x, coreset_size=20, seed=5, progress=False)
    other = greedy_coreset_indices(x, coreset_size=20, seed=6, progress=False)
    assert torch.equal(first, again) and not torch.equal(first, other)


def test_coreset_covers_better_than_random():
    torch.manual_seed(0)
    x = torch.randn(4000, 4) * torch.rand(4000, 1) * 4  # low-dim: coverage differences are large
    ours = greedy_coreset_indices(x, 0.01, progress=False)
    random = torch.randperm(4000)[:40]
    assert coverage_radius(x, x[ours]) < 0.8 * coverage_radius(x, x[random])


def test_faiss_and_torch_give_the_same_neighbours(monkeypatch):
    from anomalib_ext.components import memory_bank

    torch.manual_seed(0)
    bank = MemoryBank()
    bank.fit(torch.randn(3000, 48), sampling_ratio=0.1)
    queries = torch.randn(1, 200, 48)
    monkeypatch.setattr(memory_bank, "FAISS_MIN_WORK", 0)  # this search is small: make faiss take it
    monkeypatch.setattr(memory_bank, "FAISS_MIN_QUERIES", 0)
    assert bank._use_faiss(queries)
    d_faiss, i_faiss = bank.search(queries, k=9)
    d_torch, i_torch = torch_knn(queries[0], bank.bank[0], 9)
    assert torch.allclose(d_faiss[0], d_torch, atol=1e-4)
    assert (i_faiss[0] == i_torch).float().mean() > 0.99
    nearest, _index = bank.nearest(queries)
    assert torch.allclose(nearest[0], d_torch[:, 0], atol=1e-4)


def test_grouped_banks_equal_one_bank_per_group_and_reweight_like_patchcore():
    torch.manual_seed(0)
    features = torch.randn(3, 400, 16)
    grouped = MemoryBank()
    grouped.fit(features, sampling_ratio=0.25)
    queries = torch.randn(3, 2, 10, 16)  # (G, B, P, D)
    distances, indices = grouped.nearest(queries.flatten(1, 2))
    scores = grouped.reweighted_max(queries, distances.reshape(3, 2, 10), indices.reshape(3, 2, 10), num_neighbors=5)
    for g in range(3):
        alone = MemoryBank()
        alone.fit(features[g], sampling_ratio=0.25, seed=g)  # group g is selected with seed + g
        assert torch.equal(alone.bank[0], grouped.bank[g])
        for b in range(2):
            d, i = torch_knn(queries[g, b], alone.bank[0], 1)
            worst = int(d[:, 0].argmax())
            # PatchCore: the worst patch, weighted by 1 - softmax over its distances to the k neighbours of its nearest feature.
            _, support = torch_knn(alone.bank[0][i[worst]], alone.bank[0], 5)
            dist = torch.linalg.vector_norm(queries[g, b, worst] - alone.bank[0][support[0]], dim=1)
            expected = (1 - torch.softmax(dist, 0)[0]) * d[worst, 0]
            assert torch.allclose(scores[g, b], expected, atol=1e-5)


def test_memory_bank_exports_without_faiss_and_reloads():
    torch.manual_seed(0)
    bank = MemoryBank()
    bank.fit(torch.randn(500, 8), sampling_ratio=None)

    class Scorer(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.bank = bank

        def forward(self, q):
            return self.bank.search(q[None], k=1)[0][0]

    batch = torch.export.Dim("n", min=1, max=1024)
    program = torch.export.export(Scorer(), (torch.randn(4, 8),), dynamic_shapes=({0: batch},), strict=False)
    q = torch.randn(7, 8)
    assert torch.allclose(program.module()(q), bank.search(q[None], 1)[0][0], atol=1e-4)
    reloaded = MemoryBank()
    reloaded.load_state_dict(bank.state_dict())
    assert torch.equal(reloaded.bank, bank.bank)


def test_synthetic_anomalies_change_only_the_masked_pixels():
    rng = np.random.default_rng(0)
    torch.manual_seed(0)
    image = torch.rand(3, 128, 128)
    for fn in (cutpaste, cutpaste_scar):
        out, mask = fn(image, rng)
        assert mask.shape == (1, 128, 128) and mask.sum() > 0
        assert torch.equal(out * (1 - mask), image * (1 - mask))
    strokes = free_form_mask(128, 128, rng)
    assert 0 < strokes.mean() < 0.6
    target_area = torch.zeros(1, 128, 128)
    target_area[:, 80:, 80:] = 1
    out, mask = paste_region(image, strokes, torch.zeros(3, 128, 128), rng, target_area=target_area)
    assert mask.sum() > 0 and torch.equal(out * (1 - mask), torch.zeros(3, 128, 128))


def test_perlin_generator_from_textures(shared_data):
    generator = perlin_anomaly_generator(shared_data / "dtd")
    image = torch.rand(3, 64, 64)
    out, mask = generator(image)
    assert out.shape == image.shape and mask.shape[-2:] == (64, 64) and mask.sum() > 0


def test_separable_blur_equals_anomalib_gaussian_blur():
    from anomalib.models.components.filters import GaussianBlur2d

    from anomalib_ext.components.blur import SeparableGaussianBlur

    torch.manual_seed(0)
    maps = torch.rand(2, 1, 96, 80)
    for sigma in (0.5, 4.0):
        size = 2 * int(4.0 * sigma + 0.5) + 1
        expected = GaussianBlur2d(sigma=sigma, channels=1, kernel_size=size)(maps)
        assert torch.allclose(SeparableGaussianBlur(sigma)(maps), expected, atol=1e-5)
    tiny = torch.rand(1, 1, 8, 8)  # smaller than the kernel: still a blur that keeps the mean level
    out = SeparableGaussianBlur(4.0)(tiny)
    assert out.shape == tiny.shape and out.std() < tiny.std()


@pytest.mark.parametrize("radius", [0, 1, 2])
def test_positional_bank_equals_a_brute_force_search_within_the_radius(radius):
    from anomalib_ext.components.positional_bank import PositionalBank

    generator = torch.Generator().manual_seed(radius)
    train, test = torch.randn(5, 7, 6, 8, generator=generator), torch.randn(3, 7, 6, 8, generator=generator)
    bank = PositionalBank(radius)
    bank.fit(train)
    got = bank.nearest(test)
    expected = torch.full((3, 6, 8), float("inf"))
    for y in range(6):  # the loop the vectorised search replaces
        for x in range(8):
            for dy in range(-radius, radius + 1):
                for dx in range(-radius, radius + 1):
                    if 0 <= y + dy < 6 and 0 <= x + dx < 8:
                        distance = (test[:, :, y, x][:, None] - train[:, :, y + dy, x + dx][None]).norm(dim=-1)
                        expected[:, y, x] = torch.minimum(expected[:, y, x], distance.min(1).values)
    assert torch.allclose(got, expected, atol=1e-4)


def test_positional_bank_exports_with_a_dynamic_batch():
    from anomalib_ext.components.positional_bank import PositionalBank

    bank = PositionalBank(1)
    bank.fit(torch.randn(4, 5, 6, 6))

    class Search(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.bank = bank

        def forward(self, x):
            return self.bank.nearest(x)

    batch = torch.export.Dim("batch", min=1, max=8)
    program = torch.export.export(Search(), (torch.randn(2, 5, 6, 6),), dynamic_shapes=({0: batch},), strict=False)
    x = torch.randn(3, 5, 6, 6)
    assert torch.allclose(program.module()(x), bank.nearest(x), atol=1e-5)


def test_positional_leave_one_out_skips_each_images_own_features():
    from anomalib_ext.components.positional_bank import PositionalBank

    generator = torch.Generator().manual_seed(0)
    train = torch.randn(4, 6, 5, 5, generator=generator)
    bank = PositionalBank(1)
    bank.fit(train)
    assert torch.allclose(bank.nearest(train), torch.zeros(4, 5, 5), atol=1e-2)  # each image finds itself
    loo = bank.leave_one_out(train, chunk=3)
    for i in range(4):
        others = PositionalBank(1)
        others.fit(torch.cat([train[:i], train[i + 1 :]]))
        assert torch.allclose(loo[i], others.nearest(train[i : i + 1])[0], atol=1e-4)
