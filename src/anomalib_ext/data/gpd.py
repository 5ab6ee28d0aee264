"""GPD: the public Garment Printing Defects dataset (AMFS paper; github JiaoKM/GPD_dataset, ~1.4 GB).

Layout per category ``p001`` … ``p036``: ``train/good``, ``test/<good|color|dim|hole|letter|miss|
over|scratch|stain>``, ``ground_truth/<defect>/<same stem>.jpg|png`` (JPEG masks are thresholded).
"""

from __future__ import annotations

import shutil
import tempfile
import urllib.error
import urllib.request
import zipfile
from pathlib import Path

from tqdm import tqdm

from anomalib_ext.data.folder import MVTecLikeFolder

GPD_ARCHIVE_URL = "https://github.com/JiaoKM/GPD_dataset/archive/refs/heads/main.zip"
GPD_CATEGORIES = tuple(f"p{i:03d}" for i in range(1, 37))
GPD_DEFECT_TYPES = ("color", "dim", "hole", "letter", "miss", "over", "scratch", "stain")


def _download(url: str, target: Path) -> None:
    with urllib.request.urlopen(url, timeout=60) as response:  # ruff: ignore[suspicious-url-open-usage] - fixed https URL
        total = int(response.headers.get("Content-Length", 0)) or None
        with target.open("wb") as file, tqdm(total=total, unit="B", unit_scale=True, desc="Downloading GPD") as bar:
            while chunk := response.read(1 << 20):
                file.write(chunk)
                bar.update(len(chunk))


def _find_category_parent(folder: Path) -> Path:
    """The folder inside an extracted archive that holds ``p001/`` and the other categories."""
    for candidate in [folder, *sorted(p for p in folder.rglob("*") if p.is_dir())]:
        if (candidate / "p001" / "train").is_dir():
            return candidate
    msg = f"The downloaded GPD archive has no p001/train folder under {folder}."
    raise FileNotFoundError(msg)


def download_gpd(root: Path, url: str = GPD_ARCHIVE_URL) -> None:
    """Download and extract GPD into ``root`` atomically (a failed run leaves nothing behind)."""
    root.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=root.parent, prefix=".gpd-download-") as tmp:
        archive = Path(tmp) / "gpd.zip"
        try:
            _download(url, archive)
        except (urllib.error.URLError, TimeoutError, OSError) as error:
            msg = (
                f"Could not download GPD from {url} ({error}). On a machine without internet, download "
                "the repository archive elsewhere, unzip it so that <root>/p001/train/good exists, and pass "
                "`root=` to that folder — or use SyntheticGPD, which generates the same layout offline."
            )
            raise RuntimeError(msg) from error
        with zipfile.ZipFile(archive) as zipped:
            zipped.extractall(Path(tmp) / "extracted")
        source = _find_category_parent(Path(tmp) / "extracted")
        staged = Path(tmp) / "staged"
        source.rename(staged)
        if root.exists():
            for child in staged.iterdir():
                shutil.move(str(child), root / child.name)
        else:
            staged.rename(root)


class GPD(MVTecLikeFolder):
    """The Garment Printing Defects datamodule.

    Args:
        root: dataset folder holding ``p001`` … (downloaded there by ``prepare_data`` when missing).
        category: ``p001`` … ``p036``, a list of them, or ``None`` for all 36.
        defect_types: e.g. ``[letter]`` for the paper's letter subset.
        max_defect_area: e.g. ``0.01`` for a small-scale subset (defects under 1% of the image).
        Other arguments: see :class:`~anomalib_ext.data.folder.MVTecLikeFolder`.
    """

    def __init__(
        self,
        root: str | Path = "./datasets/GPD",
        category: str | list[str] | None = "p001",
        **kwargs,
    ) -> None:
        super().__init__(root=root, category=category, **kwargs)

    def prepare_data(self) -> None:
        """Download and extract the categories that are missing (a clear error without network)."""
        wanted = self.categories or list(GPD_CATEGORIES)
        if all((self.root / name / "train").is_dir() for name in wanted):
            return
        download_gpd(self.root)
