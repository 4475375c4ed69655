"""Fine-tuning: device-side augmentation (same values, layouts and distribution, seeded) and the
training loop with each of its speed options (bf16 autocast, channels_last, torch.compile)."""

import logging
import math

import pytest
import torch
import torch.nn as nn

from pruner.data import ImageTensors, batches, load_data, random_crop_flip
from pruner.data.batching import crop_padding, resident
from pruner.finetune import FinetuneConfig, finetune
from pruner.models.cifar_resnet import cifar_resnet

DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])


def coordinate_images(n: int, h: int = 32, w: int = 32) -> torch.Tensor:
    """Channel 0 holds row + 1, channel 1 column + 1 (0 is left for the zero padding)."""
    rows = torch.arange(1, h + 1, dtype=torch.uint8).view(1, h, 1).expand(n, h, w)
    cols = torch.arange(1, w + 1, dtype=torch.uint8).view(1, 1, w).expand(n, h, w)
    return torch.stack([rows, cols, rows], dim=1).contiguous()


def offsets_and_flips(out: torch.Tensor, pad: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Recover each image's vertical/horizontal crop offset (0..2*pad) and flip from coordinate images."""
    out = out.long().cpu()
    b, _, h, w = out.shape
    centre_rows, centre_cols = out[:, 0, :, w // 2], out[:, 1, h // 2, :]
    r0 = (centre_rows > 0).float().argmax(1)
    dy = centre_rows[torch.arange(b), r0] - 1 - r0 + pad
    inside = centre_cols > 0
    c0 = inside.float().argmax(1)
    c1 = w - 1 - inside.flip(1).float().argmax(1)
    first, last = centre_cols[torch.arange(b), c0], centre_cols[torch.arange(b), c1]
    flip = first > last
    left_source = torch.where(flip, last, first) - 1  # source column of the leftmost kept pixel (unflipped view)
    kept_left = torch.where(flip, w - 1 - c1, c0)
    dx = left_source - kept_left + pad
    return dy, dx, flip


@pytest.mark.parametrize("device", DEVICES)
def test_device_augmentation_is_a_uniform_padded_crop_and_fair_flip(device):
    """9,000 images on ``device`` with a generator there: every offset 0..8 appears about equally
    often on both axes, half the images are flipped, and every output is a shifted (mirrored) window."""
    n = 9000
    x = coordinate_images(n).to(device)
    gen = torch.Generator(device=device).manual_seed(0)
    out = random_crop_flip(x, gen, channels_last=True)
    assert out.shape == x.shape and out.dtype == torch.uint8 and out.device == x.device
    pad = crop_padding(32, 32)[0]
    dy, dx, flip = offsets_and_flips(out, pad)
    for offsets in (dy, dx):
        counts = torch.bincount(offsets, minlength=2 * pad + 1)
        assert counts.numel() == 2 * pad + 1 and int(offsets.min()) >= 0
        assert all(abs(int(c) - n / 9) < 0.15 * n / 9 for c in counts), counts.tolist()
    assert abs(float(flip.float().mean()) - 0.5) < 0.03
    # rebuild every image from its recovered offsets and flip: exactly the output
    padded = torch.nn.functional.pad(coordinate_images(n), (pad, pad, pad, pad))
    for i in range(0, n, 997):
        window = padded[i, :, dy[i]:dy[i] + 32, dx[i]:dx[i] + 32]
        assert torch.equal(window.flip(-1) if flip[i] else window, out[i].cpu())


@pytest.mark.parametrize("device", DEVICES)
def test_channels_last_batches_hold_the_same_values(device):
    data = ImageTensors(torch.randint(0, 256, (70, 3, 32, 32), dtype=torch.uint8), torch.arange(70) % 10)
    kw = dict(mean=(0.5, 0.4, 0.3), std=(0.2, 0.25, 0.3), device=device, shuffle=True, augment=True)
    a = list(batches(data, 32, generator=torch.Generator().manual_seed(3), **kw))
    b = list(batches(data, 32, generator=torch.Generator().manual_seed(3), channels_last=True, **kw))
    assert [x.shape for x, _ in a] == [x.shape for x, _ in b] == [(32, 3, 32, 32), (32, 3, 32, 32), (6, 3, 32, 32)]
    for (xa, ya), (xb, yb) in zip(a, b):
        assert xb.is_contiguous(memory_format=torch.channels_last) and xa.is_contiguous()
        assert torch.equal(xa, xb) and torch.equal(ya, yb) and xb.dtype == torch.float32
    plain = next(batches(data, 8, mean=kw["mean"], std=kw["std"], device=device, channels_last=True))[0]
    assert plain.is_contiguous(memory_format=torch.channels_last)
    # normalization constants given as tensors on the device: the same batch
    mean, std = torch.tensor(kw["mean"], device=device), torch.tensor(kw["std"], device=device)
    c = list(batches(data, 32, generator=torch.Generator().manual_seed(3), **{**kw, "mean": mean, "std": std}))
    assert all(torch.equal(xa, xc) for (xa, _), (xc, _) in zip(a, c))


@pytest.mark.parametrize("device", DEVICES)
def test_device_resident_batches_are_seeded(device):
    data = resident(ImageTensors(torch.randint(0, 256, (64, 3, 32, 32), dtype=torch.uint8), torch.arange(64)), device)
    assert data.x.device.type == device

    def draw(seed):
        gen = torch.Generator(device=data.x.device).manual_seed(seed)
        return [x for x, _ in batches(data, 16, mean=(0.5,) * 3, std=(0.5,) * 3, device=device, shuffle=True,
                                      augment=True, generator=gen, channels_last=True)]
    assert all(torch.equal(p, q) for p, q in zip(draw(1), draw(1)))
    assert not all(torch.equal(p, q) for p, q in zip(draw(1), draw(2)))


def test_resident_keeps_cpu_data_where_it_is():
    data = ImageTensors(torch.zeros(4, 3, 8, 8, dtype=torch.uint8), torch.zeros(4, dtype=torch.int64))
    assert resident(data, "cpu") is data


@pytest.fixture(scope="module")
def digits():
    return load_data("digits", val_size=200)


def _tune(data, *, epochs=1, batches_per_epoch=3, **options):
    torch.manual_seed(0)
    student, teacher = cifar_resnet("resnet20"), cifar_resnet("resnet20")
    before = [p.detach().clone() for p in student.parameters()]
    config = FinetuneConfig(epochs=epochs, batch_size=32, max_batches_per_epoch=batches_per_epoch, **options)
    history = finetune(student, data, config, teacher=teacher, eval_data=data.search.subset(64))
    changed = any(not torch.equal(a, b) for a, b in zip(before, student.parameters()))
    return student, history, changed


@pytest.mark.parametrize("options", [{}, {"amp": True}, {"channels_last": True},
                                     {"amp": True, "channels_last": True}])
def test_finetune_runs_on_cpu_with_each_option(digits, options):
    student, history, changed = _tune(digits, **options)
    assert changed and len(history) == 1
    rec = history[0]
    assert math.isfinite(rec["loss"]) and rec["loss"] > 0 and rec["images_per_s"] > 0 and 0 <= rec["val_top1"] <= 100
    assert not student.training
    assert all(p.is_contiguous() for p in student.parameters())  # back to the default layout for export


def test_channels_last_changes_layout_not_results(digits):
    _, plain, _ = _tune(digits)
    _, cl, _ = _tune(digits, channels_last=True)
    assert cl[0]["loss"] == pytest.approx(plain[0]["loss"], rel=1e-3)


def tiny_net() -> nn.Module:
    return nn.Sequential(nn.Conv2d(3, 8, 3, stride=2, padding=1), nn.BatchNorm2d(8), nn.ReLU(),
                         nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 10))


@pytest.mark.slow
def test_finetune_with_torch_compile(digits):
    """A real torch.compile (inductor, C++ on the CPU) of student and teacher trains as eager does.
    A tiny network: compiling ResNet-20 takes minutes on two cores, a network this small about one."""
    def run(**options):
        torch.manual_seed(0)
        student, teacher = tiny_net(), tiny_net()
        cfg = FinetuneConfig(epochs=1, batch_size=32, max_batches_per_epoch=2, **options)
        history = finetune(student, digits, cfg, teacher=teacher)
        return student, history

    eager_model, eager = run()
    compiled_model, compiled = run(compile=True)
    assert compiled[0]["loss"] == pytest.approx(eager[0]["loss"], rel=1e-3)
    for p, q in zip(eager_model.parameters(), compiled_model.parameters()):
        assert torch.allclose(p, q, atol=1e-4)
    assert type(compiled_model) is nn.Sequential  # the caller's module, trained in place, not the compiled wrapper


def test_compile_failure_falls_back_to_eager_with_a_warning(digits, monkeypatch, caplog):
    """A backend that fails on the first call (as a missing compiler or an unsupported op does): the
    run warns once and trains eagerly, with exactly the eager result."""
    class Broken(nn.Module):
        def __init__(self, inner):
            super().__init__()
            self.inner = inner

        def forward(self, x):
            raise RuntimeError("backend compiler failed: no C++ compiler\nlong details")

    _, eager, _ = _tune(digits, batches_per_epoch=2)
    monkeypatch.setattr(torch, "compile", lambda module, **kw: Broken(module))
    with caplog.at_level(logging.WARNING, logger="pruner.finetune"):
        _, fallen, changed = _tune(digits, batches_per_epoch=2, compile=True)
    assert changed and fallen[0]["loss"] == eager[0]["loss"]
    warnings = [r.getMessage() for r in caplog.records if "torch.compile failed" in r.getMessage()]
    assert len(warnings) == 1 and "no C++ compiler" in warnings[0] and "long details" not in warnings[0]


def test_finetune_resumes_with_options(digits, tmp_path):
    """Two epochs in one go equal one epoch, an interruption, and a resume from the epoch-1 checkpoint."""
    class Interrupted(Exception):
        pass

    def run(ckpt, start=0, stop_after=None):
        torch.manual_seed(0)
        student, teacher = cifar_resnet("resnet20"), cifar_resnet("resnet20")
        cfg = FinetuneConfig(epochs=2, batch_size=32, max_batches_per_epoch=2, channels_last=True, amp=True)

        def on_epoch(rec):
            if rec["epoch"] == stop_after:
                raise Interrupted
        try:
            return student, finetune(student, digits, cfg, teacher=teacher, checkpoint_dir=ckpt, start_epoch=start,
                                     on_epoch=on_epoch)
        except Interrupted:
            return student, None

    whole, hist = run(tmp_path / "a")
    run(tmp_path / "b", stop_after=1)
    resumed, hist_b = run(tmp_path / "b", start=1)
    assert len(hist_b) == 2 and hist_b[1]["loss"] == pytest.approx(hist[1]["loss"], rel=1e-5)
    for p, q in zip(whole.parameters(), resumed.parameters()):
        assert torch.allclose(p, q, atol=1e-5)


def test_finetune_options_are_recorded_in_the_config():
    cfg = FinetuneConfig(epochs=1, amp=True, channels_last=False, compile=True)
    assert {"amp": True, "channels_last": False, "compile": True}.items() <= cfg.to_dict().items()
    assert FinetuneConfig(**cfg.to_dict()) == cfg


def test_dense_vs_pruned_fine_tunes_the_unpruned_model_like_the_run(tmp_path):
    """bench/dense_vs_pruned.py on a finished digits run: the pruned model's after-FT top-1 is the
    run's own figure, the dense model is fine-tuned with the run's settings, and the table lists
    both with their costs."""
    import importlib.util
    import json
    from pathlib import Path

    from pruner.runs.config import RunConfig
    from pruner.runs.job import run_job

    root = Path(__file__).resolve().parents[1]
    spec = importlib.util.spec_from_file_location("dense_vs_pruned", root / "bench" / "dense_vs_pruned.py")
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)

    out = tmp_path / "run"
    cfg = RunConfig(model="resnet20", weights=None, data="digits", val_size=200, budget="flops=0.5", strategy="uniform",
                    search_evals=1, search_images=64, recal_images=32, report_images=100, latency_repeats=2,
                    finetune=FinetuneConfig(epochs=1, batch_size=32, max_batches_per_epoch=2), export=False,
                    device="cpu")
    summary = run_job(cfg, out)
    assert summary["status"] == "done", summary["error"]
    assert bench.main(["--run", str(out)]) == 0
    result = json.loads((out / "dense_vs_pruned.json").read_text())
    dense, pruned = result["rows"]
    assert pruned["top1_after_ft"] == round(summary["pruned"]["top1"], 2)
    assert dense["top1_before_ft"] == round(summary["base"]["top1"], 2)
    assert dense["macs_M"] == round(summary["base"]["macs"] / 1e6, 2) > pruned["macs_M"]
    assert result["finetune"]["max_batches_per_epoch"] == 2 and result["report_images"] == 100
    assert math.isfinite(result["dense_final_loss"]) and result["dense_final_loss"] > 0
    table = (out / "dense_vs_pruned.md").read_text()
    assert "| dense (unpruned) |" in table and "| pruned |" in table and "test-halves" not in table

    # --collect: the real comparison, plus the same record as another strategy's at another seed with
    # known top-1s, so the summary row, the per-seed gaps and the best strategy can be checked exactly
    other = json.loads(json.dumps(result))
    other["strategy"], other["seed"] = "zz-other", 7
    other["rows"][0]["top1_after_ft"], other["rows"][1]["top1_after_ft"] = 50.0, 51.25
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "dense_vs_pruned.json").write_text(json.dumps(other))
    assert bench.main(["--collect", str(tmp_path)]) == 0
    evidence = (tmp_path / "evidence.md").read_text()
    gap = pruned["top1_after_ft"] - dense["top1_after_ft"]
    assert f"| resnet20 | flops=0.5 | uniform | 0 | {pruned['macs_M']} | {pruned['top1_after_ft']:.2f} | " in evidence
    assert f"| resnet20 | flops=0.5 | 0 | {dense['top1_after_ft']:.2f} | {gap:+.2f} | – | uniform ({gap:+.2f}) |" \
        in evidence  # columns: the strategies in name order (uniform, zz-other)
    assert "| resnet20 | flops=0.5 | 7 | 50.00 | – | +1.25 | zz-other (+1.25) |" in evidence
    assert len((tmp_path / "evidence.jsonl").read_text().splitlines()) == 2


def test_dense_vs_pruned_needs_a_finished_run(tmp_path, capsys):
    import importlib.util
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    spec = importlib.util.spec_from_file_location("dense_vs_pruned", root / "bench" / "dense_vs_pruned.py")
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    assert bench.main(["--run", str(tmp_path / "nothing")]) == 2
    assert "not a finished run" in capsys.readouterr().err
