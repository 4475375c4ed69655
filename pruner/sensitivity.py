"""Per-group sensitivity: prune one group alone at several ratios and record search-split accuracy.

The data behind the studio's sensitivity heatmap. Every (group, ratio) point goes through
the same :class:`~pruner.search.evaluator.Evaluator` as search candidates (surgery, BN
recalibration, top-1 on the search subset), whose memo means ratios that round to the
same channel count are evaluated once.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Callable, Sequence

from .errors import PrunerError
from .search.evaluator import Evaluator

DEFAULT_RATIOS = (0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9)
#: the most ratios one analysis takes (each costs one evaluation per layer group)
MAX_RATIOS = 20


def check_ratios(ratios: Sequence[float]) -> list[float]:
    """Sorted distinct fractions of a group's channels removed, each in (0, 1), or a ``PrunerError``."""
    values = []
    for r in ratios:
        if isinstance(r, bool) or not isinstance(r, (int, float)) or not math.isfinite(r) or not 0.0 < r < 1.0:
            raise PrunerError(f"sensitivity ratio {r!r} is out of range: each is the fraction of a group's channels "
                              "removed, strictly between 0 and 1 (e.g. 0.5 = half of them)")
        values.append(round(float(r), 4))
    values = sorted(set(values))
    if not values:
        raise PrunerError("give at least one sensitivity ratio, e.g. 0.2,0.4,0.6,0.8")
    if len(values) > MAX_RATIOS:
        raise PrunerError(f"{len(values)} sensitivity ratios is too many for one analysis; use at most {MAX_RATIOS}")
    return values


def parse_ratios(text: str) -> list[float]:
    """``"0.2, 0.4"`` (commas, semicolons or spaces; ``50%`` also works) as :func:`check_ratios` returns it."""
    values = []
    for part in str(text).replace(";", ",").replace(" ", ",").split(","):
        part = part.strip()
        if not part:
            continue
        try:
            values.append(float(part[:-1]) / 100 if part.endswith("%") else float(part))
        except ValueError:
            raise PrunerError(f"sensitivity ratio {part!r} is not a number; give fractions such as 0.25,0.5 "
                              "(or percentages: 50%)") from None
    return check_ratios(values)


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
    """Prune each group alone at each ratio; ``progress(done, total, point)`` after the unpruned model's score
    (``point["group"]`` is None) and after every point."""
    from .search.probes import fingerprint

    ratios = check_ratios(ratios)
    space = evaluator.space
    fp = fingerprint(evaluator)
    full = [g.channels for g in space.groups]
    base = evaluator.evaluate(full, step=-1, meta={"analysis": "sensitivity", "group": None, "ratio": 0.0})
    total = len(space.groups) * len(ratios)
    if progress is not None:   # the unpruned score first, so a live view shows drops from the first point on
        progress(0, total, {"group": None, "ratio": 0.0, "top1": base.top1})

    def probe(gi: int, r: float) -> list[int]:
        counts = list(full)
        counts[gi] = space.counts([1.0 - r if i == gi else 1.0 for i in range(len(full))])[gi]
        return counts

    rows, saved_rows, done = [], [], 0
    for gi, group in enumerate(space.groups):
        row, saved = [], []
        evaluator.prefetch([probe(gi, r) for r in ratios])  # one group's probes in parallel with --workers
        for r in ratios:
            counts = probe(gi, r)
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
