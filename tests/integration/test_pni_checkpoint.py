"""PNI checkpoints from before a buffer was added still load, with the buffer's old meaning."""

import torch


def test_a_checkpoint_without_score_clusters_loads_as_the_distribution_bank(tmp_path):
    import lightning

    from anomalib_ext import register
    from anomalib_ext.deploy.checkpoint import load_model
    from anomalib_ext.models import PNI

    register()
    model = PNI(backbone="tf_efficientnet_lite0", pre_trained=False, refine=False)
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
    loaded = load_model("PNI", path)
    assert loaded.model.score.bank == "distribution"
    assert loaded.model.score.clusters.tolist() == list(range(8))
    assert torch.equal(loaded.model.score.targets, model.model.score.targets)
