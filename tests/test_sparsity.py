"""Weight sparsity (``--budget sparsity=F``): real models, real fine-tuning, real ONNX Runtime.

The budget is met on zeros counted in the final weights for every strategy that supports it,
the masks survive fine-tuning, the exported ONNX file holds the zeros and computes what PyTorch
does, bad settings are one-line errors before any work, and a sparse run resumes and its
checkpoint loads as data."""

import math

import numpy as np
import onnx
import pytest
import torch
import torch.nn as nn
from onnx import numpy_helper

from pruner.budget import Budget, solve
from pruner.data import load_data
from pruner.errors import PrunerError
from pruner.evaluate import accuracy
from pruner.export import export_onnx, ort_session
from pruner.finetune import FinetuneConfig, finetune
from pruner.models.checkpoints import load_checkpoint
from pruner.models.cifar_resnet import cifar_resnet
from pruner.pruning.importance import ranking_from_scores
from pruner.pruning.sparsity import (SparsitySpace, apply_masks, holds_2to4, is_masked, make_permanent,
                                     onnx_sparsity, sparsity_report, weight_scores)
from pruner.runs.config import RunConfig
from pruner.runs.job import resume_job, run_job
from pruner.runs.rundir import RunDir

from test_cli import assert_one_line_error, cli
from test_studio_pages import runs_dir  # noqa: F401 (the fixture)

SIZE = (3, 32, 32)


def tiny(**kw) -> RunConfig:
    base = dict(model="resnet20", weights=None, data="digits", val_size=200, budget="sparsity=0.8",
                strategy="uniform", search_evals=6, search_images=64, recal_images=32, report_images=100,
                latency_repeats=2, finetune=FinetuneConfig(epochs=1, batch_size=32, max_batches_per_epoch=2, lr=0.05),
                export=False, device="cpu")
    base.update(kw)
    return RunConfig(**base)


def space_of(model, **kw) -> SparsitySpace:
    space = SparsitySpace(model, SIZE, **kw)
    space.set_ranking(ranking_from_scores(weight_scores(model, space, "l1")))
    return space


def zeros_of(model, names) -> tuple[int, int]:
    mods = dict(model.named_modules())
    ws = [mods[n].weight.detach() for n in names]
    return sum(int((w == 0).sum()) for w in ws), sum(w.numel() for w in ws)


# ---------------------------------------------------------------------- the budget and the space
def test_budget_speaks_in_the_fraction_zeroed():
    b = Budget.parse("sparsity=0.8")
    assert (b.kind, str(b), b.value) == ("sparsity", "sparsity=0.8", 0.8)
    assert b.target == pytest.approx(0.2)        # the density that may remain: cost <= target, as every kind
    with pytest.raises(PrunerError, match="fraction of the prunable weights set to zero"):
        Budget.parse("sparsity=1.5")
    with pytest.raises(PrunerError, match=r"leaves 0.100 .* at most 0\.899"):
        b = Budget.parse("sparsity=0.95")
        b.check_reachable(SparsitySpace(cifar_resnet("resnet20"), SIZE, max_prune=0.9).floor())


def test_solver_meets_a_sparsity_budget_in_masked_zeros():
    model = cifar_resnet("resnet20").eval()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    space = space_of(model)
    budget = Budget.parse("sparsity=0.7")
    alloc = np.random.default_rng(0).dirichlet([1.0] * len(space)) + 1e-6
    sol = solve(space, alloc.tolist(), budget)
    assert sol.achieved <= budget.target
    masked, _ = space.prune(model, sol.counts)
    z, n = zeros_of(masked, space.names)
    assert n == space.prunable and z / n >= 0.7 - 1e-9
    assert [int((m == 0).sum()) for m in [dict(masked.named_modules())[g].weight for g in space.names]] == \
        [g.channels - c for g, c in zip(space.groups, sol.counts)]       # each layer zeroes what its count says
    # the base model is untouched (compared with itself: a random init can hold an exact zero by chance)
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in before.items())


def test_two_four_masks_keep_the_two_best_of_every_four():
    model = cifar_resnet("resnet20").eval()
    space = space_of(model, pattern="2:4")
    counts = space.counts([0.0] * len(space))
    masked, _ = space.prune(model, counts)
    mods, base = dict(masked.named_modules()), dict(model.named_modules())
    for g in space.groups:
        w = mods[g.name].weight
        if not g.eligible:                                              # the 27-input stem stays dense
            assert int((w == 0).sum()) == 0
            continue
        assert holds_2to4(w) and int((w == 0).sum()) == g.channels // 2
        kept = base[g.name].weight.detach().abs().reshape(w.shape[0], -1, 4)
        on = (w != 0).reshape(w.shape[0], -1, 4)
        assert bool((kept.masked_fill(~on, -1).max(2).values >= kept.masked_fill(on, -1).max(2).values).all())
    assert 0.4 < 1 - space.floor() < 0.5


# ---------------------------------------------------------------------- runs: the budget met on measured zeros
@pytest.mark.parametrize("strategy,params", [("uniform", {}), ("global", {}), ("random", {}),
                                             ("sensitivity", {}), ("rl", {"inner_epochs": 1, "max_probes": 2})])
def test_budget_met_on_measured_zeros(tmp_path, strategy, params):
    cfg = tiny(strategy=strategy, strategy_params=params, importance="taylor" if strategy == "global" else "l1")
    summary = run_job(cfg, tmp_path / "run")
    assert summary["status"] == "done", summary["error"]
    model, ckpt = load_checkpoint(tmp_path / "run" / "artifacts" / "checkpoint.pt")
    names = [n for n, m in model.named_modules() if isinstance(m, (nn.Conv2d, nn.Linear))]
    z, n = zeros_of(model, names)
    assert z / n >= 0.8 - 1e-9 and z / n == pytest.approx(summary["sparsity"]["sparsity"])
    assert summary["budget"] == {"kind": "sparsity", "target": 0.8, "achieved": summary["sparsity"]["sparsity"]}
    assert summary["sparsity"]["nonzero_weights"] == n - z
    assert summary["sparsity"]["bitmask_bytes"] < summary["sparsity"]["dense_bytes"]
    assert ckpt["record"]["removed"] == {} and summary["pruned"]["macs"] == summary["base"]["macs"]
    cands = RunDir(tmp_path / "run").events("candidate")
    assert len(cands) >= 1 and all(len(c["counts"]) == len(names) for c in cands)
    if strategy in ("random", "rl"):   # several structures, all solved to the budget
        assert len({tuple(c["counts"]) for c in cands}) > 1
        searched = [c for c in cands if "probe" not in c["meta"]]      # rl's probes zero one slice each
        assert len(searched) >= 3 and all(c["cost"] <= 0.2 + 1e-9 for c in searched)


# ---------------------------------------------------------------------- fine-tuning keeps the masks
def test_masks_survive_finetuning():
    data = load_data("digits", None, seed=0, val_size=200)
    model = cifar_resnet("resnet20", num_classes=10).eval()
    space = space_of(model)
    counts = space.counts([0.25] * len(space))
    sparse, _ = apply_masks(model, space, counts)
    assert is_masked(sparse)
    before = {n: p.detach().clone() for n, p in sparse.named_parameters()}
    finetune(sparse, data, FinetuneConfig(epochs=1, batch_size=32, max_batches_per_epoch=3, lr=0.1),
             teacher=model, device="cpu")
    trained = {n: p.detach() for n, p in sparse.named_parameters()}
    assert any(not torch.equal(before[n], trained[n]) for n in before if n.endswith("weight_orig"))
    masks = {n: b for n, b in sparse.named_buffers() if n.endswith("weight_mask")}
    make_permanent(sparse)
    assert not is_masked(sparse)
    mods = dict(sparse.named_modules())
    for g, c in zip(space.groups, counts):
        w = mods[g.name].weight
        assert int((w == 0).sum()) >= g.channels - c
        assert bool((w[masks[g.name + ".weight_mask"] == 0] == 0).all())
        assert bool((w[masks[g.name + ".weight_mask"] == 1] != 0).any())
    rep = sparsity_report(sparse, space.names)
    assert rep["sparsity"] >= 1 - space.density(counts) - 1e-9


def test_strategy_comparison_keeps_the_zeros_through_finetuning(tmp_path):
    """``bench/compare_strategies.py --fast`` builds the fine-tuned model as the job does: under a sparsity
    budget the masks stay through fine-tuning, so the table's report top-1 is the sparse model's (plain
    zeroed tensors would grow back while training)."""
    import csv
    import importlib.util
    import sys
    from pathlib import Path

    path = Path(__file__).resolve().parents[1] / "bench" / "compare_strategies.py"
    spec = importlib.util.spec_from_file_location("compare_strategies", path)
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    argv = sys.argv
    sys.argv = [str(path), "--model", "resnet20", "--weights", "none", "--data", "digits", "--budget", "sparsity=0.8",
                "--search-evals", "2", "--search-images", "60", "--recal-images", "32", "--strategies", "uniform",
                "--fast", "--finetune-epochs", "1", "--max-batches-per-epoch", "3", "--out", str(tmp_path)]
    try:
        assert bench.main() == 0
    finally:
        sys.argv = argv
    (row,) = list(csv.DictReader(open(tmp_path / "results.csv")))
    assert float(row["sparsity_after_ft"]) >= 0.8


# ---------------------------------------------------------------------- ONNX holds the zeros
def test_sparse_run_exports_onnx_with_the_zeros_matching_pytorch(tmp_path):
    summary = run_job(tiny(export=True), tmp_path / "run")
    assert summary["status"] == "done", summary["error"]
    path = tmp_path / "run" / "artifacts" / "model.onnx"
    model, ckpt = load_checkpoint(tmp_path / "run" / "artifacts" / "checkpoint.pt")
    names = [n for n, m in model.named_modules() if isinstance(m, (nn.Conv2d, nn.Linear))]
    z, n = zeros_of(model, names)
    counted = onnx_sparsity(path)
    assert (counted["zeros"], counted["weights"]) == (z, n) == (summary["sparsity"]["onnx"]["zeros"],
                                                                summary["sparsity"]["prunable_weights"])
    assert counted["zipped_bytes"] < counted["bytes"]
    data = load_data("digits", None, seed=0, val_size=200)
    x = ((data.report.x[:64].float() / 255 - torch.tensor(ckpt["mean"]).view(1, 3, 1, 1))
         / torch.tensor(ckpt["std"]).view(1, 3, 1, 1))
    with torch.no_grad():
        ref = model(x).numpy()
    got = ort_session(path).run(None, {"input": x.numpy()})[0]
    assert np.abs(got - ref).max() <= 1e-4 * max(1.0, np.abs(ref).max())
    acc = accuracy(model, data.report.subset(100), mean=ckpt["mean"], std=ckpt["std"])
    assert acc["top1"] == pytest.approx(summary["pruned"]["top1"])   # the checkpoint evaluates as the run said


def test_two_four_pattern_survives_export(tmp_path):
    model = cifar_resnet("resnet20").eval()
    space = space_of(model, pattern="2:4")
    sparse, _ = apply_masks(model, space, space.counts([0.0] * len(space)))
    make_permanent(sparse)
    x = torch.randn(4, *SIZE, generator=torch.Generator().manual_seed(0))
    export_onnx(sparse, tmp_path / "m.onnx", input_size=SIZE, mean=[0, 0, 0], std=[1, 1, 1],
                class_names=[str(i) for i in range(10)], sample=x)
    proto = onnx.load(str(tmp_path / "m.onnx"))
    inits = {t.name: numpy_helper.to_array(t) for t in proto.graph.initializer}
    convs = [inits[n.input[1]] for n in proto.graph.node if n.op_type == "Conv"]
    eligible = [c for c in convs if c[0].size % 4 == 0]
    assert len(eligible) == len(convs) - 1 and all(holds_2to4(torch.from_numpy(c.copy())) for c in eligible)


# ---------------------------------------------------------------------- refusals: one line, before any work
def test_bad_sparsity_settings_are_one_line_errors(tmp_path):
    common = ["prune", "--model", "resnet20", "--weights", "none", "--data", "digits", "--no-export"]
    for args, needle in ((["--budget", "sparsity=1.5"], "fraction of the prunable weights set to zero"),
                         (["--budget", "sparsity=0.8", "--strategy", "joint"], "prunes channels only"),
                         (["--budget", "sparsity=0.8", "--strategy", "rl", "--set", "preset=paper"],
                          "finetune_batches=0"),
                         (["--budget", "sparsity=0.6", "--sparsity-pattern", "2:4"], "at most 0.5"),
                         (["--budget", "flops=0.5", "--sparsity-pattern", "2:4"], "needs a sparsity budget")):
        out = tmp_path / f"r{len(list(tmp_path.iterdir()))}"
        res = cli(*common, *args, "--out", out)
        assert_one_line_error(res, needle)
        assert not (out / "events.jsonl").exists()   # refused before the run directory was written


def test_strategies_command_says_which_budgets(capsys):
    from pruner.cli import main

    assert main(["strategies"]) == 0
    lines = capsys.readouterr().out.splitlines()
    budgets = {lines[i - 1].split(":")[0]: l.split(": ")[1] for i, l in enumerate(lines) if l.strip().startswith("budgets:")}
    assert budgets["rl"] == budgets["uniform"] == "flops, params, latency, sparsity"
    assert budgets["joint"] == "flops, params, latency"


def test_unreachable_sparsity_fails_before_any_candidate(tmp_path):
    summary = run_job(tiny(budget="sparsity=0.95", max_prune=0.9), tmp_path / "run")
    assert summary["status"] == "failed" and "at most 0.899" in summary["error"] and "\n" not in summary["error"]
    assert RunDir(tmp_path / "run").events("candidate") == []


# ---------------------------------------------------------------------- resume
def test_sparse_run_resumes_in_finetuning_and_keeps_its_masks(tmp_path):
    out = tmp_path / "run"
    cfg = tiny(finetune=FinetuneConfig(epochs=2, batch_size=32, max_batches_per_epoch=2, lr=0.05))
    ckpt_dir = out / "state" / "finetune"
    first = run_job(cfg, out, should_stop=lambda: (ckpt_dir / "epoch-1.pt").exists())
    assert first["status"] == "cancelled"
    saved = torch.load(ckpt_dir / "epoch-1.pt", weights_only=True)["model"]
    assert any(k.endswith("weight_mask") for k in saved)          # the masks are part of the training state
    summary = resume_job(out)
    assert summary["status"] == "done", summary["error"]
    assert [e["epoch"] for e in RunDir(out).events("epoch")] == [1, 2]
    assert summary["sparsity"]["sparsity"] >= 0.8 - 1e-9
    model, _ = load_checkpoint(out / "artifacts" / "checkpoint.pt")
    names = [n for n, m in model.named_modules() if isinstance(m, (nn.Conv2d, nn.Linear))]
    z, n = zeros_of(model, names)
    assert z == summary["sparsity"]["zeros"] and math.isfinite(summary["pruned"]["top1"])


# ---------------------------------------------------------------------- the studio
def test_studio_offers_sparsity_and_shows_its_figures(runs_dir):
    from test_studio_pages import LIVE, RUNS, app, assert_clean, texts

    at = app()
    at.selectbox(key="nr_budget_kind").set_value("sparsity").run()
    at.number_input(key="nr_budget_value").set_value(0.8).run()
    at.selectbox(key="nr_strategy").set_value("joint").run()
    assert not at.exception
    assert any("prunes channels only" in m for m in texts(at.error)), texts(at.error)
    assert at.button(key="nr_start").disabled
    at.selectbox(key="nr_strategy").set_value("uniform").run()
    assert not any("prunes channels only" in m for m in texts(at.error)), texts(at.error)

    runs_dir.mkdir(parents=True, exist_ok=True)
    summary = run_job(tiny(), runs_dir / "sparse")
    assert summary["status"] == "done", summary["error"]
    at.switch_page(LIVE).run()
    assert_clean(at)
    captions = texts(at.caption)
    assert any("Sparsity (unstructured)" in c and "conv/linear weights are zero" in c for c in captions), captions
    assert any("of the prunable weights at zero" in c for c in captions), captions
    at.switch_page(RUNS).run()
    assert_clean(at)
    row = at.dataframe[0].value.iloc[0]
    assert row["budget"] == "sparsity=0.8" and row["status"] == "done"
