"""Task data: labels worked by hand, and the paper's exact split rule."""

import random

import torch

from groklab.config import TaskConfig
from groklab.tasks import labels_for, make_data


def test_labels_by_hand():
    p = 5
    lab = labels_for(p, "add").view(p, p)
    assert lab[3, 4] == 2 and lab[0, 0] == 0
    assert labels_for(p, "subtract").view(p, p)[1, 3] == 3  # 1 - 3 = -2 = 3 mod 5
    assert labels_for(p, "multiply").view(p, p)[3, 4] == 2  # 12 mod 5
    assert labels_for(p, "x2xyy2").view(p, p)[2, 3] == (4 + 6 + 9) % 5


def test_rand_table_is_fixed_by_data_seed():
    torch.testing.assert_close(labels_for(7, "rand", 3), labels_for(7, "rand", 3))
    assert not torch.equal(labels_for(7, "rand", 3), labels_for(7, "rand", 4))


def test_nanda2023_split_matches_paper_rule():
    """gen_train_test: lexicographic (i, j, p) triples, random.seed(0), random.shuffle, first 30%."""
    p = 113
    pairs = [(i, j, p) for i in range(p) for j in range(p)]
    random.seed(0)
    random.shuffle(pairs)
    div = int(0.3 * len(pairs))
    expected_train = torch.tensor([i * p + j for i, j, _ in pairs[:div]])
    data = make_data(TaskConfig(p=113, frac_train=0.3, data_seed=0))
    assert len(data.train_idx) == 3830 and len(data.test_idx) == 8939
    torch.testing.assert_close(data.train_idx, expected_train)
    torch.testing.assert_close(make_data(TaskConfig()).train_idx, data.train_idx)
    assert data.is_train.sum() == 3830


def test_split_does_not_touch_global_rng():
    random.seed(123)
    torch.manual_seed(123)
    a, b = random.random(), torch.rand(1)
    random.seed(123)
    torch.manual_seed(123)
    make_data(TaskConfig(p=31, split="torch_randperm", data_seed=598))
    make_data(TaskConfig(p=31))
    assert random.random() == a
    torch.testing.assert_close(torch.rand(1), b)


def test_tokens_and_partition():
    d = make_data(TaskConfig(p=7, frac_train=0.5, data_seed=1, split="torch_randperm"))
    assert d.tokens.shape == (49, 3)
    torch.testing.assert_close(d.tokens[3 * 7 + 5], torch.tensor([3, 5, 7]))
    both = torch.cat([d.train_idx, d.test_idx]).sort().values
    torch.testing.assert_close(both, torch.arange(49))
    g = torch.Generator().manual_seed(1)
    torch.testing.assert_close(d.train_idx, torch.randperm(49, generator=g)[:24])
