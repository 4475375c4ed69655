"""The CLI: one-line errors for bad input (no traceback, non-zero exit, no successful-looking run),
and the acceptance demo: an exported ONNX model, run by someone else, scores what summary.json says."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from pruner.models.cifar_resnet import cifar_resnet

ROOT = Path(__file__).resolve().parents[1]
SHARED_DATA = Path(os.environ.get("PRUNER_DATA_ROOT", "")) / "cifar10-jpeg"
SHARED_R20 = Path(os.environ.get("PRUNER_WEIGHTS_DIR", "")) / "resnet20-12fca82f.th"


def cli(*args, cwd=None):
    return subprocess.run([sys.executable, "-m", "pruner", *map(str, args)], capture_output=True, text=True,
                          cwd=cwd or ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)}, timeout=600)


TINY = ["--model", "resnet20", "--weights", "none", "--data", "digits", "--search-evals", "2",
        "--search-images", "50", "--recal-images", "32", "--report-images", "50", "--no-export"]


def assert_one_line_error(res, *needles):
    assert res.returncode == 2, res.stdout + res.stderr
    assert "Traceback" not in res.stderr
    lines = [l for l in res.stderr.strip().splitlines() if l.startswith("error:")]
    assert len(lines) == 1, res.stderr
    for n in needles:
        assert n in lines[0], lines[0]


def test_budget_out_of_range(tmp_path):
    res = cli("prune", *TINY, "--budget", "flops=1.5", "--out", tmp_path / "r")
    assert_one_line_error(res, "outside (0, 1)")
    assert not (tmp_path / "r" / "summary.json").exists()


def test_missing_data_path(tmp_path):
    res = cli("prune", *TINY[:4], "--data", tmp_path / "nowhere", "--out", tmp_path / "r")
    assert_one_line_error(res)
    assert "does not exist" in res.stdout + res.stderr
    assert not (tmp_path / "r").exists()   # refused before the run directory is created


@pytest.mark.parametrize("args, needle", [
    (("--model", "resnet9000"), "unknown zoo model"),
    (("--model", "torchvision:nonet"), "unknown torchvision model"),
    (("--weights", "/no/such/weights.th"), "does not exist"),
    (("--data", "no-such-dataset"), "unknown dataset"),
])
def test_bad_sources_are_refused_before_the_run_directory_exists(tmp_path, args, needle):
    res = cli("prune", *TINY, *args, "--out", tmp_path / "r")
    assert_one_line_error(res)
    assert needle in res.stdout + res.stderr
    assert not (tmp_path / "r").exists()


@pytest.mark.parametrize("out, needle", [("/proc/1/nope", "system folder"), ("FILE/r", "not a folder")])
def test_an_unwritable_out_is_one_line_before_any_work(tmp_path, out, needle):
    (tmp_path / "FILE").write_text("a file, not a folder")
    res = cli("prune", *TINY, "--out", out.replace("FILE", str(tmp_path / "FILE")))
    assert_one_line_error(res)
    assert needle in res.stdout + res.stderr and "internal error" not in res.stdout + res.stderr


def test_empty_image_folder(tmp_path):
    (tmp_path / "ds" / "train").mkdir(parents=True)
    (tmp_path / "ds" / "test").mkdir()
    res = cli("info", "--model", "resnet20", "--weights", "none", "--data", tmp_path / "ds")
    assert_one_line_error(res)


def test_corrupt_checkpoint(tmp_path):
    bad = tmp_path / "bad.pt"
    bad.write_bytes(b"not a checkpoint at all" * 10)
    res = cli("info", "--model", "resnet20", "--weights", bad, "--data", "digits")
    assert_one_line_error(res, "bad.pt")


def test_wrong_class_count(tmp_path):
    ckpt = tmp_path / "r20_100.pt"
    torch.save(cifar_resnet("resnet20", num_classes=100).state_dict(), ckpt)
    res = cli("info", "--model", "resnet20", "--weights", ckpt, "--data", "digits")
    assert_one_line_error(res, "100 classes")


def test_model_without_prunable_layers(tmp_path):
    net = tmp_path / "net.py"
    net.write_text("import torch.nn as nn\n"
                   "def make(num_classes=10):\n"
                   "    return nn.Sequential(nn.Flatten(), nn.Linear(3 * 32 * 32, num_classes))\n")
    res = cli("info", "--model", f"file:{net}:make", "--weights", "none", "--data", "digits")
    assert_one_line_error(res, "no prunable")


def test_info_and_strategies():
    res = cli("info", "--model", "resnet20", "--weights", "none", "--data", "digits")
    assert res.returncode == 0, res.stderr
    assert "prunable groups" in res.stdout and "layer3.0.conv2" in res.stdout
    res = cli("strategies")
    assert res.returncode == 0 and all(s in res.stdout for s in ("rl", "uniform", "global", "random"))


@pytest.mark.skipif(not (SHARED_DATA.is_dir() and SHARED_R20.is_file()), reason="shared CIFAR-10 copy not present")
def test_onnx_scores_what_the_summary_says(tmp_path):
    """Acceptance: prune the real pretrained ResNet-20 on the shared CIFAR-10, then score the ONNX file
    with ONNX Runtime and PIL-decoded test images, using only the preprocessing stored in its metadata."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("score_onnx", ROOT / "bench" / "score_onnx.py")
    score_onnx = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(score_onnx)  # imports no project code: ONNX Runtime, PIL, NumPy only

    out = tmp_path / "demo"
    res = cli("prune", "--model", "resnet20", "--weights", SHARED_R20, "--data", SHARED_DATA, "--budget", "flops=0.5",
              "--strategy", "uniform", "--finetune-epochs", "0", "--search-images", "500", "--out", out)
    assert res.returncode == 0, res.stderr
    summary = json.loads((out / "summary.json").read_text())
    assert summary["status"] == "done" and summary["budget"]["achieved"] <= 0.5
    assert summary["pruned"]["report_images"] == 10000  # val-from-train reports on the whole test split
    correct, total = score_onnx.score(out / summary["artifacts"]["onnx"], SHARED_DATA / "test")
    assert total == 10000
    assert 100.0 * correct / total == pytest.approx(summary["pruned"]["top1"], abs=0.05)


@pytest.mark.parametrize("threads, said", [("2", True), ("1", False)])
def test_prune_says_when_candidates_were_scored_on_threads(tmp_path, threads, said):
    res = cli("prune", *TINY, "--strategy", "random", "--search-evals", "4", "--finetune-epochs", "0",
              "--scoring-threads", threads, "--out", tmp_path / "run")
    assert res.returncode == 0, res.stderr
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert summary["search"]["scoring_threads"] == int(threads)
    assert ("2 candidates at a time on CPU threads" in res.stdout) is said, res.stdout
    # one latency story: the base row's ms is the original's median in the pairs the ratio comes from
    entry = summary["pruned"]["latency"][0]
    base_row = next(l for l in res.stdout.splitlines() if l.startswith("base "))
    assert f"{entry['reference_ms']:.2f}" in base_row.split()
    line = next(l for l in res.stdout.splitlines() if l.startswith("pruned/base PyTorch latency"))
    q1, q3 = entry["vs_base_iqr"]
    assert f"batch 1: {entry['vs_base']:.3f} (middle half {q1:.3f}-{q3:.3f})" in line


def test_bad_scoring_threads_is_a_one_line_error(tmp_path):
    assert_one_line_error(cli("prune", *TINY, "--scoring-threads", "0", "--out", tmp_path / "run"), "--scoring-threads")


def test_every_subcommand_help_prints():
    """argparse formats help lazily: a bare '%' in a help text (the recipes' '10 % warm-up') crashed ``--help``."""
    import subprocess
    import sys

    for sub in ("prune", "info", "sensitivity", "quantize"):
        res = subprocess.run([sys.executable, "-m", "pruner", sub, "--help"], capture_output=True, text=True,
                             cwd=Path(__file__).resolve().parents[1], timeout=120)
        assert res.returncode == 0 and "usage:" in res.stdout, (sub, res.stderr[-500:])
