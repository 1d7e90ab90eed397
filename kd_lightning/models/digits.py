"""Small reference networks for the bundled 8x8 digits: a CNN teacher and two students of configurable size.

All take ``[B, 1, 8, 8]`` images and return logits ``[B, num_classes]``. Their submodules have stable names
(``stem``, ``layer1`` ... ``head``) so feature terms can tap them by ``named_modules()`` path.
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence

from torch import Tensor, nn


def _conv_block(in_channels: int, out_channels: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(in_channels, out_channels, kernel_size=3, padding=1, bias=False),
        nn.BatchNorm2d(out_channels),
        nn.ReLU(inplace=True),
    )


class DigitsCNN(nn.Module):
    """A three-stage CNN for 8x8 digits; the default teacher (about 100k parameters at ``width=32``).

    Layout: ``stem`` [B, w, 8, 8] -> ``layer1`` [B, w, 8, 8] -> ``layer2`` [B, 2w, 4, 4] -> ``layer3`` [B, 4w, 2, 2]
    -> ``pool`` [B, 4w] -> ``head`` [B, num_classes].

    Args:
        num_classes: number of output classes.
        width: channels of the first stage (the later stages use 2x and 4x).
        dropout: dropout before the classifier.
    """

    def __init__(self, num_classes: int = 10, width: int = 32, dropout: float = 0.1) -> None:
        super().__init__()
        self.stem = _conv_block(1, width)
        self.layer1 = _conv_block(width, width)
        self.layer2 = nn.Sequential(nn.MaxPool2d(2), _conv_block(width, 2 * width))
        self.layer3 = nn.Sequential(nn.MaxPool2d(2), _conv_block(2 * width, 4 * width))
        self.pool = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten())
        self.head = nn.Sequential(nn.Dropout(dropout), nn.Linear(4 * width, num_classes))

    def forward(self, x: Tensor) -> Tensor:
        return self.head(self.pool(self.layer3(self.layer2(self.layer1(self.stem(x))))))


class TinyCNN(nn.Module):
    """A two-stage CNN student: ``stem`` [B, w, 8, 8] -> ``layer1`` [B, 2w, 4, 4] -> ``pool`` [B, 2w] -> ``head``.

    Args:
        num_classes: number of output classes.
        width: channels of the first stage (``width=4`` gives about 1k parameters).
    """

    def __init__(self, num_classes: int = 10, width: int = 8) -> None:
        super().__init__()
        self.stem = _conv_block(1, width)
        self.layer1 = nn.Sequential(nn.MaxPool2d(2), _conv_block(width, 2 * width))
        self.pool = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten())
        self.head = nn.Linear(2 * width, num_classes)

    def forward(self, x: Tensor) -> Tensor:
        return self.head(self.pool(self.layer1(self.stem(x))))


class DigitsMLP(nn.Sequential):
    """A multilayer perceptron student on the flattened 64 pixels.

    Hidden layers are named ``layer1``, ``layer2``, ...; the classifier is ``head``. The network is the chain
    ``flatten`` -> ``layer1`` -> ... -> ``head`` (an ``nn.Sequential``, so ``torch.jit.script`` compiles it; the
    state-dict keys are those of the named layers: ``layer1.0.weight``, ..., ``head.weight``).

    Args:
        num_classes: number of output classes.
        hidden: sizes of the hidden layers (``(32,)`` gives about 2.4k parameters).
        dropout: dropout after each hidden layer.
        in_features: input size after flattening (64 for 8x8 digits).
    """

    def __init__(
        self, num_classes: int = 10, hidden: Sequence[int] = (32,), dropout: float = 0.0, in_features: int = 64
    ) -> None:
        super().__init__()
        self.flatten = nn.Flatten()
        sizes = [in_features, *hidden]
        for index, (n_in, n_out) in enumerate(itertools.pairwise(sizes), start=1):
            self.add_module(f"layer{index}", nn.Sequential(nn.Linear(n_in, n_out), nn.ReLU(), nn.Dropout(dropout)))
        self.num_hidden = len(hidden)
        self.head = nn.Linear(sizes[-1], num_classes)
