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
