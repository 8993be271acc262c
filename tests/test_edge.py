"""compress.edge, compress.kit and `compress edge`: ORT format, parity, readiness, fixed batch, bench kit."""
from __future__ import annotations

import ast
import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from compress import edge
from compress.errors import CompressError

CHECKED = ("NNAPI", "CoreML-MLProgram", "CoreML-NeuralNetwork")


def _conv_model(path: Path, *, batch: int | str = "batch", cumsum: bool = False) -> Path:
    """x[N,1,4,4] -> Conv -> Relu -> [CumSum] -> Relu -> y. CumSum is in none of ORT's NNAPI/CoreML rules."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(0)
    inits = [numpy_helper.from_array(rng.standard_normal((2, 1, 3, 3)).astype(np.float32), "w"),
             numpy_helper.from_array(rng.standard_normal(2).astype(np.float32), "b"),
             numpy_helper.from_array(np.array(3, dtype=np.int64), "axis")]
    nodes = [helper.make_node("Conv", ["x", "w", "b"], ["c"], name="conv", pads=[1, 1, 1, 1]),
             helper.make_node("Relu", ["c"], ["r1"], name="relu1")]
    last = "r1"
    if cumsum:
        nodes.append(helper.make_node("CumSum", ["r1", "axis"], ["cs"], name="cumsum"))
        last = "cs"
    nodes.append(helper.make_node("Relu", [last], ["y"], name="relu2"))
    graph = helper.make_graph(
        nodes, "tiny",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [batch, 1, 4, 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [batch, 2, 4, 4])],
        initializer=inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    onnx.save(model, str(path))
    return path


def test_to_ort_format_writes_model_and_operator_config_and_matches_onnx(tmp_path):
    # setup
    model = _conv_model(tmp_path / "tiny.onnx")
    # execute
    out = edge.to_ort_format(model, tmp_path / "out")
    feed = {"x": np.random.default_rng(1).standard_normal((3, 1, 4, 4)).astype(np.float32)}
    parity = edge.ort_parity(model, Path(out["ort_path"]), feed)
    # assert
    assert Path(out["ort_path"]).name == "tiny.basic.ort" and out["bytes"] == Path(out["ort_path"]).stat().st_size
    config = Path(out["config_path"]).read_text().splitlines()
    ops = {line for line in config if not line.startswith("#") and line}
    assert ops == {"ai.onnx;11;Conv", "ai.onnx;14;Relu"}
    assert parity["max_abs_diff"] <= 1e-5 and parity["top1_agreement"] == 1.0 and parity["outputs"] == 1
    assert out["log"]  # the tool's own messages are kept, not printed


def test_the_readiness_advice_names_what_is_still_dynamic():
    # after --fixed-batch 1, a [1, 'seq'] input was told to set --fixed-batch 1 again
    from compress.edge.readiness import _fix_advice

    batch = "set [export] fixed_batch = 1 (or `compress edge MODEL --fixed-batch 1`) to fix the batch dimension"
    assert _fix_advice([{"name": "x", "shape": ["N", 3, 32, 32]}]) == batch
    assert _fix_advice([{"name": "ids", "shape": [1, "seq"]}, {"name": "mask", "shape": [1, "seq"]}]) == \
        "fix the other dynamic dimensions with `compress edge MODEL --fix-dim seq=N`"
    assert _fix_advice([{"name": "img", "shape": ["N", 3, "?", 48]}]) == \
        f"{batch}; fix the other dynamic dimensions with `compress edge MODEL --fix-dim img:2=N`"
    assert _fix_advice([]) is None


def test_readiness_lists_every_node_and_the_unsupported_op(tmp_path):
    # setup: fixed shapes, so only the operator decides
    model = _conv_model(tmp_path / "cs.onnx", batch=1, cumsum=True)
    # execute
    section = edge.readiness(model)
    # assert
    assert section["dynamic_inputs"] == [] and section["fix"] is None
    for key in CHECKED:
        p = section["providers"][key]
        assert p["available"] is True
        assert [n["name"] for n in p["nodes"]] == ["conv", "relu1", "cumsum", "relu2"]
        assert p["nodes_total"] == 4 and p["nodes_taken"] == 3 and p["partitions"] == 2
        assert p["partition_sizes"] == [2, 1]
        assert p["unsupported_ops"] == ["ai.onnx:CumSum"]
        cumsum = p["nodes"][2]
        assert cumsum["taken"] is False and cumsum["partition"] is None
        assert cumsum["reason"] == f"operator ai.onnx:CumSum not in the {p['provider']} rules"
        assert [n["partition"] for n in p["nodes"]] == [0, 0, None, 1]
    for key in ("XNNPACK", "QNN"):
        assert section["providers"][key]["available"] is False
        assert "onnxruntime.tools ships no" in section["providers"][key]["reason"]
    table = edge.readiness_table(section)
    assert "NNAPI" in table and "3/4" in table and "CumSum" in table


def test_dynamic_batch_is_reported_and_fix_batch_fixes_it(tmp_path):
    # setup
    model = _conv_model(tmp_path / "dyn.onnx")
    # execute
    before = edge.readiness(model)
    fixed = edge.fix_batch(model, tmp_path / "fixed.onnx", batch=1)
    after = edge.readiness(fixed)
    # assert
    assert before["dynamic_inputs"] == [{"name": "x", "shape": ["batch", 1, 4, 4]}]
    assert "fixed_batch = 1" in before["fix"]
    nnapi = before["providers"]["NNAPI"]
    assert nnapi["nodes_taken"] == 0 and nnapi["fallback_due_to_dynamic_shape"] == 3
    assert nnapi["nodes"][0]["reason"] == "an input has a dynamic shape"
    assert all(n["taken_if_shapes_fixed"] for n in nnapi["nodes"])
    assert nnapi["if_shapes_fixed"] == {"nodes_taken": 3, "partitions": 1, "suitability": "yes"}
    assert after["dynamic_inputs"] == [] and after["providers"]["NNAPI"]["nodes_taken"] == 3
    import onnx

    y = onnx.load(str(fixed)).graph.output[0].type.tensor_type.shape.dim
    assert [d.dim_value for d in y] == [1, 2, 4, 4]


def test_fix_batch_refuses_to_change_an_already_fixed_batch(tmp_path):
    model = _conv_model(tmp_path / "b2.onnx", batch=2)
    with pytest.raises(CompressError, match=r"already has a fixed batch of 2, not 1"):
        edge.fix_batch(model, tmp_path / "out.onnx", batch=1)


def test_truncated_or_missing_model_is_one_line_error(tmp_path):
    model = _conv_model(tmp_path / "m.onnx")
    bad = tmp_path / "bad.onnx"
    bad.write_bytes(model.read_bytes()[:40])
    with pytest.raises(CompressError) as err:
        edge.to_ort_format(bad, tmp_path / "out")
    assert str(err.value).startswith(f"{bad}: expected a valid ONNX model, got ")
    assert "\n" not in str(err.value)
    with pytest.raises(CompressError, match="expected an ONNX model file, got nothing there"):
        edge.readiness(tmp_path / "missing.onnx")


def test_cli_edge_writes_ort_config_and_readiness(tmp_path):
    from click.testing import CliRunner

    from compress.cli import main

    model = _conv_model(tmp_path / "m.onnx", cumsum=True)
    result = CliRunner().invoke(main, ["edge", str(model), "--out", str(tmp_path / "e"), "--fixed-batch", "1"])
    assert result.exit_code == 0, result.output
    assert "parity vs ONNX: max abs diff" in result.output and "CumSum" in result.output
    section = json.loads((tmp_path / "e" / "edge.json").read_text())
    assert section["fixed_batch"] == 1 and section["parity_ok"] is True
    assert Path(section["ort"]["ort_path"]).is_file() and Path(section["ort"]["config_path"]).is_file()
    assert section["readiness"]["providers"]["NNAPI"]["nodes_taken"] == 3

    bad = tmp_path / "bad.onnx"
    bad.write_bytes(b"not a model")
    result = CliRunner().invoke(main, ["edge", str(bad)])
    assert result.exit_code == 2 and result.output.count("\n") == 1 and "expected a valid ONNX model" in result.output


def test_import_compress_edge_stays_light():
    code = "import sys, compress.edge, compress.kit, compress.cli.edge; " \
           "print(sorted(m for m in ('torch', 'onnx', 'onnxruntime', 'numpy') if m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


@pytest.mark.parametrize("script", ["bench_kit.py", "paired_kit.py"])
def test_bench_kit_scripts_import_only_stdlib_numpy_onnxruntime(script: str):
    tree = ast.parse(edge.make_kit.__globals__["SCRIPT"].with_name(script).read_text())
    names = {a.name.split(".")[0] for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names}
    names |= {n.module.split(".")[0] for n in ast.walk(tree) if isinstance(n, ast.ImportFrom) and n.module}
    third_party = names - set(sys.stdlib_module_names)
    # onnxruntime_qnn: optional plugin, imported under try/except ImportError only when --provider qnn asks for it;
    # paired_kit, placement_kit: the kit's own scripts beside bench_kit.py
    assert third_party - {"onnxruntime_qnn", "paired_kit", "placement_kit"} <= {"numpy", "onnxruntime"}
    assert "numpy" in third_party


def _run_kit(python: str, kit: Path, *args: str) -> subprocess.CompletedProcess:
    # -I: isolated, so nothing from this checkout (compress) can sneak onto the path
    return subprocess.run([python, "-I", "bench_kit.py", *args], cwd=kit, capture_output=True, text=True,
                          timeout=300)


def test_kit_runs_with_this_interpreter_and_reports_other_hardware_as_unavailable(tmp_path):
    # setup
    model = _conv_model(tmp_path / "m.onnx")
    kit = edge.make_kit(model, tmp_path / "kit", batch=2, providers=["cpu", "xnnpack", "CUDAExecutionProvider"],
                        provider_options={"xnnpack": {"intra_op_num_threads": 2}}, name="tiny",
                        repetitions=2, min_runs=20, min_seconds=0.0, warmup_runs=2)
    # execute
    done = _run_kit(sys.executable, kit, "--json", "out.json")
    strict = _run_kit(sys.executable, kit, "--provider", "cpu", "--provider", "nnapi", "--strict",
                      "--repetitions", "1")
    # assert: what onnxruntime here lacks is reported unavailable, the rest measured (CPU only on the usual box)
    from tests.conftest import available_providers

    asked = ["CPUExecutionProvider", "XnnpackExecutionProvider", "CUDAExecutionProvider"]
    measured = [p for p in asked if p in available_providers()]
    assert sorted(p.name for p in kit.iterdir()) == sorted(
        ["README.txt", "bench_kit.py", "expected.npz", "inputs.npz", "kit.json", "model.onnx", "out.json",
         "placement_kit.py"])
    assert done.returncode == 0, done.stderr
    report = json.loads((kit / "out.json").read_text())
    assert report["schema"] == "compress.report/1" and report["final"] == "tiny"
    (entry,) = report["models"]
    assert [r["provider"] for r in entry["latency"]] == measured
    row = entry["latency"][0]
    assert row["provider"] == "CPUExecutionProvider" and row["batch"] == 2 and row["threads"] == 1
    assert row["runs"] == len(row["samples_ms"]) >= 40 and row["repetitions"] == 2
    assert row["p50_ms"] <= row["p90_ms"] <= row["p99_ms"]
    assert row["ci95_p50_ms"][0] <= row["p50_ms"] <= row["ci95_p50_ms"][1] and row["throughput_per_s"] > 0
    assert entry["parity"] == {"max_abs_diff": 0.0, "top1_agreement": 1.0}
    assert [u["provider"] for u in entry["unavailable"]] == [p for p in asked if p not in measured]
    assert strict.returncode == 2 and "unavailable under --strict: NnapiExecutionProvider" in strict.stderr
    # bad usage is exit 2, as `compress bench` (a typo exited 0 with nothing timed; a bad option 1, a "regression")
    typo = _run_kit(sys.executable, kit, "--provider", "xnnpak", "--json", "typo.json")
    assert typo.returncode == 2 and typo.stderr.startswith("error: --provider: unknown provider 'xnnpak'")
    assert not (kit / "typo.json").exists()
    nothing = _run_kit(sys.executable, kit, "--provider", "nnapi")
    assert nothing.returncode == 2 and "error: nothing was timed: NnapiExecutionProvider: " in nothing.stderr
    option = _run_kit(sys.executable, kit, "--provider-option", "cpu:x")
    assert option.returncode == 2 and "error: --provider-option: expected PROVIDER:KEY=VALUE" in option.stderr
    assert "compress compare local.json device.json" in (kit / "README.txt").read_text()
    assert "Paired with the older model" not in (kit / "README.txt").read_text()


def test_a_kit_with_an_older_model_says_how_it_is_paired(tmp_path):
    # paired mode was in kit.json and the scripts only: README.txt did not mention against.onnx
    model = _conv_model(tmp_path / "m.onnx")
    kit = edge.make_kit(model, tmp_path / "kit", batch=2, against=model, max_regression=0.05)
    text = (kit / "README.txt").read_text()
    assert "Paired with the older model (against.onnx)" in text and "beyond +5% at the paired interval" in text
    assert (kit / "against.onnx").is_file() and (kit / "paired_kit.py").is_file()


@pytest.mark.slow
def test_kit_runs_in_a_fresh_venv_with_only_onnxruntime_and_numpy(tmp_path):
    # setup: a clean venv from the base interpreter, not this project's
    model = _conv_model(tmp_path / "m.onnx")
    kit = edge.make_kit(model, tmp_path / "kit", providers=["cpu", "nnapi"], repetitions=2, min_runs=20,
                        min_seconds=0.0)
    venv = tmp_path / "venv"
    start = time.perf_counter()
    subprocess.run([getattr(sys, "_base_executable", sys.executable), "-m", "venv", str(venv)], check=True,
                   timeout=300)
    python = str(venv / "bin" / "python")
    subprocess.run([python, "-m", "pip", "install", "-q", "onnxruntime", "numpy"], check=True, timeout=600,
                   env={**os.environ, "PIP_NO_INPUT": "1"})
    # execute
    done = _run_kit(python, kit, "--json", "device.json")
    seconds = time.perf_counter() - start
    # assert
    assert done.returncode == 0, done.stderr
    freeze = subprocess.run([python, "-m", "pip", "freeze"], capture_output=True, text=True, check=True).stdout
    installed = {line.split("==")[0].lower() for line in freeze.splitlines() if line}
    assert "compress" not in installed and "torch" not in installed and "onnx" not in installed
    report = json.loads((kit / "device.json").read_text())
    entry = report["models"][0]
    assert entry["latency"][0]["provider"] == "CPUExecutionProvider" and entry["parity"]["max_abs_diff"] <= 1e-5
    assert entry["unavailable"][0]["provider"] == "NnapiExecutionProvider"
    env = report["environment"]
    print(f"fresh-venv kit run: {seconds:.1f} s (venv + pip install + bench; onnxruntime {env['onnxruntime']}, "
          f"numpy {env['numpy']}, python {env['python']})")


def test_readiness_of_an_extended_graph_falls_back_to_basic_and_says_why(tmp_path):
    # Conv + Relu becomes com.microsoft:FusedConv at 'extended': no ONNX shapes, never taken by NNAPI/CoreML
    model = _conv_model(tmp_path / "m.onnx", batch=1)
    section = edge.readiness(model, optimization="extended")
    assert section["analysed"] == "basic-optimized graph (the extended one holds contrib ops)"
    assert "com.microsoft:FusedConv" in section["notes"][0]
    assert section["providers"]["NNAPI"]["nodes_taken"] == 3


def test_bench_kit_json_is_read_by_compare_next_to_a_local_bench(tmp_path):
    from click.testing import CliRunner

    from compress.cli import main

    # setup: `compress bench --json --kit` on this machine
    model = _conv_model(tmp_path / "m.onnx", batch=1)
    quick = ["--min-runs", "20", "--min-seconds", "0", "--repetitions", "1", "--warmup", "2", "--quiet"]
    local = CliRunner().invoke(main, ["bench", str(model), "--json", str(tmp_path / "local.json"),
                                      "--kit", str(tmp_path / "kit"), *quick])
    assert local.exit_code == 0, local.output
    # execute: the kit "on the device", then compare
    done = _run_kit(sys.executable, tmp_path / "kit", "--json", "device.json", "--repetitions", "1",
                    "--min-seconds", "0", "--min-runs", "20")
    # A budget of x1001 no timing on this box reaches either way: the verdict is "ok" whatever the load, so the test
    # is about the kit's JSON being read and matched, not about this machine's timing noise.
    result = CliRunner().invoke(main, ["compare", str(tmp_path / "local.json"), str(tmp_path / "kit" / "device.json"),
                                       "--max-regression", "1000"])
    # assert: exactly one verdict row, the local bench's (provider, batch, threads) matched to the kit's (a key the
    # two files did not share would give a 'missing' and an 'added' row instead), verdict in the last column
    assert done.returncode == 0, done.stderr
    assert result.exit_code == 0, result.output
    head, rule, *rows = result.stdout.splitlines()
    assert head.split()[:2] == ["model", "provider"] and set(rule) == {"-"}
    assert len(rows) == 1, result.stdout
    assert re.fullmatch(r"-\s+CPUExecutionProvider\s+1\s+1\s+\d+\.\d{4}ms\s+\d+\.\d{4}ms\s+\d+\.\d{3}\s+\d+\.\d{3}"
                        r"\s+\S+(\s+\d+\.\d{2})?\s+ok", rows[0]), rows[0]


def test_an_ir3_graph_with_weights_listed_as_inputs_gets_an_ort_copy_without_them(tmp_path):
    import onnx
    from click.testing import CliRunner
    from onnx import TensorProto, helper, numpy_helper

    from compress.cli import main

    # setup: old model-zoo style (IR 3, opset 9): every initializer is also a graph input
    w = numpy_helper.from_array(np.ones((2, 1, 3, 3), dtype=np.float32), "w")
    inputs = [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 1, 4, 4]),
              helper.make_tensor_value_info("w", TensorProto.FLOAT, [2, 1, 3, 3])]
    graph = helper.make_graph([helper.make_node("Conv", ["x", "w"], ["y"], pads=[1, 1, 1, 1])], "old", inputs,
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 2, 4, 4])], [w])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 9)])
    model.ir_version = 3
    path = tmp_path / "old.onnx"
    onnx.save(model, str(path))
    # execute
    result = CliRunner().invoke(main, ["edge", str(path), "--out", str(tmp_path / "e")])
    # assert: converted, parity on the one real input, and the ORT copy asks only for x
    assert result.exit_code == 0, result.output
    section = json.loads((tmp_path / "e" / "edge.json").read_text())
    assert section["parity_ok"] and section["onnx_path"].endswith("old.inputs.onnx")
    assert [i.name for i in onnx.load(section["onnx_path"]).graph.input] == ["x"]


def test_edge_takes_a_model_with_external_data(tmp_path: Path):
    from click.testing import CliRunner

    from compress.cli import main

    from .test_cli_quantize import external_mlp

    model = external_mlp(tmp_path / "ext.onnx")
    result = CliRunner().invoke(main, ["edge", str(model), "--out", str(tmp_path / "e")])
    assert result.exit_code == 0, result.output
    section = json.loads((tmp_path / "e" / "edge.json").read_text())
    assert section["parity"]["ok"] and section["ort"]["bytes"] > 64 * 256 * 4  # the weights are inside the .ort


def test_edge_refuses_a_model_over_2_gb_in_one_line(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    from click.testing import CliRunner

    import compress.onnx.graph
    from compress.cli import main

    from .test_cli_quantize import external_mlp

    monkeypatch.setattr(compress.onnx.graph, "PROTOBUF_LIMIT", 10_000)  # the 2 GB limit, scaled to this model
    model = external_mlp(tmp_path / "ext.onnx")
    result = CliRunner().invoke(main, ["edge", str(model), "--out", str(tmp_path / "e")])
    assert result.exit_code == 2
    assert result.output.strip() == (
        f"error: {model}: 0.00 GB with its external data; an ORT-format model is one flatbuffer of at most 2 GB, so "
        "it cannot be made for this model: quantize it first (`compress quantize`, int8 weights are 4x smaller)")


def test_the_kit_records_where_the_nodes_ran_on_the_device(tmp_path):
    from click.testing import CliRunner

    from compress.cli import main

    model = _conv_model(tmp_path / "m.onnx", batch=1)
    made = CliRunner().invoke(main, ["bench", str(model), "--kit", str(tmp_path / "kit"), "--min-runs", "5",
                                     "--min-seconds", "0", "--repetitions", "1", "--warmup", "1", "--quiet"])
    assert made.exit_code == 0, made.output
    done = _run_kit(sys.executable, tmp_path / "kit", "--json", "device.json", "--repetitions", "1",
                    "--min-seconds", "0", "--min-runs", "5", "--strict")
    assert done.returncode == 0, done.stderr
    row = json.loads((tmp_path / "kit" / "device.json").read_text())["models"][0]["latency"][0]
    from compress.bench.placement import placement

    expected = placement(model, "CPUExecutionProvider")  # compress's own audit of the same model
    assert {k: row["placement"][k] for k in ("nodes_total", "nodes_on_cpu")} == \
        {k: expected[k] for k in ("nodes_total", "nodes_on_cpu")} and expected["nodes_total"] > 0


def test_a_fixed_batch_with_inputs_of_another_count_runs_the_parity_in_whole_batches(tmp_path: Path):
    # --fixed-batch 2 with 7 rows in --inputs: the parity ran all 7 at once on a model that takes exactly 2
    # ("did not run on the sample inputs"); now 3 whole batches, and fewer rows than one batch is named
    from click.testing import CliRunner

    from compress.cli import main

    model = _conv_model(tmp_path / "m.onnx")
    np.savez(tmp_path / "seven.npz", x=np.random.default_rng(0).standard_normal((7, 1, 4, 4)).astype(np.float32))
    np.savez(tmp_path / "one.npz", x=np.random.default_rng(0).standard_normal((1, 1, 4, 4)).astype(np.float32))
    run = (lambda npz, out: CliRunner().invoke(main, ["edge", str(model), "--fixed-batch", "2", "--inputs",
                                                      str(tmp_path / npz), "--out", str(tmp_path / out)]))
    ok, few = run("seven.npz", "a"), run("one.npz", "b")
    assert ok.exit_code == 0, ok.output
    assert few.exit_code == 2
    assert few.output.strip().endswith("its batch is fixed to 2, but the sample inputs hold 1 rows; give at least 2 "
                                       "(--inputs)")


@pytest.mark.parametrize("extra, line", [
    (["--qnn-option", "htp_arch=73"], "error: --qnn-option: applies to the QNN target; add --provider qnn, or drop it"),
    (["--activation-type", "uint16"], "error: --activation-type: applies to the QNN target; add --provider qnn, or "
                                      "drop it"),
    (["--provider", "qnn", "--calibration", "c.npz", "--qnn-option", "soc_model=abc"],
     "error: --qnn-option 'soc_model=abc': soc_model takes a number (soc_model=60 is Snapdragon 8 Gen 3, htp_arch=75 "
     "its HTP), got 'abc'"),
    (["--provider", "qnn", "--calibration", "y8.npz"], "error: y8.npz: 'y' must hold one class index per sample (16 "
                                                       "samples); got an array of shape (8,)"),
    (["--provider", "qnn", "--calibration", "hot.npz"], "error: hot.npz: 'y' must hold one class index per sample "
     "(16 samples); got an array of shape (16, 2) (one-hot labels: np.argmax(y, axis=1) gives the indices)"),
    (["--provider", "qnn", "--calibration", "c.npz", "--fixed-batch", "32"], "error: c.npz: --calibration holds 16 "
     "samples, fewer than one batch of 32 (the NPU model's fixed batch); save a few hundred real inputs"),
])
def test_qnn_options_and_calibration_data_are_checked_in_one_line(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                                   extra: list, line: str):
    # before: options without --provider qnn did nothing, unsaid; soc_model=abc was recorded as the chip while the
    # provider fell back to its default; wrong labels crashed the child (exit 1, a "provider crash" in edge.json);
    # too few rows for the batch blamed the model
    from click.testing import CliRunner

    from compress.cli import main

    monkeypatch.chdir(tmp_path)
    _conv_model(tmp_path / "m.onnx")
    x = np.random.default_rng(0).standard_normal((16, 1, 4, 4)).astype(np.float32)
    np.savez("c.npz", x=x)
    np.savez("y8.npz", x=x, y=np.zeros(8, np.int64))
    np.savez("hot.npz", x=x, y=np.zeros((16, 2), np.int64))
    result = CliRunner().invoke(main, ["edge", "m.onnx", "--out", "o", *extra])
    assert result.exit_code == 2 and result.output.strip() == line


def test_qnn_calibration_data_keeps_a_float16_inputs_type(tmp_path: Path):
    # every floating array was cast to float32, so a float16 model's right data failed in the quantizer
    import onnx
    from onnx import TensorProto, helper

    from compress.cli.edge import _qnn_kwargs

    graph = helper.make_graph([helper.make_node("Relu", ["x"], ["y"])], "h",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT16, ["N", 4])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT16, ["N", 4])])
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), tmp_path / "h.onnx")
    np.savez(tmp_path / "c.npz", x=np.ones((4, 4), np.float64))
    got = _qnn_kwargs(tmp_path / "h.onnx", tmp_path / "c.npz", "auto", (), {})
    assert got["calibration"]["x"].dtype == np.float16


@pytest.mark.parametrize("shape", ["scalar_output", "no_inner_tensor"])
def test_edge_takes_a_scalar_output_and_a_graph_whose_every_tensor_is_an_output(tmp_path: Path, shape: str):
    # a 0-d output (a sum over the batch) could not be joined across parity's chunks; a graph whose tensors are all
    # inputs or outputs made ORT's usability checker ask for shape inference: both were tracebacks, exit 1
    import onnx
    from click.testing import CliRunner
    from onnx import TensorProto, helper

    from compress.cli import main

    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 3])
    if shape == "scalar_output":
        nodes = [helper.make_node("Relu", ["x"], ["logits"]),
                 helper.make_node("ReduceSum", ["x"], ["total"], keepdims=0)]
        outs = [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["N", 3]),
                helper.make_tensor_value_info("total", TensorProto.FLOAT, [])]
    else:
        nodes = [helper.make_node("Relu", ["x"], ["a"]), helper.make_node("Neg", ["x"], ["b"])]
        outs = [helper.make_tensor_value_info(n, TensorProto.FLOAT, ["N", 3]) for n in ("a", "b")]
    model = tmp_path / "m.onnx"
    onnx.save(helper.make_model(helper.make_graph(nodes, "g", [x], outs), opset_imports=[helper.make_opsetid("", 17)]),
              str(model))
    np.savez(tmp_path / "in.npz", x=np.random.default_rng(0).standard_normal((600, 3)).astype(np.float32))
    result = CliRunner().invoke(main, ["edge", str(model), "--out", str(tmp_path / "e"), "--inputs",
                                       str(tmp_path / "in.npz")])
    assert result.exit_code == 0, result.output
    section = json.loads((tmp_path / "e" / "edge.json").read_text())
    assert section["parity"]["ok"] and section["parity"]["samples"] == 600
    assert section["readiness"]["providers"]["NNAPI"]["nodes_total"] == 2
    if shape == "scalar_output":  # in chunks: a 0-d output gives one value per chunk
        from compress.onnx.parity import run_cpu

        feed = {"x": np.load(tmp_path / "in.npz")["x"]}
        logits, total = run_cpu(model, feed, batch_size=100)
        assert logits.shape == (600, 3) and total.shape == (6,)
        assert np.allclose(total, feed["x"].reshape(6, 100, 3).sum(axis=(1, 2)), rtol=1e-5)


def test_an_ort_file_far_larger_than_its_model_is_named():
    # a 4 KB model-zoo AlexNet whose weights are made by ConstantOfShape became a 244 MB ORT file without a word
    from compress.edge.ort_format import _grown

    note = _grown(244 * 2**20, 4 * 2**10, "basic")
    assert note.startswith("the ORT-format file is 244 MB against the model's 4 KB: constant folding at optimization "
                           "'basic'") and note.endswith("--optimization disable keeps them computed")
    assert _grown(244 * 2**20, 4 * 2**10, "disable") is None and _grown(2**21, 2**20, "basic") is None
    assert _grown(2**19, 2**10, "basic") is None  # under a megabyte: no note
