"""Charts of finished runs: channels per layer, compared Pareto fronts, where the MACs are."""

from __future__ import annotations

from typing import Sequence

import plotly.graph_objects as go

from ._common import ACCENT, BASE_COLOR, GREY, palette, num, style, empty_figure, scatter_type, pareto_front


def layers_chart(layers: Sequence[dict], title: str = "Channels per layer: before and after pruning") -> go.Figure:
    """Grouped bars of output channels (or features) per conv/linear layer, before and after."""
    rows = [l for l in layers if l.get("name") is not None]
    if not rows:
        return empty_figure(title, "no per-layer data (the run did not finish)", x="layer", y="channels")
    names = [str(l["name"]) for l in rows]
    fig = go.Figure()
    fig.add_bar(x=names, y=[l.get("before") for l in rows], name="before", marker_color=GREY)
    fig.add_bar(x=names, y=[l.get("after") for l in rows], name="after", marker_color=ACCENT)
    fig.update_layout(barmode="group", bargap=0.2)
    fig.update_xaxes(tickangle=-60 if len(names) > 8 else 0, type="category")
    return style(fig, title, "layer", "output channels / features")


def compare_fronts_chart(runs: Sequence[dict], title: str = "Pareto fronts of the compared runs") -> go.Figure:
    """Overlaid Pareto fronts (search top-1 vs MACs as % of each run's original).

    ``runs``: dicts with ``name``, ``candidates`` (candidate events), ``base_macs`` and
    optionally ``chosen_id``.
    """
    fig = go.Figure()
    drawn = 0
    colours = palette(len(runs))
    for ri, run in enumerate(runs):
        base = num(run.get("base_macs"))
        cands = [c for c in run.get("candidates") or [] if num(c.get("macs")) is not None and
                 num(c.get("top1")) is not None]
        if not cands or not base:
            continue
        color = colours[ri]
        xs = [100.0 * c["macs"] / base for c in cands]
        ys = [c["top1"] for c in cands]
        fig.add_trace(scatter_type(len(xs))(x=xs, y=ys, mode="markers", name=f"{run['name']} candidates",
                                        legendgroup=run["name"], showlegend=False,
                                        marker={"size": 5, "color": color, "opacity": 0.25}))
        front = pareto_front(list(zip(xs, ys)))
        fig.add_trace(go.Scatter(x=[xs[i] for i in front], y=[ys[i] for i in front], mode="lines+markers",
                                 name=str(run["name"]), legendgroup=run["name"],
                                 line={"color": color, "shape": "hv", "width": 2}, marker={"size": 7}))
        ids = [c.get("candidate_id") for c in cands]
        if run.get("chosen_id") is not None and run["chosen_id"] in ids:
            k = ids.index(run["chosen_id"])
            fig.add_trace(go.Scatter(x=[xs[k]], y=[ys[k]], mode="markers", legendgroup=run["name"],
                                     showlegend=False, name=f"{run['name']} chosen",
                                     marker={"symbol": "star", "size": 15, "color": color,
                                             "line": {"width": 1, "color": "black"}}))
        drawn += 1
    if not drawn:
        return empty_figure(title, "select finished prune runs with candidates to compare",
                            x="MACs remaining (% of original)", y="search top-1 (%)")
    fig = style(fig, title, "MACs remaining (% of the run's original model)", "search top-1 (%)")
    fig.update_layout(legend={"orientation": "v", "x": 1.02, "xanchor": "left", "y": 1.0, "yanchor": "top"})
    return fig


def group_cost_chart(groups: Sequence[dict], title: str = "Where the MACs are (per layer group)") -> go.Figure:
    """MACs per prunable group of a model (the New run page's model summary)."""
    rows = [g for g in groups if num(g.get("macs")) is not None]
    if not rows:
        return empty_figure(title, "no prunable groups", x="layer group", y="MACs (millions)")
    names = [str(g.get("name")) for g in rows]
    fig = go.Figure(go.Bar(x=names, y=[g["macs"] / 1e6 for g in rows], marker_color=BASE_COLOR,
                           customdata=[[g.get("channels"), len(g.get("layers") or [])] for g in rows],
                           hovertemplate="%{x}<br>%{y:.2f} MMACs<br>%{customdata[0]} channels, "
                                         "%{customdata[1]} layer(s)<extra></extra>"))
    fig.update_xaxes(tickangle=-45 if len(names) > 8 else 0, type="category")
    return style(fig, title, "layer group", "MACs touched (millions)", height=300, legend=False)
