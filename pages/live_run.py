"""Live run: progress, cancel, and charts that follow the run directory while the job runs."""

import time

import streamlit as st

from pruner.runs.rundir import PRUNE, RunDir
from studio import charts, forms, results, state
from studio.events import (RunView, best_feasible, budget_of, finetune_note, format_seconds, is_final, progress,
                           status_changed)

st.title("Live run")

runs = state.all_runs(PRUNE)
if not runs:
    st.info("No pruning runs yet. Start one on the **New run** page.")
    st.page_link(state.PAGES["new"], label="New run", icon=":material/add_circle:")
    st.stop()

current = state.requested_run(PRUNE) or state.default_run(PRUNE)
names = [rd.name for rd in runs]
if current not in names:
    current = names[0]
statuses = {rd.name: rd.status() for rd in runs[:200]}
choice = st.selectbox("Run", names, index=names.index(current),
                      format_func=lambda n: f"{n}  ·  {statuses.get(n, '')}",
                      help="Every pruning run under the runs folder, newest first")
if choice != current:
    current = choice
state.attach(current)

rd = RunDir(state.run_path(current))
config = rd.config() or {}
st.markdown(state.describe_config(config))
uses_evals = forms.strategy_uses_evaluations(str(config.get("strategy", "rl")))
# A run is followed while it is going on, including one just resumed: a resume clears the old summary
# and writes a "queued" status before this page runs, and a job of this server counts as going on.
active_at_start = not is_final(rd.status()) or state.job_state(current) in ("queued", "running")


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
    budget = budget_of(config)
    kind, target_f = (budget.kind, budget.target) if budget else (None, None)
    cands = list(view.candidates)
    chosen = rd.chosen_candidate(summary)
    best = next((c for c in cands if c.get("candidate_id") == chosen), None) or best_feasible(cands, budget)
    base = (summary or {}).get("base") or view.base
    final = (summary or {}).get("pruned")
    figs = {
        "keep": charts.keep_ratio_chart(view.group_names, view.group_channels,
                                        best.get("keep_ratios") if best else None,
                                        title="Channels kept per layer group (" +
                                        ("chosen" if chosen is not None else "current best") + ")"),
        "policy": charts.policy_heatmap(list(view.steps), view.group_names, cands),
        "reward": charts.reward_chart(cands),
        "macs": charts.tradeoff_chart(cands, "macs", chosen_id=best.get("candidate_id") if best else None,
                                      base=base, budget={"kind": kind, "target": target_f}, final=final,
                                      title="Accuracy vs MACs (all candidates)"),
        "latency": charts.tradeoff_chart(cands, "latency_ms", chosen_id=best.get("candidate_id") if best else None,
                                         base=base, budget={"kind": kind, "target": target_f}, final=final,
                                         title="Accuracy vs latency (all candidates)"),
        "finetune": charts.finetune_chart(list(view.epochs), empty_text=finetune_note(view, config, summary)),
    }
    for kind_name, events in view.other.items():
        if kind_name == "workers":  # a table, below
            continue
        figs[f"extra:{kind_name}"] = charts.strategy_chart(kind_name, list(events))
    for fig in figs.values():
        fig.update_layout(uirevision=current)
    st.session_state["live_figs"] = {"name": current, "stamp": stamp, "figs": figs}
    return figs


def _results(summary: dict) -> None:
    base, pruned = summary.get("base") or {}, summary.get("pruned") or {}
    if not pruned:
        return
    st.subheader("Result (report split)")
    cols = st.columns(6)

    def ratio(k):
        return f"{pruned[k] / base[k]:.0%} of original" if base.get(k) and pruned.get(k) is not None else None

    cols[0].metric("Top-1", state.fmt(pruned.get("top1"), ".2f", " %"),
                   delta=None if base.get("top1") is None or pruned.get("top1") is None
                   else f"{pruned['top1'] - base['top1']:+.2f} pts")
    cols[1].metric("Top-5", state.fmt(pruned.get("top5"), ".2f", " %"))
    cols[2].metric("MACs", state.fmt((pruned.get("macs") or 0) / 1e6, ",.2f", " M"), delta=ratio("macs"),
                   delta_color="off", delta_arrow="off")
    cols[3].metric("Parameters", state.fmt((pruned.get("params") or 0) / 1e6, ",.3f", " M"), delta=ratio("params"),
                   delta_color="off", delta_arrow="off")
    lat = results.latency(summary) or {}   # the paired ratio, and the ms derived from it
    cols[4].metric(lat.get("label", "PyTorch latency"), state.fmt(lat.get("ms"), ".2f", " ms"),
                   delta=f"{lat['ratio']:.0%} of original" if lat.get("ratio") is not None else None,
                   delta_color="off", delta_arrow="off",
                   help="Pruned and original timed alternately on the same device (their ratio); the ms is "
                        "the original's ms times that ratio")
    cols[5].metric(f"ONNX Runtime latency ({pruned.get('ort_latency_device', 'cpu')}, batch 1)",
                   state.fmt(pruned.get("ort_latency_ms"), ".2f", " ms"),
                   delta=ratio("ort_latency_ms"), delta_color="off", delta_arrow="off")
    b = summary.get("budget") or {}
    sp = summary.get("sparsity")
    if sp:  # weight sparsity: zeros measured on the final weights, sizes dense vs compressed
        onnx = sp.get("onnx") or {}
        st.caption(f"Sparsity ({sp.get('pattern')}): {state.fmt(sp.get('sparsity'), '.4f')} of "
                   f"{sp.get('prunable_weights')} conv/linear weights are zero · {sp.get('nonzero_params')} non-zero "
                   f"parameters · {state.fmt(sp.get('dense_bytes', 0) / 1e6, '.3f', ' MB')} dense, "
                   f"{state.fmt(sp.get('bitmask_bytes', 0) / 1e6, '.3f', ' MB')} as bitmask + values, "
                   f"{state.fmt(sp.get('csr_bytes', 0) / 1e6, '.3f', ' MB')} as CSR"
                   + (f" · ONNX {state.fmt(onnx['bytes'] / 1e6, '.3f', ' MB')}, zipped "
                      f"{state.fmt(onnx['zipped_bytes'] / 1e6, '.3f', ' MB')} ({onnx['zeros']} zero weights)"
                      if onnx else ""))
    achieved_of = "of the prunable weights at zero" if b.get("kind") == "sparsity" else "of the original"
    st.caption(f"Budget {b.get('kind')}={b.get('target')}: achieved {state.fmt(b.get('achieved'), '.3f')} {achieved_of} · "
               f"original top-1 {state.fmt(base.get('top1'), '.2f', ' %')} · "
               f"ONNX max |diff| vs PyTorch {state.fmt(summary.get('onnx_max_abs_diff'), '.2e')}")


DOWNLOADS = (  # (summary["artifacts"] key, label, mime); "summary" is summary.json itself
    ("onnx", "ONNX model", "application/octet-stream"),
    ("checkpoint", "Checkpoint", "application/octet-stream"),
    ("program", "Program (.pt2)", "application/octet-stream"),
    ("summary", "Summary JSON", "application/json"),
    ("candidates", "Candidates CSV", "text/csv"),
)


def _downloads(summary: dict) -> None:
    """Download buttons for the run's artifacts that exist (read only when clicked)."""
    found = [(key, label, mime, path) for key, label, mime in DOWNLOADS
             if (path := rd.artifact(key, summary)) is not None]
    if not found:
        return
    st.markdown("**Downloads**")
    cols = st.columns(len(found))
    for col, (key, label, mime, path) in zip(cols, found):
        size = path.stat().st_size
        col.download_button(label, data=lambda p=path: p.read_bytes(), file_name=f"{current}-{path.name}",
                            mime=mime, key=f"live_dl_{key}", on_click="ignore", icon=":material/download:",
                            help=f"{path.relative_to(rd.path.resolve())} · {size / 1e6:,.2f} MB",
                            width="stretch")


@st.fragment(run_every=1.0 if active_at_start else None)
def live_panel() -> None:
    view = _view(current)
    view.refresh()
    summary = rd.summary()
    status = (summary or {}).get("status") or view.status
    if status_changed(statuses.get(current), status):
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
    now = time.time()
    elapsed = None
    if view.first_time is not None:
        elapsed = ((view.last_time or now) if is_final(status) else now) - view.first_time
    best = view.best
    m = st.columns(6)
    m[0].metric("Status", status)
    m[1].metric("Step", "—" if view.current_step is None else view.current_step)
    m[2].metric("Candidates evaluated", f"{view.evaluations}" + (f" / {p['expected']}" if p.get("expected") else ""))
    m[3].metric("Best search top-1", state.fmt(best.get("top1") if best else None, ".2f", " %"))
    m[4].metric("Elapsed", format_seconds(elapsed))
    m[5].metric("ETA", "—" if is_final(status) else format_seconds(p.get("eta_s")))

    if status == "failed":
        st.error(f"The run failed: {(summary or {}).get('error') or view.error or 'unknown error'}",
                 icon=":material/error:")
    elif status == "cancelled":
        st.warning(f"The run was cancelled: {(summary or {}).get('error') or ''}", icon=":material/cancel:")
    elif not is_final(status) and state.liveness(rd, status) == "interrupted":
        st.warning("Interrupted: no process is running this run any more (its job was killed, or the server "
                   "stopped). Resume it from the **Runs** page.", icon=":material/warning:")
    if summary and status == "done":
        if (summary.get("search") or {}).get("note"):
            st.info(summary["search"]["note"], icon=":material/info:")
        _results(summary)
        _downloads(summary)

    figs = _figures(view, summary)
    c1, c2 = st.columns(2)
    c1.plotly_chart(figs["keep"], key="live_keep")
    c2.plotly_chart(figs["policy"], key="live_policy")
    c1, c2 = st.columns(2)
    c1.plotly_chart(figs["reward"], key="live_reward")
    c2.plotly_chart(figs["finetune"], key="live_finetune")
    c1, c2 = st.columns(2)
    c1.plotly_chart(figs["macs"], key="live_macs")
    c2.plotly_chart(figs["latency"], key="live_latency")
    worker_events = view.other.get("workers")
    if worker_events:
        st.markdown(f"**Ray workers** ({len(worker_events[-1].get('workers') or [])}): candidates scored and "
                    "utilisation (busy time over each worker's life)")
        st.dataframe(results.workers_table(worker_events[-1].get("workers")), hide_index=True,
                     key="live_workers", column_config={
                         "busy (s)": st.column_config.NumberColumn(format="%.1f"),
                         "utilisation (%)": st.column_config.ProgressColumn(min_value=0, max_value=100,
                                                                            format="%.0f%%")})
    extra = [k for k in figs if k.startswith("extra:")]
    for k in extra:
        st.plotly_chart(figs[k], key=f"live_{k}")
    st.markdown("**Log** (newest first)")
    lines = view.log_lines(60)[::-1]
    st.code("\n".join(lines) if lines else "(no events yet)", language=None, height=240)

    if active_at_start and is_final(status):
        st.rerun()  # stop the timer and render the final state once


live_panel()
