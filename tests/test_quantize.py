"""INT8 after pruning: ONNX Runtime static quantization end to end on a small real model, in real ORT."""

import json
import subprocess
import sys
from pathlib import Path

import onnx
import pytest
import torch

from pruner.data import batches, load_data
from pruner.errors import PrunerError
from pruner.export import export_onnx
from pruner.models.cifar_resnet import cifar_resnet
from pruner.quantize import quantize_int8, verify_int8
from pruner.runs.job import calibration_set

ROOT = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def digits():
    return load_data("digits", None, protocol="val-from-train", val_size=None, seed=0)


@pytest.fixture(scope="module")
def fp32(digits, tmp_path_factory):
    torch.manual_seed(0)
    model = cifar_resnet("resnet20", num_classes=digits.num_classes).eval()
    path = tmp_path_factory.mktemp("q") / "model.onnx"
    sample = next(batches(digits.report.subset(8), 8, mean=digits.mean, std=digits.std))[0]
    export_onnx(model, path, input_size=digits.input_size, mean=digits.mean, std=digits.std,
                class_names=digits.classes, sample=sample)
    return path


def test_int8_has_qdq_nodes_runs_in_ort_and_agrees_with_fp32(digits, fp32, tmp_path):
    calib = calibration_set(digits, 64)
    rep = quantize_int8(fp32, tmp_path / "m.int8.onnx", batches(calib, 32, mean=digits.mean, std=digits.std))
    ops = {n.op_type for n in onnx.load(rep.path).graph.node}
    assert {"QuantizeLinear", "DequantizeLinear"} <= ops
    assert rep.size_bytes < rep.size_fp32_bytes and rep.calibration_images == 64
    report = list(batches(digits.report.subset(100), 50, mean=digits.mean, std=digits.std))
    v = verify_int8(rep.path, fp32, report, digits.input_size, repeats=2)
    assert v["images"] == 100 and v["agreement"] >= 80.0
    assert v["ort_latency"][0]["batch"] == 1 and v["ort_latency"][0]["vs_fp32"] > 0


def test_calibration_comes_from_the_fine_tune_split_only(digits):
    calib = calibration_set(digits, 50)
    assert torch.equal(calib.x, digits.fit.x[:50])
    with pytest.raises(PrunerError, match=r"fine-tune split has only \d+; pass --calibration-images"):
        calibration_set(digits, len(digits.fit) + 1)


def test_a_model_with_nothing_to_quantize_is_a_one_line_error(tmp_path, digits):
    model = torch.nn.Sequential(torch.nn.ReLU()).eval()
    path = tmp_path / "relu.onnx"
    x = torch.randn(2, 3, 8, 8)
    export_onnx(model, path, input_size=(3, 8, 8), mean=[0] * 3, std=[1] * 3, class_names=["a"], sample=x)
    with pytest.raises(PrunerError) as err:
        quantize_int8(path, tmp_path / "out.onnx", [x])
    assert "no operation ONNX Runtime can quantize" in str(err.value) and "\n" not in str(err.value)
    assert not (tmp_path / "out.onnx").exists()


def _cli(*args):
    return subprocess.run([sys.executable, "-m", "pruner", *map(str, args)], capture_output=True, text=True,
                          cwd=ROOT, timeout=600)


def test_cli_prune_with_quantize_and_a_failed_quantization_keeps_the_run(tmp_path):
    out = tmp_path / "r"
    res = _cli("prune", "--model", "resnet20", "--weights", "none", "--data", "digits", "--search-evals", "2",
               "--search-images", "50", "--recal-images", "32", "--report-images", "50", "--strategy", "random",
               "--finetune-epochs", "0", "--quantize", "int8", "--calibration-images", "32", "--out", out)
    assert res.returncode == 0, res.stderr
    summary = json.loads((out / "summary.json").read_text())
    q = summary["quantized"]
    assert summary["status"] == "done" and q["calibration"] == {"split": "fit", "images": 32, "method": "minmax"}
    assert (out / summary["artifacts"]["int8"]).is_file() and q["images"] == 50
    # a forced failure (the fp32 file made unreadable as ONNX) on the finished run: one line, nothing lost
    onnx_file = out / "artifacts" / "model.onnx"
    good = onnx_file.read_bytes()
    onnx_file.write_bytes(b"not onnx")
    res = _cli("quantize", "--run", out)
    assert res.returncode == 2 and len(res.stderr.strip().splitlines()) == 1 and "Traceback" not in res.stderr
    after = json.loads((out / "summary.json").read_text())
    assert after["status"] == "done" and "error" in after["quantized"] and "int8" not in after["artifacts"]
    assert after["pruned"] == summary["pruned"] and (out / "artifacts" / "checkpoint.pt").is_file()
    onnx_file.write_bytes(good)
    res = _cli("quantize", "--run", out, "--calibration-images", "10000000")
    assert res.returncode == 2 and "pass --calibration-images" in res.stderr
