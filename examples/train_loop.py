"""Train a small CNN under gradscope.watch, print the report and save the plots.

Run:  python examples/train_loop.py [--out DIR] [--steps N]

The data is made in code (16x16 images of four kinds of strokes plus noise), so
the example runs offline in a few seconds on a CPU.
"""

from __future__ import annotations

import argparse

import torch
from torch import nn

import gradscope


def make_images(n: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Noisy 1x16x16 images of a horizontal, vertical, diagonal or crossed stroke."""
    g = torch.Generator().manual_seed(seed)
    labels = torch.randint(0, 4, (n,), generator=g)
    images = 0.3 * torch.randn(n, 1, 16, 16, generator=g)
    offsets = torch.randint(3, 13, (n,), generator=g)
    eye = torch.eye(16)
    for i in range(n):
        k, o = int(labels[i]), int(offsets[i])
        if k in (0, 3):
            images[i, 0, o, :] += 1.0
        if k in (1, 3):
            images[i, 0, :, o] += 1.0
        if k == 2:
            images[i, 0] += eye
    return images, labels


class SmallCNN(nn.Module):
    """Conv-ReLU-Pool twice, then a linear classifier."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(1, 8, 3, padding=1)
        self.relu1 = nn.ReLU()
        self.pool = nn.MaxPool2d(2)
        self.conv2 = nn.Conv2d(8, 16, 3, padding=1)
        self.relu2 = nn.ReLU()
        self.fc = nn.Linear(16 * 4 * 4, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.pool(self.relu1(self.conv1(x)))
        x = self.pool(self.relu2(self.conv2(x)))
        return self.fc(x.flatten(1))


def main(argv: list[str] | None = None) -> gradscope.Report:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="gradscope_out", help="where the plots go")
    parser.add_argument("--steps", type=int, default=150, help="training steps")
    args = parser.parse_args(argv)

    torch.manual_seed(0)
    model = SmallCNN()
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    loss_fn = nn.CrossEntropyLoss()
    images, labels = make_images(2048, seed=0)

    with gradscope.watch(model, optimizer=optimizer) as scope:
        for step in range(args.steps):
            idx = torch.randint(
                0, len(images), (64,), generator=torch.Generator().manual_seed(step)
            )
            optimizer.zero_grad()
            loss = loss_fn(model(images[idx]), labels[idx])
            scope.log_loss(loss)
            loss.backward()
            optimizer.step()

    report = scope.report()
    print(report)
    with torch.no_grad():
        test_x, test_y = make_images(512, seed=1)
        accuracy = (model(test_x).argmax(1) == test_y).float().mean().item()
    print(f"held-out accuracy: {accuracy:.1%}")
    for path in report.plot(args.out):
        print(f"wrote {path}")
    return report


if __name__ == "__main__":
    main()
