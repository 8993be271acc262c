"""Pruning: the schedule and targets (`schedule`), Torch-Pruning mechanics (`mechanics`), weights on disk (`weights`)."""
from __future__ import annotations

from compress.prune.schedule import CONTROL_NAME, MAGNITUDE_NOTE, PruneConfig, prune, train_control
from compress.prune.weights import load_pruned, save_pruned

__all__ = ["CONTROL_NAME", "MAGNITUDE_NOTE", "PruneConfig", "load_pruned", "prune", "save_pruned", "train_control"]
