"""`images:DIR`: a folder of PNGs per class, decoded in workers, split, normalised, augmented; bad files skipped."""
from __future__ import annotations

import json
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch

from compress.data import DataConfig, load_data
from compress.errors import CompressError

CLASSES = ("cat", "dog", "eel")


def make_images(root: Path, per_class: int = 12, size: int = 8, seed: int = 0) -> Path:
    """per_class RGB PNGs per class: the class is the dominant colour channel, plus noise."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    for label, name in enumerate(CLASSES):
        (root / name).mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            a = rng.integers(0, 90, (size, size, 3))
            a[..., label] += 150
            Image.fromarray(a.astype(np.uint8)).save(root / name / f"{i:03d}.png")
    return root


def test_image_folder_splits_normalises_and_records_class_names(tmp_path: Path):
    # setup
    make_images(tmp_path / "imgs")
    # execute
    data = load_data(DataConfig(source="images:imgs", val_fraction=0.25, test_fraction=0.25), seed=0,
                     base_dir=tmp_path)
    # assert
    assert data.class_names == list(CLASSES) and data.num_classes == 3 and data.input_shape == (3, 8, 8)
    assert data.sizes() == {"train": 18, "val": 9, "test": 9}
    index, x, y = data.test[2]
    assert index == 2 and x.shape == (3, 8, 8) and x.dtype == torch.float32 and 0 <= y < 3
    assert x[y].mean() > x[(y + 1) % 3].mean()  # the class's channel is still the bright one
    stacked = torch.stack([data.train[i][1] for i in range(len(data.train))])
    assert abs(float(stacked.mean())) < 0.2  # normalised by the mean/std it computed from the training images
    desc = data.describe()
    assert desc["mean_std"].startswith("computed from 18 training images") and len(desc["mean"]) == 3
    assert data.train_plain is data.train  # no augmentation: one dataset


def test_folder_splits_are_used_and_augmentation_applies_to_training_only(tmp_path: Path):
    make_images(tmp_path / "d" / "train")
    make_images(tmp_path / "d" / "val", per_class=3, seed=1)
    make_images(tmp_path / "d" / "test", per_class=2, seed=2)
    cfg = DataConfig(source="images:d", augment=("flip", "crop", "jitter"), image_size=6, mean=(0.5, 0.5, 0.5),
                     std=(0.25, 0.25, 0.25))
    data = load_data(cfg, seed=0, base_dir=tmp_path)
    assert data.sizes() == {"train": 36, "val": 9, "test": 6}
    assert data.describe()["splits"]["val"]["how"] == "folder val/" and data.describe()["mean_std"] == "[data] mean/std"
    assert data.input_shape == (3, 6, 6)
    torch.manual_seed(0)
    augmented = torch.stack([data.train[i][1] for i in range(len(data.train))])
    plain = torch.stack([data.train_plain[i][1] for i in range(len(data.train))])
    assert augmented.shape == plain.shape and not torch.equal(augmented, plain)
    assert torch.equal(data.val[0][1], data.val[0][1])  # validation is never augmented


def test_unreadable_files_are_skipped_up_to_the_fraction_then_exit_2(tmp_path: Path, caplog):
    make_images(tmp_path / "imgs")
    bad = tmp_path / "imgs" / "dog" / "broken.png"
    bad.write_bytes(b"\x89PNG\r\n\x1a\nnot really a png")
    data = load_data(DataConfig(source="images:imgs", max_bad_fraction=0.05), seed=0, base_dir=tmp_path)
    assert data.describe()["skipped_count"] == 1 and data.describe()["skipped_files"][0]["file"] == str(bad)
    assert sum(data.sizes().values()) == 36
    assert f"skipped {bad}" in caplog.text
    with pytest.raises(CompressError, match=r"1 of 37 image files are unreadable \(over data.max_bad_fraction = 0\); "
                                            rf"first: {bad}"):
        load_data(DataConfig(source="images:imgs", max_bad_fraction=0.0), seed=0, base_dir=tmp_path)


@pytest.mark.parametrize("workers", [0, 2])
def test_a_file_that_stops_decoding_after_the_scan_is_skipped_then_past_the_fraction_exit_2(tmp_path: Path, caplog,
                                                                                             workers: int):
    from compress.data import loader
    from compress.errors import unwrap_worker

    make_images(tmp_path / "imgs")
    data = load_data(DataConfig(source="images:imgs", val_fraction=0.2, test_fraction=0.0, max_bad_fraction=0.05,
                                workers=workers), seed=0, base_dir=tmp_path)
    strict = load_data(DataConfig(source="images:imgs", val_fraction=0.2, test_fraction=0.0, max_bad_fraction=0.0,
                                  workers=workers), seed=0, base_dir=tmp_path)
    gone = data.train.paths[3]
    Path(gone).write_bytes(b"\x89PNG\r\n\x1a\ntruncated after the scan")  # e.g. a copy still being written
    seen = [int(i) for index, x, y in loader(data.train, batch_size=8, shuffle=False, seed=0, workers=workers)
            for i in index]
    assert seen == [i for i in range(len(data.train)) if i != 3]
    if workers == 0:  # (a worker's warning goes to its own stderr, which caplog does not see)
        assert f"warning: data.source: skipped {gone}: cannot decode image" in caplog.text
    with pytest.raises(CompressError) as err:
        list(loader(strict.train, batch_size=8, shuffle=False, seed=0, workers=workers))
    line = unwrap_worker(str(err.value))
    assert line.startswith(f"data.source: 1 of {len(strict.train)} images of a split failed to decode during the run "
                           f"(over data.max_bad_fraction = 0); last: {gone}: cannot decode image") and "\n" not in line


def test_the_mean_and_std_skip_an_image_that_does_not_decode(tmp_path: Path, caplog):
    # the run skips such a file (above), but computing the mean and std stopped at it with exit 2
    from types import SimpleNamespace

    from compress.data.images import _stats

    paths = sorted(str(p) for p in make_images(tmp_path / "imgs").rglob("*.png"))
    Path(paths[0]).write_bytes(b"\x89PNG\r\n\x1a\ntruncated after the scan")
    mean, std, how = _stats(SimpleNamespace(mean=None, std=None), paths, (8, 8), "data.source")
    assert how == f"computed from {len(paths) - 1} training images (seed 0)"
    assert len(mean) == 3 and min(std) > 0.01
    assert f"warning: data.source: skipped {paths[0]}: cannot decode image" in caplog.text


def test_a_16_bit_grayscale_png_reads_its_own_values(tmp_path: Path):
    # Pillow's convert("RGB") saturated every 16-bit pixel to 255: every image read white, accuracy at chance
    from PIL import Image

    from compress.data.images import decode

    values = (np.arange(64).reshape(8, 8) * 1000).astype(np.uint16)
    Image.fromarray(values).save(tmp_path / "g16.png")
    x = decode(str(tmp_path / "g16.png"), (8, 8)).numpy()
    assert x.shape == (3, 8, 8)
    assert np.allclose(x[0], values / 65535.0, atol=1e-6) and np.array_equal(x[0], x[2])


def test_a_class_folder_only_val_has_is_refused(tmp_path: Path):
    # its images were left out of the figures silently (val size 20 of 30, classes of train/ only)
    make_images(tmp_path / "imgs" / "train")
    make_images(tmp_path / "imgs" / "val", per_class=4)
    make_images(tmp_path / "extra", per_class=4)
    (tmp_path / "extra" / "cat").rename(tmp_path / "imgs" / "val" / "fox")
    with pytest.raises(CompressError) as err:
        load_data(DataConfig(source="images:imgs"), seed=0, base_dir=tmp_path)
    assert str(err.value) == ("data.source: val/ has class folders train/ lacks (fox); the model learns the classes of "
                              "train/ (cat, dog, eel): add them there or remove them")


def test_image_keys_need_an_image_source():
    with pytest.raises(ValueError, match="apply to source = 'images:DIR' only"):
        DataConfig(source="digits", augment=("flip",))


@pytest.mark.parametrize("size", [0, -4, (8, 0)])
def test_an_image_size_under_one_pixel_is_refused_by_its_key(size):
    # it failed later, on an image file's name
    with pytest.raises(ValueError, match=r"image_size: expected a side \(or \[height, width\]\) of at least 1 pixel"):
        DataConfig(source="images:x", image_size=size)


ZOO = '''
import torch.nn as nn


def teacher(input_shape=(3, 8, 8), num_classes=3):
    return nn.Sequential(nn.Flatten(), nn.Linear(192, 32), nn.ReLU(), nn.Linear(32, num_classes))


def student(input_shape=(3, 8, 8), num_classes=3):
    return nn.Sequential(nn.Flatten(), nn.Linear(192, 8), nn.ReLU(), nn.Linear(8, num_classes))
'''

TOML = '''
[pipeline]
name = "imgs"
seed = 0

[data]
source = "images:imgs"
val_fraction = 0.25
test_fraction = 0.25
batch_size = 16
workers = 2
augment = ["flip"]

[teacher]
model = "imgzoo:teacher"

[teacher.train]
epochs = 8
lr = 1e-2

[student]
model = "imgzoo:student"

[distill]
epochs = 8
lr = 1e-2
control = true

[benchmark]
providers = ["cpu"]
batch_sizes = [1]
threads = [1]
warmup_runs = 2
min_runs = 10
min_seconds = 0.0
repetitions = 1
'''


@pytest.mark.e2e
def test_image_pipeline_runs_teacher_on_the_fly_and_ships_class_names(tmp_path: Path):
    # setup
    import onnx

    import compress

    make_images(tmp_path / "imgs", per_class=16)
    (tmp_path / "imgzoo.py").write_text(ZOO)  # not zoo.py: other tests import their own zoo in-process
    (tmp_path / "pipeline.toml").write_text(textwrap.dedent(TOML))
    # execute
    report = compress.run(tmp_path / "pipeline.toml", progress=False)
    # assert: figures on the 12-image test split, named; augmentation made distill run the teacher per batch
    data = report["data"]
    assert data["evaluated_on"] == "test" and data["splits"]["test"]["size"] == 12
    assert data["class_names"] == list(CLASSES) and data["teacher_outputs"] == "on-the-fly"
    assert any("too small to tell them apart" in w for w in data["warnings"])
    models = {m["name"]: m for m in report["models"]}
    assert models["teacher"]["accuracy"] > 0.6 and models["student"]["accuracy_val"] is not None
    assert not (tmp_path / "runs/imgs/teacher/logits.npy").exists()
    meta = {p.key: p.value for p in onnx.load(str(tmp_path / "runs/imgs" / models["student"]["path"])).metadata_props}
    assert json.loads(meta["class_names"]) == list(CLASSES) and meta["compress.task"] == "classification"
    assert "Figures are measured on **test** (12 examples)" in (tmp_path / "runs/imgs/report.md").read_text()


def test_an_image_that_stops_decoding_keeps_its_row_on_both_sides_and_counts_wrong(tmp_path: Path):
    # torch's predict kept the row as NaN, ONNX Runtime's pass dropped it (parity failed on shapes), and a NaN row's
    # argmax (0) counted as right for a label-0 image
    from types import SimpleNamespace

    from PIL import Image

    from compress.data.images import ImageDataset
    from compress.data.inputs import TensorInputs
    from compress.onnx.export import export_onnx
    from compress.onnx.parity import compare
    from compress.onnx.run import outputs_on
    from compress.tasks.classification import Classification
    from compress.train.loop import predict

    paths = []
    for i in range(4):
        paths.append(str(tmp_path / f"{i}.png"))
        Image.fromarray((np.random.default_rng(i).random((8, 8, 3)) * 255).astype(np.uint8)).save(paths[-1])
    whole = Path(paths[1]).read_bytes()
    Path(paths[1]).write_bytes(whole[: len(whole) // 2])  # damage the scan does not see
    ds = ImageDataset(paths, np.array([0, 0, 0, 1]), size=(8, 8), mean=[0.5] * 3, std=[0.25] * 3,
                      max_bad_fraction=0.5)
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(192, 2))
    torch_out = predict(model, ds, inputs=TensorInputs(), names=("logits",))
    export_onnx(model, torch.zeros(2, 3, 8, 8), tmp_path / "m.onnx", output_names=("logits",))
    ort_out = outputs_on(tmp_path / "m.onnx", SimpleNamespace(split=lambda s: ds, inputs=TensorInputs(), workers=0),
                         "val", names=("logits",))
    assert torch_out["logits"].shape == ort_out["logits"].shape == (4, 2)
    assert np.isnan(ort_out["logits"][1]).all() and compare([torch_out["logits"]], [ort_out["logits"]], atol=1e-4)["ok"]
    right = (torch_out["logits"].argmax(1) == np.array([0, 0, 0, 1]))[[0, 2, 3]].sum()
    assert Classification().metrics(torch_out, np.array([0, 0, 0, 1]), None)["accuracy"] == right / 4


def test_a_one_channel_model_on_an_image_folder_is_told_the_files_are_read_as_rgb(tmp_path: Path):
    from tests.test_bad_inputs import invoke

    make_images(tmp_path / "imgs", per_class=4)
    (tmp_path / "gray.py").write_text("import torch.nn as nn\n\n\ndef net(num_classes):\n    return nn.Sequential("
                                      "nn.Conv2d(1, 4, 3), nn.Flatten(), nn.LazyLinear(num_classes))\n")
    (tmp_path / "p.toml").write_text('[pipeline]\nname = "g"\n[data]\nsource = "images:imgs"\n'
                                     '[teacher]\nmodel = "gray:net"\n[teacher.train]\nepochs = 1\n'
                                     '[student]\nmodel = "gray:net"\n')
    result = invoke(tmp_path, "validate", "p.toml")
    assert result.exit_code == 2, result.output
    assert result.stderr.strip().endswith("; images: folders are read as RGB (3 channels, grayscale files too): build "
                                          "the model for 3 input channels, or give the data as npz: or python: "
                                          "arrays with the channels it takes")
