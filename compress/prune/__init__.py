"""Pruning: the schedule and targets (`schedule`), Torch-Pruning mechanics (`mechanics`), tied weights (`ties`),
the same-size control (`control`), weights on disk (`weights`)."""
from __future__ import annotations

from compress.prune.control import CONTROL_NAME, CONTROL_RECIPES, train_control
from compress.prune.schedule import MAGNITUDE_NOTE, PruneConfig, prune
from compress.prune.weights import load_pruned, save_pruned

__all__ = ["CONTROL_NAME", "CONTROL_RECIPES", "MAGNITUDE_NOTE", "PruneConfig", "load_pruned", "prune", "save_pruned",
           "train_control"]
