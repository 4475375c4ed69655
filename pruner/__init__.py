"""RL-guided structured pruning of convolutional networks.

The engine behind ``python -m pruner`` and the Streamlit studio; see ``docs/architecture.md``.
"""

__version__ = "0.1.0"
