"""Training code under the team's default: `detcost.apply()` puts the setting and seed of
`[tool.detcost]` (pyproject.toml or detcost.toml, from the working directory upward) in
force, else `default` with seed 0. Run it twice: the same hash of the final parameters.

    python examples/train_with_team_default.py
"""

import hashlib

import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

import detcost


def main() -> None:
    applied = detcost.apply()  # first, before anything touches CUDA
    data = TensorDataset(torch.randn(256, 3, 16, 16), torch.randint(0, 10, (256,)))
    loader = DataLoader(data, batch_size=32, shuffle=True, num_workers=2, **applied.loader_kwargs())
    model = nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 10)
    )
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    for _epoch in range(2):
        for x, y in loader:
            optimizer.zero_grad()
            nn.functional.cross_entropy(model(x), y).backward()
            optimizer.step()
    params = b"".join(p.detach().cpu().numpy().tobytes() for p in model.parameters())
    print(f"{applied.setting} seed {applied.seed}: {hashlib.sha256(params).hexdigest()}")


if __name__ == "__main__":  # DataLoader workers may start by importing this file
    main()
