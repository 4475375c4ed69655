"""Search strategies over per-group pruning allocations (see ``docs/algorithms.md``)."""

from . import baselines, sensitivity_strategy, rl_pruner  # noqa: F401  (register the strategies)
from . import constrained, purl, joint  # noqa: F401,E402  (constrained RL, PuRL, joint training+pruning)
from . import optuna_strategy  # noqa: F401,E402  (the black-box peer: Optuna TPE / CMA-ES)
from .base import SearchContext, Strategy, make_strategy, run_search, strategy_class, strategy_names
from .evaluator import Candidate, Evaluator, EvaluatorSettings

__all__ = ["Candidate", "Evaluator", "EvaluatorSettings", "SearchContext", "Strategy", "make_strategy",
           "run_search", "strategy_class", "strategy_names"]
