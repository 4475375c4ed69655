"""Charts of a model's structure: where the MACs are (per layer group)."""

from __future__ import annotations

from typing import Sequence

import plotly.graph_objects as go

from ._common import BASE_COLOR, empty_figure, num, style


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
