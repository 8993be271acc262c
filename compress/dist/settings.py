"""DistSettings: how many processes and machines the training stages use, checked before any work starts.

The recipe rule (README "Several processes"): the global batch is `[data] batch_size` whatever the number of
processes; each of the N = nproc x nnodes processes takes batch_size / N examples of every step, DDP averages the
gradients, so one step sees the same examples and the same mean loss as in one process, with the same learning rate
and schedule. batch_size must therefore be a multiple of N.
"""
from __future__ import annotations

import logging
import os
import re
from dataclasses import dataclass
from typing import Any

from compress.errors import CompressError

log = logging.getLogger("compress")


@dataclass(frozen=True)
class DistSettings:
    """Where training runs: in the `compress run` process (the default), or in torchrun workers."""

    nproc: int = 1
    """Processes per machine (torchrun --nproc-per-node)."""
    nnodes: int = 1
    """Machines (torchrun --nnodes); every machine runs the same `compress run` command with its own --node-rank."""
    node_rank: int = 0
    """This machine's rank; node 0 writes the report, the others stop after the training stages."""
    rdzv_endpoint: str | None = None
    """host:port of node 0 that every machine reaches (torchrun --rdzv-endpoint); needed when nnodes > 1."""

    @property
    def world_size(self) -> int:
        return self.nproc * self.nnodes

    @property
    def distributed(self) -> bool:
        """True when training goes to torchrun workers (more than one process in all)."""
        return self.world_size > 1

    @property
    def follower(self) -> bool:
        """A machine other than node 0: it trains with the others but writes no report."""
        return self.node_rank > 0

    def check(self, cfg: Any) -> None:
        """One-line errors for settings that cannot work (exit 2); a warning for more processes than cores."""
        if self.nproc < 1 or self.nnodes < 1:
            raise CompressError(f"--nproc and --nnodes must be at least 1, got {self.nproc} and {self.nnodes}")
        if not 0 <= self.node_rank < self.nnodes:
            raise CompressError(f"--node-rank must be 0..{self.nnodes - 1} for --nnodes {self.nnodes}, "
                                f"got {self.node_rank}")
        if self.nnodes > 1 and not (self.rdzv_endpoint and re.fullmatch(r"[^\s:]+:\d{1,5}", self.rdzv_endpoint)):
            raise CompressError(f"--rdzv-endpoint: expected HOST:PORT of node 0 when --nnodes is {self.nnodes}, "
                                f"got {self.rdzv_endpoint!r}")
        cores = os.cpu_count() or 1
        if self.nproc > cores:
            log.warning("warning: --nproc %d is more than the %d CPU cores of this machine; the processes share "
                        "them (slower, same recipe)", self.nproc, cores)
        batch = cfg.data.batch_size
        if self.distributed and batch % self.world_size:
            raise CompressError(f"{cfg.source_path}: data.batch_size: {batch} is not a multiple of the "
                                f"{self.world_size} processes (--nproc {self.nproc} x --nnodes {self.nnodes}); the "
                                "global batch is split evenly across processes, so use a multiple such as "
                                f"{max(self.world_size, batch - batch % self.world_size)}")

    def torchrun_args(self, rdzv_id: str) -> list[str]:
        """torchrun's options for one training job; a failed worker fails the job (no restarts)."""
        args = ["--nproc-per-node", str(self.nproc), "--nnodes", str(self.nnodes), "--max-restarts", "0",
                "--monitor-interval", "0.2"]
        if self.nnodes > 1:
            # static rendezvous: --node-rank decides the global ranks, so node 0 holds rank 0
            args += ["--node-rank", str(self.node_rank), "--rdzv-endpoint", str(self.rdzv_endpoint),
                     "--rdzv-id", rdzv_id]
        return args

    def threads_per_process(self) -> int:
        """torch threads per worker: this machine's cores shared among its processes."""
        return max(1, (os.cpu_count() or 1) // self.nproc)
