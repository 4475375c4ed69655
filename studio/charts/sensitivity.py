"""Sensitivity charts: accuracy when one layer group is pruned, as a heatmap and as curves."""

from __future__ import annotations

import plotly.graph_objects as go

from ._common import HEIGHT, palette, num, style, empty_figure


def sensitivity_heatmap(sens: dict, value: str = "drop", title: str | None = None) -> go.Figure:
    """Layer groups × fraction pruned, coloured by top-1 drop (or top-1) on the search split."""
    groups, ratios = list(sens.get("groups") or []), list(sens.get("ratios") or [])
    z = sens.get(value)
    if value == "drop" and z is None and sens.get("top1") is not None and sens.get("base_top1") is not None:
        z = [[None if v is None else sens["base_top1"] - v for v in row] for row in sens["top1"]]
    label = "top-1 drop (points)" if value == "drop" else "top-1 (%)"
    title = title or ("Sensitivity: accuracy drop when one layer group is pruned" if value == "drop"
                      else "Sensitivity: accuracy when one layer group is pruned")
    if not groups or not ratios or not z:
        return empty_figure(title, "no sensitivity points yet", x="fraction of channels removed", y="layer group")
    xs = [f"{r:.0%}" for r in ratios]
    # every cell carries its number (one decimal; the hover and the table give two); a drop's colour scale starts
    # at zero, so one colour means one drop however far the analysis has got
    drops = [v for row in z for v in row if num(v) is not None]
    fig = go.Figure(go.Heatmap(z=z, x=xs, y=[str(g) for g in groups],
                               colorscale="Reds" if value == "drop" else "RdYlGn",
                               zmin=0.0 if value == "drop" else None,
                               zmax=max([1.0, *drops]) if value == "drop" else None,
                               texttemplate="%{z:.1f}", textfont={"size": 11},
                               colorbar={"title": {"text": label}},
                               hovertemplate="%{y}<br>%{x} removed<br>" + label + ": %{z:.2f}<extra></extra>"))
    fig.update_yaxes(autorange="reversed", type="category")
    fig.update_xaxes(type="category")
    return style(fig, title, "fraction of the group's channels removed", "layer group",
                   height=max(HEIGHT, 22 * len(groups) + 140), legend=False)


_DASHES = ("solid", "dash", "dot", "dashdot")
_SYMBOLS = ("circle", "square", "diamond", "triangle-up", "x", "star", "triangle-down", "cross", "pentagon")


def sensitivity_curves(sens: dict, value: str = "top1", title: str | None = None) -> go.Figure:
    """One line per layer group: top-1 (or drop) against the fraction of its channels removed."""
    groups, ratios = list(sens.get("groups") or []), list(sens.get("ratios") or [])
    rows = sens.get(value) or []
    label = "search top-1 (%)" if value == "top1" else "top-1 drop (points)"
    title = title or "Per-layer sensitivity curves"
    if not groups or not ratios or not rows:
        return empty_figure(title, "no sensitivity points yet", x="fraction removed (%)", y=label)
    fig = go.Figure()
    colours = palette(len(groups))
    for gi, (g, row) in enumerate(zip(groups, rows)):
        pts = [(r * 100, num(v)) for r, v in zip(ratios, row)]
        pts = [p for p in pts if p[1] is not None]
        if pts:
            # colour, dash and marker all vary, so twelve groups stay apart where the colours come close
            fig.add_trace(go.Scatter(x=[p[0] for p in pts], y=[p[1] for p in pts], mode="lines+markers",
                                     name=str(g), line={"color": colours[gi], "dash": _DASHES[gi % len(_DASHES)]},
                                     marker={"size": 6, "symbol": _SYMBOLS[gi % len(_SYMBOLS)]}))
    if value == "top1" and num(sens.get("base_top1")) is not None:
        fig.add_hline(y=sens["base_top1"], line_dash="dash", line_color="#888", annotation_text="unpruned")
    style(fig, title, "fraction of the group's channels removed (%)", label)
    fig.update_layout(legend={"orientation": "v", "x": 1.02, "xanchor": "left", "y": 1.0, "yanchor": "top"})
    return fig
