"""Charts of the strategies' own event kinds (constrained, purl, joint, and any other)."""

from __future__ import annotations

import math
from typing import Sequence

import plotly.graph_objects as go
from plotly.subplots import make_subplots

from ._common import ACCENT, BASE_COLOR, GREY, HEIGHT, palette, num, style, empty_figure, scatter_type


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


def joint_chart(events: Sequence[dict]) -> go.Figure:
    """``joint``: the drift model's predicted reward for each epoch's structure against the observed one."""
    title = "Joint: reward predicted by the drift model vs observed"
    if not events:
        return empty_figure(title, "no epoch finished yet", x="epoch", y="reward (search top-1, %)")
    x = [e.get("epoch", i) for i, e in enumerate(events)]
    fig = go.Figure()
    fig.add_trace(go.Scatter(x=x, y=[num(e.get("observed_reward")) for e in events], mode="lines+markers",
                             name="observed", line={"color": BASE_COLOR}))
    fig.add_trace(go.Scatter(x=x, y=[num(e.get("predicted_reward")) for e in events], mode="lines+markers",
                             name="predicted (before it was seen)", line={"color": ACCENT, "dash": "dash"}))
    return style(fig, title, "epoch", "reward (search top-1, %)")


#: charts of the strategies' own event kinds; other kinds get :func:`event_series_chart`
STRATEGY_CHARTS = {"constrained": constrained_chart, "purl": purl_chart, "joint": joint_chart}


def strategy_chart(kind: str, events: Sequence[dict]) -> go.Figure:
    builder = STRATEGY_CHARTS.get(kind)
    return builder(events) if builder is not None else event_series_chart(kind, events)
