"""Chart builders (studio/charts.py) are pure functions of run-directory data."""

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
