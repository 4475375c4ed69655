"""studio/results.py: one latency story, whichever page shows it."""

from studio import results


def test_latency_ms_is_derived_from_the_paired_ratio():
    summary = {"base": {"latency_ms": 20.0},
               "pruned": {"latency_ms": 35.9, "latency_vs_base": 0.69, "latency_device": "cpu", "latency_batch": 1}}
    lat = results.latency(summary)
    assert abs(lat["ms"] - 13.8) < 1e-9 and lat["ratio"] == 0.69      # not the drifted 35.9 ms
    assert lat["label"] == "PyTorch latency (cpu, batch 1)"


def test_throughput_entry_uses_its_own_reference():
    summary = {"base": {"latency_ms": 2.0},
               "pruned": {"latency_ms": 1.9, "latency_vs_base": 0.95, "latency_device": "cuda:0 (H100)",
                          "latency_batch": 1,
                          "latency": [{"device": "cuda:0 (H100)", "batch": 1, "ms": 1.9, "reference_ms": 2.0,
                                       "vs_base": 0.95},
                                      {"device": "cuda:0 (H100)", "batch": 256, "ms": 30.0, "reference_ms": 50.0,
                                       "vs_base": 0.6}]}}
    lat = results.latency(summary, batch=256)
    assert lat["ms"] == 30.0 and lat["ratio"] == 0.6 and lat["where"] == "cuda:0 (H100), batch 256"
    assert results.latency(summary)["ratio"] == 0.95


def test_older_runs_and_missing_figures():
    assert results.latency({}) is None and results.latency(None) is None
    old = results.latency({"base": {"latency_ms": 10.0}, "pruned": {"latency_ms": 8.0}})
    assert old["ratio"] == 0.8 and old["ms"] == 8.0 and old["device"] == "cpu" and old["batch"] == 1
    bare = results.latency({"pruned": {"top1": 50.0}})
    assert bare["ms"] is None and bare["ratio"] is None


def test_workers_table_rows_and_utilisation():
    rows = results.workers_table([
        {"pid": 11, "host": "a", "device": "cpu", "threads": 1, "evaluations": 6, "busy_seconds": 3.0,
         "alive_seconds": 4.0},
        {"pid": 12, "host": "a", "device": "cpu", "threads": 1, "evaluations": 5, "busy_seconds": 2.0,
         "alive_seconds": 0.0},
        "garbage"])
    assert [r["worker"] for r in rows] == [0, 1] and rows[0]["utilisation (%)"] == 75.0
    assert rows[1]["utilisation (%)"] is None and rows[1]["candidates"] == 5
    assert results.workers_table(None) == []


def test_upload_errors_are_one_clear_line():
    import pytest

    from pruner.errors import PrunerError
    from studio.forms import factories_in

    with pytest.raises(PrunerError, match="null bytes") as exc:
        factories_in(b"def build(n):\n    return n\n\x00", "net.py")
    assert "None" not in str(exc.value) and "\n" not in str(exc.value)
    with pytest.raises(PrunerError, match=r"line 1: ") as exc:
        factories_in(b"def build(:\n", "net.py")
    assert factories_in(b"def build(num_classes):\n    return num_classes\n", "net.py") == ["build"]


def test_run_description_says_what_the_evaluation_setting_means():
    from studio.state import describe_config

    base = {"model": "resnet20", "weights": None, "data": "digits", "budget": "flops=0.5", "device": "cpu",
            "finetune": {"epochs": 0}}
    assert "1 evaluation" in describe_config({**base, "strategy": "uniform", "search_evals": 16})
    assert "16" not in describe_config({**base, "strategy": "uniform", "search_evals": 16})
    assert "up to 16 evaluations" in describe_config({**base, "strategy": "rl", "search_evals": 16})
    assert "no evaluation cap" in describe_config({**base, "strategy": "random", "search_evals": None})
