"""Charts of the strategies' own event kinds (constrained, purl, joint, and any other)."""

from __future__ import annotations

import math
from typing import Sequence

import plotly.graph_objects as go
from plotly.subplots import make_subplots

from ._common import ACCENT, BASE_COLOR, GREY, HEIGHT, empty_figure, group_heatmap, num, palette, scatter_type, style


def event_series_chart(kind: str, events: Sequence[dict], max_fields: int = 8) -> go.Figure:
    """Numeric fields of any event kind against the event index (one small panel per field).

    Used for strategy-specific events the studio does not know (``constrained``, ``purl``,
    ``joint``, ...). Events with a short string field (such as ``level``) are split into series.
    """
    title = f"Strategy events: {kind}"
    fields: list[str] = []
    split_field = None
    for e in events:
        for k, v in e.items():
            if k in ("kind", "time"):
                continue
            if num(v) is not None and k not in fields:
                fields.append(k)
    labels: dict[str, set] = {}
    for e in events:
        for k, v in e.items():
            if isinstance(v, str) and k != "kind":
                labels.setdefault(k, set()).add(v)
    for k, vals in labels.items():
        if 1 < len(vals) <= 4:
            split_field = k
            break
    index_fields = {"step", "epoch", "episode", "iteration", "index"}
    plot_fields = [f for f in fields if f not in index_fields][:max_fields] or fields[:max_fields]
    if not events or not plot_fields:
        return empty_figure(title, "no numeric fields to plot", x="event #", y="value")
    cols = 2 if len(plot_fields) > 1 else 1
    nrows = math.ceil(len(plot_fields) / cols)
    fig = make_subplots(rows=nrows, cols=cols, subplot_titles=plot_fields, vertical_spacing=0.12 if nrows > 1 else 0.1)
    series = sorted(labels.get(split_field, {None})) if split_field else [None]
    colours = palette(max(len(series), len(plot_fields)))
    for si, label in enumerate(series):
        sel = [(i, e) for i, e in enumerate(events) if split_field is None or e.get(split_field) == label]
        sc = scatter_type(len(sel))
        for fi, f in enumerate(plot_fields):
            pts = [(i, num(e.get(f))) for i, e in sel]
            pts = [(i, v) for i, v in pts if v is not None]
            if not pts:
                continue
            fig.add_trace(sc(x=[p[0] for p in pts], y=[p[1] for p in pts], mode="lines+markers",
                             name=f"{label}" if label is not None else f, legendgroup=str(label),
                             showlegend=label is not None and fi == 0,
                             line={"color": colours[si] if label is not None else colours[fi]}, marker={"size": 4}),
                          row=fi // cols + 1, col=fi % cols + 1)
    fig.update_xaxes(title_text="event #", row=nrows)
    fig.update_layout(title={"text": title, "x": 0.0}, height=max(HEIGHT, 230 * nrows), uirevision="keep",
                      showlegend=split_field is not None, margin={"l": 60, "r": 20, "t": 70, "b": 50})
    return fig


def constrained_chart(events: Sequence[dict]) -> go.Figure:
    """``constrained``: the policy's mean cost against the budget, and the Lagrange multiplier, per iteration."""
    title = "Constrained RL: cost against the budget, and the Lagrange multiplier"
    rows = [(e.get("step", i), num(e.get("mean_cost")), num(e.get("budget")), num(e.get("multiplier")))
            for i, e in enumerate(events)]
    if not rows:
        return empty_figure(title, "no iteration finished yet", x="policy iteration", y="cost (fraction of original)")
    x = [r[0] for r in rows]
    fig = make_subplots(specs=[[{"secondary_y": True}]])
    fig.add_trace(go.Scatter(x=x, y=[r[1] for r in rows], mode="lines+markers", name="mean cost of the samples",
                             line={"color": BASE_COLOR}), secondary_y=False)
    fig.add_trace(go.Scatter(x=x, y=[r[2] for r in rows], mode="lines", name="budget",
                             line={"color": GREY.replace("0.35", "0.9"), "dash": "dash"}), secondary_y=False)
    fig.add_trace(go.Scatter(x=x, y=[r[3] for r in rows], mode="lines+markers", name="multiplier λ",
                             line={"color": ACCENT}), secondary_y=True)
    style(fig, title, "policy iteration", "cost (fraction of original)")
    fig.update_yaxes(title_text="Lagrange multiplier λ", secondary_y=True, showgrid=False)
    return fig


def purl_chart(events: Sequence[dict]) -> go.Figure:
    """``purl``: the reward of every pruning step (one marker per step, placed within its episode and
    coloured by the step, i.e. the layer decided) and each episode's return."""
    title = "PuRL: reward at every pruning step"
    steps = [e for e in events if e.get("level") == "step"]
    episodes = [e for e in events if e.get("level") == "episode"]
    if not steps:
        return empty_figure(title, "no pruning step yet", x="episode", y="reward")
    fig = go.Figure()
    x = [num(e.get("episode")) + (int(e.get("step", 0)) + 0.5) / max(1, int(e.get("steps") or 1)) for e in steps]
    fig.add_trace(go.Scatter(
        x=x, y=[num(e.get("reward")) for e in steps], mode="markers", name="reward at each step",
        text=[f"step {int(e.get('step', 0)) + 1}: {e.get('layer', '')}" for e in steps],
        marker={"size": 6, "color": [int(e.get("step", 0)) for e in steps], "colorscale": "Viridis",
                "colorbar": {"title": "step"}}))
    if episodes:
        fig.add_trace(go.Scatter(x=[num(e.get("episode")) + 1 for e in episodes],
                                 y=[num(e.get("return")) for e in episodes],
                                 mode="lines+markers", name="episode return", line={"color": "#333", "dash": "dot"}))
    return style(fig, title, "episode", "reward")


def _epochs(events: Sequence[dict]) -> list:
    """Each ``joint`` event's epoch (its position when the field is missing)."""
    return [e.get("epoch", i) if num(e.get("epoch", i)) is not None else i for i, e in enumerate(events)]


def _percent(v) -> float | None:
    """A reward (a fraction: the search's score / 100) as the score itself."""
    v = num(v)
    return None if v is None else 100.0 * v


def _agent(events: Sequence[dict]) -> str:
    """`` (agent: bandit)`` when the events name the agent that chose the structures (empty otherwise)."""
    agents = [str(e["agent"]) for e in events if isinstance(e.get("agent"), str) and e["agent"]]
    return f" (agent: {agents[-1]})" if agents else ""


def joint_chart(events: Sequence[dict]) -> go.Figure:
    """``joint``: the drift model's predicted reward for each epoch's structure against the observed one (as
    the search's score, i.e. the reward × 100: top-1 % with ``--score top1``)."""
    title = "Joint: reward predicted by the drift model vs observed" + _agent(events)
    y_title = "reward × 100 (search score, %)"
    if not events:
        return empty_figure(title, "no epoch finished yet", x="epoch", y=y_title)
    x = _epochs(events)
    fig = go.Figure()
    fig.add_trace(go.Scatter(x=x, y=[_percent(e.get("observed_reward")) for e in events], mode="lines+markers",
                             name="observed", line={"color": BASE_COLOR}))
    fig.add_trace(go.Scatter(x=x, y=[_percent(e.get("predicted_reward")) for e in events], mode="lines+markers",
                             name="predicted (before it was seen)", line={"color": ACCENT, "dash": "dash"}))
    fig.update_xaxes(dtick=1 if len(x) <= 20 else None)
    return style(fig, title, "epoch", y_title)


def joint_loss_chart(events: Sequence[dict]) -> go.Figure:
    """``joint``: the training loss of each epoch's weight training (means over its batches): the
    cross-entropy, the alignment penalty (group lasso on the channels the epoch's structure removes,
    unweighted, right axis) and the total loss (cross-entropy + ``align_weight`` × penalty)."""
    title = "Joint: training loss per epoch"
    series = (("ce", "cross-entropy", BASE_COLOR, False), ("loss", "total loss", "#333", False),
              ("penalty", "alignment penalty (right axis)", ACCENT, True))
    if not any(num(e.get(f)) is not None for e in events for f, *_ in series):
        return empty_figure(title, "no training epoch finished yet", x="epoch", y="loss")
    x = _epochs(events)
    fig = make_subplots(specs=[[{"secondary_y": True}]])
    for field, name, colour, right in series:
        y = [num(e.get(field)) for e in events]
        if any(v is not None for v in y):
            fig.add_trace(go.Scatter(x=x, y=y, mode="lines+markers", name=name,
                                     line={"color": colour, "dash": "dot" if field == "loss" else None}),
                          secondary_y=right)
    style(fig, title, "epoch", "cross-entropy, total loss")
    fig.update_xaxes(dtick=1 if len(x) <= 20 else None)
    fig.update_yaxes(title_text="alignment penalty (Σ removed channels' norms)", secondary_y=True, showgrid=False)
    return fig


def joint_structure_chart(events: Sequence[dict], groups: Sequence[str] = ()) -> go.Figure:
    """``joint``: the structure chosen each epoch (the one the weights were trained towards), as the keep
    ratio of every layer group × epoch; ``groups`` names the rows (the run's layer groups)."""
    title = "Joint: structure chosen each epoch (keep ratio per layer group)"
    rows = [(x, e["keep_ratios"]) for x, e in zip(_epochs(events), events)
            if isinstance(e.get("keep_ratios"), list) and e["keep_ratios"]]
    if not rows:
        return empty_figure(title, "no epoch finished yet", x="epoch", y="layer group")
    matrix = [r for _, r in rows]
    fig = group_heatmap(matrix, [x for x, _ in rows], groups, title=title, x_title="epoch",
                        scale_title="keep ratio", colorscale="RdYlGn", zrange=(0.0, 1.0),
                        cell_text=len(rows) * max(len(r) for r in matrix) <= 300)
    fig.update_xaxes(dtick=1 if len(rows) <= 20 else None)
    return fig


def joint_charts(events: Sequence[dict], groups: Sequence[str] = ()) -> list[go.Figure]:
    """What the Live page shows of a ``joint`` run, epoch by epoch: predicted vs observed reward, the
    training loss, and the structure chosen."""
    return [joint_chart(events), joint_loss_chart(events), joint_structure_chart(events, groups)]


#: charts of the strategies' own event kinds; other kinds get :func:`event_series_chart`
STRATEGY_CHARTS = {"constrained": constrained_chart, "purl": purl_chart, "joint": joint_chart}
#: event kinds drawn as several charts (``builder(events, group_names)``), in the order the Live page shows them
STRATEGY_CHART_SETS = {"joint": joint_charts}


def strategy_charts(kind: str, events: Sequence[dict], groups: Sequence[str] = ()) -> list[go.Figure]:
    """Every chart of a strategy's own event kind: its set (:data:`STRATEGY_CHART_SETS`) or its one chart."""
    builder = STRATEGY_CHART_SETS.get(kind)
    return builder(events, groups) if builder is not None else [strategy_chart(kind, events)]


def strategy_chart(kind: str, events: Sequence[dict]) -> go.Figure:
    builder = STRATEGY_CHARTS.get(kind)
    return builder(events) if builder is not None else event_series_chart(kind, events)
