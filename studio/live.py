"""Following a run while it goes: the polling panel the Live run and Sensitivity pages share, and the
Live run page's view model (its best candidate and its charts, rebuilt only when events arrived).

The pages keep the layout; what they show is computed here.
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable

import streamlit as st

from pruner.runs.rundir import RunDir

from . import charts, results, state
from .events import RunView, best_feasible, budget_of, finetune_note, is_final, status_changed

#: ``body(view, summary, status)``: what a polling panel shows on each poll
PanelBody = Callable[[RunView, "dict | None", str], None]


def session_view(key: str, name: str, path: Path, *, drop: tuple[str, ...] = ()) -> RunView:
    """This session's :class:`RunView` of run ``name`` under ``st.session_state[key]`` (one run at a time,
    so memory stays bounded); a new run's view also drops the session keys in ``drop`` (what was
    derived from the previous one)."""
    cached = st.session_state.get(key)
    if cached is None or cached[0] != name:
        cached = (name, RunView(path))
        st.session_state[key] = cached
        for k in drop:
            st.session_state.pop(k, None)
    return cached[1]


def polling_panel(rd: RunDir, name: str, *, view_key: str, shown_status: str, active: bool, body: PanelBody,
                  drop: tuple[str, ...] = ()) -> None:
    """The fragment that follows run ``name``: every second while the run was going on when the page
    rendered (``active``), it reads the new events (:func:`session_view`) and the summary and calls
    ``body(view, summary, status)``. When the status moves on from ``shown_status`` (what the page's
    run picker, outside the fragment, says) the whole page reruns so the two agree; when an active run
    ends it reruns once more, which stops the timer and renders the final state."""

    @st.fragment(run_every=1.0 if active else None)
    def panel() -> None:
        view = session_view(view_key, name, rd.path, drop=drop)
        view.refresh()
        summary = rd.summary()
        status = (summary or {}).get("status") or view.status
        if status_changed(shown_status, status):
            st.rerun()
        body(view, summary, status)
        if active and is_final(status):
            st.rerun()

    panel()


def progress_row(name: str, fraction: float, text: str, status: str, *, key: str, toast: str) -> None:
    """The progress bar and, while the run goes on, its Cancel button (``toast`` says what a cancel does)."""
    top = st.columns([5, 1])
    with top[0]:
        st.progress(fraction, text=text)
    with top[1]:
        if not is_final(status):
            if st.button("Cancel", key=key, icon=":material/stop_circle:", width="stretch"):
                state.cancel(name)
                st.toast(toast)


def shown_best(view: RunView, chosen_id: int | None) -> tuple[dict | None, bool]:
    """The one "best" the Live page shows and whether it is the search's answer: the chosen candidate
    once there is one (a latency answer may be a re-timed runner-up), before that the best candidate
    so far within the budget."""
    chosen = next((c for c in view.candidates if c.get("candidate_id") == chosen_id), None) \
        if chosen_id is not None else None
    return chosen or view.best, chosen is not None


def live_figures(view: RunView, rd: RunDir, config: dict, summary: dict | None, name: str) -> dict:
    """The Live page's charts (and one-off strategy events as lines), built only when new events arrived
    or the run finished; reused from the session otherwise."""
    stamp = (view.count, (summary or {}).get("status"))
    cached = st.session_state.get("live_figs")
    if cached and cached["name"] == name and cached["stamp"] == stamp:
        return cached["figs"]
    figs = build_live_figures(view, rd.chosen_candidate(summary), config, summary)
    for fig in figs.values():
        if not isinstance(fig, str):
            fig.update_layout(uirevision=name)
    st.session_state["live_figs"] = {"name": name, "stamp": stamp, "figs": figs}
    return figs


def build_live_figures(view: RunView, chosen: int | None, config: dict, summary: dict | None) -> dict:
    """The Live page's charts of a run: keep ratios of the chosen (else best) candidate, the policy,
    rewards, accuracy against MACs and latency, fine-tuning, and each strategy's own events (``extra:KIND``,
    then ``extra:KIND:1``, ... for a strategy with several charts; :func:`extra_rows` lays them out)."""
    parsed = budget_of(config)   # candidates are held to its cost target (for sparsity=F: the density 1 - F)
    kind, target = (parsed.kind, parsed.target) if parsed else (None, None)
    cands = list(view.candidates)
    best = next((c for c in cands if c.get("candidate_id") == chosen), None) or best_feasible(cands, parsed)
    best_id = best.get("candidate_id") if best else None
    base = (summary or {}).get("base") or view.base
    final = (summary or {}).get("pruned")
    budget = {"kind": kind, "target": target}
    figs = {
        "keep": charts.keep_ratio_chart(view.group_names, view.group_channels,
                                        best.get("keep_ratios") if best else None,
                                        title="Channels kept per layer group (" +
                                        ("chosen" if chosen is not None else "current best") + ")"),
        "policy": charts.policy_heatmap(list(view.steps), view.group_names, cands),
        "reward": charts.reward_chart(cands, budget=parsed),
        "macs": charts.tradeoff_chart(cands, "macs", chosen_id=best_id, base=base, budget=budget, final=final,
                                      title="Accuracy vs MACs (all candidates)"),
        "latency": charts.tradeoff_chart(cands, "latency_ms", chosen_id=best_id, base=base, budget=budget,
                                         final=final, title="Accuracy vs latency (all candidates)"),
        "finetune": charts.finetune_chart(list(view.epochs), empty_text=finetune_note(view, config, summary)),
    }
    for kind_name, events in view.other.items():
        if kind_name == "workers":   # a table, below
            continue
        if len(events) > 1 or kind_name in charts.STRATEGY_CHARTS or kind_name in charts.STRATEGY_CHART_SETS:
            for i, fig in enumerate(charts.strategy_charts(kind_name, list(events), view.group_names)):
                figs[f"extra:{kind_name}" + (f":{i}" if i else "")] = fig
        else:                        # a one-off event (where the search started): a line, not a chart of one dot
            figs[f"line:{kind_name}"] = results.event_line(kind_name, events[-1])
    return figs


def extra_rows(figs: dict) -> list[list[str]]:
    """The Live page's rows of strategy charts (the ``extra:`` keys of :func:`build_live_figures`): a strategy
    with several charts (``joint``) gets them two to a row, in order; a strategy with one chart a row."""
    rows: list[list[str]] = []
    kinds: list[str] = []
    for key in (k for k in figs if k.startswith("extra:")):
        kind = key.split(":")[1]
        if kinds and kinds[-1] == kind and len(rows[-1]) < 2:
            rows[-1].append(key)
        else:
            rows.append([key])
            kinds.append(kind)
    return rows
