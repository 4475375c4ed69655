"""Chart builders (studio/charts.py) are pure functions of run-directory data."""

import pytest

from studio import charts


def test_latency_tradeoff_places_the_final_model_by_its_paired_ratio():
    """The final model's latency point is the base latency times the paired ratio
    (``latency_vs_base``), not its own separately timed ms, which drifts with the machine."""
    cands = [{"candidate_id": 0, "top1": 40.0, "macs": 50, "latency_ms": 4.0, "cost": 0.5}]
    base = {"top1": 80.0, "macs": 100, "latency_ms": 8.0}
    final = {"top1": 70.0, "macs": 50, "latency_ms": 20.0, "latency_vs_base": 0.55}
    fig = charts.tradeoff_chart(cands, "latency_ms", base=base, final=final, budget={"kind": "latency", "target": 0.6})
    point = next(t for t in fig.data if t.name == "pruned + fine-tuned (report split)")
    assert list(point.x) == [8.0 * 0.55] and list(point.y) == [70.0]
    # without the paired figure (older runs) the separately timed ms is what there is
    fig = charts.tradeoff_chart(cands, "latency_ms", base=base, final={**final, "latency_vs_base": None})
    point = next(t for t in fig.data if t.name == "pruned + fine-tuned (report split)")
    assert list(point.x) == [20.0]


def test_sensitivity_curves_never_repeat_a_colour():
    """Beyond the ten palette colours, every group still gets its own colour."""
    groups = [f"g{i}" for i in range(27)]
    sens = {"groups": groups, "ratios": [0.25, 0.5], "top1": [[80.0 - i, 70.0 - i] for i in range(27)],
            "base_top1": 85.0}
    fig = charts.sensitivity_curves(sens)
    colours = [t.line.color for t in fig.data]
    assert len(colours) == 27 and len(set(colours)) == 27


def test_compared_fronts_get_distinct_colours():
    runs = [{"name": f"run{i}", "base_macs": 100, "chosen_id": None,
             "candidates": [{"candidate_id": 0, "macs": 50, "top1": 60.0 + i}]} for i in range(12)]
    fig = charts.compare_fronts_chart(runs)
    fronts = [t for t in fig.data if t.mode == "lines+markers"]
    assert len({t.line.color for t in fronts}) == 12


def test_tradeoff_labels_which_split_each_point_is_scored_on():
    """Candidates are scored on the search split, the original and the final model on the report
    split: the legend and hover say so, and the y axis does not claim 'search' for all of them."""
    cands = [{"candidate_id": 0, "top1": 40.0, "macs": 5e6, "cost": 0.5}]
    base = {"top1": 80.0, "macs": 1e7}
    final = {"top1": 70.0, "macs": 5e6}
    fig = charts.tradeoff_chart(cands, "macs", base=base, final=final)
    names = {t.name for t in fig.data}
    assert {"candidates (search split)", "original (report split)", "pruned + fine-tuned (report split)"} <= names
    final_trace = next(t for t in fig.data if t.name == "pruned + fine-tuned (report split)")
    assert "report top-1" in final_trace.hovertemplate and "%{y:.2f}" in final_trace.hovertemplate
    assert "search" not in fig.layout.yaxis.title.text


def test_finetune_chart_with_one_epoch_has_whole_epoch_ticks():
    fig = charts.finetune_chart([{"epoch": 1, "loss": 1.2345, "val_top1": 47.87912}])
    assert fig.layout.xaxis.tickformat == "d" and fig.layout.xaxis.dtick == 1
    assert list(fig.layout.xaxis.range) == [0.5, 1.5]


def test_toolbar_does_not_cover_titles():
    for fig in (charts.reward_chart([]), charts.finetune_chart([{"epoch": 1, "loss": 1.0}]),
                charts.sensitivity_curves({})):
        assert fig.layout.modebar.orientation == "v"


# ---------------------------------------------------------------------- on real runs (tests/conftest.py)
def _series(finished_runs):
    from pruner.runs.rundir import RunDir
    from studio import history

    return [history.run_series(RunDir(p)) for p in finished_runs.values()]


def test_network_chart_shows_every_layer_kept_and_removed_by_group(finished_runs):
    import json

    summary = json.loads((finished_runs["rl"] / "summary.json").read_text())
    layers, groups = summary["layers"], summary["groups"]
    fig = charts.network_chart(layers, groups)
    removed = next(t for t in fig.data if t.name == "removed")
    assert list(removed.y) == [l["name"] for l in layers]
    assert list(removed.x) == [l["before"] - l["after"] for l in layers]
    assert list(removed.base) == [l["after"] for l in layers]
    kept = {y: x for t in fig.data if t.name != "removed" for y, x in zip(t.y, t.x)}
    assert kept == {l["name"]: l["after"] for l in layers}      # every layer once, at its kept channels
    owner = charts.layer_groups(groups)
    for t in fig.data:
        if t.name == "removed":
            continue
        gname = t.legendgroup or "not pruned (no group)"
        assert all(owner.get(y, "not pruned (no group)") == gname for y in t.y)
    # resnet20's first group couples conv1 with the three residual convs of stage 1: the legend says so
    first = groups[0]
    assert len(first["layers"]) == 4 and f"{first['name']} (+3 coupled)" in {t.name for t in fig.data}
    assert len({t.marker.color for t in fig.data if t.name != "removed"}) == len(fig.data) - 1
    assert list(fig.layout.yaxis.categoryarray) == [l["name"] for l in layers][::-1]   # input at the top
    empty = charts.network_chart([], [])
    assert not empty.data and "has not finished" in empty.layout.annotations[0].text


def test_network_graph_of_a_finished_run(finished_runs):
    """summary["graph"] (torch.fx on the pruned model): every conv/linear layer is a node with its output shape
    (the kept channels), residual adds merge two paths, and the chart draws each layer in its group's colour
    with kept → removed channels in its label and the skip connections as arcs."""
    import json

    summary = json.loads((finished_runs["rl"] / "summary.json").read_text())
    graph, layers, groups = summary["graph"], summary["layers"], summary["groups"]
    nodes = {n["name"]: n for n in graph["nodes"]}
    for layer in layers:                                   # every layer, its output shape the pruned width
        assert nodes[layer["name"]]["shape"][0] == layer["after"]
    adds = [n["id"] for n in graph["nodes"] if n["op"] == "add"]
    assert len(adds) == 9                                  # resnet20: nine residual blocks
    into = {a: [e[0] for e in graph["edges"] if e[1] == a] for a in adds}
    assert all(len(v) == 2 for v in into.values())         # the block's path and its shortcut
    assert graph["nodes"][0]["op"] == "input" and graph["nodes"][-1]["op"] == "output"
    assert nodes["conv1"]["folded"] == ["BatchNorm2d"]     # BN folded into its conv's node

    fig = charts.network_graph(graph, layers, groups)
    edge_trace, *node_traces = fig.data
    owner = charts.layer_groups(groups)
    labels = {}
    for t in node_traces:
        for text in t.text:
            labels[text.split()[0]] = (t.name, text)
    for layer in layers:
        group, text = labels[layer["name"]]
        assert group == owner.get(layer["name"], "layers not pruned")
        assert (f"{layer['before']}→{layer['after']}" if layer["after"] != layer["before"] else
                f"{layer['before']}") in text
    # a skip connection is an arc: more than two points between two Nones
    segments, current = [], []
    for x in edge_trace.x:
        if x is None:
            segments.append(current)
            current = []
        else:
            current.append(x)
    # resnet20: seven identity shortcuts (arcs beside the path) and two downsampling ones (a slice node each,
    # in a lane of their own, drawn straight)
    assert sum(len(s) > 2 for s in segments) == 7 and len(segments) == len(graph["edges"])
    assert sum(n["op"] == "slice" for n in graph["nodes"]) == 2
    assert "no graph" in charts.network_graph(None).layout.annotations[0].text


def test_compare_search_chart_overlays_each_runs_best_within_the_budget(finished_runs):
    series = _series(finished_runs)
    fig = charts.compare_search_chart(series)
    for run in series:
        budget = run["budget"]
        ok = [(i, c) for i, c in enumerate(run["candidates"]) if not c["probe"] and budget.feasible(c["cost"])]
        assert ok, run["name"]
        line = next(t for t in fig.data if t.name == run["name"])
        best = [max(c["reward"] for _, c in ok[:k + 1]) for k in range(len(ok))]
        assert list(line.x)[:len(ok)] == [i for i, _ in ok] and list(line.y)[:len(ok)] == best
        assert line.xaxis == "x"
        top1 = next(t for t in fig.data if t.name == f"{run['name']} top-1")
        assert top1.xaxis == "x2" and list(top1.y)[-1] == max(c["top1"] for _, c in ok)
    # the rl run starts with sensitivity probes (one group pruned alone, over the budget): never the best
    rl = next(r for r in series if any(c["probe"] for c in r["candidates"]))
    line = next(t for t in fig.data if t.name == rl["name"])
    probes = [i for i, c in enumerate(rl["candidates"]) if c["probe"]]
    assert not set(probes) & set(line.x)
    lines = [t for t in fig.data if t.name in {r["name"] for r in series}]
    assert len({t.line.color for t in lines}) == len(series)
    assert "no evaluated candidates" in charts.compare_search_chart([]).layout.annotations[0].text


def test_reward_chart_draws_probes_and_over_budget_points_apart_from_the_best():
    from pruner.budget import Budget

    cands = [{"candidate_id": 0, "step": 0, "reward": 90.0, "top1": 90.0, "cost": 0.95, "meta": {"probe": 0}},
             {"candidate_id": 1, "step": 1, "reward": 80.0, "top1": 80.0, "cost": 0.7, "meta": {}},
             {"candidate_id": 2, "step": 1, "reward": 50.0, "top1": 50.0, "cost": 0.5, "meta": {}},
             {"candidate_id": 3, "step": 2, "reward": 60.0, "top1": 60.0, "cost": 0.45, "meta": {}},
             {"candidate_id": 4, "step": 2, "reward": 55.0, "top1": 55.0, "cost": 0.49, "meta": {}}]
    fig = charts.reward_chart(cands, budget=Budget.parse("flops=0.5"))
    traces = {t.name: t for t in fig.data}
    assert list(traces["probe: one group pruned alone (not a solution)"].x) == [0]
    assert list(traces["over the budget (never the best)"].x) == [1]
    assert list(traces["within the budget"].x) == [2, 3, 4]
    best = traces["best within the budget so far"]
    assert list(best.x) == [2, 3, 4] and list(best.y) == [50.0, 60.0, 60.0]
    trade = {t.name: t for t in charts.tradeoff_chart([{**c, "macs": c["cost"] * 1e6} for c in cands]).data}
    assert list(trade["probe: one group pruned alone (not a solution)"].x) == [0.95]
    assert sorted(trade["candidates (search split)"].x) == [0.45, 0.49, 0.5, 0.7]
    # without a budget (an old run) every non-probe candidate counts
    assert list({t.name: t for t in charts.reward_chart(cands).data}["best within the budget so far"].y) == \
        [80.0, 80.0, 80.0, 80.0]


def test_candidates_csv_says_which_candidates_meet_the_budget(finished_runs):
    import csv

    from pruner.budget import Budget
    from pruner.runs.rundir import RunDir

    for path in finished_runs.values():
        rd = RunDir(path)
        rows = list(csv.DictReader(rd.artifact_path("candidates").open()))
        events = rd.events("candidate")
        assert len(rows) == len(events)
        budget = Budget.parse(rd.config()["budget"])
        for row, e in zip(rows, events):
            assert row["meets_budget"] == str(budget.feasible(e["cost"]))
            assert row["probe"] == str((e.get("meta") or {}).get("probe") is not None)
    rl_rows = list(csv.DictReader(RunDir(finished_runs["rl"]).artifact_path("candidates").open()))
    assert {"True"} == {r["meets_budget"] for r in rl_rows if r["probe"] == "False" and float(r["cost"]) <= 0.5}
    assert any(r["probe"] == "True" and r["meets_budget"] == "False" for r in rl_rows)


def test_compare_finetune_chart_overlays_epochs(finished_runs):
    series = _series(finished_runs)
    fig = charts.compare_finetune_chart(series)
    for run in series:
        val = next(t for t in fig.data if t.name == run["name"])
        loss = next(t for t in fig.data if t.name == f"{run['name']} loss")
        assert list(val.x) == [1, 2] and list(val.y) == [e["val_top1"] for e in run["epochs"]]
        assert list(loss.y) == [e["loss"] for e in run["epochs"]] and loss.xaxis == "x2"
    no_ft = [{**s, "epochs": []} for s in series]
    assert "fine-tuning was off" in charts.compare_finetune_chart(no_ft).layout.annotations[0].text


def test_compared_fronts_of_real_runs_mark_the_chosen_candidate(finished_runs):
    series = _series(finished_runs)
    fig = charts.compare_fronts_chart(series)
    stars = [t for t in fig.data if t.name.endswith(" chosen")]
    assert {t.name for t in stars} == {f"{s['name']} chosen" for s in series}


# ---------------------------------------------------------------------- joint: what each epoch did
# two epochs as a real joint run on the digits demo wrote them (resnet20: 12 layer groups)
JOINT_EVENTS = [
    {"kind": "joint", "time": 1796579557.08, "epoch": 0, "predicted_reward": 0.19504, "observed_reward": 0.140625,
     "loss": 37.0193, "ce": 3.0921, "penalty": 339.272, "removed_norm_after": 338.50,
     "keep_ratios": [0.6875, 0.6875, 0.6875, 0.6875, 0.71875, 0.71875, 0.71875, 0.71875, 0.703125, 0.703125,
                     0.71875, 0.71875], "samples": 3, "reused": 0, "mean_reward": 0.1354, "sigma": 0.4113,
     "drift_loss": 4.2e-05, "model_version": 1},
    {"kind": "joint", "time": 1796579557.73, "epoch": 1, "predicted_reward": 0.18152, "observed_reward": 0.125,
     "loss": 33.5619, "ce": 2.5566, "penalty": 310.0525, "removed_norm_after": 309.84,
     "keep_ratios": [0.5, 0.5625, 0.9375, 0.5625, 0.9375, 0.9375, 0.53125, 0.9375, 0.53125, 0.53125, 0.9375,
                     0.9375], "samples": 3, "reused": 3, "mean_reward": 0.1146, "sigma": 0.3337,
     "drift_loss": 6.7e-05, "model_version": 2, "agent": "layers"},
]
GROUPS = ["conv1", "layer1.0.conv1", "layer1.1.conv1", "layer1.2.conv1", "layer2.0.conv1", "layer2.1.conv1",
          "layer2.2.conv1", "layer3.0.conv1", "layer3.1.conv1", "layer3.2.conv1", "layer2.0.conv2", "layer3.0.conv2"]


def _traces(fig) -> dict:
    return {t.name: list(t.y) for t in fig.data}


def test_joint_charts_show_reward_loss_and_structure_per_epoch():
    reward, loss, structure = charts.joint_charts(JOINT_EVENTS, GROUPS)
    # predicted vs observed, as the search's score (the reward is a fraction of it)
    assert _traces(reward)["observed"] == [14.0625, 12.5]
    assert _traces(reward)["predicted (before it was seen)"] == pytest.approx([19.504, 18.152])
    assert list(reward.data[0].x) == [0, 1] and "agent: layers" in reward.layout.title.text
    # the training loss: cross-entropy and total on the left axis, the alignment penalty on the right
    lines = _traces(loss)
    assert lines["cross-entropy"] == [3.0921, 2.5566] and lines["total loss"] == [37.0193, 33.5619]
    assert lines["alignment penalty (right axis)"] == [339.272, 310.0525]
    penalty = next(t for t in loss.data if t.name.startswith("alignment"))
    assert penalty.yaxis == "y2" and all(t.yaxis == "y" for t in loss.data if t is not penalty)
    # the structure: keep ratio of each group (rows, named) × epoch (columns), on a fixed 0..1 scale
    heat = structure.data[0]
    assert list(heat.y) == GROUPS and list(heat.x) == [0, 1]
    assert [row[1] for row in heat.z] == JOINT_EVENTS[1]["keep_ratios"]
    assert (heat.zmin, heat.zmax) == (0.0, 1.0)


def test_joint_charts_of_one_epoch_and_of_partial_events():
    one = charts.joint_charts(JOINT_EVENTS[:1], GROUPS)
    assert [len(f.data) for f in one] == [2, 3, 1] and not any(f.layout.annotations for f in one[:2])
    assert [row[0] for row in one[2].data[0].z] == JOINT_EVENTS[0]["keep_ratios"]
    # no group names (the base event not read yet) or fewer than the ratios: the rows are numbered
    assert list(charts.joint_structure_chart(JOINT_EVENTS, GROUPS[:10]).data[0].y)[10:] == ["group 10", "group 11"]
    # an event with only some fields draws what it has; missing or non-finite values are gaps
    partial = [{"kind": "joint", "epoch": 0, "ce": 2.0, "keep_ratios": [0.5, None, float("nan")]}]
    reward, loss, structure = charts.joint_charts(partial)
    assert _traces(reward)["observed"] == [None]
    assert list(_traces(loss)) == ["cross-entropy"]
    assert [list(row) for row in structure.data[0].z] == [[0.5], [None], [None]]


def test_joint_charts_without_an_epoch_say_so():
    for events in ([], [{"kind": "joint", "epoch": 0}]):
        figs = charts.joint_charts(events, GROUPS)
        assert len(figs) == 3
        for fig in figs[1:]:
            assert not fig.data and "no" in fig.layout.annotations[0].text
    assert "no epoch finished yet" in charts.joint_chart([]).layout.annotations[0].text
    assert [len(charts.strategy_charts(k, [])) for k in ("joint", "constrained", "purl", "other")] == [3, 1, 1, 1]


def test_live_page_lays_out_the_joint_charts_two_to_a_row():
    from studio.events import RunView
    from studio.live import build_live_figures, extra_rows

    base = {"kind": "base", "time": 1.0, "groups": [{"name": g, "channels": 16} for g in GROUPS]}
    view = RunView.from_events([{"kind": "status", "time": 0.0, "status": "searching"}, base, *JOINT_EVENTS,
                                {"kind": "constrained", "time": 2.0, "step": 0}])
    figs = build_live_figures(view, None, {"budget": "flops=0.5", "finetune": {"epochs": 0}}, None)
    assert extra_rows(figs) == [["extra:joint", "extra:joint:1"], ["extra:joint:2"], ["extra:constrained"]]
    assert list(figs["extra:joint:2"].data[0].y) == GROUPS   # the run's group names
