"""Shared pieces of the chart builders: colours, layout, empty figures, the Pareto front."""

from __future__ import annotations

import math
from typing import Any, Sequence

import pandas  # noqa: F401  -- see below
import plotly.graph_objects as go
from plotly.colors import sample_colorscale

# Plotly looks pandas up in sys.modules while it validates figure data. Streamlit runs each
# session's script in its own thread: if one session is still importing pandas (lazily, for a
# table) when another builds a figure, Plotly finds the half-initialised module and fails
# ("partially initialized module 'pandas' has no attribute 'Series'"). Importing it here, before
# any figure is built, makes a second thread wait on the import lock instead.

ACCENT = "#E4572E"       # chosen / current best
BASE_COLOR = "#4C78A8"   # original model
FRONT_COLOR = "#2CA02C"  # Pareto front
GREY = "rgba(150,150,150,0.35)"
HEIGHT = 360
SCATTERGL_ABOVE = 500    # use WebGL traces for long histories
PALETTE = ["#4C78A8", "#E4572E", "#2CA02C", "#9467BD", "#F2A541", "#17BECF", "#8C564B", "#E377C2", "#7F7F7F",
           "#BCBD22"]


# ---------------------------------------------------------------------- helpers
def num(v: Any) -> float | None:
    if isinstance(v, bool) or v is None:
        return None
    if isinstance(v, (int, float)) and math.isfinite(v):
        return float(v)
    return None


def style(fig: go.Figure, title: str, x: str, y: str, *, height: int = HEIGHT, legend: bool = True) -> go.Figure:
    fig.update_layout(
        title={"text": title, "x": 0.0, "xanchor": "left"}, height=height, uirevision="keep",
        margin={"l": 60, "r": 20, "t": 50, "b": 50}, showlegend=legend,
        legend={"orientation": "h", "yanchor": "bottom", "y": 1.0, "xanchor": "right", "x": 1.0},
        modebar={"orientation": "v"},  # a vertical toolbar on the right never covers the title
    )
    fig.update_xaxes(title_text=x)
    fig.update_yaxes(title_text=y)
    return fig


def palette(n: int) -> list[str]:
    """``n`` distinct colours: the ten of :data:`PALETTE`, or evenly spaced on a wide colour scale
    when there are more series than that (colours never repeat within one chart)."""
    if n <= len(PALETTE):
        return PALETTE[:max(n, 0)]
    return sample_colorscale("Turbo", [i / (n - 1) for i in range(n)])


def empty_figure(title: str, message: str, *, x: str = "", y: str = "", height: int = HEIGHT) -> go.Figure:
    """A titled, empty chart with a centred message (no data yet, not applicable, ...)."""
    fig = go.Figure()
    fig.add_annotation(text=message, showarrow=False, xref="paper", yref="paper", x=0.5, y=0.5,
                       font={"size": 13, "color": "#888"})
    fig.update_xaxes(showticklabels=False, showgrid=False, zeroline=False)
    fig.update_yaxes(showticklabels=False, showgrid=False, zeroline=False)
    return style(fig, title, x, y, height=height, legend=False)


def group_heatmap(matrix: Sequence[Sequence[float | None]], xs: Sequence[Any], groups: Sequence[str], *,
                  title: str, x_title: str, scale_title: str, colorscale: str, zrange: tuple | None = None,
                  cell_text: bool = False) -> go.Figure:
    """Layer groups (rows, in network order) × ``xs`` (columns) of ``matrix`` (one list of per-group values
    per column; ragged columns are padded with gaps). Rows beyond ``groups`` are named ``group i``.
    ``cell_text`` writes each value in its cell (for small grids)."""
    n = max(len(r) for r in matrix)
    names = [str(g) for g in groups][:n] + [f"group {i}" for i in range(len(groups), n)]
    z = [[(num(matrix[j][i]) if i < len(matrix[j]) else None) for j in range(len(matrix))] for i in range(n)]
    lo, hi = zrange if zrange else (None, None)
    fig = go.Figure(go.Heatmap(z=z, x=list(xs), y=names, colorscale=colorscale, zmin=lo, zmax=hi,
                               colorbar={"title": {"text": scale_title}},
                               texttemplate="%{z:.2f}" if cell_text else None, textfont={"size": 10},
                               hovertemplate="%{y}<br>" + x_title + " %{x}<br>" + scale_title +
                               ": %{z:.3f}<extra></extra>"))
    fig.update_yaxes(autorange="reversed", type="category")
    return style(fig, title, x_title, "layer group", legend=False, height=max(HEIGHT, 120 + 16 * n))


def scatter_type(n: int):
    return go.Scattergl if n > SCATTERGL_ABOVE else go.Scatter


def pareto_front(points: Sequence[tuple[float, float]]) -> list[int]:
    """Indices of the non-dominated points when lower cost (x) and higher accuracy (y) are better.

    A point is dominated when another has cost <= and accuracy >= with at least one strict.
    Returned in increasing cost. Points with a missing (None/NaN) coordinate are ignored.
    """
    valid = [(i, num(c), num(a)) for i, (c, a) in enumerate(points)]
    valid = [(i, c, a) for i, c, a in valid if c is not None and a is not None]
    valid.sort(key=lambda t: (t[1], -t[2], t[0]))
    front, best = [], -math.inf
    for i, c, a in valid:
        if a > best:
            front.append(i)
            best = a
    return front
