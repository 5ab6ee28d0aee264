"""PNI checkpoints from before a buffer was added still load, with the buffer's old meaning."""

import torch


def test_a_checkpoint_without_score_clusters_loads_as_the_distribution_bank(tmp_path):
    import lightning

    from anomalib_ext import register
    from anomalib_ext.deploy.checkpoint import load_model
    from anomalib_ext.models import PNI

    register()
    model = PNI(backbone="tf_efficientnet_lite0", pre_trained=False, refine=False, score_bank="distribution")
    model.model.score.fit(torch.randn(8, 4), torch.randn(20, 4))  # C_dist 8 of C_emb 20
    state = {k: v for k, v in model.state_dict().items() if k != "model.score.clusters"}  # the older format
    path = tmp_path / "old.ckpt"
    torch.save(
        {
            "state_dict": state,
            "hyper_parameters": dict(model.hparams),
            "pytorch-lightning_version": lightning.__version__,
        },
        path,
    )
    hyper_parameters = torch.load(path, weights_only=False)["hyper_parameters"]
    del hyper_parameters["score_bank"]  # older checkpoints do not name it; the class default has changed since
    torch.save({**torch.load(path, weights_only=False), "hyper_parameters": hyper_parameters}, path)
    loaded = load_model("PNI", path)
    assert loaded.model.score.clusters.tolist() == list(range(8))  # one target per C_dist element, as saved
    assert torch.equal(loaded.model.score.targets, model.model.score.targets)
    features, probabilities = torch.randn(2, 4, 3, 3), torch.softmax(torch.randn(2, 8, 3, 3), 1)
    assert torch.equal(loaded.model.score(features, probabilities), model.model.score(features, probabilities))
