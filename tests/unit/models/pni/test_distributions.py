"""PNI's vectorised pieces against plain loops over places (the official code's way)."""

import pytest
import torch

from anomalib_ext.models.pni.distributions import (
    NeighbourhoodMLP,
    PNIScore,
    neighbourhood_features,
    position_histogram,
)


def test_neighbourhood_features_are_the_neighbours_without_the_centre():
    generator = torch.Generator().manual_seed(0)
    features = torch.randn(2, 3, 5, 6, generator=generator)
    out = neighbourhood_features(features, 3)
    assert out.shape == (2, 3 * 8, 5, 6)
    for y, x in [(0, 0), (2, 3), (4, 5)]:
        expected = []
        for dy in (-1, 0, 1):
            for dx in (-1, 0, 1):
                if dy == dx == 0:
                    continue
                inside = 0 <= y + dy < 5 and 0 <= x + dx < 6
                expected.append(features[:, :, y + dy, x + dx] if inside else torch.zeros(2, 3))
        # unfold orders channel-major: all 8 neighbours of channel 0, then of channel 1, ...
        expected = torch.stack(expected, dim=2).reshape(2, -1)
        assert torch.allclose(out[:, :, y, x], expected)


def test_a_centre_block_of_three_leaves_out_the_places_that_aggregate_the_centre():
    features = torch.randn(1, 2, 6, 6)
    out = neighbourhood_features(features, 5, centre_block=3)
    assert out.shape == (1, 2 * 16, 6, 6)  # the 5 x 5 ring around the 3 x 3 block
    y, x = 2, 3
    ring = [(dy, dx) for dy in range(-2, 3) for dx in range(-2, 3) if max(abs(dy), abs(dx)) == 2]
    expected = [
        features[0, :, y + dy, x + dx] if 0 <= y + dy < 6 and 0 <= x + dx < 6 else torch.zeros(2) for dy, dx in ring
    ]
    assert torch.equal(out[0, :, y, x], torch.stack(expected, dim=1).reshape(-1))


def test_neighbourhood_size_must_be_odd():
    with pytest.raises(ValueError, match="odd"):
        neighbourhood_features(torch.zeros(1, 2, 4, 4), 4)
    with pytest.raises(ValueError, match="centre block"):
        neighbourhood_features(torch.zeros(1, 2, 4, 4), 3, centre_block=3)


def test_position_histogram_counts_each_window_and_normalises():
    generator = torch.Generator().manual_seed(1)
    indices = torch.randint(0, 4, (3, 4, 5), generator=generator)
    histogram = position_histogram(indices, num_classes=4, size=3)
    assert histogram.shape == (4, 4, 5)
    assert torch.allclose(histogram.sum(0), torch.ones(4, 5))
    for y, x in [(0, 0), (1, 2), (3, 4)]:
        counts = torch.zeros(4)
        for yy in range(max(0, y - 1), min(4, y + 2)):
            for xx in range(max(0, x - 1), min(5, x + 2)):
                counts += torch.bincount(indices[:, yy, xx], minlength=4).float()
        assert torch.allclose(histogram[:, y, x], counts / counts.sum())


def test_mlp_probabilities_sum_to_one_and_the_temperature_flattens_them():
    torch.manual_seed(0)
    mlp = NeighbourhoodMLP(2, num_classes=5, depth=3, width=8, temperature=1.0, size=3).eval()
    features = torch.randn(2, 2, 3, 4)
    sharp = mlp.probabilities(features)
    assert sharp.shape == (2, 5, 3, 4) and torch.allclose(sharp.sum(1), torch.ones(2, 3, 4))
    mlp.temperature = 4.0
    assert mlp.probabilities(features).amax(1).mean() < sharp.amax(1).mean()


@pytest.mark.parametrize(("depth", "projection", "centre_block"), [(1, None, 1), (3, None, 1), (3, 2, 1), (3, 2, 3)])
def test_the_map_form_of_the_mlp_is_the_mlp_on_every_concatenated_neighbourhood(depth, projection, centre_block):
    """probabilities() runs the first layer as a p x p convolution; it must equal the MLP on unfolded places."""
    torch.manual_seed(0)
    mlp = NeighbourhoodMLP(
        3, num_classes=4, depth=depth, width=6, size=5, centre_block=centre_block, projection=projection
    )
    mlp.train()
    mlp(torch.randn(32, (projection or 3) * (25 - centre_block**2)))  # give BatchNorm non-trivial running statistics
    mlp.eval()
    features = torch.randn(2, 3, 6, 7)
    with torch.no_grad():
        neighbours = neighbourhood_features(mlp.projected(features), 5, centre_block)
        per_place = mlp(neighbours.permute(0, 2, 3, 1).reshape(-1, neighbours.shape[1]))
        expected = torch.softmax(per_place / mlp.temperature, 1).reshape(2, 6, 7, 4).permute(0, 3, 1, 2)
        assert torch.allclose(mlp.probabilities(features), expected, atol=1e-5)


@pytest.mark.parametrize(("size", "centre_block"), [(3, 1), (5, 3)])
def test_gathered_neighbourhoods_match_the_unfolded_ones(size, centre_block):
    from anomalib_ext.models.pni.distributions import gather_neighbourhoods

    features = torch.randn(3, 2, 5, 6)
    unfolded = neighbourhood_features(features, size, centre_block)
    images, rows, cols = torch.tensor([0, 2, 1, 2]), torch.tensor([0, 4, 2, 1]), torch.tensor([0, 5, 3, 0])
    gathered = gather_neighbourhoods(features, images, rows, cols, size, centre_block)
    assert torch.equal(gathered, unfolded[images, :, rows, cols])


def _score(tau=None):
    embedding_coreset = torch.tensor([[0.0, 0.0], [10.0, 0.0], [0.0, 10.0], [10.0, 10.0]])
    distribution_coreset = torch.tensor([[0.4, 0.3], [9.0, 9.5], [1.0, 9.0]])  # nearest: rows 0, 3, 2
    score = PNIScore(tau=tau)
    score.fit(distribution_coreset, embedding_coreset)
    return score


def test_targets_are_the_nearest_embedding_coreset_elements():
    assert torch.equal(_score().targets, torch.tensor([[0.0, 0.0], [10.0, 10.0], [0.0, 10.0]]))
    assert _score().threshold == pytest.approx(1 / 6)


def test_score_is_the_distance_to_the_nearest_allowed_element():
    score = _score()
    features = torch.tensor([[1.0, 0.0]]).reshape(1, 2, 1, 1)  # 1 from target 0, ~13.5 from 1, ~9.1 from 2
    everywhere = torch.full((1, 3, 1, 1), 1 / 3)
    assert score(features, everywhere).item() == pytest.approx(1.0)
    only_second = torch.tensor([0.05, 0.9, 0.05]).reshape(1, 3, 1, 1)  # elements 0 and 2 are below tau
    assert score(features, only_second).item() == pytest.approx((9**2 + 10**2) ** 0.5)


def test_the_embedding_bank_scores_every_c_emb_element_through_its_c_dist_element():
    # The authors' code: all of C_emb are targets; each is allowed where its nearest C_dist element is.
    embedding_coreset = torch.tensor([[0.0, 0.0], [10.0, 0.0], [0.0, 10.0], [10.0, 10.0]])
    distribution_coreset = torch.tensor([[0.4, 0.3], [9.0, 9.5], [1.0, 9.0]])  # C_emb rows 0, 1+3, 2 nearest
    score = PNIScore(bank="embedding")
    score.fit(distribution_coreset, embedding_coreset)
    assert torch.equal(score.targets, embedding_coreset) and score.clusters.tolist() == [0, 1, 2, 1]
    assert score.num_clusters == 3 and score.threshold == pytest.approx(1 / 6)
    features = torch.tensor([[9.0, 0.0]]).reshape(1, 2, 1, 1)  # 1 from C_emb row 1, which C_dist alone lacks
    everywhere = torch.full((1, 3, 1, 1), 1 / 3)
    assert score(features, everywhere).item() == pytest.approx(1.0)
    assert _score()(features, everywhere).item() == pytest.approx(9.0)  # the printed Eq. 7: C_dist's targets only
    only_first = torch.tensor([0.9, 0.05, 0.05]).reshape(1, 3, 1, 1)  # row 1 (cluster 1) now below tau
    assert score(features, only_first).item() == pytest.approx(9.0)


def test_checkpoints_without_clusters_load_as_the_distribution_bank():
    state = {"targets": torch.randn(5, 2)}  # a checkpoint from before the bank option
    score = PNIScore()
    score.load_state_dict(state)
    assert score.clusters.tolist() == [0, 1, 2, 3, 4] and score.num_clusters == 5
    with pytest.raises(ValueError, match="bank"):
        PNIScore(bank="coreset")


def test_the_most_probable_element_counts_when_none_passes_tau():
    score = _score(tau=0.9)  # above every probability below
    features = torch.tensor([[1.0, 0.0]]).reshape(1, 2, 1, 1)
    probabilities = torch.tensor([0.2, 0.3, 0.5]).reshape(1, 3, 1, 1)  # element 2 most probable
    assert score(features, probabilities).item() == pytest.approx((1 + 100) ** 0.5)


def test_the_mlp_learns_a_centre_its_neighbours_tell():
    """Each image is one of two flat patterns; the neighbours alone say which (the centre is left out)."""
    from anomalib_ext.models.pni.distributions import nearest_indices, train_neighbourhood_mlp

    torch.manual_seed(0)
    coreset = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    kinds = torch.arange(16) % 2
    features = coreset[kinds][:, :, None, None].expand(16, 2, 6, 6) + 0.05 * torch.randn(16, 2, 6, 6)
    targets = nearest_indices(features, coreset)
    assert torch.equal(targets, kinds[:, None, None].expand(16, 6, 6))
    for projection in (None, 1):  # also through a 1-d projection (x - y tells the kinds apart)
        mlp = NeighbourhoodMLP(2, 2, depth=2, width=16, size=3, projection=projection)
        losses = train_neighbourhood_mlp(mlp, features, targets, epochs=6, batch_size=64, progress=False)
        assert losses[-1] < 0.6 * losses[0]
        with torch.no_grad():
            predicted = mlp.probabilities(features).argmax(1)
        assert (predicted == targets).float().mean() > 0.95
