"""Plotly figure builders: pure functions from event lists and dicts to figures.

Every builder accepts empty input and returns a figure that says what is missing instead of
failing. Figures carry a title, axis titles with units, and a fixed ``uirevision`` so that a
chart redrawn with new data keeps the user's zoom.
"""

from __future__ import annotations

import math
from typing import Any, Sequence

import pandas  # noqa: F401  -- see below
import plotly.graph_objects as go
from plotly.subplots import make_subplots

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
def _num(v: Any) -> float | None:
    if isinstance(v, bool) or v is None:
        return None
    if isinstance(v, (int, float)) and math.isfinite(v):
        return float(v)
    return None


def _layout(fig: go.Figure, title: str, x: str, y: str, *, height: int = HEIGHT, legend: bool = True) -> go.Figure:
    fig.update_layout(
        title={"text": title, "x": 0.0, "xanchor": "left"}, height=height, uirevision="keep",
        margin={"l": 60, "r": 20, "t": 50, "b": 50}, showlegend=legend,
        legend={"orientation": "h", "yanchor": "bottom", "y": 1.0, "xanchor": "right", "x": 1.0},
    )
    fig.update_xaxes(title_text=x)
    fig.update_yaxes(title_text=y)
    return fig


def empty_figure(title: str, message: str, *, x: str = "", y: str = "", height: int = HEIGHT) -> go.Figure:
    """A titled, empty chart with a centred message (no data yet, not applicable, ...)."""
    fig = go.Figure()
    fig.add_annotation(text=message, showarrow=False, xref="paper", yref="paper", x=0.5, y=0.5,
                       font={"size": 13, "color": "#888"})
    fig.update_xaxes(showticklabels=False, showgrid=False, zeroline=False)
    fig.update_yaxes(showticklabels=False, showgrid=False, zeroline=False)
    return _layout(fig, title, x, y, height=height, legend=False)


def _scatter(n: int):
    return go.Scattergl if n > SCATTERGL_ABOVE else go.Scatter


def pareto_front(points: Sequence[tuple[float, float]]) -> list[int]:
    """Indices of the non-dominated points when lower cost (x) and higher accuracy (y) are better.

    A point is dominated when another has cost <= and accuracy >= with at least one strict.
    Returned in increasing cost. Points with a missing (None/NaN) coordinate are ignored.
    """
    valid = [(i, _num(c), _num(a)) for i, (c, a) in enumerate(points)]
    valid = [(i, c, a) for i, c, a in valid if c is not None and a is not None]
    valid.sort(key=lambda t: (t[1], -t[2], t[0]))
    front, best = [], -math.inf
    for i, c, a in valid:
        if a > best:
            front.append(i)
            best = a
    return front


# ---------------------------------------------------------------------- live run
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
    return _layout(fig, title, "layer group", "output channels")


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
    n = max(len(r) for r in matrix)
    names = [str(g) for g in groups][:n] + [f"group {i}" for i in range(len(groups), n)]
    z = [[(matrix[j][i] if i < len(matrix[j]) else None) for j in range(len(matrix))] for i in range(n)]
    fig = go.Figure(go.Heatmap(z=z, x=xs, y=names, colorscale=colorscale, colorbar={"title": {"text": scale_title}},
                               hovertemplate="%{y}<br>" + x_title + " %{x}<br>" + scale_title +
                               ": %{z:.3f}<extra></extra>"))
    fig.update_yaxes(autorange="reversed", type="category")
    return _layout(fig, title, x_title, "layer group", legend=False)


def reward_chart(candidates: Sequence[dict], title: str = "Reward of every candidate") -> go.Figure:
    """Every candidate's reward (points), the best so far (line) and the mean per search step."""
    pts = [(i, _num(c.get("reward")), c) for i, c in enumerate(candidates)]
    pts = [(i, r, c) for i, r, c in pts if r is not None]
    if not pts:
        return empty_figure(title, "no candidates evaluated yet", x="evaluation #", y="reward")
    xs = [i for i, _, _ in pts]
    ys = [r for _, r, _ in pts]
    best, run = [], -math.inf
    for r in ys:
        run = max(run, r)
        best.append(run)
    # mean reward per step, drawn at the last evaluation of the step
    per_step: dict[Any, list[tuple[int, float]]] = {}
    for i, r, c in pts:
        per_step.setdefault(c.get("step"), []).append((i, r))
    mean_x = [max(i for i, _ in v) for v in per_step.values()]
    mean_y = [sum(r for _, r in v) / len(v) for v in per_step.values()]
    order = sorted(range(len(mean_x)), key=lambda k: mean_x[k])
    sc = _scatter(len(xs))
    fig = go.Figure()
    fig.add_trace(sc(x=xs, y=ys, mode="markers", name="candidate", marker={"size": 6, "color": BASE_COLOR,
                                                                              "opacity": 0.6},
                     customdata=[[c.get("candidate_id"), c.get("step"), c.get("top1")] for _, _, c in pts],
                     hovertemplate="candidate %{customdata[0]} (step %{customdata[1]})<br>reward %{y:.3f}"
                                   "<br>top-1 %{customdata[2]:.2f}%<extra></extra>"))
    fig.add_trace(sc(x=xs, y=best, mode="lines", name="best so far", line={"color": ACCENT, "width": 2,
                                                                           "shape": "hv"}))
    if len(per_step) > 1 or len(pts) > 1:
        fig.add_trace(sc(x=[mean_x[k] for k in order], y=[mean_y[k] for k in order], mode="lines+markers",
                         name="mean per step", line={"color": FRONT_COLOR, "dash": "dot"}))
    return _layout(fig, title, "evaluation #", "reward")


def _candidate_x(c: dict, x_field: str) -> float | None:
    v = _num(c.get(x_field))
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
    pts = [(_candidate_x(c, x_field), _num(c.get("top1")), c) for c in candidates]
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
    xs, ys = [p[0] for p in pts], [p[1] for p in pts]
    ids = [p[2].get("candidate_id") for p in pts]
    sc = _scatter(len(pts))
    fig = go.Figure()
    fig.add_trace(sc(x=xs, y=ys, mode="markers", name="candidates",
                     marker={"size": 7, "color": list(range(len(pts))), "colorscale": "Blues", "opacity": 0.75,
                             "cmin": -0.5 * len(pts), "cmax": max(len(pts) - 1, 1),  # no near-white points
                             "showscale": False, "line": {"width": 0.5, "color": "#555"}},
                     customdata=[[i, p[2].get("step"), _num(p[2].get("cost"))] for i, p in zip(ids, pts)],
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
    return _legend_below(_layout(fig, title, x_title, "search top-1 (%)"))


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
            if _num(base.get("top1")) is not None:
                fig.add_trace(go.Scatter(x=[bx], y=[base["top1"]], mode="markers", name="original",
                                         marker={"symbol": "diamond", "size": 12, "color": BASE_COLOR},
                                         hovertemplate="original model<br>top-1 %{y:.2f}%<br>%{x:.3f}"
                                                       "<extra></extra>"))
            if budget and _BUDGET_FIELD.get(budget.get("kind")) == x_field and _num(budget.get("target")):
                fig.add_vline(x=bx * budget["target"], line_dash="dash", line_color="#999",
                              annotation_text=f"budget {budget['target']:.0%}", annotation_position="top")
    if final:
        fx, fy = _candidate_x(final, x_field), _num(final.get("top1"))
        ratio, bms = _num(final.get("latency_vs_base")), _num((base or {}).get("latency_ms"))
        if x_field == "latency_ms" and ratio is not None and bms is not None:
            fx = bms * ratio  # the paired ratio: the two ms figures were timed minutes apart and drift
        if fx is not None and fy is not None:
            fig.add_trace(go.Scatter(x=[fx], y=[fy], mode="markers", name="pruned + fine-tuned (report split)",
                                     marker={"symbol": "x", "size": 12, "color": "#111"}))
            fig.update_layout(showlegend=True)


def finetune_chart(epochs: Sequence[dict], title: str = "Fine-tuning with distillation") -> go.Figure:
    """Training loss (left axis) and validation top-1 (right axis) per epoch."""
    rows = [e for e in epochs if _num(e.get("epoch")) is not None]
    if not rows:
        return empty_figure(title, "fine-tuning has not started (or is off)", x="epoch", y="loss")
    xs = [e["epoch"] for e in rows]
    fig = make_subplots(specs=[[{"secondary_y": True}]])
    fig.add_trace(go.Scatter(x=xs, y=[_num(e.get("loss")) for e in rows], mode="lines+markers", name="train loss",
                             line={"color": BASE_COLOR}), secondary_y=False)
    if any(_num(e.get("val_top1")) is not None for e in rows):
        fig.add_trace(go.Scatter(x=xs, y=[_num(e.get("val_top1")) for e in rows], mode="lines+markers",
                                 name="val top-1", line={"color": ACCENT}), secondary_y=True)
    fig.update_xaxes(dtick=1 if len(xs) <= 20 else None)
    _layout(fig, title, "epoch", "loss")  # titles every y axis: set both afterwards
    fig.update_yaxes(title_text="loss (distillation + CE)", secondary_y=False)
    fig.update_yaxes(title_text="val top-1 (%)", secondary_y=True, showgrid=False)
    return fig


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
            if _num(v) is not None and k not in fields:
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
    for si, label in enumerate(series):
        sel = [(i, e) for i, e in enumerate(events) if split_field is None or e.get(split_field) == label]
        sc = _scatter(len(sel))
        for fi, f in enumerate(plot_fields):
            pts = [(i, _num(e.get(f))) for i, e in sel]
            pts = [(i, v) for i, v in pts if v is not None]
            if not pts:
                continue
            fig.add_trace(sc(x=[p[0] for p in pts], y=[p[1] for p in pts], mode="lines+markers",
                             name=f"{label}" if label is not None else f, legendgroup=str(label),
                             showlegend=label is not None and fi == 0,
                             line={"color": PALETTE[si % len(PALETTE)] if label is not None else
                                   PALETTE[fi % len(PALETTE)]}, marker={"size": 4}),
                          row=fi // cols + 1, col=fi % cols + 1)
    fig.update_xaxes(title_text="event #", row=nrows)
    fig.update_layout(title={"text": title, "x": 0.0}, height=max(HEIGHT, 230 * nrows), uirevision="keep",
                      showlegend=split_field is not None, margin={"l": 60, "r": 20, "t": 70, "b": 50})
    return fig


# ---------------------------------------------------------------------- strategy-specific
def constrained_chart(events: Sequence[dict]) -> go.Figure:
    """``constrained``: the policy's mean cost against the budget, and the Lagrange multiplier, per iteration."""
    title = "Constrained RL: cost against the budget, and the Lagrange multiplier"
    rows = [(e.get("step", i), _num(e.get("mean_cost")), _num(e.get("budget")), _num(e.get("multiplier")))
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
    _layout(fig, title, "policy iteration", "cost (fraction of original)")
    fig.update_yaxes(title_text="Lagrange multiplier λ", secondary_y=True, showgrid=False)
    return fig


def purl_chart(events: Sequence[dict]) -> go.Figure:
    """``purl``: the reward of every pruning step (one series per step of the episode) and each episode's return."""
    title = "PuRL: reward at every pruning step"
    steps = [e for e in events if e.get("level") == "step"]
    episodes = [e for e in events if e.get("level") == "episode"]
    if not steps:
        return empty_figure(title, "no pruning step yet", x="episode", y="reward")
    fig = go.Figure()
    for i, t in enumerate(sorted({int(e.get("step", 0)) for e in steps})):
        pts = [(e.get("episode"), _num(e.get("reward"))) for e in steps if int(e.get("step", 0)) == t]
        fig.add_trace(go.Scatter(x=[p[0] for p in pts], y=[p[1] for p in pts], mode="lines+markers",
                                 name=f"step {t + 1}", line={"color": PALETTE[i % len(PALETTE)], "width": 1},
                                 marker={"size": 6}))
    if episodes:
        fig.add_trace(go.Scatter(x=[e.get("episode") for e in episodes], y=[_num(e.get("return")) for e in episodes],
                                 mode="lines", name="episode return", line={"color": "#333", "dash": "dot"}))
    return _layout(fig, title, "episode", "reward")


def joint_chart(events: Sequence[dict]) -> go.Figure:
    """``joint``: the drift model's predicted reward for each epoch's structure against the observed one."""
    title = "Joint: reward predicted by the drift model vs observed"
    if not events:
        return empty_figure(title, "no epoch finished yet", x="epoch", y="reward (search top-1, %)")
    x = [e.get("epoch", i) for i, e in enumerate(events)]
    fig = go.Figure()
    fig.add_trace(go.Scatter(x=x, y=[_num(e.get("observed_reward")) for e in events], mode="lines+markers",
                             name="observed", line={"color": BASE_COLOR}))
    fig.add_trace(go.Scatter(x=x, y=[_num(e.get("predicted_reward")) for e in events], mode="lines+markers",
                             name="predicted (before it was seen)", line={"color": ACCENT, "dash": "dash"}))
    return _layout(fig, title, "epoch", "reward (search top-1, %)")


#: charts of the strategies' own event kinds; other kinds get :func:`event_series_chart`
STRATEGY_CHARTS = {"constrained": constrained_chart, "purl": purl_chart, "joint": joint_chart}


def strategy_chart(kind: str, events: Sequence[dict]) -> go.Figure:
    builder = STRATEGY_CHARTS.get(kind)
    return builder(events) if builder is not None else event_series_chart(kind, events)


# ---------------------------------------------------------------------- sensitivity
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
    fig = go.Figure(go.Heatmap(z=z, x=xs, y=[str(g) for g in groups],
                               colorscale="Reds" if value == "drop" else "RdYlGn",
                               colorbar={"title": {"text": label}},
                               hovertemplate="%{y}<br>%{x} removed<br>" + label + ": %{z:.2f}<extra></extra>"))
    fig.update_yaxes(autorange="reversed", type="category")
    fig.update_xaxes(type="category")
    return _layout(fig, title, "fraction of the group's channels removed", "layer group",
                   height=max(HEIGHT, 22 * len(groups) + 140), legend=False)


def sensitivity_curves(sens: dict, value: str = "top1", title: str | None = None) -> go.Figure:
    """One line per layer group: top-1 (or drop) against the fraction of its channels removed."""
    groups, ratios = list(sens.get("groups") or []), list(sens.get("ratios") or [])
    rows = sens.get(value) or []
    label = "search top-1 (%)" if value == "top1" else "top-1 drop (points)"
    title = title or "Per-layer sensitivity curves"
    if not groups or not ratios or not rows:
        return empty_figure(title, "no sensitivity points yet", x="fraction removed (%)", y=label)
    fig = go.Figure()
    for gi, (g, row) in enumerate(zip(groups, rows)):
        pts = [(r * 100, _num(v)) for r, v in zip(ratios, row)]
        pts = [p for p in pts if p[1] is not None]
        if pts:
            fig.add_trace(go.Scatter(x=[p[0] for p in pts], y=[p[1] for p in pts], mode="lines+markers",
                                     name=str(g), line={"color": PALETTE[gi % len(PALETTE)]}, marker={"size": 5}))
    if value == "top1" and _num(sens.get("base_top1")) is not None:
        fig.add_hline(y=sens["base_top1"], line_dash="dash", line_color="#888", annotation_text="unpruned")
    _layout(fig, title, "fraction of the group's channels removed (%)", label)
    fig.update_layout(legend={"orientation": "v", "x": 1.02, "xanchor": "left", "y": 1.0, "yanchor": "top"})
    return fig


# ---------------------------------------------------------------------- runs
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
    return _layout(fig, title, "layer", "output channels / features")


def compare_fronts_chart(runs: Sequence[dict], title: str = "Pareto fronts of the compared runs") -> go.Figure:
    """Overlaid Pareto fronts (search top-1 vs MACs as % of each run's original).

    ``runs``: dicts with ``name``, ``candidates`` (candidate events), ``base_macs`` and
    optionally ``chosen_id``.
    """
    fig = go.Figure()
    drawn = 0
    for ri, run in enumerate(runs):
        base = _num(run.get("base_macs"))
        cands = [c for c in run.get("candidates") or [] if _num(c.get("macs")) is not None and
                 _num(c.get("top1")) is not None]
        if not cands or not base:
            continue
        color = PALETTE[ri % len(PALETTE)]
        xs = [100.0 * c["macs"] / base for c in cands]
        ys = [c["top1"] for c in cands]
        fig.add_trace(_scatter(len(xs))(x=xs, y=ys, mode="markers", name=f"{run['name']} candidates",
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
    fig = _layout(fig, title, "MACs remaining (% of the run's original model)", "search top-1 (%)")
    fig.update_layout(legend={"orientation": "v", "x": 1.02, "xanchor": "left", "y": 1.0, "yanchor": "top"})
    return fig


def group_cost_chart(groups: Sequence[dict], title: str = "Where the MACs are (per layer group)") -> go.Figure:
    """MACs per prunable group of a model (the New run page's model summary)."""
    rows = [g for g in groups if _num(g.get("macs")) is not None]
    if not rows:
        return empty_figure(title, "no prunable groups", x="layer group", y="MACs (millions)")
    names = [str(g.get("name")) for g in rows]
    fig = go.Figure(go.Bar(x=names, y=[g["macs"] / 1e6 for g in rows], marker_color=BASE_COLOR,
                           customdata=[[g.get("channels"), len(g.get("layers") or [])] for g in rows],
                           hovertemplate="%{x}<br>%{y:.2f} MMACs<br>%{customdata[0]} channels, "
                                         "%{customdata[1]} layer(s)<extra></extra>"))
    fig.update_xaxes(tickangle=-45 if len(names) > 8 else 0, type="category")
    return _layout(fig, title, "layer group", "MACs touched (millions)", height=300, legend=False)

