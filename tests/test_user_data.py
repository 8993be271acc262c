"""A user's own data in each form [data] documents (images:, npz:, python:), as people have it: each case is a
defect found by bringing such data, with the exact line `compress validate` (or the loader) now says.
"""
from __future__ import annotations

import io
import logging
import os
import textwrap
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner, Result

from compress.cli import main
from compress.data import DataConfig, load_data
from tests import test_images
from tests.test_images import CLASSES
IMAGES_TOML = """\
[pipeline]
name = "u"
[data]
source = "images:imgs"
[teacher]
model = "builtin:cnn-small"
[teacher.train]
epochs = 1
[student]
model = "builtin:cnn-small"
"""


def validate(folder: Path, toml: str) -> Result:
    """`compress validate p.toml` from `folder`, as a user runs it."""
    (folder / "p.toml").write_text(toml)
    old = Path.cwd()
    os.chdir(folder)
    try:
        return CliRunner().invoke(main, ["validate", "p.toml"])
    finally:
        os.chdir(old)


def error_line(result: Result) -> str:
    """The one stderr line of an exit-2 refusal (no traceback)."""
    detail = f"exit {result.exit_code}\nstderr: {result.stderr}\nexc: {result.exception!r}"
    assert result.exit_code == 2 and isinstance(result.exception, SystemExit), detail
    lines = [ln for ln in result.stderr.splitlines() if ln.startswith("error: ")]
    assert len(lines) == 1 and "Traceback" not in result.output, detail
    return lines[0]


def make_images(root: Path, per_class: int = 4, size: int = 8) -> Path:
    return test_images.make_images(root, per_class=per_class, size=size)


def encoded(fmt: str) -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(np.random.default_rng(1).integers(0, 255, (32, 32, 3)).astype(np.uint8)).save(buf, fmt)
    return buf.getvalue()


def load_error(path: Path) -> str:
    """What decoding `path` raises, as the scan reports it."""
    from PIL import Image

    try:
        with Image.open(path) as im:
            im.load()
    except Exception as exc:
        return f"{type(exc).__name__}: {exc}"
    raise AssertionError(f"{path} decodes")


@pytest.mark.parametrize("fmt, name", [("JPEG", "cut.jpg"), ("BMP", "cut.bmp")])
def test_an_image_cut_short_is_refused_by_validate(tmp_path: Path, fmt: str, name: str):
    # before: Pillow's verify() reads no JPEG or BMP data, so validate said ok and the run stopped later (exit 2
    # mid-run: 1 of 6 images of a split failed to decode during the run)
    make_images(tmp_path / "imgs")
    cut = tmp_path / "imgs" / "eel" / name
    data = encoded(fmt)
    cut.write_bytes(data[:len(data) * 6 // 10])
    line = error_line(validate(tmp_path, IMAGES_TOML))
    assert line == (f"error: p.toml: data.source: 1 of 13 image files are unreadable (over data.max_bad_fraction = "
                    f"0.01); first: {cut}: {load_error(cut)}")


def test_a_whole_jpeg_with_bytes_after_its_end_marker_is_read(tmp_path: Path):
    # no false alarm: padding or a camera's trailer after the end marker is a readable file (decoded once to check)
    make_images(tmp_path / "imgs")
    (tmp_path / "imgs" / "cat" / "padded.JPG").write_bytes(encoded("JPEG") + b"\x00" * 16)
    (tmp_path / "imgs" / "dog" / "trailer.jpeg").write_bytes(encoded("JPEG") + b"SEFH trailer data")
    data = load_data(DataConfig(source="images:imgs"), seed=0, base_dir=tmp_path)
    assert sum(data.sizes().values()) == 14 and data.describe()["skipped_count"] == 0


def test_macos_resource_forks_and_the___macosx_folder_are_left_out(tmp_path: Path):
    # before: each '._0.png' (AppleDouble, written beside every file a Mac copies to a USB stick or a zip) was an
    # unreadable image, 3 of 13 over max_bad_fraction: exit 2; and __MACOSX/ was a class of its own
    make_images(tmp_path / "imgs")
    fork = b"\x00\x05\x16\x07\x00\x02\x00\x00Mac OS X        "
    for name in CLASSES:
        (tmp_path / "imgs" / name / "._0.png").write_bytes(fork)
    (tmp_path / "imgs" / "__MACOSX" / "cat").mkdir(parents=True)
    (tmp_path / "imgs" / "__MACOSX" / "cat" / "._0.png").write_bytes(fork)
    result = validate(tmp_path, IMAGES_TOML)
    assert result.exit_code == 0, result.output
    data = load_data(DataConfig(source="images:imgs"), seed=0, base_dir=tmp_path)
    assert data.class_names == list(CLASSES) and sum(data.sizes().values()) == 12


def test_a_symlinked_folder_inside_a_class_is_read(tmp_path: Path):
    # before: pathlib's rglob does not follow symlinked folders: cat/more -> elsewhere held 4 images, left out
    # without a word (and a link back up to the class's parent is not followed: no loop)
    make_images(tmp_path / "imgs")
    make_images(tmp_path / "elsewhere")
    (tmp_path / "imgs" / "cat" / "more").symlink_to(tmp_path / "elsewhere" / "cat", target_is_directory=True)
    (tmp_path / "imgs" / "dog" / "up").symlink_to(tmp_path / "imgs", target_is_directory=True)
    data = load_data(DataConfig(source="images:imgs", val_fraction=0.25, test_fraction=0.25), seed=0,
                     base_dir=tmp_path)
    labels = [int(data.split(s)[i][2]) for s in ("train", "val", "test") for i in range(len(data.split(s)))]
    assert sorted(labels) == [0] * 8 + [1] * 4 + [2] * 4


def test_a_link_to_an_image_that_is_gone_is_reported_as_unreadable(tmp_path: Path):
    # before: left out without a word (is_file() is False for a broken link); it is an example the user meant
    make_images(tmp_path / "imgs")
    gone = tmp_path / "imgs" / "cat" / "gone.png"
    gone.symlink_to(tmp_path / "moved" / "gone.png")
    assert error_line(validate(tmp_path, IMAGES_TOML)) == (
        "error: p.toml: data.source: 1 of 13 image files are unreadable (over data.max_bad_fraction = 0.01); first: "
        f"{gone}: FileNotFoundError: [Errno 2] No such file or directory: '{gone}'")


def test_an_empty_class_folder_is_said(tmp_path: Path, caplog: pytest.LogCaptureFixture):
    # before: 'empty class/' became class 3 of 4 with no example, without a word (npz label gaps are warned)
    make_images(tmp_path / "imgs")
    (tmp_path / "imgs" / "empty class").mkdir()
    with caplog.at_level(logging.WARNING, logger="compress"):
        data = load_data(DataConfig(source="images:imgs"), seed=0, base_dir=tmp_path)
    assert data.num_classes == 4
    assert caplog.messages == [f"warning: data.source: {tmp_path / 'imgs'}: class folders with no training image: "
                               "empty class/; the models still get an output for each, which no example trains: add "
                               "images or remove the folders"]


@pytest.mark.parametrize("splits, line", [
    (("Train", "Test"), "{root} has Test/, Train/ but no train/: split folders are train/ (required), val/ and test/, "
                        "in lower case, each with one sub-folder per class; rename them (without split folders, "
                        "every sub-folder of the root is a class)"),
    (("train", "valid"), "{root} has valid/ beside train/, which is not read: the validation folder must be named val/ "
                         "and the test folder test/; rename it"),
])
def test_split_folders_spelt_otherwise_are_refused(tmp_path: Path, splits: tuple[str, str], line: str):
    # before: Train/ and Test/ were read as two classes named 'Test' and 'Train' (labels silently wrong), and
    # valid/ (Roboflow's and Kaggle's spelling) beside train/ was not read at all
    for split in splits:
        make_images(tmp_path / "imgs" / split)
    assert error_line(validate(tmp_path, IMAGES_TOML)) == (
        f"error: p.toml: data.source: {line.format(root=tmp_path / 'imgs')}")


def test_classes_named_like_a_split_without_a_training_folder_are_classes(tmp_path: Path):
    # valid/ beside invalid/ (a document checker's two classes): no train/ or Train/, so the root holds the classes
    for name in ("valid", "invalid"):
        make_images(tmp_path / "imgs" / name)
    result = validate(tmp_path, IMAGES_TOML)
    assert result.exit_code == 0, result.output


NPZ_TOML = IMAGES_TOML.replace("images:imgs", "npz:t.npz").replace("builtin:cnn-small", "builtin:mlp")


def _npz(folder: Path, compressed: bool = False, **arrays: np.ndarray) -> Path:
    (np.savez_compressed if compressed else np.savez)(folder / "t.npz", **arrays)
    return folder / "t.npz"


def _xy(n: int = 60) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(0)
    return rng.normal(size=(n, 6)), rng.integers(0, 3, n)


def test_labels_far_larger_than_any_class_count_are_refused_in_one_line(tmp_path: Path):
    # before: the label-gap warning, then torch's "DefaultCPUAllocator: can't allocate 1125899906843648 bytes"
    x, _ = _xy()
    y = np.resize(np.array([0, 1, 2**40]), len(x))
    _npz(tmp_path, x=x, y=y)
    assert error_line(validate(tmp_path, NPZ_TOML)) == (
        "error: p.toml: data.source: labels run up to 1099511627776, and models get one output per label value; "
        "renumber the 3 distinct labels 0..K-1 (e.g. numpy.unique(y, return_inverse=True)[1])")


def test_the_label_gap_warning_does_not_build_every_value_up_to_the_largest():
    # before: the label-gap warning built set(range(largest label + 1)): labels such as ids near 2**40 ran the
    # machine out of memory (killed, or MemoryError with a traceback); here under a 1 GB address-space limit
    import resource
    import subprocess
    import sys

    code = ("import logging, numpy as np; logging.basicConfig(format='%(message)s');"
            "from compress.data.sources import _warn_label_gaps;"
            "_warn_label_gaps(np.array([0, 1, 2**40]), 2**40 + 1, 'data.source')")
    limit = 1 << 30
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60,
                            preexec_fn=lambda: resource.setrlimit(resource.RLIMIT_AS, (limit, limit)))
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stderr.splitlines() == [
        "warning: data.source: labels run 0..1099511627776 but these values never occur: 2, 3, 4, 5, 6, 7, 8, 9, 10, "
        "11, 12, 13, 14, 15, 16, 17, 18,... (10 more characters); models get 1099511627777 outputs, one per label "
        "value; renumber the labels 0..2 if the gaps are not meant"]


def test_x_val_of_another_shape_names_the_file(tmp_path: Path):
    # before: 'data.source: x_val examples have shape (5,), x has (6,)': no file named, unlike every other check
    x, y = _xy()
    path = _npz(tmp_path, x=x, y=y, x_val=x[:10, :5], y_val=y[:10])
    assert error_line(validate(tmp_path, NPZ_TOML)) == (
        f"error: p.toml: data.source: {path}: x_val examples have shape (5,), x has (6,); every split's examples need "
        "the same shape")


def test_complex_x_is_refused(tmp_path: Path):
    # before: validate said ok; training read the real part only (a ComplexWarning from numpy was the only sign)
    x, y = _xy()
    path = _npz(tmp_path, x=x.astype(np.complex64), y=y)
    assert error_line(validate(tmp_path, NPZ_TOML)) == (
        f"error: p.toml: data.source: {path}: x must hold real numbers, got dtype complex64; store the real and "
        "imaginary parts as two channels")


def test_a_compressed_npz_with_python_objects_says_so_as_a_stored_one_does(tmp_path: Path):
    # before: "ValueError: Array can't be memory-mapped: Python objects in dtype." (np.savez_compressed only)
    x, y = _xy()
    path = _npz(tmp_path, compressed=True, x=x, y=np.array([int(v) for v in y], dtype=object))
    assert error_line(validate(tmp_path, NPZ_TOML)) == (
        f"error: p.toml: data.source: {path} is not a readable .npz file (ValueError: y.npy holds Python objects, "
        "which would need pickle; store plain numbers)")


def test_a_label_only_the_validation_split_has_is_said(tmp_path: Path, caplog: pytest.LogCaptureFixture):
    # before: y in {0, 1}, y_val in {0, 1, 2}: class 2 counted in num_classes and the figures, never trained, unsaid
    x, y = _xy()
    _npz(tmp_path, x=x, y=y % 2, x_val=x[:9], y_val=np.arange(9) % 3)
    with caplog.at_level(logging.WARNING, logger="compress"):
        load_data(DataConfig(source="npz:t.npz"), seed=0, base_dir=tmp_path)
    assert caplog.messages == ["warning: data.source: labels 2 occur in the validation or test split but never in "
                               "training; no example teaches them, and their examples count as errors in the figures"]


MYDATA = '''
import numpy as np
import torch
from torch.utils.data import Dataset, IterableDataset, TensorDataset

X = np.random.default_rng(0).normal(size=(40, 5)).astype(np.float32)
Y = np.arange(40) % 3


class Items(Dataset):
    def __init__(self, item):
        self.item = item

    def __len__(self):
        return 40

    def __getitem__(self, i):
        return self.item(i)


class Stream(IterableDataset):
    def __iter__(self):
        return iter([(X[i], int(Y[i])) for i in range(40)])


def half_labels():
    return Items(lambda i: (X[i], float(Y[i]) + 0.5))


def name_labels():
    return Items(lambda i: (X[i], "abc"[Y[i]]))


def one_hot():
    return Items(lambda i: (X[i], np.eye(3, dtype=np.float32)[Y[i]]))


def dicts():
    return Items(lambda i: {"x": X[i], "label": int(Y[i])})


def splits_by_name():
    return {"train": Items(lambda i: (X[i], int(Y[i]))), "val": Items(lambda i: (X[i], int(Y[i])))}


def stream():
    return Stream()


def generator():
    return ((X[i], int(Y[i])) for i in range(40))


def nothing():
    return None


def arrays():
    return X, Y


def needs_root(root, split="train"):
    return plain()


def plain():
    return TensorDataset(torch.from_numpy(X), torch.from_numpy(Y))


def bare():
    return Items(lambda i: torch.from_numpy(np.stack([X[i], X[i]])))


def triples():
    return Items(lambda i: (X[i], int(Y[i]), "meta"))


def pil_images():
    from PIL import Image

    return Items(lambda i: (Image.fromarray(np.full((8, 8, 3), 40 * Y[i], np.uint8)), int(Y[i])))
'''

PYTHON_CASES = {
    # before: int() truncated 0.5 to 0, 1.5 to 1: validate ok, labels silently wrong
    "half_labels": "mydata:half_labels(): train example 0 has the label 0.5; labels must be integers 0..K-1",
    # before: "ValueError: invalid literal for int() with base 10: 'a'"
    "name_labels": "mydata:name_labels(): train example 0 has the label 'a'; labels must be integers 0..K-1: number "
                   "the class names",
    # before: "TypeError: only 0-dimensional arrays can be converted to Python scalars"
    "one_hot": "mydata:one_hot(): train example 0 has a label of shape (3,); classification labels are single "
               "integers 0..K-1 (one-hot or scores: take the argmax), or set data.task = 'tensors' for array targets",
    # before: "could not read the train dataset ... as (x, y) pairs: KeyError: 0" (the dict's keys were unpacked)
    "dicts": "mydata:dicts(): train example 0 is a dict (keys x, label); items must be (x, y) pairs: return (inputs, "
             "label) from __getitem__ (inputs may be a dict of named arrays)",
    # before: "... KeyError: 0"
    "splits_by_name": "mydata:splits_by_name() returned a dict (keys train, val) as the train dataset; return a "
                      "dataset, (train, val) or (train, val, test)",
    # before: "... TypeError: object of type 'Stream' has no len()"
    "stream": "mydata:stream() returned Stream as the train dataset, which has no len() or indexing (an "
              "IterableDataset, a generator?); return a map-style dataset: __len__ and __getitem__, e.g. "
              "torch.utils.data.TensorDataset",
    "generator": "mydata:generator() returned generator as the train dataset, which has no len() or indexing (an "
                 "IterableDataset, a generator?); return a map-style dataset: __len__ and __getitem__, e.g. "
                 "torch.utils.data.TensorDataset",
    # before: "... TypeError: object of type 'NoneType' has no len()"
    "nothing": "mydata:nothing() returned None as the train dataset, which has no len() or indexing (an "
               "IterableDataset, a generator?); return a map-style dataset: __len__ and __getitem__, e.g. "
               "torch.utils.data.TensorDataset",
    # before: "... ValueError: too many values to unpack (expected 2)" (x and y read as train and val datasets)
    "arrays": "mydata:arrays() returned 2 arrays, not datasets; return a dataset of (x, y) pairs, e.g. "
              "torch.utils.data.TensorDataset(torch.as_tensor(x), torch.as_tensor(y)), or save the arrays with "
              "numpy.savez and use source = 'npz:FILE'",
    # before: "mydata:needs_root() raised TypeError: needs_root() missing 1 required positional argument: 'root'"
    "needs_root": "mydata:needs_root requires arguments (root) but is called with none; give them defaults, or add a "
                  "function without arguments that calls it",
    # before: validate ok, and the tensor's two rows were read as x and y (an unlabelled clip of two channels)
    "bare": "mydata:bare(): train example 0 is a Tensor of shape (2, 5); items must be (x, y) pairs: return "
            "(inputs, label) from __getitem__ ((inputs, None) where there is no label)",
    # before: "ValueError: too many values to unpack (expected 2)"
    "triples": "mydata:triples(): train example 0 is a tuple of 3; items must be (x, y) pairs: return (inputs, "
               "label) from __getitem__ ((inputs, None) where there is no label)",
    # before: validate ok, the MLP trained on (H, W, C) pixels of 0..255; a CNN failed blaming teacher.model
    "pil_images": "mydata:pil_images(): train example 0 is a PIL image; return a float (C, H, W) tensor, e.g. "
                  "torch.from_numpy(numpy.asarray(image, 'float32') / 255).permute(2, 0, 1), or put the files in "
                  "folders and use source = 'images:DIR'",
}


@pytest.mark.parametrize("case", list(PYTHON_CASES))
def test_python_datasets_as_people_write_them_get_one_line(tmp_path: Path, case: str):
    (tmp_path / "mydata.py").write_text(MYDATA)
    toml = NPZ_TOML.replace("npz:t.npz", f"python:mydata:{case}")
    assert error_line(validate(tmp_path, toml)) == f"error: p.toml: data.source: {PYTHON_CASES[case]}"


def test_a_python_dataset_split_three_ways_says_training_is_the_rest(tmp_path: Path):
    # before: the train split was described as 'train dataset' while 40% of it was held out for val and test
    (tmp_path / "mydata.py").write_text(MYDATA)
    data = load_data(DataConfig(source="python:mydata:plain"), seed=0, base_dir=tmp_path)
    assert data.describe()["splits"]["train"] == {"size": 22, "how": "the rest of the train dataset"}


def test_a_label_only_a_python_validation_set_has_is_said(tmp_path: Path, caplog: pytest.LogCaptureFixture):
    (tmp_path / "mine.py").write_text(textwrap.dedent('''
        import torch
        from torch.utils.data import TensorDataset

        def two():
            x = torch.zeros(12, 3)
            return TensorDataset(x, torch.arange(12) % 2), TensorDataset(x[:6], torch.arange(6) % 3)
    '''))
    with caplog.at_level(logging.WARNING, logger="compress"):
        load_data(DataConfig(source="python:mine:two"), seed=0, base_dir=tmp_path)
    assert caplog.messages == ["warning: data.source: labels 2 occur in the validation or test split but never in "
                               "training; no example teaches them, and their examples count as errors in the figures"]


def test_a_function_whose_decorator_fills_its_arguments_is_called(tmp_path: Path):
    # the arguments check read the wrapped function's signature: a decorator that supplies root (gin, hydra) was refused
    (tmp_path / "deco.py").write_text(textwrap.dedent('''
        import functools

        import torch
        from torch.utils.data import TensorDataset

        def with_root(fn):
            @functools.wraps(fn)
            def call():
                return fn(root="here")
            return call

        @with_root
        def data(root):
            return TensorDataset(torch.randn(20, 3), torch.arange(20) % 2)
    '''))
    assert len(load_data(DataConfig(source="python:deco:data"), seed=0, base_dir=tmp_path).train) > 0


def test_train_spelt_otherwise_but_the_same_folder_is_read(tmp_path: Path):
    # a case-insensitive file system (macOS, Windows) opens Train/ as train/: a link stands in for it here
    make_images(tmp_path / "imgs" / "train")
    (tmp_path / "imgs" / "Train").symlink_to(tmp_path / "imgs" / "train")
    result = validate(tmp_path, IMAGES_TOML)
    assert result.exit_code == 0, result.output
