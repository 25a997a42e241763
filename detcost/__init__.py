"""detcost: what determinism costs in PyTorch training, and what it buys."""

__version__ = "0.1.0"
