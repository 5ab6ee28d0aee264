import json
import shutil

import numpy as np
import pytest
from PIL import Image

from anomalib_ext.data import MVTecLikeFolder, move_seen_anomalies
from anomalib_ext.data.folder import MVTecLikeDataset
from anomalib_ext.data.garment_print import DEFECT_TYPES, make_design, render_print_layers, semantic_letter_change
from anomalib_ext.data.mvtec_like import (
    DatasetLayoutError,
    DatasetValidationError,
    MaskMismatchError,
    make_mvtec_like_samples,
    read_binary_mask,
    read_rgb,
)


def test_synthetic_gpd_has_the_gpd_layout(tiny_gpd):
    category = tiny_gpd / "p001"
    assert len(list((category / "train" / "good").glob("*.jpg"))) == 6
    for defect in DEFECT_TYPES:
        images = sorted((category / "test" / defect).glob("*.jpg"))
        masks = sorted((category / "ground_truth" / defect).glob("*.png"))
        assert [p.stem for p in images] == [p.stem for p in masks]  # same stem, like GPD
        for mask in masks:
            assert np.asarray(Image.open(mask)).any(), f"{mask} is empty"


def test_generation_is_deterministic(tmp_path, tiny_gpd):
    from anomalib_ext.data.synthetic_gpd import generate_dataset

    again = generate_dataset(
        tmp_path / "again",
        num_categories=1,
        image_size=128,
        train_count=6,
        test_good_count=3,
        defects_per_type=2,
    )
    for name in ("train/good/003.jpg", "test/letter/001.jpg", "ground_truth/letter/001.png"):
        assert (again / "p001" / name).read_bytes() == (tiny_gpd / "p001" / name).read_bytes()


def test_photographs_vary_in_pose(tiny_gpd):
    a = np.asarray(Image.open(tiny_gpd / "p001/train/good/000.jpg"), dtype=float)
    b = np.asarray(Image.open(tiny_gpd / "p001/train/good/001.jpg"), dtype=float)
    assert np.abs(a - b).mean() > 5  # not the same picture: pose and light differ


def test_letter_defects_are_semantic():
    rng = np.random.default_rng(0)
    design = make_design(rng, 256)
    for _ in range(20):
        changed = semantic_letter_change(design, rng)
        assert changed != design.word and len(changed) == len(design.word)
        assert set(changed) <= set(design.word)  # only letters that occur in the print: every patch is normal
    normal, _ = render_print_layers(design)
    swapped, _ = render_print_layers(design, semantic_letter_change(design, rng))
    assert np.abs(normal - swapped).sum() > 0


def test_datamodule_subsets_and_seen_anomalies(tiny_datamodule):
    dm = tiny_datamodule(defect_types=["letter"])
    dm.setup()
    test = dm.test_data.samples
    assert set(test.label) == {"good", "letter"} and (test.label == "good").sum() == 3
    item = dm.test_data[int(np.flatnonzero(test.label == "letter")[0])]
    assert item.gt_mask.shape == item.image.shape[-2:] and item.gt_mask.any() and item.gt_label == 1

    seen = tiny_datamodule(seen_anomalies=8)
    seen.setup()
    train = seen.train_data.samples
    moved = train[train.label_index == 1]
    assert len(moved) == 8 and set(moved.label) == set(DEFECT_TYPES)  # stratified: one of each type
    assert not set(moved.image_path) & set(seen.test_data.samples.image_path)
    assert all(moved.mask_path.str.len() > 0)


def test_small_defect_subset(tiny_gpd):
    dm = MVTecLikeFolder(root=tiny_gpd, category="p001", max_defect_area=0.005, num_workers=0)
    samples = dm.make_samples()
    defects = samples[(samples.split == "test") & (samples.label_index == 1)]
    full = MVTecLikeFolder(root=tiny_gpd, category="p001", num_workers=0).make_samples()
    assert 0 < len(defects) < (full.label_index == 1).sum()


def test_seen_anomalies_more_than_available_is_an_error(tiny_gpd):
    samples = make_mvtec_like_samples(tiny_gpd / "p001")
    with pytest.raises(ValueError, match="only 16"):
        move_seen_anomalies(samples, 17)


def test_real_jpeg_data_with_mask_suffix(shared_data):
    samples = make_mvtec_like_samples(shared_data / "kolektorsdd")
    assert samples.attrs["task"] == "segmentation"
    defects = samples[samples.label_index == 1]
    assert len(defects) == 52 and all(defects.mask_path.str.endswith("_mask.png"))
    bottle = make_mvtec_like_samples(shared_data / "bottle")
    assert bottle.attrs["task"] == "classification"


def test_bad_inputs_name_the_file_and_the_fix(tmp_path, tiny_gpd):
    with pytest.raises(DatasetLayoutError, match="train/good"):
        make_mvtec_like_samples(tmp_path / "nowhere")
    broken = tmp_path / "broken"
    shutil.copytree(tiny_gpd / "p001", broken)
    (broken / "ground_truth" / "hole" / "000.png").unlink()
    with pytest.raises(MaskMismatchError, match="000.jpg"):
        make_mvtec_like_samples(broken)
    shutil.copy(tiny_gpd / "p001/ground_truth/hole/001.png", broken / "ground_truth/hole/000.png")
    Image.fromarray(np.zeros((10, 10), np.uint8)).save(broken / "ground_truth/hole/001.png")
    (broken / "test/good/000.jpg").write_bytes(b"not an image")
    dm = MVTecLikeFolder(root=tmp_path, category="broken", num_workers=0)
    # Both found by setup(), before any fit (they were found only when testing, after the whole fit).
    with pytest.raises(DatasetValidationError, match="2 file") as info:
        dm.setup()
    assert "10x10" in str(info.value) and "good/000.jpg" in str(info.value)
    samples = dm.make_samples()
    test = MVTecLikeDataset(samples[samples.split == "test"], samples.attrs["task"])  # the same errors when read
    with pytest.raises(MaskMismatchError, match="10x10"):
        test[int(np.flatnonzero(test.samples.image_path.str.endswith("hole/001.jpg"))[0])]
    with pytest.raises(OSError, match="good/000.jpg"):
        test[int(np.flatnonzero(test.samples.image_path.str.endswith("good/000.jpg"))[0])]


def test_mask_names_match_case_insensitively_and_strays_are_warned(tmp_path, tiny_gpd, caplog):
    """``000_mask.PNG`` was ignored: the run dropped to image-level metrics without a word."""
    category = tmp_path / "upper"
    shutil.copytree(tiny_gpd / "p001", category)
    masks = category / "ground_truth" / "hole"
    (masks / "000.png").rename(masks / "000_MASK.PNG")
    (masks / "001.png").rename(masks / "001.Png")
    shutil.copy(masks / "001.Png", masks / "007.png")  # belongs to no test image
    samples = make_mvtec_like_samples(category)
    assert samples.attrs["task"] == "segmentation"
    holes = samples[samples.label == "hole"].set_index("image_path").mask_path
    assert holes[str(category / "test/hole/000.jpg")].endswith("000_MASK.PNG")
    assert holes[str(category / "test/hole/001.jpg")].endswith("001.Png")
    assert any("007.png" in r.getMessage() and "belong to no test image" in r.getMessage() for r in caplog.records)


def test_16bit_images_and_masks_are_scaled_not_clipped(tmp_path):
    """A 16-bit grey PNG read as pure white (mean 255 against 19 for its 8-bit copy) and scored 1.0."""
    grey8 = np.random.default_rng(0).integers(0, 60, (40, 50), dtype=np.uint8)
    Image.fromarray(grey8.astype(np.uint16) * 257).save(tmp_path / "grey16.png")
    image = read_rgb(tmp_path / "grey16.png")
    assert image.shape == (40, 50, 3) and image.dtype == np.uint8
    np.testing.assert_array_equal(image[..., 0], grey8)
    mask = np.zeros((40, 50), np.uint16)
    mask[5:9, 5:9] = 65535
    Image.fromarray(mask).save(tmp_path / "mask16.png")
    Image.fromarray((mask > 0).astype(np.uint8)).save(tmp_path / "mask01.png")  # values 0 and 1
    for name in ("mask16.png", "mask01.png"):
        assert read_binary_mask(tmp_path / name).sum() == 16
    Image.fromarray(np.zeros((4, 4), np.float32)).save(tmp_path / "float.tiff")
    with pytest.raises(OSError, match="floating-point"):
        read_rgb(tmp_path / "float.tiff")


def test_tiny_and_elongated_images_are_warned_by_name(tmp_path, tiny_gpd, caplog):
    category = tmp_path / "odd"
    shutil.copytree(tiny_gpd / "p001", category)
    Image.fromarray(np.zeros((1, 3000, 3), np.uint8)).save(category / "test/good/strip.png")
    Image.fromarray(np.zeros((1, 1, 3), np.uint8)).save(category / "test/good/dot.png")
    MVTecLikeFolder(root=tmp_path, category="odd", num_workers=0).setup()
    messages = [r.getMessage() for r in caplog.records]
    assert any("strip.png" in m and "aspect" in m for m in messages)
    assert any("dot.png" in m and "1x1" in m and "small" in m for m in messages)


def test_gpd_offline_download_fails_clearly_and_writes_nothing(tmp_path):
    from anomalib_ext.data.gpd import download_gpd

    root = tmp_path / "GPD"
    with pytest.raises(RuntimeError, match="SyntheticGPD"):
        download_gpd(root, url="http://127.0.0.1:9/gpd.zip")  # nothing listens on the discard port
    assert not root.exists() and list(tmp_path.iterdir()) == []


def test_make_gpd_command(tmp_path, capsys):
    from anomalib_ext.cli import main

    out = tmp_path / "made"
    assert (
        main([
            "make-gpd",
            "--out",
            str(out),
            "--num-categories",
            "1",
            "--image-size",
            "64",
            "--train-count",
            "2",
            "--test-good-count",
            "1",
            "--defects-per-type",
            "1",
            "--defect-types",
            "letter",
            "hole",
        ])
        == 0
    )
    assert sorted(p.name for p in (out / "p001" / "test").iterdir()) == ["good", "hole", "letter"]
    assert not (tmp_path / "made.partial").exists() and "written" in capsys.readouterr().out


# ---- word-grid prints (semantic letter defects) ------------------------------------------------
def test_word_grid_letter_defects_keep_every_word_a_word_of_the_print():
    from anomalib_ext.data.word_grid import make_word_grid, one_letter_neighbours, semantic_grid_change

    for seed in range(20):
        rng = np.random.default_rng(seed)
        grid = make_word_grid(rng)
        assert len(set(grid.vocabulary)) == len(grid.vocabulary)
        assert all(one_letter_neighbours(grid.vocabulary, i) for i in range(len(grid.vocabulary)))
        assert min(grid.cells.count(i) for i in range(len(grid.vocabulary))) >= 2  # every word occurs elsewhere too
        changed = semantic_grid_change(grid, rng)
        assert changed != grid.cells and sorted(set(changed)) == sorted(set(grid.cells))
        differing = [i for i, (a, b) in enumerate(zip(grid.cells, changed, strict=True)) if a != b]
        words, new_words = grid.words(), grid.words(changed)
        if len(differing) == 1:  # one letter of one word changed, into another word of the vocabulary
            (i,) = differing
            assert sum(a != b for a, b in zip(words[i], new_words[i], strict=True)) == 1
        else:  # two horizontally adjacent words swapped
            i, j = differing
            assert j == i + 1 and j % grid.columns != 0
            assert (new_words[i], new_words[j]) == (words[j], words[i])


def test_word_grid_categories_follow_the_classic_ones_unchanged(tmp_path):
    from anomalib_ext.data.synthetic_gpd import generate_dataset

    small = {
        "image_size": 96,
        "train_count": 2,
        "test_good_count": 1,
        "defects_per_type": 1,
        "defect_types": ["letter"],
    }
    classic = generate_dataset(tmp_path / "classic", num_categories=1, **small)
    both = generate_dataset(tmp_path / "both", num_categories=1, word_grid_categories=1, **small)
    for path in sorted((classic / "p001").rglob("*.*")):  # the classic design is byte-identical
        assert path.read_bytes() == (both / path.relative_to(classic)).read_bytes()
    masks = sorted((both / "p002" / "ground_truth" / "letter").glob("*.png"))
    assert masks and (both / "p002" / "train" / "good" / "000.jpg").is_file()
    assert json.loads((classic / "synthetic_gpd.json").read_text()).get("word_grid_categories") is None
