"""Live run: progress, cancel, and charts that follow the run directory while the job runs."""

import time

import streamlit as st

from pruner.runs.rundir import PRUNE, JobState, RunDir, Status, failed_on_settings
from studio import charts, forms, results, state, widgets
from studio.markup import plain_md
from studio.events import (RunView, best_feasible, budget_of, finetune_note, format_seconds, is_final, progress,
                           status_changed)

st.title("Live run")

runs = state.all_runs(PRUNE)
if not runs:
    st.info("No pruning runs yet. Start one on the **New run** page.")
    st.page_link(state.PAGES["new"], label="New run", icon=":material/add_circle:")
    st.stop()

current = widgets.run_picker([rd.name for rd in runs], state.requested_run(PRUNE) or state.default_run(PRUNE),
                             label="Run", details=widgets.statuses(runs),
                             help="Every pruning run under the runs folder, newest first")
rd = RunDir(state.run_path(current))
widgets.stop_if_damaged(rd)
config = rd.config() or {}
st.markdown(state.describe_config(config))
uses_evals = forms.strategy_uses_evaluations(str(config.get("strategy", "rl")))
# A run is followed while it is going on, including one just resumed: a resume clears the old summary
# and writes a "queued" status before this page runs, and a job of this server counts as going on.
shown_status = rd.status()   # what the picker above says of this run
active_at_start = not is_final(shown_status) or state.job_state(current) in JobState.GOING_ON


def _view(name: str) -> RunView:
    """This session's view of the run (one at a time, so memory stays bounded)."""
    cached = st.session_state.get("live_view")
    if cached is None or cached[0] != name:
        cached = (name, RunView(rd.path))
        st.session_state["live_view"] = cached
        st.session_state.pop("live_figs", None)
    return cached[1]


def _figures(view: RunView, summary: dict | None) -> dict:
    """Build the charts only when new events arrived (or the run finished); reuse them otherwise."""
    stamp = (view.count, (summary or {}).get("status"))
    cached = st.session_state.get("live_figs")
    if cached and cached["name"] == current and cached["stamp"] == stamp:
        return cached["figs"]
    parsed = budget_of(config)   # candidates are held to its cost target (for sparsity=F: the density 1 - F)
    kind, target = (parsed.kind, parsed.target) if parsed else (None, None)
    cands = list(view.candidates)
    chosen = rd.chosen_candidate(summary)
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
        if len(events) > 1 or kind_name in charts.STRATEGY_CHARTS:
            figs[f"extra:{kind_name}"] = charts.strategy_chart(kind_name, list(events))
        else:                        # a one-off event (where the search started): a line, not a chart of one dot
            figs[f"line:{kind_name}"] = results.event_line(kind_name, events[-1])
    for fig in figs.values():
        if not isinstance(fig, str):
            fig.update_layout(uirevision=current)
    st.session_state["live_figs"] = {"name": current, "stamp": stamp, "figs": figs}
    return figs


@st.fragment(run_every=1.0 if active_at_start else None)
def live_panel() -> None:
    view = _view(current)
    view.refresh()
    summary = rd.summary()
    status = (summary or {}).get("status") or view.status
    if status_changed(shown_status, status):
        st.rerun()   # the run picker above (outside this fragment) shows the new status too
    p = progress(view, config, summary, uses_evaluations=uses_evals)

    top = st.columns([5, 1])
    with top[0]:
        st.progress(p["fraction"], text=p["text"])
    with top[1]:
        if not is_final(status):
            if st.button("Cancel", key="live_cancel", icon=":material/stop_circle:", width="stretch"):
                state.cancel(current)
                st.toast("Cancel requested: the job stops after the current evaluation.")
    elapsed = view.active_seconds(None if is_final(status) else time.time())   # less any time stopped
    # one "best": the search's answer once it is chosen (a latency answer may be a re-timed runner-up),
    # before that the best candidate so far within the budget
    chosen_id = rd.chosen_candidate(summary)
    chosen = next((c for c in view.candidates if c.get("candidate_id") == chosen_id), None) \
        if chosen_id is not None else None
    best = chosen or view.best
    m = st.columns([1.6, 0.7, 1.2, 1.2, 1, 1])   # the status gets room for "fine-tuning", "cancelled"
    m[0].metric("Status", status)
    m[1].metric("Step", "—" if view.current_step is None else view.current_step)
    m[2].metric("Candidates evaluated", f"{view.evaluations}" + (f" / {p['expected']}" if p.get("expected") else ""))
    m[3].metric("Chosen search top-1" if chosen else "Best search top-1",
                state.fmt(best.get("top1") if best else None, ".2f", " %"),
                help="The search's answer (top-1 on the search split)" if chosen else
                     "The best candidate so far within the budget (top-1 on the search split); probes and "
                     "candidates over the budget never count")
    m[4].metric("Elapsed", format_seconds(elapsed), help="Time the run has been going on (not counting time "
                                                          "stopped between a cancel and a resume)")
    m[5].metric("ETA", "—" if is_final(status) else format_seconds(p.get("eta_s")),
                help="The whole run: this stage from its measured rate, then the fine-tuning (a training step "
                     "timed before the search, scaled to the epochs) and the export and report (timed on the "
                     "original model)")

    widgets.status_banner(rd, status, (summary or {}).get("error") or view.error,
                          hint="Fix what the message says and start a new run on the **New run** page."
                          if failed_on_settings(summary) else "Resume it from the **Runs** page.")
    if summary and status == Status.DONE:
        if (summary.get("search") or {}).get("note"):
            st.info(plain_md(summary["search"]["note"]), icon=":material/info:")
        st.subheader("Result (report split)")
        widgets.result_metrics(summary, per_row=3)
        for line in results.result_captions(summary):
            st.caption(line)
        widgets.download_buttons(rd, summary, current, key="live_dl")

    figs = _figures(view, summary)
    for left, right in (("keep", "policy"), ("reward", "finetune"), ("macs", "latency")):
        c1, c2 = st.columns(2)
        c1.plotly_chart(figs[left], key=f"live_{left}")
        c2.plotly_chart(figs[right], key=f"live_{right}")
    worker_events = view.other.get("workers")
    if worker_events:
        st.markdown(f"**Ray workers** ({len(worker_events[-1].get('workers') or [])}): candidates scored and "
                    "utilisation (busy time over each worker's life)")
        st.dataframe(results.workers_table(worker_events[-1].get("workers")), hide_index=True,
                     key="live_workers", column_config={
                         "busy (s)": st.column_config.NumberColumn(format="%.1f"),
                         "utilisation (%)": st.column_config.ProgressColumn(min_value=0, max_value=100,
                                                                            format="%.0f%%")})
    for k in [k for k in figs if k.startswith("line:")]:
        st.caption(plain_md(figs[k]))
    for k in [k for k in figs if k.startswith("extra:")]:
        st.plotly_chart(figs[k], key=f"live_{k}")
    st.markdown("**Log** (newest first)")
    lines = view.log_lines(60)[::-1]
    st.code("\n".join(lines) if lines else "(no events yet)", language=None, height=240)

    if active_at_start and is_final(status):
        st.rerun()  # stop the timer and render the final state once


live_panel()
