"""World: this process's place in the torch.distributed process group, and the few collective steps fit needs.

Outside a process group (one process, the default) every helper is the identity, so `fit` has one code path.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class World:
    """Rank and size of the process group (0 and 1 without one) and the device this process trains on."""

    rank: int = 0
    size: int = 1
    local_rank: int = 0
    device: str = "cpu"

    @property
    def distributed(self) -> bool:
        return self.size > 1

    def wrap(self, model: Any) -> Any:
        """DistributedDataParallel around `model` (it broadcasts rank 0's weights now, averages gradients later)."""
        if not self.distributed:
            return model
        from torch.nn.parallel import DistributedDataParallel

        ids = [self.local_rank] if self.device.startswith("cuda") else None
        # a model whose parameters may get no gradient in a step (the QAT graph's constants feeding shape
        # arithmetic, compress.qat) says so, and DDP then looks for them each step
        unused = bool(getattr(model, "ddp_find_unused_parameters", False))
        return DistributedDataParallel(model, device_ids=ids, find_unused_parameters=unused)

    def share(self, data: Any) -> Any:
        """This process's share of an evaluation set (every size-th example, no padding, so counts add up exactly):
        a Dataset or (x, y) tensors; a DataLoader (or anything else) whole."""
        if not self.distributed:
            return data
        if isinstance(data, (tuple, list)):
            from compress.data.datasets import TensorPairs

            data = TensorPairs(*data)
        from torch.utils.data import DataLoader, Dataset, Subset

        if isinstance(data, DataLoader) or not isinstance(data, Dataset):
            return data
        return Subset(data, range(self.rank, len(data), self.size))

    def sum(self, values: list[float]) -> list[float]:
        """Element-wise sum over all processes (float64, so counts stay exact)."""
        if not self.distributed:
            return list(values)
        import torch
        import torch.distributed as dist

        t = torch.tensor(values, dtype=torch.float64, device=self.device)
        dist.all_reduce(t)
        return t.tolist()

    def broadcast_value(self, value: float) -> float:
        """Rank 0's `value` on every process (a clock reading, a validation figure), so all decide alike."""
        if not self.distributed:
            return value
        import torch
        import torch.distributed as dist

        t = torch.tensor([value], dtype=torch.float64, device=self.device)
        dist.broadcast(t, src=0)
        return float(t.item())

    def broadcast_weights(self, model: Any) -> None:
        """Every process takes rank 0's parameters and buffers bit for bit (what rank 0 writes is what all hold)."""
        if not self.distributed:
            return
        import torch.distributed as dist

        for tensor in model.state_dict().values():
            dist.broadcast(tensor, src=0)


def current() -> World:
    """The World of this process: from the initialised process group, else a single process."""
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized()):
        return World()
    local = int(os.environ.get("LOCAL_RANK", "0"))
    device = f"cuda:{local}" if dist.get_backend() == "nccl" else "cpu"
    return World(rank=dist.get_rank(), size=dist.get_world_size(), local_rank=local, device=device)


def to_device(value: Any, device: str) -> Any:
    """A tensor, or a dict of them (keyword inputs), on `device`; unchanged on the CPU."""
    if device == "cpu" or value is None:
        return value
    if isinstance(value, dict):
        return {k: v.to(device) for k, v in value.items()}
    return value.to(device)
