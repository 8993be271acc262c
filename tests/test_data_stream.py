"""The one data path: (index, inputs, target) items, memory-mapped .npz, the test split, the loader, forward."""
from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from compress.data import DataConfig, forward, load_data, loader


def _arrays(n: int = 200, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 4, n)
    x = (y[:, None, None] + rng.normal(size=(n, 3, 5))).astype(np.float32)
    return x, y


@pytest.mark.parametrize("save", [np.savez, np.savez_compressed])
def test_npz_is_memory_mapped_and_split_three_ways(tmp_path: Path, save):
    # setup
    x, y = _arrays()
    save(tmp_path / "d.npz", x=x, y=y)
    # execute
    data = load_data(DataConfig(source="npz:d.npz", val_fraction=0.2, test_fraction=0.25), seed=3, base_dir=tmp_path)
    # assert: the arrays behind the datasets are maps of a file, not copies in memory
    assert isinstance(data.train.x, np.memmap)
    sizes = data.sizes()  # per class, rounded: within a few examples of the fractions
    assert abs(sizes["val"] - 40) <= 2 and abs(sizes["test"] - 50) <= 2 and sum(sizes.values()) == 200
    rows = np.concatenate([data.train.rows, data.val.rows, data.test.rows])
    assert sorted(rows.tolist()) == list(range(200))  # disjoint and complete
    index, inputs, target = data.test[7]
    assert index == 7 and inputs.dtype == torch.float32 and inputs.shape == (3, 5)
    assert np.array_equal(inputs.numpy(), x[data.test.rows[7]]) and target == y[data.test.rows[7]]
    assert data.eval_split == "test" and data.describe()["splits"]["test"]["how"].startswith("stratified 25%")


def test_source_test_arrays_are_the_test_split_and_zero_fraction_means_none(tmp_path: Path):
    x, y = _arrays()
    np.savez(tmp_path / "d.npz", x=x[:150], y=y[:150], x_test=x[150:], y_test=y[150:])
    data = load_data(DataConfig(source="npz:d.npz", test_fraction=0.3), seed=0, base_dir=tmp_path)
    assert data.sizes()["test"] == 50 and data.describe()["splits"]["test"]["how"] == "x_test/y_test"
    assert data.sizes()["train"] + data.sizes()["val"] == 150
    np.savez(tmp_path / "e.npz", x=x, y=y)
    none = load_data(DataConfig(source="npz:e.npz", test_fraction=0), seed=0, base_dir=tmp_path)
    assert none.test is None and none.eval_split == "val" and none.sizes()["test"] == 0


def test_loader_order_is_seeded_and_workers_give_the_same_items(tmp_path: Path):
    x, y = _arrays()
    np.savez(tmp_path / "d.npz", x=x, y=y)
    data = load_data(DataConfig(source="npz:d.npz"), seed=0, base_dir=tmp_path)

    def order(seed: int, workers: int = 0) -> list[int]:
        return torch.cat([i for i, _, _ in loader(data.train, batch_size=16, shuffle=True, seed=seed,
                                                  workers=workers)]).tolist()

    assert order(1) == order(1) != order(2)
    assert order(1, workers=2) == order(1)


def test_forward_passes_dicts_as_keywords():
    class KW(torch.nn.Module):
        def forward(self, input_ids, attention_mask):
            return (input_ids * attention_mask).float().sum(1, keepdim=True)

    ids, mask = torch.ones(2, 3, dtype=torch.long), torch.tensor([[1, 1, 0], [1, 0, 0]])
    assert forward(KW(), {"input_ids": ids, "attention_mask": mask}).flatten().tolist() == [2.0, 1.0]
    assert forward(torch.nn.Identity(), ids) is ids


def test_python_source_streams_items_and_splits_by_labels(tmp_path: Path):
    (tmp_path / "mydata.py").write_text(
        "import numpy as np\n"
        "class DS:\n"
        "    def __len__(self): return 120\n"
        "    def __getitem__(self, i): return np.full((2, 2), i % 3, np.float32), i % 3\n"
        "def make(): return DS()\n")
    data = load_data(DataConfig(source="python:mydata:make", val_fraction=0.25, test_fraction=0.25), seed=0,
                     base_dir=tmp_path)
    assert sum(data.sizes().values()) == 120 and abs(data.sizes()["test"] - 30) <= 2 and data.num_classes == 3
    assert data.input_shape == (2, 2)
    _, inputs, target = data.val[4]
    assert float(inputs[0, 0]) == target


def test_python_source_fingerprint_changes_with_the_inputs_under_the_same_labels(tmp_path: Path):
    """The fingerprint keys every stage's cache: inputs scaled differently under the same labels are other data (it
    digested only the labels before, so a changed pre-processing reused the stale teacher)."""
    def fingerprint(scale: float | str, folder: str) -> str:
        (tmp_path / folder).mkdir()
        sys.modules.pop("fpdata", None)  # (one process: the module is imported afresh from its folder)
        (tmp_path / folder / "fpdata.py").write_text(
            "import numpy as np\n"
            "class DS:\n"
            "    def __len__(self): return 40\n"
            f"    def __getitem__(self, i): return np.full((2,), (i % 2 + 1) * {scale}, np.float32), i % 2\n"
            "def make(): return DS()\n")
        return load_data(DataConfig(source="python:fpdata:make"), seed=0, base_dir=tmp_path / folder).fingerprint

    first = fingerprint(1.0, "a")
    assert fingerprint(2.0, "b") != first
    assert fingerprint(1.0, "c") == first  # (the same data, the same key)
    # inputs that differ on every read (random augmentation in __getitem__): keyed on the labels alone, so two loads
    # (two runs, or torchrun workers comparing what they loaded) still agree
    assert fingerprint("(1 + np.random.rand())", "d") == fingerprint("(1 + np.random.rand())", "e")


def test_teacher_runs_on_the_batch_or_is_looked_up_by_index():
    from compress.train import Teacher

    model = torch.nn.Linear(3, 2)
    inputs, index = torch.randn(4, 3), torch.tensor([2, 0])
    cache = np.arange(10, dtype=np.float32).reshape(5, 2)
    assert Teacher(outputs={"logits": cache})(index, inputs)["logits"].tolist() == [[4.0, 5.0], [0.0, 1.0]]
    online = Teacher(model=model)
    assert online.mode == "on-the-fly" and torch.equal(online(index, inputs), model(inputs).detach())
