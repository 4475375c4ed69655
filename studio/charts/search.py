"""Charts of the search: kept channels, the policy, rewards, and the accuracy / cost trade-off."""

from __future__ import annotations

import math
from typing import Any, Sequence

import plotly.graph_objects as go

from ._common import (ACCENT, BASE_COLOR, FRONT_COLOR, GREY, HEIGHT, empty_figure, group_heatmap, num, pareto_front,
                      scatter_type, style)


def keep_ratio_chart(groups: Sequence[str], channels: Sequence[int], keep_ratios: Sequence[float] | None,
                     title: str = "Channels kept per layer group (current best)") -> go.Figure:
    """Original channels (grey) and channels kept by ``keep_ratios`` (coloured), one bar pair per group."""
    if not groups:
        return empty_figure(title, "waiting for the model's layer groups…", x="layer group", y="channels")
    fig = go.Figure()
    names = [str(g) for g in groups]
    fig.add_bar(x=names, y=list(channels), name="original", marker_color=GREY,
                hovertemplate="%{x}<br>original: %{y} channels<extra></extra>")
    if keep_ratios:
        kept = [round(c * (r if r is not None else 1.0)) for c, r in zip(channels, keep_ratios)]
        text = [f"{r:.0%}" if r is not None else "" for r in keep_ratios]
        fig.add_bar(x=names, y=kept, name="kept", marker_color=ACCENT, text=text, textposition="outside",
                    customdata=[r for r in keep_ratios],
                    hovertemplate="%{x}<br>kept: %{y} channels (%{customdata:.0%})<extra></extra>")
    fig.update_layout(barmode="overlay", bargap=0.15)
    fig.update_xaxes(tickangle=-45 if len(names) > 8 else 0, type="category")
    return style(fig, title, "layer group", "output channels")


def policy_heatmap(steps: Sequence[dict], groups: Sequence[str], candidates: Sequence[dict] = (),
                   max_columns: int = 400) -> go.Figure:
    """Layers × steps heatmap of the RL policy, or of the best keep ratio per step for other strategies."""
    with_policy = [s for s in steps if isinstance(s.get("policy"), list) and s["policy"]]
    if with_policy:
        rows, title, scale_title = with_policy, "Policy per layer group (share of the pruning)", "policy share"
        matrix = [list(s["policy"]) for s in rows]
        xs = list(range(len(rows)))
        x_title = "policy update"
        colorscale = "Viridis"
    else:
        rows = [s for s in steps if isinstance(s.get("keep_ratios"), list) and s["keep_ratios"]]
        if not rows:
            rows = [c for c in candidates if isinstance(c.get("keep_ratios"), list) and c["keep_ratios"]]
            x_title = "evaluation #"
        else:
            x_title = "search step"
        title, scale_title = "Keep ratio per layer group over the search", "keep ratio"
        matrix = [list(s["keep_ratios"]) for s in rows]
        xs = list(range(len(rows)))
        colorscale = "RdYlGn"
    if not matrix:
        return empty_figure("Policy per layer group", "no search steps yet", x="step", y="layer group")
    matrix, xs = matrix[-max_columns:], xs[-max_columns:]
    fig = group_heatmap(matrix, xs, groups, title=title, x_title=x_title, scale_title=scale_title,
                        colorscale=colorscale)
    return fig.update_layout(height=HEIGHT)


def candidate_role(c: dict, budget: Any = None) -> str:
    """What a candidate is for the charts' one "best": ``probe`` (a sensitivity probe: one group
    pruned alone, not a solution), ``over`` (misses ``budget``, a :class:`~pruner.budget.Budget`,
    by :meth:`~pruner.budget.Budget.feasible`, the engine's rule) or ``within``."""
    if (c.get("meta") or {}).get("probe") is not None or c.get("probe"):
        return "probe"
    if budget is not None and not budget.feasible(num(c.get("cost"))):
        return "over"
    return "within"


def best_within(candidates: Sequence[dict], budget: Any, field: str = "reward") -> tuple[list[int], list[float]]:
    """The best ``field`` so far over the candidates meeting ``budget`` (probes and over-budget ones never
    count): x (evaluation #) and y of the step line, starting at the first candidate within the budget."""
    xs, ys, best = [], [], -math.inf
    for i, c in enumerate(candidates):
        v = num(c.get(field))
        if v is None or candidate_role(c, budget) != "within":
            continue
        best = max(best, v)
        xs.append(i)
        ys.append(best)
    if xs and xs[-1] != len(candidates) - 1:   # the line runs on to the last evaluation
        xs.append(len(candidates) - 1)
        ys.append(ys[-1])
    return xs, ys


_ROLE_STYLE = {
    "within": ("within the budget", {"size": 6, "color": BASE_COLOR, "opacity": 0.7}),
    "over": ("over the budget (never the best)", {"size": 6, "color": GREY, "opacity": 0.6, "symbol": "x"}),
    "probe": ("probe: one group pruned alone (not a solution)", {"size": 6, "color": GREY, "opacity": 0.5,
                                                                 "symbol": "diamond-open"}),
}


def reward_chart(candidates: Sequence[dict], title: str = "Reward of every candidate", budget: Any = None) -> go.Figure:
    """Every candidate's reward (points: within the budget, over it, probes), the best so far **within the
    budget** (line: the run's one "best") and the mean per search step (all candidates)."""
    cands = list(candidates)
    pts = [(i, num(c.get("reward")), c) for i, c in enumerate(cands)]
    pts = [(i, r, c) for i, r, c in pts if r is not None]
    if not pts:
        return empty_figure(title, "no candidates evaluated yet", x="evaluation #", y="reward")
    # mean reward per step, drawn at the last evaluation of the step
    per_step: dict[Any, list[tuple[int, float]]] = {}
    for i, r, c in pts:
        per_step.setdefault(c.get("step"), []).append((i, r))
    mean_x = [max(i for i, _ in v) for v in per_step.values()]
    mean_y = [sum(r for _, r in v) / len(v) for v in per_step.values()]
    order = sorted(range(len(mean_x)), key=lambda k: mean_x[k])
    sc = scatter_type(len(pts))
    fig = go.Figure()
    for role, (name, marker) in _ROLE_STYLE.items():
        mine = [(i, r, c) for i, r, c in pts if candidate_role(c, budget) == role]
        if not mine:
            continue
        fig.add_trace(sc(x=[i for i, _, _ in mine], y=[r for _, r, _ in mine], mode="markers", name=name,
                         marker=marker,
                         customdata=[[c.get("candidate_id"), c.get("step"), c.get("top1"), c.get("cost")]
                                     for _, _, c in mine],
                         hovertemplate="candidate %{customdata[0]} (step %{customdata[1]})<br>reward %{y:.3f}"
                                       "<br>top-1 %{customdata[2]:.2f}%<br>cost %{customdata[3]:.3f}"
                                       "<extra>" + name.split(" (")[0] + "</extra>"))
    bx, by = best_within(cands, budget)
    if bx:
        fig.add_trace(sc(x=bx, y=by, mode="lines", name="best within the budget so far",
                         line={"color": ACCENT, "width": 2, "shape": "hv"}))
    if len(per_step) > 1 or len(pts) > 1:
        fig.add_trace(sc(x=[mean_x[k] for k in order], y=[mean_y[k] for k in order], mode="lines+markers",
                         name="mean per step (all candidates)", line={"color": FRONT_COLOR, "dash": "dot"}))
    return style(fig, title, "evaluation #", "reward")


def _candidate_x(c: dict, x_field: str) -> float | None:
    v = num(c.get(x_field))
    if v is None:
        return None
    return v / 1e6 if x_field in ("macs", "params") else v


_X_TITLES = {"macs": "MACs (millions)", "params": "parameters (millions)", "latency_ms": "latency (ms)"}
_BUDGET_FIELD = {"flops": "macs", "params": "params", "latency": "latency_ms"}


def tradeoff_chart(candidates: Sequence[dict], x_field: str = "macs", *, chosen_id: Any = None,
                   base: dict | None = None, budget: dict | None = None, final: dict | None = None,
                   title: str | None = None) -> go.Figure:
    """Search top-1 against cost (MACs, params or latency) of every candidate, Pareto front and chosen one.

    ``base`` (the ``base`` event or summary entry) adds the original model; ``budget``
    ({kind, target}) a line at the budget when it is measured on this axis; ``final`` (the
    summary's ``pruned``) the fine-tuned result, whose top-1 is on the report split.
    """
    x_title = _X_TITLES.get(x_field, x_field)
    title = title or f"Accuracy vs {x_title.split(' (')[0]}"
    pts = [(_candidate_x(c, x_field), num(c.get("top1")), c) for c in candidates]
    pts = [(x, y, c) for x, y, c in pts if x is not None and y is not None]
    if not pts:
        msg = "no candidates yet"
        if candidates and x_field == "latency_ms":
            msg = "candidates' latency is measured only for latency budgets"
        fig = empty_figure(title, msg, x=x_title, y="top-1 (%)")
        _add_reference_points(fig, x_field, base, final, budget)
        if fig.data:  # reference points drawn: they need their axes, the message moves to the top
            fig.update_xaxes(showticklabels=True, showgrid=True)
            fig.update_yaxes(showticklabels=True, showgrid=True)
            fig.layout.annotations[0].update(y=1.0, yanchor="top")
        return _legend_below(fig)
    # probes (one group pruned alone) apart from the solutions, unless there is nothing else yet
    rest = [p for p in pts if candidate_role(p[2]) != "probe"]
    probes = [p for p in pts if candidate_role(p[2]) == "probe"] if rest else []
    pts = rest or pts
    xs, ys = [p[0] for p in pts], [p[1] for p in pts]
    ids = [p[2].get("candidate_id") for p in pts]
    sc = scatter_type(len(pts))
    fig = go.Figure()
    if probes:
        name, marker = _ROLE_STYLE["probe"]
        fig.add_trace(sc(x=[p[0] for p in probes], y=[p[1] for p in probes], mode="markers", name=name,
                         marker={**marker, "size": 7},
                         customdata=[[p[2].get("candidate_id"), num(p[2].get("cost"))] for p in probes],
                         hovertemplate="probe %{customdata[0]}: one group pruned alone<br>top-1 %{y:.2f}%"
                                       "<br>cost %{customdata[1]:.3f} of original<extra></extra>"))
    fig.add_trace(sc(x=xs, y=ys, mode="markers", name="candidates (search split)",
                     marker={"size": 7, "color": list(range(len(pts))), "colorscale": "Blues", "opacity": 0.75,
                             "cmin": -0.5 * len(pts), "cmax": max(len(pts) - 1, 1),  # no near-white points
                             "showscale": False, "line": {"width": 0.5, "color": "#555"}},
                     customdata=[[i, p[2].get("step"), num(p[2].get("cost"))] for i, p in zip(ids, pts)],
                     hovertemplate="candidate %{customdata[0]} (step %{customdata[1]})<br>top-1 %{y:.2f}%"
                                   "<br>%{x:.3f}<br>cost %{customdata[2]:.3f} of original<extra></extra>"))
    front = pareto_front([(x, y) for x, y, _ in pts])
    if front:
        fig.add_trace(go.Scatter(x=[xs[i] for i in front], y=[ys[i] for i in front], mode="lines+markers",
                                 name="Pareto front", line={"color": FRONT_COLOR, "shape": "hv", "width": 2},
                                 marker={"size": 8, "color": FRONT_COLOR}))
    if chosen_id is not None and chosen_id in ids:
        k = ids.index(chosen_id)
        fig.add_trace(go.Scatter(x=[xs[k]], y=[ys[k]], mode="markers", name="chosen",
                                 marker={"symbol": "star", "size": 16, "color": ACCENT,
                                         "line": {"width": 1, "color": "black"}},
                                 hovertemplate="chosen candidate<br>top-1 %{y:.2f}%<br>%{x:.3f}<extra></extra>"))
    _add_reference_points(fig, x_field, base, final, budget)
    return _legend_below(style(fig, title, x_title, "top-1 (%)"))


def _legend_below(fig: go.Figure) -> go.Figure:
    """Many legend entries: a horizontal legend under the x axis instead of over the title."""
    fig.update_layout(legend={"orientation": "h", "yanchor": "top", "y": -0.2, "xanchor": "left", "x": 0.0},
                      height=HEIGHT + 40, margin={"b": 30})
    return fig


def _add_reference_points(fig: go.Figure, x_field: str, base: dict | None, final: dict | None,
                          budget: dict | None) -> None:
    if base:
        bx = _candidate_x(base, x_field)
        if bx is not None:
            if num(base.get("top1")) is not None:
                fig.add_trace(go.Scatter(x=[bx], y=[base["top1"]], mode="markers", name="original (report split)",
                                         marker={"symbol": "diamond", "size": 12, "color": BASE_COLOR},
                                         hovertemplate="original model<br>report top-1 %{y:.2f}%<br>%{x:.3f}"
                                                       "<extra></extra>"))
            if budget and _BUDGET_FIELD.get(budget.get("kind")) == x_field and num(budget.get("target")):
                fig.add_vline(x=bx * budget["target"], line_dash="dash", line_color="#999",
                              annotation_text=f"budget {budget['target']:.0%}", annotation_position="top")
    if final:
        fx, fy = _candidate_x(final, x_field), num(final.get("top1"))
        ratio, bms = num(final.get("latency_vs_base")), num((base or {}).get("latency_ms"))
        if x_field == "latency_ms" and ratio is not None and bms is not None:
            fx = bms * ratio  # the paired ratio: the two ms figures were timed minutes apart and drift
        if fx is not None and fy is not None:
            fig.add_trace(go.Scatter(x=[fx], y=[fy], mode="markers", name="pruned + fine-tuned (report split)",
                                     marker={"symbol": "x", "size": 12, "color": "#111"},
                                     hovertemplate="pruned + fine-tuned<br>report top-1 %{y:.2f}%<br>%{x:.3f}"
                                                   "<extra></extra>"))
            fig.update_layout(showlegend=True)
