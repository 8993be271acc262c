"""`[quantize] mode = "qat"` on a student with an op QAT cannot run in torch (compress.qat.ops): named by `compress
validate`, and by `compress run` before any stage trains, not after distillation (issue 22, must 5)."""
from __future__ import annotations

from pathlib import Path

from tests.test_bad_inputs import invoke
from tests.test_own_model import error_line, replace, user_dir  # noqa: F401 (a fixture)

MORE_MODELS = '''


class Recurrent(nn.Module):  # the 30 features as 5 steps of 6: ONNX GRU, which QAT has no torch form for
    def __init__(self, num_classes):
        super().__init__()
        self.rnn = nn.GRU(6, 8, batch_first=True)
        self.head = nn.Linear(8, num_classes)

    def forward(self, x):
        out, _ = self.rnn(x.reshape(x.shape[0], 5, 6))
        return self.head(out[:, -1])


def recurrent(input_shape, num_classes):
    return Recurrent(num_classes)


class CosineScaled(nn.Module):  # Cos on a weight alone: ORT folds it before the QDQ graph is made
    def __init__(self, num_classes):
        super().__init__()
        import torch

        self.angle = nn.Parameter(torch.zeros(num_classes))
        self.head = nn.Linear(30, num_classes)

    def forward(self, x):
        return self.head(x.flatten(1)) * self.angle.cos()


def cosine_scaled(input_shape, num_classes):
    return CosineScaled(num_classes)


class Softplus64(nn.Module):  # a softplus in float64 on the data path: QNN's quantizer leaves it in float
    def __init__(self, num_classes):
        super().__init__()
        self.body = nn.Linear(30, 8)
        self.head = nn.Linear(8, num_classes)

    def forward(self, x):
        return self.head(self.body(x.flatten(1)).double().exp().log1p().float())


def softplus64(input_shape, num_classes):
    return Softplus64(num_classes)
'''


def _qat(folder: Path, student: str) -> None:
    (folder / "mymodels.py").write_text((folder / "mymodels.py").read_text() + MORE_MODELS)
    replace(folder, '"mymodels:small_mlp"', f'"mymodels:{student}"')
    toml = folder / "pipeline.toml"
    toml.write_text(toml.read_text() + '[quantize]\nmode = "qat"\n')


def test_a_student_with_an_op_qat_cannot_run_is_refused_before_training(user_dir: Path):  # noqa: F811
    _qat(user_dir, "recurrent")
    line = ("error: pipeline.toml: quantize.mode: quantization-aware training runs the QDQ graph in torch, which has "
            "no counterpart for GRU (nodes /rnn/GRU); use mode = 'static' for this model (found before training)")
    assert error_line(user_dir) == line
    assert error_line(user_dir, "run") == line  # run: before its first training stage
    assert not (user_dir / "runs" / "table" / "distill").exists()
    replace(user_dir, 'mode = "qat"', 'mode = "static"')  # static PTQ leaves the GRU in float: nothing to refuse
    assert invoke(user_dir, "validate", "pipeline.toml").exit_code == 0


def test_qat_settings_that_contradict_it_are_refused_when_the_file_loads(user_dir: Path):  # noqa: F811
    # qoperator passed validate and failed after training, blaming the model; 5 frozen epochs of 2 froze all
    _qat(user_dir, "small_mlp")
    toml = user_dir / "pipeline.toml"
    plain = toml.read_text()
    toml.write_text(plain + 'quant_format = "qoperator"\n')
    assert error_line(user_dir) == ("error: pipeline.toml: quantize.quant_format: mode = 'qat' trains the QDQ graph "
                                    "(QuantizeLinear/DequantizeLinear) and writes one; got 'qoperator': use "
                                    "quant_format = 'qdq' (the default)")
    toml.write_text(plain + "qat_epochs = 2\nqat_freeze_epochs = 5\n")
    assert error_line(user_dir, "run") == (
        "error: pipeline.toml: quantize.qat_freeze_epochs: 5 frozen epochs of qat_epochs = 2 would leave the "
        "activation ranges never learned; use at most 2 (equal: the calibrated ranges kept as they are)")
    assert not (user_dir / "runs").exists()
    toml.write_text(plain + "qat_epochs = 2\nqat_freeze_epochs = 2\n")
    assert invoke(user_dir, "validate", "pipeline.toml").exit_code == 0
    # int8 activations with uint8 weights: validate said ok, then every attempt failed after training (any mode)
    toml.write_text(plain.replace('mode = "qat"', 'mode = "static"') + 'activation_type = "int8"\n'
                    'weight_type = "uint8"\n')
    assert error_line(user_dir) == ("error: pipeline.toml: quantize.weight_type: ONNX Runtime does not quantize int8 "
                                    "activations with uint8 weights; use weight_type = 'int8' (the default) with "
                                    "activation_type = 'int8', or activation_type = 'uint8'")


def test_an_op_on_weights_alone_is_not_refused(user_dir: Path):  # noqa: F811
    _qat(user_dir, "cosine_scaled")
    result = invoke(user_dir, "validate", "pipeline.toml")
    assert result.exit_code == 0, result.output


def test_nodes_the_qnn_graph_leaves_in_float_are_named_before_training(user_dir: Path, caplog):  # noqa: F811
    _qat(user_dir, "softplus64")
    toml = user_dir / "pipeline.toml"
    toml.write_text(toml.read_text() + '[export]\nort_format = true\nedge_targets = ["qnn"]\n')
    result = invoke(user_dir, "validate", "pipeline.toml")
    assert result.exit_code == 0, result.output
    assert [r.getMessage() for r in caplog.records if r.name == "compress"] == [
        "warning: pipeline.toml: export.edge_targets: the QNN QDQ graph leaves 3 node(s) in float, which HTP cannot "
        "run as int8: /Exp (Exp), /Add (Add), /Log (Log) (found before training)"]
    replace(user_dir, '"mymodels:softplus64"', '"mymodels:small_mlp"')  # a graph QNN quantizes whole: no line
    caplog.clear()
    assert invoke(user_dir, "validate", "pipeline.toml").exit_code == 0
    assert not [r for r in caplog.records if r.name == "compress"]


def test_pad_runs_in_torch_as_onnx_runtime_runs_it():
    # QAT had no torch form for Pad, so a ZeroPad2d / reflect-padded student could not use mode = 'qat'
    import numpy as np
    import onnxruntime as ort
    import torch
    from onnx import TensorProto, helper

    from compress.qat.ops import OPS

    x = np.arange(2 * 3 * 4 * 5, dtype=np.float32).reshape(2, 3, 4, 5)
    cases = [("constant", [0, 0, 1, 2, 0, 0, 2, 1], 0.5, None), ("reflect", [0, 0, 1, 2, 0, 0, 2, 1], None, None),
             ("edge", [0, 0, 2, 0, 0, 0, 0, 3], None, None), ("constant", [0, 0, -1, 1, 0, 0, 1, -2], 0.0, None),
             ("constant", [1, 2, 3, 4], 0.0, [2, -1])]
    for mode, pads, value, axes in cases:
        ins = ["x", "pads", "value" if value is not None else "", "axes" if axes is not None else ""]
        while ins[-1] == "":
            ins.pop()
        graph = helper.make_graph(
            [helper.make_node("Pad", ins, ["y"], mode=mode)], "g",
            [helper.make_tensor_value_info("x", TensorProto.FLOAT, x.shape)],
            [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
            [helper.make_tensor("pads", TensorProto.INT64, [len(pads)], pads)]
            + ([helper.make_tensor("value", TensorProto.FLOAT, [], [value])] if value is not None else [])
            + ([helper.make_tensor("axes", TensorProto.INT64, [len(axes)], axes)] if axes is not None else []))
        model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
        expected = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"]).run(
            None, {"x": x})[0]
        got = OPS["Pad"]([torch.from_numpy(x), torch.tensor(pads), None if value is None else torch.tensor(value),
                          None if axes is None else torch.tensor(axes)], {"mode": mode.encode()})
        np.testing.assert_array_equal(got.numpy(), expected, err_msg=f"{mode} {pads} {axes}")


def test_qat_keys_where_nothing_trains_are_warned_unless_a_search_tries_the_mode(monkeypatch, caplog):
    # they were ignored without a word; a refusal broke a search's own 'static' trials and its best.toml
    import logging
    import tomllib

    from compress.config import as_config

    path = Path(__file__).resolve().parents[1] / "pipelines" / "search.toml"
    monkeypatch.chdir(path.parent)  # a dict's relative paths resolve in the working directory
    raw = tomllib.loads(path.read_text())
    raw["quantize"] = {**raw.get("quantize", {}), "mode": "static", "qat_epochs": 2, "qat_lr": 1e-4}
    with caplog.at_level(logging.WARNING, logger="compress"):
        assert as_config(raw).quantize.qat_epochs == 2
        assert not [m for m in caplog.messages if "qat" in m]
        as_config({k: v for k, v in raw.items() if k != "search"})
    assert [m for m in caplog.messages if "qat" in m] == [
        f"warning: {path.parent / '<dict>'}: quantize.qat_epochs, quantize.qat_lr: only mode = 'qat' trains, and mode "
        "is 'static', so they are ignored; set mode = 'qat', or remove them"]
