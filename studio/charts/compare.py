"""Charts comparing runs, as an experiment tracker does: overlaid Pareto fronts, search and fine-tuning curves.

Every builder takes ``runs``: dicts from :func:`studio.history.run_series` (``name``, ``candidates``,
``epochs``, ``base_macs``, ``chosen_id``); one colour per run, the same run the same colour in
every chart of one comparison.
"""

from __future__ import annotations

import math
from typing import Sequence

import plotly.graph_objects as go
from plotly.subplots import make_subplots

from ._common import empty_figure, num, palette, pareto_front, scatter_type, style
from .search import best_within


def _legend_right(fig: go.Figure) -> go.Figure:
    fig.update_layout(legend={"orientation": "v", "x": 1.02, "xanchor": "left", "y": 1.0, "yanchor": "top"})
    return fig


def compare_fronts_chart(runs: Sequence[dict], title: str = "Pareto fronts of the compared runs") -> go.Figure:
    """Overlaid Pareto fronts (search top-1 vs MACs as % of each run's original), each run's candidates faint."""
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
    return _legend_right(style(fig, title, "MACs remaining (% of the run's original model)", "search top-1 (%)"))


def compare_search_chart(runs: Sequence[dict], title: str = "Search: reward and top-1 of the compared runs") -> go.Figure:
    """Per run, over its evaluations: every candidate's reward (faint points) and the best reward so far
    within the run's budget (line), beside the best search top-1 so far within the budget: probes and
    candidates over the budget never count as the best. Rewards are each strategy's own scale; top-1
    is comparable."""
    fig = make_subplots(rows=1, cols=2, subplot_titles=("reward (best within the budget; points: every candidate)",
                                                        "best search top-1 within the budget (%)"),
                        horizontal_spacing=0.1)
    colours = palette(len(runs))
    drawn = 0
    for ri, run in enumerate(runs):
        cands = list(run.get("candidates") or [])
        rewards = [(i, num(c.get("reward"))) for i, c in enumerate(cands)]
        rewards = [(i, r) for i, r in rewards if r is not None]
        budget = run.get("budget")
        if not rewards and not any(num(c.get("top1")) is not None for c in cands):
            continue
        color, name = colours[ri], str(run.get("name"))
        if rewards:
            xs, ys = [i for i, _ in rewards], [r for _, r in rewards]
            fig.add_trace(scatter_type(len(xs))(x=xs, y=ys, mode="markers", name=f"{name} candidates",
                                                legendgroup=name, showlegend=False,
                                                marker={"size": 5, "color": color, "opacity": 0.3},
                                                hovertemplate=f"{name}<br>evaluation %{{x}}<br>reward %{{y:.3f}}"
                                                              "<extra></extra>"), row=1, col=1)
            bx, by = best_within(cands, budget, "reward")
            fig.add_trace(go.Scatter(x=bx, y=by, mode="lines", name=name, legendgroup=name,
                                     line={"color": color, "width": 2, "shape": "hv"}), row=1, col=1)
        xs, ys = best_within(cands, budget, "top1")
        if xs:
            fig.add_trace(go.Scatter(x=xs, y=ys, mode="lines", name=f"{name} top-1", legendgroup=name,
                                     showlegend=not rewards, line={"color": color, "width": 2, "shape": "hv"},
                                     hovertemplate=f"{name}<br>evaluation %{{x}}<br>best top-1 %{{y:.2f}}%"
                                                   "<extra></extra>"), row=1, col=2)
        drawn += 1
    if not drawn:
        return empty_figure(title, "the selected runs have no evaluated candidates yet", x="evaluation #", y="reward")
    style(fig, title, "evaluation #", "reward")
    fig.update_yaxes(title_text="search top-1 (%)", row=1, col=2)
    fig.update_xaxes(title_text="evaluation #", row=1, col=2)
    return _legend_right(fig)


def compare_finetune_chart(runs: Sequence[dict], title: str = "Fine-tuning of the compared runs") -> go.Figure:
    """Per run, over its epochs: validation top-1 (left) and training loss (right)."""
    fig = make_subplots(rows=1, cols=2, subplot_titles=("val top-1 (%)", "train loss (distillation + CE)"),
                        horizontal_spacing=0.1)
    colours = palette(len(runs))
    drawn = 0
    for ri, run in enumerate(runs):
        rows = [e for e in run.get("epochs") or [] if num(e.get("epoch")) is not None]
        if not rows:
            continue
        color, name = colours[ri], str(run.get("name"))
        xs = [e["epoch"] for e in rows]
        val = [num(e.get("val_top1")) for e in rows]
        fig.add_trace(go.Scatter(x=xs, y=val, mode="lines+markers", name=name, legendgroup=name,
                                 line={"color": color, "width": 2}), row=1, col=1)
        fig.add_trace(go.Scatter(x=xs, y=[num(e.get("loss")) for e in rows], mode="lines+markers",
                                 name=f"{name} loss", legendgroup=name, showlegend=False,
                                 line={"color": color, "width": 2, "dash": "dot"}), row=1, col=2)
        drawn += 1
    if not drawn:
        return empty_figure(title, "none of the selected runs has fine-tuned yet (or fine-tuning was off)",
                            x="epoch", y="val top-1 (%)")
    style(fig, title, "epoch", "val top-1 (%)")
    fig.update_yaxes(title_text="loss", row=1, col=2)
    fig.update_xaxes(tickformat="d", dtick=1)
    return _legend_right(fig)
