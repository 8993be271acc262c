"""Under DDP a rank's last batch of a single example (BatchNorm cannot train on one) takes an example from the batch
before it; the ranks still take the steps one process takes, and see every example of the epoch once."""
from __future__ import annotations

from types import SimpleNamespace

import torch
from torch import nn

from compress.data.datasets import TensorPairs
from compress.train.loop import _train_loader


def test_a_ranks_lone_last_example_gets_a_neighbour_and_the_steps_stay_one_processs():
    # 66 rows, batch 32: one process 32, 32, 2; two processes 33 rows a rank in 16, 16, 1 (before: BatchNorm1d raised)
    data = TensorPairs(torch.arange(66, dtype=torch.float32)[:, None].repeat(1, 4), torch.zeros(66, dtype=torch.long))
    one = _train_loader(data, batch_size=32, seed=0, workers=0, world=SimpleNamespace(size=1, rank=0))
    ranks = [_train_loader(data, batch_size=32, seed=0, workers=0, world=SimpleNamespace(size=2, rank=r))
             for r in (0, 1)]
    batches = [[index.tolist() for index, _, _ in loader] for loader in ranks]
    assert [len(b) for b in batches[0]] == [len(b) for b in batches[1]] == [16, 15, 2]
    assert len(one) == len(ranks[0]) == len(ranks[1]) == 3
    every = sorted(i for b in batches for batch in b for i in batch)
    assert every == list(range(66))  # each example once in the epoch
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 8), nn.BatchNorm1d(8), nn.ReLU(), nn.Linear(8, 2)).train()
    for _, x, _ in ranks[0]:
        assert x[0].ne(x[-1]).any()  # two different examples: BatchNorm has a variance to normalise by
        model(x)  # a batch of one raised "Expected more than 1 value per channel when training"
    for epoch in (1, 2):  # reshuffled each epoch, as the DistributedSampler underneath is
        for loader in ranks:
            loader.batch_sampler.set_epoch(epoch)
        assert [[len(i) for i, _, _ in loader] for loader in ranks] == [[16, 15, 2], [16, 15, 2]]


def test_at_two_examples_a_rank_the_lone_one_is_joined_by_the_ranks_first():
    # 10 rows, batch 4, 2 processes: 5 a rank in 2, 2, 1; one process 4, 4, 2
    data = TensorPairs(torch.arange(10, dtype=torch.float32)[:, None], torch.zeros(10, dtype=torch.long))
    for rank in (0, 1):
        loader = _train_loader(data, batch_size=4, seed=0, workers=0, world=SimpleNamespace(size=2, rank=rank))
        batches = [index.tolist() for index, _, _ in loader]
        assert [len(b) for b in batches] == [2, 2, 2] and batches[-1][1] == batches[0][0] != batches[-1][0]
