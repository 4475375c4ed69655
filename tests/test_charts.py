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
