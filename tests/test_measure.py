"""MACs/params against hand counts, and latency measurement that leaves the model alone."""

import math

import pytest
import torch
import torch.nn as nn
import torch_pruning as tp
import torchvision

from pruner.errors import PrunerError
from pruner.measure import (Cost, count_cost, cuda_event_timer, device_label, latency_ms, latency_stats,
                            paired_timing, relative_latency, timer_for, wall_ms)
from pruner.models.cifar_resnet import cifar_resnet
from pruner.pruning.shortcut import CUSTOM_PRUNERS


def prune_half(model: nn.Module) -> nn.Module:
    """Physically remove the first half of the channels of every group (except the classifier's)."""
    dg = tp.DependencyGraph().build_dependency(model, torch.randn(1, 3, 32, 32), customized_pruners=CUSTOM_PRUNERS)
    for group in list(dg.get_all_groups(ignored_layers=[model.linear])):
        root = group[0].dep.target.module
        n = len(group[0].idxs)
        dg.get_pruning_group(root, dg.get_pruner_of_module(root).prune_out_channels, list(range(n // 2))).prune()
    return model


def hand_count_macs(model: nn.Module, input_size=(3, 32, 32)) -> int:
    """Conv MACs = out.numel()/B * in_ch/groups * kh*kw; linear MACs = in * out (batch of 1)."""
    total = 0

    def conv_hook(m: nn.Conv2d, inp, out):
        nonlocal total
        kh, kw = m.kernel_size
        total += out.numel() // out.shape[0] * (m.in_channels // m.groups) * kh * kw

    def linear_hook(m: nn.Linear, inp, out):
        nonlocal total
        total += m.in_features * m.out_features

    hooks = [m.register_forward_hook(conv_hook if isinstance(m, nn.Conv2d) else linear_hook)
             for m in model.modules() if isinstance(m, (nn.Conv2d, nn.Linear))]
    try:
        with torch.no_grad():
            model.eval()(torch.zeros(1, *input_size))
    finally:
        for h in hooks:
            h.remove()
    return total


@pytest.fixture(scope="module")
def resnet20():
    torch.manual_seed(0)
    return cifar_resnet("resnet20")


@pytest.fixture(scope="module")
def pruned_resnet20():
    torch.manual_seed(0)
    return prune_half(cifar_resnet("resnet20").eval())


def test_count_cost_resnet20_known_figures(resnet20):
    cost = count_cost(resnet20, (3, 32, 32))
    assert isinstance(cost, Cost)
    assert 40.0e6 < cost.macs < 41.5e6  # the published ~40.8M (conv + linear: 40.55M)
    assert 0.26e6 < cost.params < 0.28e6  # ~0.27M
    assert cost.params == sum(p.numel() for p in resnet20.parameters())
    assert cost.macs == hand_count_macs(resnet20)


def test_count_cost_pruned_matches_hand_count(resnet20, pruned_resnet20):
    full, pruned = count_cost(resnet20), count_cost(pruned_resnet20)
    assert pruned.macs < full.macs and pruned.params < full.params
    assert pruned.macs == hand_count_macs(pruned_resnet20)


def test_count_cost_grouped_convolutions():
    model = torchvision.models.mobilenet_v2(num_classes=10)
    assert count_cost(model).macs == hand_count_macs(model)  # depthwise convs: in_ch / groups


def test_count_cost_keeps_training_mode(resnet20):
    resnet20.train()
    count_cost(resnet20)
    assert resnet20.training
    resnet20.eval()
    count_cost(resnet20)
    assert not resnet20.training


def test_count_cost_wrong_input_size_is_user_error(resnet20):
    with pytest.raises(PrunerError, match="input size"):
        count_cost(resnet20, (5, 32, 32))


def _snapshot(model: nn.Module):
    return model.training, {k: (v.device, v.clone(), v.is_contiguous()) for k, v in model.state_dict().items()}


def test_latency_positive_and_model_untouched(pruned_resnet20):
    model = pruned_resnet20.train()
    before = _snapshot(model)
    for kwargs in ({}, {"batch_size": 8}, {"channels_last": True}, {"amp": True}):
        value = latency_ms(model, (3, 32, 32), warmup=1, repeats=3, **kwargs)
        assert value > 0 and math.isfinite(value)
    after = _snapshot(model)
    assert after[0] and before[0]  # still in training mode
    for key, (device, tensor, contiguous) in before[1].items():
        assert after[1][key][0] == device and after[1][key][2] == contiguous
        assert torch.equal(after[1][key][1], tensor)


def test_latency_stats_fields(resnet20):
    stats = latency_stats(resnet20, (3, 32, 32), batch_size=2, warmup=1, repeats=5)
    assert {"median", "p10", "p90", "mean", "repeats"} <= set(stats)
    assert stats["repeats"] == 5
    assert 0 < stats["p10"] <= stats["median"] <= stats["p90"]
    assert stats["mean"] > 0
    single = latency_stats(resnet20, repeats=1, warmup=0)
    assert single["p10"] == single["median"] == single["p90"]


def test_latency_bad_arguments(resnet20):
    with pytest.raises(PrunerError):
        latency_ms(resnet20, repeats=0)
    with pytest.raises(PrunerError):
        latency_ms(resnet20, batch_size=0)
    if not torch.cuda.is_available():
        with pytest.raises(PrunerError, match="CUDA"):
            latency_ms(resnet20, device="cuda")


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_latency_cuda_leaves_model_on_cpu(resnet20):
    value = latency_ms(resnet20, device="cuda", warmup=2, repeats=5)
    assert value > 0 and math.isfinite(value)
    assert all(p.device.type == "cpu" for p in resnet20.parameters())
    cuda_model = cifar_resnet("resnet20").cuda()
    assert count_cost(cuda_model).macs == count_cost(resnet20).macs


def test_paired_timing_cancels_drifting_machine_speed(monkeypatch):
    """A fake clock: the machine runs 3x slower for the second half of the measurement. Two
    separately timed medians would see the candidate at 3 ms and the reference at 1 ms (ratio
    3, or 1 the other way round); timed in pairs the ratio is exactly the true 2."""
    import pruner.measure as measure

    clock = {"t": 0.0, "calls": 0}
    total_calls = 2 * (3 + 20)  # warm-up and timed pairs, two callables each

    def slow_down() -> float:
        return 1.0 if clock["calls"] < total_calls // 2 else 3.0

    def work(ms: float):
        def run():
            clock["t"] += ms * slow_down() / 1000.0
            clock["calls"] += 1
        return run

    monkeypatch.setattr(measure.time, "perf_counter", lambda: clock["t"])
    out = paired_timing(work(2.0), work(1.0), warmup=3, repeats=20)
    assert out["ratio"] == pytest.approx(2.0)
    assert out["repeats"] == 20
    assert out["reference_ms"] > 0 and out["ms"] > out["reference_ms"]


def test_relative_latency_orders_models(resnet20):
    deeper = cifar_resnet("resnet56")
    out = relative_latency(deeper, resnet20, (3, 32, 32), warmup=1, repeats=5)
    assert out["ratio"] > 1.0 and out["ms"] > 0 and out["reference_ms"] > 0
    same = relative_latency(resnet20, resnet20, (3, 32, 32), warmup=1, repeats=5)
    assert 0.2 < same["ratio"] < 5.0
    with pytest.raises(PrunerError):
        relative_latency(resnet20, resnet20, repeats=0)


def test_latency_figures_name_device_and_batch(resnet20):
    out = relative_latency(resnet20, resnet20, (3, 32, 32), batch_size=3, warmup=0, repeats=2)
    assert out["device"] == "cpu" and out["batch"] == 3
    stats = latency_stats(resnet20, batch_size=2, warmup=0, repeats=2)
    assert stats["device"] == "cpu" and stats["batch"] == 2
    assert device_label("cpu") == "cpu" and timer_for("cpu") is wall_ms


class FakeCuda:
    """Stand-ins for torch.cuda.Event / torch.cuda.synchronize over a fake GPU clock: launched work
    runs "later" on the GPU, so only a timer that waits for the end event reads the right time."""

    def __init__(self):
        self.log: list = []
        self.gpu_t = 0.0          # when the GPU's queue will be empty
        self.launched = 0.0       # queued GPU work not yet waited for

    def launch(self, ms: float):
        def run():
            self.log.append(f"launch {ms}")
            self.gpu_t += ms
        return run

    def synchronize(self, device):
        self.log.append(("drain", str(device)))

    def event(self):
        fake = self

        class Event:
            def record(self):
                self.t = fake.gpu_t
                fake.log.append("record")

            def synchronize(self):
                fake.log.append("wait")

            def elapsed_time(self, other):
                assert fake.log[-1] == "wait", "read before the end event completed"
                return other.t - self.t
        return Event()


def test_cuda_event_timer_drains_records_around_launch_and_waits():
    fake = FakeCuda()
    timer = cuda_event_timer(torch.device("cuda", 0), event_factory=fake.event, synchronize=fake.synchronize)
    assert timer(fake.launch(2.5)) == pytest.approx(2.5)
    assert fake.log == [("drain", "cuda:0"), "record", "launch 2.5", "record", "wait"]


def test_paired_timing_with_cuda_event_timer_gives_the_true_ratio():
    """Interleaved pairs on the fake GPU: a 3 ms candidate against a 4 ms reference, while the
    GPU slows down 2x half way (another job sharing it): the ratio stays 0.75."""
    fake = FakeCuda()
    calls = {"n": 0}

    def work(ms):
        def run():
            calls["n"] += 1
            fake.launch(ms * (1.0 if calls["n"] <= 20 else 2.0))()
        return run

    timer = cuda_event_timer(torch.device("cuda", 0), event_factory=fake.event, synchronize=fake.synchronize)
    out = paired_timing(work(3.0), work(4.0), warmup=2, repeats=16, timer=timer)
    assert out["ratio"] == pytest.approx(0.75)
    assert fake.log.count("wait") == 32  # only the timed runs are waited for; warm-up is not timed


def test_paired_timing_uses_the_given_timer():
    seen = []

    def timer(fn):
        seen.append(fn)
        return 2.0 if fn is a else 8.0

    def a():
        pass

    def b():
        pass

    out = paired_timing(a, b, warmup=0, repeats=4, timer=timer)
    assert out == {"ms": 2.0, "reference_ms": 8.0, "ratio": 0.25, "ratio_q1": 0.25, "ratio_q3": 0.25, "repeats": 4}
    assert seen == [a, b] * 4


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_latency_uses_events_and_names_the_card(resnet20):
    before = torch.backends.cudnn.benchmark
    out = relative_latency(resnet20, resnet20, (3, 32, 32), batch_size=4, device="cuda", warmup=2, repeats=5)
    assert out["device"].startswith("cuda:") and torch.cuda.get_device_name() in out["device"]
    assert out["batch"] == 4 and out["ms"] > 0 and 0.2 < out["ratio"] < 5
    assert torch.backends.cudnn.benchmark == before  # switched on for the timing only


def _cli(*args):
    import os
    import subprocess
    import sys
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    return subprocess.run([sys.executable, "-m", "pruner", *map(str, args)], capture_output=True, text=True,
                          cwd=root, env={**os.environ, "PYTHONPATH": str(root)}, timeout=600)


def test_run_reports_device_and_batch_of_every_latency(tmp_path):
    """A CPU run with --latency-batch 4: base and pruned latency at batch 1 and 4, each naming its
    device; the pruned figures are paired with the base model; the CLI prints device and batches."""
    import json

    out = tmp_path / "run"
    res = _cli("prune", "--model", "resnet20", "--weights", "none", "--data", "digits", "--val-size", "200",
               "--strategy", "uniform", "--search-evals", "1", "--search-images", "50", "--recal-images", "32",
               "--report-images", "50", "--no-export", "--device", "cpu", "--latency-batch", "4", "--out", out)
    assert res.returncode == 0, res.stderr
    summary = json.loads((out / "summary.json").read_text())
    for key in ("base", "pruned"):
        r = summary[key]
        assert [(e["device"], e["batch"]) for e in r["latency"]] == [("cpu", 1), ("cpu", 4)]
        assert r["latency_ms"] == r["latency"][0]["ms"] > 0
        assert (r["latency_device"], r["latency_batch"]) == ("cpu", 1)
    assert all(e["vs_base"] > 0 and e["reference_ms"] > 0 for e in summary["pruned"]["latency"])
    assert summary["pruned"]["latency_vs_base"] == summary["pruned"]["latency"][0]["vs_base"]
    assert "PyTorch on cpu" in res.stdout and "ms b4" in res.stdout and "batch 4:" in res.stdout
    assert "CPU latency" not in res.stdout


def test_bad_latency_batch_is_a_one_line_error(tmp_path):
    res = _cli("prune", "--data", "digits", "--latency-batch", "0", "--out", tmp_path / "x")
    assert res.returncode == 2 and "latency_batch" in res.stderr and "Traceback" not in res.stderr


def test_latency_budget_is_judged_at_its_batch():
    from pruner.runs.config import RunConfig
    from pruner.runs.job import _achieved

    summary = {"pruned": {"latency": [{"device": "cpu", "batch": 1, "ms": 2.0, "vs_base": 0.9},
                                      {"device": "cpu", "batch": 64, "ms": 50.0, "vs_base": 0.55}]}}
    cfg = RunConfig(budget="latency=0.6", latency_batch=64)
    assert _achieved(cfg, summary, 64) == 0.55
    assert _achieved(cfg, summary, 1) == 0.9


@pytest.mark.parametrize("device, latency_batch, expected", [
    ("cpu", None, [1]), ("cpu", 16, [1, 16]), ("cuda", None, [1, 256]), ("cuda", 1, [1]), ("cuda", 64, [1, 64])])
def test_latency_batches_and_budget_batch_by_device(device, latency_batch, expected):
    """Batch 1 always; the throughput batch by default only on CUDA (batch 1 there is bound by kernel
    launches); a latency budget is held at the throughput batch."""
    from types import SimpleNamespace

    from pruner.runs.job import Session

    fake = SimpleNamespace(config=SimpleNamespace(latency_batch=latency_batch), device=torch.device(device))
    assert Session.latency_batches(fake) == expected
    fake.latency_batches = lambda: Session.latency_batches(fake)
    assert Session.budget_batch.fget(fake) == expected[-1]


def test_paired_timing_reports_the_spread_of_the_ratios():
    """The quartiles of the per-pair ratios come with the median: a busy stretch widens them."""
    def clock(ms):     # the timer: what each timed call took, in turn (the calls themselves do nothing)
        it = iter(ms)
        return lambda fn: (fn(), next(it))[1]

    busy = [t for r in (2, 2, 2, 2, 4, 2, 6, 2) for t in (float(r), 1.0)]   # pruned, original; ratios r
    out = paired_timing(lambda: None, lambda: None, warmup=0, repeats=8, timer=clock(busy))
    assert out["ratio"] == 2.0 and out["ratio_q1"] == 2.0 and out["ratio_q3"] == pytest.approx(3.5)
    steady = paired_timing(lambda: None, lambda: None, warmup=0, repeats=8, timer=clock([2.0, 1.0] * 8))
    assert steady["ratio_q1"] == steady["ratio"] == steady["ratio_q3"] == 2.0
