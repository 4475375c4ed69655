"""The CPU's lean scoring path computes what the physically pruned model computes.

``LeanGraph`` (pruner/evaluate.py) rewrites an FX trace: element-wise ops in place, batch norm
folded into the convolution before it. These tests hold it to the eager model: same logits to a
tight tolerance, same predictions, same candidate scores on real images; a model torch.fx cannot
trace, or one whose tensors are shared, falls back or is left alone.
"""

import copy
import random

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from pruner.data.batching import normalize
from pruner.evaluate import GraphUnsupported, LeanGraph, bn_recalibration
from pruner.models.cifar_googlenet import cifar_googlenet
from pruner.models.cifar_mobilenetv2 import cifar_mobilenetv2
from pruner.models.cifar_resnet import cifar_resnet
from pruner.models.cifar_vgg import cifar_vgg
from pruner.pruning.importance import channel_scores, ranking_from_scores
from pruner.pruning.masks import ChannelSlicer
from pruner.pruning.space import PruningSpace
from pruner.runs.config import RunConfig
from pruner.runs.job import Session
from pruner.search.evaluator import Evaluator, EvaluatorSettings

torch.set_num_threads(1)


def _recalibrate(model, x, bs=16):
    with bn_recalibration(model):
        for i in range(0, len(x), bs):
            model(x[i:i + bs])
    model.eval()


@pytest.fixture(scope="module")
def cifar():
    """Real CIFAR-10 test images (the shared JPEG copy), normalised."""
    s = Session(RunConfig(model="resnet20", weights="pretrained", data="cifar10-jpeg", protocol="test-halves",
                          search_images=64, recal_images=64, device="cpu"))
    x = normalize(s.data.search.subset(96).x, s.data.mean, s.data.std)
    return s, x[:64].contiguous(memory_format=torch.channels_last), x[64:].contiguous(memory_format=torch.channels_last)


MODELS = {
    "resnet20": lambda: cifar_resnet("resnet20"),
    "vgg16": lambda: cifar_vgg("vgg16"),
    "mobilenetv2": cifar_mobilenetv2,
    "googlenet": cifar_googlenet,
}


@pytest.mark.parametrize("name", list(MODELS))
def test_lean_graph_equals_the_pruned_model_after_recalibration(name, cifar):
    """Recalibrated through the lean graph and scored folded == recalibrated and scored eagerly."""
    _, x, x_recal = cifar
    torch.manual_seed(0)
    model = MODELS[name]().eval()
    space = PruningSpace(model, (3, 32, 32), max_prune=0.9)
    space.set_ranking(ranking_from_scores(channel_scores(model, space, "l1")))
    heavy = name in ("googlenet", "vgg16")
    x, x_recal = (x[:8], x_recal[:16]) if heavy else (x, x_recal)
    counts = space.counts([random.Random(1).uniform(0.2, 1.0) for _ in space.groups])
    pruned, _ = space.prune(model, counts)
    eager = pruned.to(memory_format=torch.channels_last)
    lean_src = copy.deepcopy(eager)
    _recalibrate(eager, x_recal)
    graph = LeanGraph(lean_src)
    _recalibrate(graph.module, x_recal)  # shares the batch norms with lean_src
    for a, b in zip(lean_src.modules(), eager.modules()):  # same statistics, in the model itself
        if isinstance(a, nn.BatchNorm2d):
            torch.testing.assert_close(a.running_mean, b.running_mean, rtol=1e-5, atol=1e-6)
            torch.testing.assert_close(a.running_var, b.running_var, rtol=1e-5, atol=1e-6)
    lean = graph.fold().module.eval()
    assert graph.folded > 0
    if name == "resnet20":  # every batch norm follows a convolution
        assert not any(isinstance(m, nn.BatchNorm2d) for m in lean.modules())
        assert "relu_" in lean.code and "_add_into" in lean.code
    with torch.inference_mode():
        a, b = lean(x), eager(x)
    torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-4)
    assert torch.equal(a.argmax(1), b.argmax(1))
    with torch.inference_mode():  # the model the graph came from is unchanged by folding
        torch.testing.assert_close(lean_src.eval()(x), b, rtol=1e-5, atol=1e-5)


class SharedOutput(nn.Module):
    """A conv output used twice, and a ReLU whose input is a graph input: neither may be overwritten."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3, padding=1)
        self.bn = nn.BatchNorm2d(8)
        self.head = nn.Linear(8, 10)

    def forward(self, x):
        y = self.bn(self.conv(F.relu(x)))
        z = F.relu(y) + y
        return self.head(z.mean((2, 3)))


def test_shared_tensors_are_not_overwritten():
    torch.manual_seed(0)
    model = SharedOutput().eval()
    x = torch.randn(4, 3, 8, 8)
    x0 = x.clone()
    graph = LeanGraph(model).fold()
    nodes = list(graph.module.graph.nodes)
    assert not any(n.op == "call_method" and n.target == "relu_" for n in nodes)  # x is the input; y has two users
    adds = [n for n in nodes if n.op == "call_function" and n.target.__name__ == "_add_into"]
    assert len(adds) == 1 and adds[0].args[0].target is F.relu  # written into relu(y), which nothing else reads
    with torch.inference_mode():
        torch.testing.assert_close(graph.module(x), model(x), rtol=1e-5, atol=1e-5)
    assert torch.equal(x, x0)


class DataDependent(nn.Module):
    """Control flow on a tensor's value: torch.fx cannot trace it."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3, padding=1)
        self.bn = nn.BatchNorm2d(8)
        self.conv2 = nn.Conv2d(8, 8, 3, padding=1)
        self.head = nn.Linear(8, 10)

    def forward(self, x):
        x = F.relu(self.bn(self.conv(x)))
        if x.mean() > -1.0:
            x = F.relu(self.conv2(x))
        return self.head(x.mean((2, 3)))


def test_untraceable_model_is_refused():
    with pytest.raises(GraphUnsupported):
        LeanGraph(DataDependent())


def test_evaluator_lean_and_eager_give_the_same_candidates(cifar):
    """Pretrained ResNet-20 on real CIFAR-10 images: lean scoring == the previous eager scoring (in
    float32: under bf16 the folded convolutions round differently)."""
    s = cifar[0]
    tops = {}
    for lean in (False, True):
        ev = Evaluator(s.model, s.space, s.data, s.ranking, s.config.budget_obj,
                       settings=EvaluatorSettings(search_images=200, recal_images=64, lean=lean, amp=False))
        rng = random.Random(3)
        tops[lean] = [ev.evaluate(ev.solve([rng.uniform(0.1, 1) for _ in s.space.groups]).counts).top1
                      for _ in range(3)]
        assert ev.lean is lean and ev.lean_note is None
        assert (ev.timing["graph"] > 0) is lean and bool(ev._slicer) is lean
    assert tops[True] == tops[False]


def test_the_search_scores_in_float32_on_the_cpu_unless_asked(cifar):
    """The CPU default is float32 for scoring and recalibration, native bf16 or not: bf16 changed which
    structures the probes and the search chose (docs/results.md). ``amp=True`` still asks for bf16, and its
    top-1s stay within a point of float32's on the same structures."""
    s = cifar[0]
    default = Evaluator(s.model, s.space, s.data, s.ranking, s.config.budget_obj,
                        settings=EvaluatorSettings(search_images=500, recal_images=64))
    with default._autocast():
        assert not torch.is_autocast_enabled("cpu")
    with default._autocast(recalibration=True):
        assert not torch.is_autocast_enabled("cpu")
    bf16 = Evaluator(s.model, s.space, s.data, s.ranking, s.config.budget_obj,
                     settings=EvaluatorSettings(search_images=500, recal_images=64, amp=True))
    with bf16._autocast():
        assert torch.is_autocast_enabled("cpu")
    rng = random.Random(5)
    structures = [default.solve([rng.uniform(0.05, 1) for _ in s.space.groups]).counts for _ in range(4)]
    structures.append(default.solve([1.0] * len(s.space.groups)).counts)
    a = [default.evaluate(c).top1 for c in structures]
    b = [bf16.evaluate(c).top1 for c in structures]
    assert max(abs(x - y) for x, y in zip(a, b)) <= 1.0, (a, b)


def test_evaluator_falls_back_to_eager_for_an_untraceable_model(cifar):
    s = cifar[0]
    torch.manual_seed(0)
    model = DataDependent().eval()
    space = PruningSpace(model, (3, 32, 32), max_prune=0.9)
    ranking = ranking_from_scores(channel_scores(model, space, "l1"))
    tops = {}
    for lean in (False, True):
        ev = Evaluator(model, space, s.data, ranking, s.config.budget_obj,
                       settings=EvaluatorSettings(search_images=100, recal_images=32, lean=lean))
        tops[lean] = ev.evaluate(space.counts([0.5] * len(space))).top1
    assert ev.lean is False and "torch.fx cannot trace" in ev.lean_note
    assert tops[True] == tops[False]


@pytest.mark.parametrize("name", ["resnet20", "concat_residual", "mobilenetv2", "googlenet"])
def test_sliced_model_is_torch_pruning_surgery(name):
    """The cached surgery plan replays Torch-Pruning's surgery exactly (every tensor, every width)."""
    from test_alignment import MODELS as ALIGNMENT_MODELS, _setup

    model, space = _setup(name)
    assert name in ALIGNMENT_MODELS
    slicer = ChannelSlicer(model, space)
    rng = random.Random(5)
    for _ in range(1 if name == "googlenet" else 3):
        counts = space.counts([rng.uniform(0.1, 1.0) for _ in space.groups])
        slicer.verify(counts)  # raises where any tensor or width differs
    before = {k: v.clone() for k, v in model.state_dict().items()}
    pruned = slicer.prune(counts)
    with torch.no_grad():
        for p in pruned.parameters():
            p.add_(1.0)  # the base model shares nothing with the pruned copy
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())


# ------------------------------------------------------------------ scoring on threads (CPU)
def _proposals(space, n, seed=5):
    rng = random.Random(seed)
    return [space.counts([rng.uniform(0.1, 1) for _ in space.groups]) for _ in range(n)]


def test_a_batch_scored_on_threads_equals_one_at_a_time(cifar):
    """Pretrained ResNet-20, real images: a prefetched batch scored on two threads gives the
    candidates (ids, scores, costs, cached flags, evaluation count) that one at a time gives."""
    s = cifar[0]
    props = _proposals(s.space, 4)
    props = props + [props[1]]  # a duplicate within the batch: scored once, then served from the memo
    main = torch.get_num_threads()
    got = {}
    for threads in (1, 2):
        ev = Evaluator(s.model, s.space, s.data, s.ranking, s.config.budget_obj,
                       settings=EvaluatorSettings(search_images=200, recal_images=64, threads=threads))
        assert ev.scoring_threads() == threads
        ev.evaluate(props[0])  # memoised before the batch: not scored again
        scored = ev.prefetch(props)
        cands = [ev.evaluate(p) for p in props]
        got[threads] = ([(c.id, c.counts, c.top1, c.macs, c.params, c.cost, c.meta["cached"]) for c in cands],
                        ev.evaluations)
        assert scored == (0 if threads == 1 else 3)  # one at a time: prefetch leaves the scoring to evaluate
        assert ev.lean and ev.lean_note is None and ev.timing["evaluation"] > 0
        assert torch.get_num_threads() == main  # the scoring threads' share did not leak into this thread
    assert got[1] == got[2]
    assert got[2][1] == 4 and [c[-1] for c in got[2][0]] == [True, False, False, False, True]


def test_scoring_threads_default_to_the_cpu_threads_for_small_inputs_only(cifar):
    s = cifar[0]
    make = lambda **kw: Evaluator(s.model, s.space, s.data, s.ranking, s.config.budget_obj,  # noqa: E731
                                  settings=EvaluatorSettings(search_images=16, recal_images=16, **kw))
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        assert make().scoring_threads() == 2               # auto: the intra-op threads, 32 px images
        assert make(threads=1).scoring_threads() == 1
        assert make(scoring="mask").scoring_threads() == 1  # one shared masked copy: one at a time
        big = make()
        big._search_x = torch.zeros(2, 3, 96, 96)
        assert big.scoring_threads() == 1                   # larger inputs: activations per thread add up
        assert big.prefetch(_proposals(s.space, 2)) == 0
    finally:
        torch.set_num_threads(before)


@pytest.mark.parametrize("budget", ["flops=0.5", "sparsity=0.6"])
def test_a_job_scored_on_threads_finds_what_one_at_a_time_finds(tmp_path, budget):
    """The whole job (random search, batches of 8), channels or weight sparsity: same candidate
    events and answer with --scoring-threads 2 as with 1, and the summary says how they were scored."""
    from pruner.finetune import FinetuneConfig
    from pruner.runs.job import run_job
    from pruner.runs.rundir import RunDir

    runs = {}
    for threads in (1, 2):
        cfg = RunConfig(model="resnet20", weights=None, data="digits", strategy="random", search_evals=10, budget=budget,
                        search_images=60, recal_images=32, report_images=40, latency_repeats=2,
                        finetune=FinetuneConfig(epochs=0), export=False, device="cpu", seed=3,
                        scoring_threads=threads)
        summary = run_job(cfg, tmp_path / f"t{threads}")
        assert summary["status"] == "done", summary["error"]
        assert summary["search"]["scoring_threads"] == threads
        events = RunDir(tmp_path / f"t{threads}").events("candidate")
        runs[threads] = ([(e["candidate_id"], tuple(e["counts"]), e["top1"]) for e in events],
                         summary["search"]["best_val_top1"], summary["search"]["evaluations"])
    assert len(runs[1][0]) >= 8 and runs[1] == runs[2]


@pytest.mark.parametrize("value", [0, -2, 1.5, "two"])
def test_bad_scoring_threads_are_refused_before_any_work(value):
    from pruner.errors import PrunerError

    with pytest.raises(PrunerError, match="--scoring-threads"):
        RunConfig(model="resnet20", weights=None, data="digits", scoring_threads=value)


def test_pruner_bf16_0_turns_the_automatic_bf16_off(monkeypatch):
    """``PRUNER_BF16=0``: float32 on every CPU (the same numbers at any thread or worker count); CUDA unchanged."""
    from pruner.settings import BF16_ENV, native_bf16

    monkeypatch.setenv(BF16_ENV, "0")
    assert native_bf16("cpu") is False
    assert native_bf16("cuda") is True
    monkeypatch.setenv(BF16_ENV, "1")
    assert native_bf16("cpu") is bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
