"""New run: choose model, data, budget and strategy, see the model summary, start a background job."""

import streamlit as st

from pruner.pruning.space import frozen_note
from pruner.runs.rundir import PRUNE
from pruner.userfile import code_references
from studio import charts, forms, state, widgets
from studio.markup import plain_md

st.title("New pruning run")
st.caption("The defaults (ResNet-20 pretrained on CIFAR-10 when the CIFAR-10 copy and its weights are on this "
           "machine, else the offline digits demo; a short RL search) take about half a minute on a quiet 2-core CPU "
           "(the expected time on this machine shows above Start): "
           "press **Start pruning** to try it.")

left, right = st.columns([5, 4], gap="large")  # the right column fits the groups table

with left:
    md = forms.model_data_inputs("nr_")

    st.subheader("Budget and search")
    c1, c2 = st.columns(2)
    with c1:
        budget_kind = st.selectbox("Budget", list(forms.BUDGETS), format_func=forms.BUDGETS.get, key="nr_budget_kind",
                                   help="What must shrink. Latency is measured on this machine for every candidate "
                                        "(slower search).")
    with c2:
        sparse = budget_kind == "sparsity"
        budget_value = st.number_input("Fraction set to zero" if sparse else "Fraction that remains", value=0.5,
                                       step=0.05, format="%g", key="nr_budget_value",
                                       help="Between 0 and 1: 0.8 zeroes 80% of the conv/linear weights (shapes kept)"
                                       if sparse else "Between 0 and 1: 0.5 keeps half of the original "
                                       "FLOPs/params/latency")
    strategies = forms.strategy_list()
    c1, c2 = st.columns(2)
    with c1:
        strategy = st.selectbox("Strategy", strategies, index=strategies.index("rl") if "rl" in strategies else 0,
                                key="nr_strategy")
    with c2:
        search_evals = st.number_input("Candidate evaluations", value=forms.QUICK["search_evals"],
                                       step=4, key="nr_search_evals",
                                       help="Cap on candidates scored during the search (more = better, slower)")
    st.caption(forms.STRATEGY_HELP.get(strategy, ""))
    start_from = forms.requested_analysis()
    if start_from and strategy == "rl":
        st.info(f"rl starts from the {start_from.removeprefix('analysis: ')} (Advanced → start): choose the same "
                "model, data and seed as the analysis.", icon=":material/grid_on:")
    if forms.strategy_uses_evaluations(strategy) and int(search_evals) < 40:
        st.caption(f"With {int(search_evals)} evaluations a search can refine a good start, not learn one: `rl` and "
                   "`sensitivity` spend about one evaluation per layer group on probes (or `rl` starts from a finished "
                   "Sensitivity analysis: Advanced → start), and the answer may be that start — the result says so.")

    st.subheader("Fine-tuning and device")
    recipe = st.selectbox("Fine-tuning recipe", forms.RECIPE_CHOICES, format_func=forms.RECIPE_LABELS.get,
                          key="nr_recipe", on_change=forms.apply_recipe, args=("nr_",),
                          help="Sets the epochs, warm-up, batch size, learning rate and distillation below "
                               "(Advanced → Fine-tuning); a field you then edit overrides the recipe")
    c1, c2 = st.columns(2)
    with c1:
        ft_epochs = st.number_input("Fine-tune epochs", value=forms.QUICK["finetune_epochs"], step=1,
                                    key="nr_ft_epochs", help="Knowledge distillation from the original model; 0 = off")
    with c2:
        device = forms.device_input("nr_")
    quantize = st.checkbox("Also an INT8 model (ONNX Runtime static quantization)", value=False, key="nr_quantize",
                           help="After export: QDQ INT8 with per-channel weights, calibrated on fine-tune images "
                                "(never the report split), its top-1 and ONNX Runtime CPU latency measured beside "
                                "the float model's")

    with st.expander("Advanced"):
        st.markdown(f"**{strategy}** hyper-parameters")
        strategy_params = forms.strategy_param_inputs(strategy, "nr_")
        cost_code = code_references(None, strategy_params)  # python: cost functions name code on this machine
        trust_cost_code = False
        if cost_code:
            trust_cost_code = st.checkbox(f"{forms.TRUST_CODE_LABEL} ({', '.join(cost_code)})", value=False,
                                          key="nr_trust_cost_code", help=forms.TRUST_CODE_HELP)
        st.markdown("**Search and evaluation**")
        a1, a2, a3 = st.columns(3)
        with a1:
            search_images = st.number_input("Search images per candidate",
                                            value=forms.QUICK["search_images"], step=100, key="nr_search_images")
            importance = st.selectbox("Channel importance", forms.IMPORTANCE_CHOICES, key="nr_importance")
            protocol = st.selectbox("Split protocol", forms.PROTOCOL_CHOICES, key="nr_protocol",
                                    help="test-halves: search on half of the test set (for models that saw all "
                                         "training images); the report uses the other half")
        with a2:
            recal_images = st.number_input("BN recalibration images", value=forms.QUICK["recal_images"],
                                           step=64, key="nr_recal_images")
            max_prune = st.number_input("Max fraction pruned per group",
                                        value=forms.RUN_DEFAULTS["max_prune"],
                                        step=0.05, key="nr_max_prune")
            score = st.selectbox("Search score", forms.SCORE_CHOICES, key="nr_score",
                                 index=forms.SCORE_CHOICES.index(forms.RUN_DEFAULTS["score"]), help=forms.SCORE_HELP)
            min_channels = st.number_input("Min channels per group", value=1, step=1,
                                           key="nr_min_channels")
        with a3:
            report_images = st.number_input("Report images (0 = all)", value=forms.QUICK["report_images"],
                                            step=100, key="nr_report_images")
            latency_repeats = st.number_input("Latency repeats", value=forms.QUICK["latency_repeats"],
                                              step=5, key="nr_latency_repeats")
            seed = st.number_input("Seed", value=0, step=1, key="nr_seed")
        st.markdown("**Hardware and scale-out**")
        h1, h2, h3 = st.columns(3)
        with h1:
            round_to = st.number_input("Align channels to a multiple of (0 = auto)", value=0, step=1,
                                       key="nr_round_to",
                                       help="Kept channels per group a multiple of N, so the kernels stay fast: 8 "
                                            "for GPU tensor cores; 16 for ONNX Runtime on AVX-512 CPUs (ResNet-56 at "
                                            "half the MACs: 0.52-0.61 of the original's time with 16, 0.92-0.97 with 1; "
                                            "bench/latency_vs_macs.py). auto = 8 on CUDA, 1 (off, the finest search) "
                                            "on the CPU")
            latency_batch = st.number_input("Throughput batch for latency (0 = auto)", value=0, step=32,
                                            key="nr_latency_batch",
                                            help="Latency is timed at batch 1 and at this batch on the run's device; a "
                                                 "latency budget is held at it. Auto: 256 on CUDA, none on the CPU")
        with h2:
            workers = st.number_input("Ray workers (0 = in the job)", value=0, step=1, key="nr_workers",
                                      help="Score candidates on N Ray actors in parallel (one GPU each on CUDA); the "
                                           "candidates and the answer do not depend on N")
        with h3:
            ray_address = st.text_input("Ray cluster address (optional)", key="nr_ray_address",
                                        placeholder="embedded local Ray",
                                        help="Join a cluster started with `ray start --head` (HOST:PORT); empty: a "
                                             "local Ray started and stopped by the job")
        st.markdown("**Fine-tuning**")
        f1, f2, f3 = st.columns(3)
        with f1:
            max_batches = st.number_input("Batches per epoch (0 = all)", value=forms.QUICK["max_batches"],
                                          step=10, key="nr_max_batches")
            batch_size = st.number_input("Batch size", value=forms.QUICK["batch_size"], step=16,
                                         key="nr_batch_size")
            warmup = st.number_input("Warm-up share of the steps",
                                     value=forms.FT_DEFAULTS.warmup, step=0.05, format="%g", key="nr_warmup",
                                     help="The learning rate rises linearly over this share of the steps, then "
                                          "decays on a cosine to zero")
        with f2:
            lr = st.number_input("Learning rate", value=forms.FT_DEFAULTS.lr, format="%g", step=0.005,
                                 key="nr_lr")
            kd_weight = st.number_input("Distillation weight",
                                        value=forms.FT_DEFAULTS.kd_weight, step=0.1,
                                        key="nr_kd_weight")
        with f3:
            kd_temperature = st.number_input("Distillation temperature",
                                             value=forms.FT_DEFAULTS.kd_temperature, step=0.5,
                                             key="nr_kd_temperature")
            export = st.checkbox("Export ONNX", value=True, key="nr_export")
            calibration_images = st.number_input("INT8 calibration images",
                                                 value=forms.RUN_DEFAULTS["calibration_images"], step=64,
                                                 key="nr_calibration_images", disabled=not quantize,
                                                 help="Fine-tune-split images the INT8 model is calibrated on")

    run_name = st.text_input("Run name (optional)", key="nr_run_name", placeholder="automatic: date-model-strategy")

# ---------------------------------------------------------------------- validation
# The number fields carry no min/max: a browser would refuse an out-of-range entry silently and keep the
# previous value while Start stayed enabled; here every value reaches the engine's own checks, which
# name what is allowed and keep Start disabled until it is fixed.
name = run_name.strip()
config, errors = forms.check_new_run(
    md, ft=dict(epochs=ft_epochs, max_batches=max_batches, batch_size=batch_size, lr=lr, kd_weight=kd_weight,
                kd_temperature=kd_temperature, warmup=warmup), recipe=recipe,
    budget=f"{budget_kind}={budget_value:g}", strategy=strategy, strategy_params=strategy_params,
    trust_cost_code=trust_cost_code, cost_code=cost_code, device=device, name=name,
    protocol=protocol, importance=importance, search_evals=int(search_evals), search_images=int(search_images),
    score=score,
    recal_images=int(recal_images), max_prune=float(max_prune), min_channels=int(min_channels),
    report_images=int(report_images) or None, latency_repeats=int(latency_repeats), export=bool(export),
    quantize="int8" if quantize else None, calibration_images=int(calibration_images),
    seed=int(seed), round_to=int(round_to) or None, latency_batch=int(latency_batch) or None, workers=int(workers),
    ray_address=ray_address.strip() or None)

# ---------------------------------------------------------------------- model summary
shown_in_summary = []
with right:
    st.subheader("Model summary")
    if config is None:
        st.info("Fix the settings on the left to see the model's layer groups and costs.")
    else:
        summary = widgets.model_summary(config, key="nr")
        # Start waits for it: the budget is checked against it
        if widgets.summary_ready(summary, errors, shown_in_summary):
            errors += [p for p in (forms.budget_problem(config, summary), forms.calibration_problem(config, summary))
                       if p]
        if summary is not None and not summary.get("error"):
            data = summary["data"]
            # two metrics a row: three do not fit this column at laptop width
            m1, m2 = st.columns(2)
            m1.metric("MACs", f"{summary['macs'] / 1e6:,.1f} M")
            m2.metric("Parameters", f"{summary['params'] / 1e6:,.3f} M")
            m1, m2 = st.columns(2)
            m1.metric("CPU latency (batch 1)", state.fmt(summary.get("latency_ms"), ".2f", " ms"),
                      help="Median of 20 forward passes, batch 1, on this server's CPU")
            m2.metric("Classes", data["num_classes"])
            m1, m2 = st.columns(2)
            m1.metric("Prunable groups", len(summary["groups"]))
            m2.metric("Prunable channels", f"{sum(g['channels'] for g in summary['groups']):,}")
            sizes = data.get("sizes", {})
            st.caption(f"Input {'×'.join(str(s) for s in data['input_size'])} · images: "
                       f"{sizes.get('fit', 0):,} fine-tune, {sizes.get('search', 0):,} search, "
                       f"{sizes.get('report', 0):,} report ({data.get('protocol')})")
            st.plotly_chart(charts.group_cost_chart(summary["groups"]), key="nr_cost_chart")
            rows = forms.groups_table(summary)
            # every group visible up to 15 rows (a 12-group ResNet-20 showed 11), then the table scrolls
            st.dataframe(rows, hide_index=True, height=38 + 35 * min(len(rows), 15),
                         column_config=widgets.GROUPS_COLUMNS)
            st.caption("MACs touched: every MAC of the layers whose output or input channels the group removes. "
                       "A layer between two groups is touched by both, so the column sums to more than the model's "
                       "MACs.")
            frozen = forms.frozen_table(summary)
            if frozen:
                st.warning(plain_md(frozen_note(summary["frozen"])), icon=":material/ac_unit:")
                with st.expander(f"Frozen groups ({len(frozen)}): kept whole, with the op that blocks each"):
                    st.dataframe(frozen, hide_index=True, height=38 + 35 * min(len(frozen), 10))

# ---------------------------------------------------------------------- start
with left:
    if config is not None and config.recipe:
        changed = forms.recipe_changes(config.recipe, config.finetune)
        st.caption(f"Recipe **{config.recipe}**" + (f", changed: {', '.join(changed)}" if changed else ""))
    expected = forms.finetune_time_text(config, summary) if config is not None and not errors else None
    whole = forms.run_estimate_text(config, summary) if config is not None and not errors else None
    if whole:
        st.caption(whole)
    if expected:
        st.caption(expected[0].upper() + expected[1:] + ".")
    widgets.start_gate(errors, shown_in_summary, where="in the model summary",
                       warnings=forms.size_warnings(config, summary) if config is not None and not errors else ())
    start = st.button("Start pruning", type="primary", key="nr_start", icon=":material/play_arrow:",
                      disabled=bool(errors))
    if start and config is not None and not errors:
        run_id, problem = state.try_submit(PRUNE, config.to_dict(), name or state.new_run_name(
            state.short_model_name(config.model), config.strategy))
        if problem:
            st.error(problem, icon=":material/error:")
        else:
            st.session_state["run_id"] = run_id
            st.switch_page(state.PAGES["live"], query_params={state.QUERY_KEY: run_id})
