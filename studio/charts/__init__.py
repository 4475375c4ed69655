"""Plotly figure builders: pure functions from event lists and dicts to figures, one module per subject.

Every builder accepts empty input and returns a figure that says what is missing instead of
failing. Figures carry a title, axis titles with units, and a fixed ``uirevision`` so that a
chart redrawn with new data keeps the user's zoom.

| module | charts |
|---|---|
| ``search`` | kept channels per group, policy heatmap, rewards, accuracy vs cost with the Pareto front |
| ``finetune`` | loss and validation top-1 per epoch |
| ``strategies`` | the strategies' own events (constrained, purl, joint: reward, training loss and structure per epoch, any other kind) |
| ``sensitivity`` | sensitivity heatmap and curves |
| ``runs`` | MACs per layer group (the model summary) |
| ``compare`` | runs compared: overlaid Pareto fronts, search (reward, top-1) and fine-tuning curves |
| ``network`` | the network before and after pruning: kept and removed channels per layer, by layer group |
"""

from ._common import PALETTE, empty_figure, palette, pareto_front
from .finetune import finetune_chart
from .compare import compare_finetune_chart, compare_fronts_chart, compare_search_chart
from .network import layer_groups, network_chart, network_graph
from .runs import group_cost_chart
from .search import keep_ratio_chart, policy_heatmap, reward_chart, tradeoff_chart
from .sensitivity import sensitivity_curves, sensitivity_heatmap
from .strategies import (STRATEGY_CHART_SETS, STRATEGY_CHARTS, constrained_chart, event_series_chart, joint_chart,
                         joint_charts, joint_loss_chart, joint_structure_chart, purl_chart, strategy_chart,
                         strategy_charts)

__all__ = ["PALETTE", "STRATEGY_CHART_SETS", "STRATEGY_CHARTS", "compare_finetune_chart", "compare_fronts_chart", "compare_search_chart", "constrained_chart", "empty_figure",
           "event_series_chart", "finetune_chart", "group_cost_chart", "joint_chart", "joint_charts", "joint_loss_chart",
           "joint_structure_chart", "keep_ratio_chart",
           "layer_groups", "network_chart", "network_graph", "palette", "pareto_front", "policy_heatmap", "purl_chart", "reward_chart",
           "sensitivity_curves", "sensitivity_heatmap", "strategy_chart", "strategy_charts", "tradeoff_chart"]
