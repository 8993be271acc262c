"""`images:DIR` edges a new user's folder hits: classes too small for every split, split folders without a class, and
phone JPEGs whose EXIF Orientation tag says how they are shown."""
from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pytest

from compress.data import DataConfig, load_data
from compress.data.images import decode


def make_folder(root: Path, counts: dict[str, int], seed: int = 0) -> Path:
    """counts[name] tiny RGB PNGs in root/<name>/: the class is the dominant colour channel, plus noise."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    for label, (name, n) in enumerate(counts.items()):
        (root / name).mkdir(parents=True, exist_ok=True)
        for i in range(n):
            a = rng.integers(0, 90, (6, 6, 3))
            a[..., label % 3] += 150
            Image.fromarray(a.astype(np.uint8)).save(root / name / f"{i:03d}.png")
    return root


def per_class(ds, n: int) -> list[int]:
    return np.bincount(np.asarray(ds.labels), minlength=n).tolist()


def test_classes_too_small_for_every_split_are_named_in_one_line(tmp_path: Path, caplog: pytest.LogCaptureFixture):
    # before: one/ (a single image) went to train only and two/ missed test, without a word: their accuracy was
    # never measured
    make_folder(tmp_path / "imgs", {"ant": 10, "bee": 10, "one": 1, "three": 3, "two": 2})
    with caplog.at_level(logging.WARNING, logger="compress"):
        data = load_data(DataConfig(source="images:imgs"), seed=0, base_dir=tmp_path)
    assert data.class_names == ["ant", "bee", "one", "three", "two"]
    # stratified: every class that can spare one image beside its training one gets one in val and in test
    assert per_class(data.train, 5) == [6, 6, 1, 1, 1]
    assert per_class(data.val, 5) == [2, 2, 0, 1, 1]
    assert per_class(data.test, 5) == [2, 2, 0, 1, 0]
    assert caplog.messages == [
        f"warning: data.source: {tmp_path / 'imgs'}: classes a split does not show: one/ (1 image: not in val or "
        "test), two/ (2 images: not in test); accuracy on them is not measured there: add images (a class of 3 or "
        "more images gets at least one in every split)"]


def test_without_a_test_split_two_images_are_enough(tmp_path: Path, caplog: pytest.LogCaptureFixture):
    make_folder(tmp_path / "imgs", {"ant": 8, "bee": 8, "one": 1, "two": 2})
    with caplog.at_level(logging.WARNING, logger="compress"):
        data = load_data(DataConfig(source="images:imgs", test_fraction=0.0), seed=0, base_dir=tmp_path)
    assert data.test is None and per_class(data.val, 4)[3] == 1
    assert caplog.messages == [
        f"warning: data.source: {tmp_path / 'imgs'}: classes a split does not show: one/ (1 image: not in val); "
        "accuracy on them is not measured there: add images (a class of 2 or more images gets at least one in every "
        "split)"]


def test_a_folder_where_every_class_has_plenty_says_nothing(tmp_path: Path, caplog: pytest.LogCaptureFixture):
    make_folder(tmp_path / "imgs", {"ant": 12, "bee": 12, "cow": 12})
    with caplog.at_level(logging.WARNING, logger="compress"):
        data = load_data(DataConfig(source="images:imgs", val_fraction=0.25, test_fraction=0.25), seed=0,
                         base_dir=tmp_path)
    assert data.sizes() == {"train": 18, "val": 9, "test": 9} and per_class(data.val, 3) == [3, 3, 3]
    assert caplog.messages == []


def test_split_folders_without_a_class_in_val_or_test_are_said(tmp_path: Path, caplog: pytest.LogCaptureFixture):
    # before: val/ without cow/ (and test/ without bee/ and cow/) passed without a word
    make_folder(tmp_path / "d" / "train", {"ant": 6, "bee": 6, "cow": 6})
    make_folder(tmp_path / "d" / "val", {"ant": 2, "bee": 2}, seed=1)
    make_folder(tmp_path / "d" / "test", {"ant": 2}, seed=2)
    with caplog.at_level(logging.WARNING, logger="compress"):
        data = load_data(DataConfig(source="images:d"), seed=0, base_dir=tmp_path)
    assert data.sizes() == {"train": 18, "val": 4, "test": 2}
    assert caplog.messages == [
        f"warning: data.source: {tmp_path / 'd'}: classes a split does not show: bee/ (8 images: not in test/), "
        "cow/ (6 images: not in val/ or test/); accuracy on them is not measured there: add images (put some of "
        "each in val/ and test/)"]


def test_a_val_folder_beside_a_test_split_made_from_train(tmp_path: Path, caplog: pytest.LogCaptureFixture):
    make_folder(tmp_path / "d" / "train", {"ant": 6, "bee": 6, "one": 1})
    make_folder(tmp_path / "d" / "val", {"ant": 2, "bee": 2, "one": 1}, seed=1)
    with caplog.at_level(logging.WARNING, logger="compress"):
        load_data(DataConfig(source="images:d"), seed=0, base_dir=tmp_path)
    assert caplog.messages == [
        f"warning: data.source: {tmp_path / 'd'}: classes a split does not show: one/ (2 images: not in test); "
        "accuracy on them is not measured there: add images (a class of 2 or more images in train/ gets at least one "
        "in each split made from them)"]


def phone_jpeg(path: Path, orientation: int) -> np.ndarray:
    """A 4x8 (H x W) JPEG of bold blocks (no two corners alike) with an EXIF Orientation tag; the stored pattern."""
    from PIL import Image

    a = np.zeros((4, 8, 3), dtype=np.uint8)
    a[:2, :4] = (255, 0, 0)
    a[:2, 4:] = (0, 255, 0)
    a[2:, :4] = (0, 0, 255)
    a[2:, 4:] = (255, 255, 255)
    img = Image.fromarray(a).resize((32, 16), Image.NEAREST)  # 16 x 32 pixels: blocks of 8 x 16
    exif = img.getexif()
    exif[0x0112] = orientation
    img.save(path, exif=exif, quality=100, subsampling=0)
    return np.asarray(img, dtype=np.float32) / 255.0


def test_a_phone_jpeg_is_read_the_way_its_exif_orientation_shows_it(tmp_path: Path):
    # before: the Orientation tag was ignored and a portrait photo (6: turn 90 degrees clockwise) was read on its side
    from PIL import Image

    stored = phone_jpeg(tmp_path / "p.jpg", 6)
    x = decode(str(tmp_path / "p.jpg"), (32, 16)).numpy().transpose(1, 2, 0)
    assert x.shape == (32, 16, 3)
    upright = np.rot90(stored, k=-1)  # clockwise
    assert np.abs(x - upright).max() < 0.1
    with Image.open(tmp_path / "p.jpg") as im:  # exactly the stored pixels, turned
        raw = np.asarray(im.convert("RGB"), dtype=np.float32) / 255.0
    assert np.array_equal(x, np.rot90(raw, k=-1))


def test_an_image_folder_of_turned_photos_takes_their_shown_size(tmp_path: Path):
    make_folder(tmp_path / "imgs", {"ant": 3, "bee": 3})
    for name in ("ant", "bee"):
        for f in (tmp_path / "imgs" / name).iterdir():
            f.unlink()
        for i in range(3):
            phone_jpeg(tmp_path / "imgs" / name / f"{i}.jpg", 6)
    data = load_data(DataConfig(source="images:imgs", mean=(0.5,) * 3, std=(0.5,) * 3), seed=0, base_dir=tmp_path)
    assert data.input_shape == (3, 32, 16)
    assert data.train[0][1].shape == (3, 32, 16)


def test_an_orientation_of_1_reads_as_stored(tmp_path: Path):
    stored = phone_jpeg(tmp_path / "p.jpg", 1)
    x = decode(str(tmp_path / "p.jpg"), (16, 32)).numpy().transpose(1, 2, 0)
    assert x.shape == (16, 32, 3) and np.abs(x - stored).max() < 0.1


def test_how_pixels_are_decoded_is_part_of_the_data_fingerprint(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    # stages cached before EXIF orientation was applied hold sideways teacher outputs: the key must move with decode
    import compress.data.images as images

    make_folder(tmp_path / "imgs", {"ant": 4, "bee": 4})
    before = load_data(DataConfig(source="images:imgs"), seed=0, base_dir=tmp_path).fingerprint
    monkeypatch.setattr(images, "DECODING", "as-stored")
    assert load_data(DataConfig(source="images:imgs"), seed=0, base_dir=tmp_path).fingerprint != before


def test_a_png_whose_pixel_data_does_not_decode_is_a_bad_file_not_a_black_image(tmp_path: Path):
    # its checksums pass the scan; reading its EXIF loaded it and swallowed the error: trained on as all zeros
    import struct
    import zlib

    from PIL import Image

    from compress.errors import CompressError

    Image.fromarray(np.random.default_rng(0).integers(0, 255, (16, 16, 3), dtype=np.uint8)).save(tmp_path / "a.png")
    raw = (tmp_path / "a.png").read_bytes()
    out, i = raw[:8], 8
    while i < len(raw):
        (length,), kind = struct.unpack(">I", raw[i:i + 4]), raw[i + 4:i + 8]
        data = raw[i + 8:i + 8 + length]
        if kind == b"IDAT":  # the zlib header kept, the stream scrambled, the CRC made right again
            data = data[:2] + bytes(255 - x for x in data[2:])
        out += struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)
        i += 12 + length
    (tmp_path / "bad.png").write_bytes(out)
    with Image.open(tmp_path / "bad.png") as im:
        im.verify()  # what a scan checks: passes
    with pytest.raises(CompressError, match=r"bad.png: cannot decode image \(OSError: broken data stream"):
        decode(str(tmp_path / "bad.png"), (16, 16))


def test_a_val_split_beside_the_class_folders_without_train_is_refused(tmp_path: Path):
    # imgs/{ant,bee}/ and imgs/val/{ant,bee}/: val/ became a third class holding images of both
    from compress.errors import CompressError

    make_folder(tmp_path / "imgs", {"ant": 6, "bee": 6})
    make_folder(tmp_path / "imgs" / "val", {"ant": 3, "bee": 3})
    with pytest.raises(CompressError, match=r"imgs has val/ holding class folders beside the class folders, and no "
                                            r"train/: put the training class folders under train/"):
        load_data(DataConfig(source="images:imgs"), seed=0, base_dir=tmp_path)
    make_folder(tmp_path / "ok", {"valid": 6, "invalid": 6})  # classes that happen to be named like a split
    assert load_data(DataConfig(source="images:ok"), seed=0, base_dir=tmp_path).class_names == ["invalid", "valid"]


def test_links_to_one_image_are_kept_in_one_split(tmp_path: Path, caplog: pytest.LogCaptureFixture):
    # before: each link was an image of its own, so a copy could be trained on and its twin scored in test
    import os

    root = make_folder(tmp_path / "imgs", {"ant": 12, "bee": 12})
    for name in ("ant", "bee"):  # every image of a class twice more, as links (a class balanced by links)
        for i in range(12):
            for k in (1, 2):
                (root / name / f"{i:03d}-link{k}.png").symlink_to(root / name / f"{i:03d}.png")
    with caplog.at_level(logging.WARNING, logger="compress"):
        data = load_data(DataConfig(source="images:imgs"), seed=0, base_dir=tmp_path)
    where: dict[str, set[str]] = {}
    for part in ("train", "val", "test"):
        for p in getattr(data, part).paths:
            where.setdefault(os.path.realpath(p), set()).add(part)
    assert len(where) == 24 and all(len(parts) == 1 for parts in where.values())
    assert len(data.train) + len(data.val) + len(data.test) == 72
    assert caplog.messages == [f"warning: data.source: {root}: 24 images are reached by more than one path (72 paths: "
                               "symbolic links to one file); each image's paths are kept in one split, and the split "
                               "counts 24 distinct images"]


def test_training_links_into_val_are_said(tmp_path: Path, caplog: pytest.LogCaptureFixture):
    # the user's own split folders stay as they are, but a link in train/ to a val/ image was trained on and scored
    root = tmp_path / "imgs"
    make_folder(root / "train", {"ant": 8, "bee": 8})
    make_folder(root / "val", {"ant": 3, "bee": 3}, seed=1)
    for i in range(2):
        (root / "train" / "ant" / f"link{i}.png").symlink_to(root / "val" / "ant" / f"{i:03d}.png")
    with caplog.at_level(logging.WARNING, logger="compress"):
        load_data(DataConfig(source="images:imgs"), seed=0, base_dir=tmp_path)
    (root / "val" / "bee" / "from-train.png").symlink_to(root / "train" / "bee" / "000.png")  # the other way too
    make_folder(root / "test", {"ant": 2, "bee": 2}, seed=2)
    (root / "test" / "ant" / "from-val.png").symlink_to(root / "val" / "ant" / "002.png")  # and val with test
    with caplog.at_level(logging.WARNING, logger="compress"):
        load_data(DataConfig(source="images:imgs"), seed=0, base_dir=tmp_path)
    assert [m for m in caplog.messages if "two split folders" in m][-1] == (
        f"warning: data.source: {root}: image files in two split folders (links): 3 in train/ and val/, 1 in val/ and "
        "test/; they are scored on what trained or chose the model: keep each image in one split folder (copy it, or "
        "remove one of its paths)")


def test_a_class_whose_files_all_link_to_another_class_is_said_untrained(tmp_path: Path,
                                                                          caplog: pytest.LogCaptureFixture):
    # its one file went with the ant image it links to; before, only "bee/ (1 image: not in test)" was said
    root = make_folder(tmp_path / "imgs", {"ant": 12, "cat": 12})
    (root / "bee").mkdir()
    (root / "bee" / "odd.png").symlink_to(root / "ant" / "000.png")
    with caplog.at_level(logging.WARNING, logger="compress"):  # seed 2: the ant image (and bee's link) held out
        data = load_data(DataConfig(source="images:imgs"), seed=2, base_dir=tmp_path)
    assert per_class(data.train, 3)[1] == 0
    assert [m for m in caplog.messages if "without a training image" in m] == [
        f"warning: data.source: {root}: classes without a training image (their files are links to images a held-out "
        "split took): bee/ (1 image); the model cannot learn them: give them images of their own"]
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="compress"):  # seed 0: bee's link trained
        data = load_data(DataConfig(source="images:imgs"), seed=0, base_dir=tmp_path)
    assert per_class(data.train, 3)[1] == 1 and not [m for m in caplog.messages if "without a training" in m]


def test_too_few_distinct_images_are_counted_as_such(tmp_path: Path):
    from compress.errors import CompressError

    root = make_folder(tmp_path / "imgs", {"ant": 1, "bee": 1})
    for name in ("ant", "bee"):
        for i in range(5):
            (root / name / f"l{i}.png").symlink_to(root / name / "000.png")
    with pytest.raises(CompressError, match=r"too few images \(12, 2 distinct\) to hold out a validation split"):
        load_data(DataConfig(source="images:imgs"), seed=0, base_dir=tmp_path)
