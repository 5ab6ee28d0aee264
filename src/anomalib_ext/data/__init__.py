"""Datamodules: GPD, SyntheticGPD (offline printed garments) and any MVTec-like folder."""

from anomalib_ext.data.folder import MVTecLikeDataset, MVTecLikeFolder, move_seen_anomalies, select_test_subset
from anomalib_ext.data.gpd import GPD
from anomalib_ext.data.synthetic_gpd import SyntheticGPD, generate_dataset

__all__ = [
    "GPD",
    "MVTecLikeDataset",
    "MVTecLikeFolder",
    "SyntheticGPD",
    "generate_dataset",
    "move_seen_anomalies",
    "select_test_subset",
]
