"""Per-group sensitivity: prune one group alone at several ratios and record search-split accuracy.

The data behind the studio's sensitivity heatmap. Every (group, ratio) point goes through
the same :class:`~pruner.search.evaluator.Evaluator` as search candidates (surgery, BN
recalibration, top-1 on the search subset), whose memo means ratios that round to the
same channel count are evaluated once.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Sequence

from .search.evaluator import Evaluator

DEFAULT_RATIOS = (0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9)


@dataclass
class SensitivityResult:
    groups: list[str]
    channels: list[int]
    ratios: list[float]                 # fraction of the group's channels removed
    top1: list[list[float]]             # [group][ratio] search-split top-1 (%)
    base_top1: float
    evaluations: int = 0
    macs_saved: list[list[float]] = field(default_factory=list)  # [group][ratio] fraction of MACs removed
    fingerprint: dict = field(default_factory=dict)  # model, data, protocol, split: what a search must share to reuse it

    def to_dict(self) -> dict:
        return {
            "groups": self.groups, "channels": self.channels, "ratios": self.ratios, "top1": self.top1,
            "base_top1": self.base_top1, "evaluations": self.evaluations, "macs_saved": self.macs_saved,
            "fingerprint": self.fingerprint,
            "drop": [[self.base_top1 - v for v in row] for row in self.top1],
        }


def analyse(evaluator: Evaluator, ratios: Sequence[float] = DEFAULT_RATIOS, *,
            progress: Callable[[int, int, dict], None] | None = None) -> SensitivityResult:
    """Prune each group alone at each ratio; ``progress(done, total, point)`` after every point."""
    from .search.sensitivity_strategy import fingerprint

    space = evaluator.space
    fp = fingerprint(evaluator)
    full = [g.channels for g in space.groups]
    base = evaluator.evaluate(full, step=-1, meta={"analysis": "sensitivity", "group": None, "ratio": 0.0})
    total = len(space.groups) * len(ratios)
    rows, saved_rows, done = [], [], 0
    for gi, group in enumerate(space.groups):
        row, saved = [], []
        for r in ratios:
            counts = list(full)
            counts[gi] = space.counts([1.0 - r if i == gi else 1.0 for i in range(len(full))])[gi]
            cand = evaluator.evaluate(counts, step=gi, meta={"analysis": "sensitivity", "group": group.name, "ratio": r})
            row.append(cand.top1)
            saved.append(1.0 - cand.macs / space.base_macs)
            done += 1
            if progress is not None:
                progress(done, total, {"group": group.name, "ratio": r, "top1": cand.top1})
        rows.append(row)
        saved_rows.append(saved)
    return SensitivityResult(
        groups=space.names, channels=full, ratios=list(ratios), top1=rows, base_top1=base.top1,
        evaluations=evaluator.evaluations, macs_saved=saved_rows, fingerprint=fp,
    )
