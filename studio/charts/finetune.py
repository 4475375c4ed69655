"""The fine-tuning chart: loss and validation top-1 per epoch."""

from __future__ import annotations

from typing import Sequence

import plotly.graph_objects as go
from plotly.subplots import make_subplots

from ._common import ACCENT, BASE_COLOR, num, style, empty_figure


def finetune_chart(epochs: Sequence[dict], title: str = "Fine-tuning with distillation",
                   empty_text: str = "fine-tuning has not started (or is off)") -> go.Figure:
    """Training loss (left axis) and validation top-1 (right axis) per epoch; ``empty_text`` says
    why there is none yet (:func:`studio.events.finetune_note` derives it from the run's status)."""
    rows = [e for e in epochs if num(e.get("epoch")) is not None]
    if not rows:
        return empty_figure(title, empty_text, x="epoch", y="loss")
    xs = [e["epoch"] for e in rows]
    fig = make_subplots(specs=[[{"secondary_y": True}]])
    fig.add_trace(go.Scatter(x=xs, y=[num(e.get("loss")) for e in rows], mode="lines+markers", name="train loss",
                             line={"color": BASE_COLOR}), secondary_y=False)
    if any(num(e.get("val_top1")) is not None for e in rows):
        fig.add_trace(go.Scatter(x=xs, y=[num(e.get("val_top1")) for e in rows], mode="lines+markers",
                                 name="val top-1", line={"color": ACCENT}), secondary_y=True)
    # whole epochs on the x axis, even for one or two points (Plotly would otherwise pick fractions)
    fig.update_xaxes(tickformat="d", dtick=1 if len(xs) <= 20 else None, range=[min(xs) - 0.5, max(xs) + 0.5])
    fig.update_yaxes(tickformat=".2~f", secondary_y=False)
    fig.update_yaxes(tickformat=".1f", secondary_y=True)
    style(fig, title, "epoch", "loss")  # titles every y axis: set both afterwards
    fig.update_yaxes(title_text="loss (distillation + CE)", secondary_y=False)
    fig.update_yaxes(title_text="val top-1 (%)", secondary_y=True, showgrid=False)
    return fig
