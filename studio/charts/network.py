"""The network before and after pruning: every conv / linear layer in module order, its channels kept
and removed, coloured by the layer group that prunes it (layers of one coupled group share a colour
and lose the same channels)."""

from __future__ import annotations

from typing import Sequence

import plotly.graph_objects as go

from ._common import GREY, empty_figure, num, palette, style

UNGROUPED = "not pruned (no group)"


def layer_groups(groups: Sequence[dict]) -> dict[str, str]:
    """Layer name → the name of the group whose channels it carries (``summary["groups"][i]["layers"]``)."""
    owner: dict[str, str] = {}
    for g in groups or []:
        for layer in g.get("layers") or []:
            owner.setdefault(str(layer), str(g.get("name")))
    return owner


def network_chart(layers: Sequence[dict], groups: Sequence[dict] = (),
                  title: str = "The network before and after pruning") -> go.Figure:
    """One row per conv / linear layer (``summary["layers"]``: name, before, after), input at the top:
    the kept channels as a bar in the colour of the layer's group, the removed ones grey behind it."""
    rows = [l for l in layers or [] if l.get("name") is not None and num(l.get("before")) is not None]
    if not rows:
        return empty_figure(title, "no per-layer data (the run has not finished)", x="output channels", y="layer")
    owner = layer_groups(groups)
    group_names = [str(g.get("name")) for g in groups or []]
    coupled = {str(g.get("name")): len(g.get("layers") or []) for g in groups or []}
    colours = dict(zip(group_names, palette(len(group_names))))
    names = [str(l["name"]) for l in rows]
    fig = go.Figure()
    # removed channels: one grey trace behind everything
    removed = [max(0.0, num(l["before"]) - (num(l.get("after")) or 0.0)) for l in rows]
    kept_all = [num(l.get("after")) or 0.0 for l in rows]
    fig.add_bar(y=names, x=removed, base=kept_all, orientation="h", name="removed", marker_color=GREY,
                customdata=[[l.get("before"), l.get("after")] for l in rows],
                hovertemplate="%{y}<br>removed %{x:.0f} of %{customdata[0]} channels<extra></extra>")
    # kept channels: one trace per group, so the legend names the groups and toggles them
    order = group_names + ([UNGROUPED] if any(n not in owner for n in names) else [])
    for gname in order:
        idx = [i for i, n in enumerate(names) if owner.get(n, UNGROUPED) == gname]
        if not idx:
            continue
        share = [f"{kept_all[i] / num(rows[i]['before']):.0%}" if num(rows[i]["before"]) else "" for i in idx]
        label = gname if coupled.get(gname, 1) <= 1 else f"{gname} (+{coupled[gname] - 1} coupled)"
        fig.add_bar(y=[names[i] for i in idx], x=[kept_all[i] for i in idx], orientation="h", name=label,
                    marker_color=colours.get(gname, "#7F7F7F"), legendgroup=gname,
                    customdata=[[rows[i]["before"], share[k], gname] for k, i in enumerate(idx)],
                    hovertemplate="%{y}<br>kept %{x:.0f} of %{customdata[0]} channels (%{customdata[1]})"
                                  "<br>group %{customdata[2]}<extra></extra>")
    fig.update_layout(barmode="overlay", bargap=0.25)
    fig.update_yaxes(type="category", categoryorder="array", categoryarray=names[::-1], tickfont={"size": 11})
    style(fig, title, "output channels / features (kept in colour, removed in grey)", "layer (module order)",
          height=max(300, 120 + 22 * len(rows)))
    fig.update_layout(legend={"orientation": "v", "x": 1.02, "xanchor": "left", "y": 1.0, "yanchor": "top",
                              "title": {"text": "layer group"}})
    return fig


def _layout(graph: dict) -> dict[int, tuple[float, float]]:
    """Node id → (x, y): one row per topological generation (input at the top), the row's nodes side by side."""
    import networkx as nx

    g = nx.DiGraph()
    g.add_nodes_from(n["id"] for n in graph["nodes"])
    g.add_edges_from(tuple(e) for e in graph["edges"])
    pos = {}
    for depth, gen in enumerate(nx.topological_generations(g)):
        gen = sorted(gen)
        for i, nid in enumerate(gen):
            pos[nid] = (i - (len(gen) - 1) / 2.0, -float(depth))
    return pos


def _node_text(node: dict, layer: dict | None) -> tuple[str, str]:
    """The node's short label and its hover text."""
    shape = "×".join(str(s) for s in node.get("shape") or []) or "?"
    ops = " · ".join([node["op"], *node.get("folded", [])])
    if layer and num(layer.get("before")) is not None:
        before, after = int(layer["before"]), int(layer.get("after") or 0)
        label = f"{node['name']}  {before}→{after}" if after != before else f"{node['name']}  {before}"
        hover = (f"{node['name']}<br>{ops}<br>output {shape}<br>kept {after} of {before} channels "
                 f"({after / before:.0%})" if before else "")
        return label, hover
    # merges, reshapes, input and output carry the tensor shape in their label (layers: in the hover)
    return f"{node['op'] if node['op'] in ('input', 'output') else node['name']}  {shape}", f"{ops}<br>output {shape}"


def network_graph(graph: dict | None, layers: Sequence[dict] = (), groups: Sequence[dict] = (),
                  title: str = "The pruned network as a graph") -> go.Figure:
    """``summary["graph"]`` (:func:`pruner.pruning.graph.model_graph`) drawn top to bottom: layers as nodes in
    their group's colour (channels kept → removed in the label, output shape in the hover), merges (add,
    concat) as grey diamonds, skip connections as arcs beside the straight data path."""
    if not graph or not graph.get("nodes"):
        return empty_figure(title, "no graph (the run has not finished, or torch.fx cannot trace this model)")
    pos = _layout(graph)
    by_name = {str(l.get("name")): l for l in layers or []}
    owner = layer_groups(groups)
    group_names = [str(g.get("name")) for g in groups or []]
    colours = dict(zip(group_names, palette(len(group_names))))
    fig = go.Figure()
    # edges: straight between neighbouring rows, an arc for a skip connection (it would run through the nodes)
    xs: list[float | None] = []
    ys: list[float | None] = []
    for a, b in graph["edges"]:
        (x0, y0), (x1, y1) = pos[a], pos[b]
        if abs(y0 - y1) <= 1.0 or x0 != x1:
            xs += [x0, x1, None]
            ys += [y0, y1, None]
        else:
            bow = -(0.35 + 0.05 * min(abs(y0 - y1), 8))   # to the left: the labels are on the right
            pts = [(0.5 * (x0 + x1) + bow * 4 * t * (1 - t) + (x1 - x0) * t, y0 + (y1 - y0) * t)
                   for t in [i / 12 for i in range(13)]]
            xs += [p[0] for p in pts] + [None]
            ys += [p[1] for p in pts] + [None]
    fig.add_trace(go.Scatter(x=xs, y=ys, mode="lines", line={"color": "#999", "width": 1.2}, hoverinfo="skip",
                             showlegend=False))
    # nodes, one trace per group (the legend toggles them), merges and the rest in grey
    buckets: dict[str, list[dict]] = {}
    for node in graph["nodes"]:
        layer = by_name.get(node["name"])
        key = owner.get(node["name"], "layers not pruned" if layer else "merges and reshapes")
        buckets.setdefault(key, []).append(node)
    for key in [*group_names, "layers not pruned", "merges and reshapes"]:
        members = buckets.get(key)
        if not members:
            continue
        texts = [_node_text(n, by_name.get(n["name"])) for n in members]
        merge = key == "merges and reshapes"
        fig.add_trace(go.Scatter(
            x=[pos[n["id"]][0] for n in members], y=[pos[n["id"]][1] for n in members], mode="markers+text",
            name=key, text=[t[0] for t in texts], textposition="middle right", textfont={"size": 10},
            hovertext=[t[1] for t in texts], hoverinfo="text",
            marker={"size": 9 if merge else 13, "symbol": "diamond" if merge else "square",
                    "color": "#BBBBBB" if merge else colours.get(key, "#7F7F7F"),
                    "line": {"width": 1, "color": "#555"}}))
    rows = 1 + max(-y for _, y in pos.values())
    width = max(x for x, _ in pos.values()) - min(x for x, _ in pos.values())
    fig.update_xaxes(visible=False, range=[min(x for x, _ in pos.values()) - 1.0, max(x for x, _ in pos.values())
                                           + 2.5 + 0.2 * width])
    fig.update_yaxes(visible=False)
    style(fig, title, "", "", height=int(max(360, 80 + 26 * rows)))
    fig.update_layout(legend={"orientation": "v", "x": 1.02, "xanchor": "left", "y": 1.0, "yanchor": "top",
                              "title": {"text": "layer group"}}, hovermode="closest")
    return fig
