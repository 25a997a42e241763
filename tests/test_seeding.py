import random

import numpy as np
import pytest
import torch

from detcost.errors import UsageError
from detcost.seeding import MAX_SEED, data_generator, derive_seed, seed_everything, worker_init_fn


def _draws():
    return random.random(), float(np.random.rand()), float(torch.rand(()))


def test_seed_everything_makes_random_numpy_and_torch_repeat():
    seed_everything(5)
    first = _draws()
    seed_everything(5)
    assert _draws() == first
    seed_everything(6)
    assert _draws() != first


def test_out_of_range_seed_is_rejected_with_the_valid_range():
    with pytest.raises(UsageError, match=f"0 to {MAX_SEED}"):
        seed_everything(-1)


def test_derived_seeds_are_stable_and_distinct_per_purpose():
    assert derive_seed(0, "init") == derive_seed(0, "init")
    assert len({derive_seed(0, "init"), derive_seed(0, "data"), derive_seed(1, "init"), derive_seed(0, "init", 1)}) == 4


def test_dataloader_order_repeats_with_the_seeded_generator_and_worker_init():
    data = torch.utils.data.TensorDataset(torch.arange(32.0))

    def order():
        loader = torch.utils.data.DataLoader(
            data, batch_size=4, shuffle=True, generator=data_generator(7), worker_init_fn=worker_init_fn
        )
        return [b[0].tolist() for b in loader]

    assert order() == order()
    other = torch.utils.data.DataLoader(data, batch_size=4, shuffle=True, generator=data_generator(8))
    assert [b[0].tolist() for b in other] != order()
