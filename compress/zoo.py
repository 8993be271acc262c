"""Built-in architectures (`builtin:NAME`). Each factory takes the data's shape and class count.

Sizes are chosen for the 8x8 digits default: `cnn-large` is the teacher (~373k params at width 64, ~9M MACs;
the demo pipeline uses width 80: 581,050 params),
`cnn-small` the student (~6k params), `mobilenet` a depthwise-separable residual net with BatchNorm,
`mlp` a plain multi-layer perceptron for flat features.
"""
from __future__ import annotations

from typing import Sequence


def _conv_bn(nn, cin: int, cout: int, *, kernel: int = 3, groups: int = 1, relu: bool = True):
    layers = [nn.Conv2d(cin, cout, kernel, padding=kernel // 2, groups=groups, bias=False), nn.BatchNorm2d(cout)]
    if relu:
        layers.append(nn.ReLU(inplace=True))
    return nn.Sequential(*layers)


def cnn_large(input_shape: Sequence[int] = (1, 8, 8), num_classes: int = 10, width: int = 64, dropout: float = 0.2):
    """A wide three-block CNN: the default teacher."""
    import torch.nn as nn

    c = input_shape[0]
    return nn.Sequential(
        _conv_bn(nn, c, width),
        _conv_bn(nn, width, 2 * width),
        nn.MaxPool2d(2),
        _conv_bn(nn, 2 * width, 4 * width),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Dropout(dropout),
        nn.Linear(4 * width, num_classes),
    )


def cnn_small(input_shape: Sequence[int] = (1, 8, 8), num_classes: int = 10, width: int = 16):
    """Two conv blocks and a linear head: the default student (~6k params at width 16)."""
    import torch.nn as nn

    c, h, w = input_shape
    return nn.Sequential(
        _conv_bn(nn, c, width),
        nn.MaxPool2d(2),
        _conv_bn(nn, width, 2 * width),
        nn.MaxPool2d(2),
        nn.Flatten(),
        nn.Linear(2 * width * (h // 4) * (w // 4), num_classes),
    )


def _residual_block(cin: int, cout: int, stride: int):
    import torch.nn as nn

    class DepthwiseSeparable(nn.Module):
        """Depthwise 3x3 -> BN -> ReLU -> pointwise 1x1 -> BN, plus an identity residual when shapes allow."""

        def __init__(self) -> None:
            super().__init__()
            self.depthwise = nn.Sequential(
                nn.Conv2d(cin, cin, 3, stride=stride, padding=1, groups=cin, bias=False),
                nn.BatchNorm2d(cin),
                nn.ReLU(inplace=True),
            )
            self.pointwise = nn.Sequential(nn.Conv2d(cin, cout, 1, bias=False), nn.BatchNorm2d(cout))
            self.residual = stride == 1 and cin == cout
            self.act = nn.ReLU(inplace=True)

        def forward(self, x):
            y = self.pointwise(self.depthwise(x))
            return self.act(y + x if self.residual else y)

    return DepthwiseSeparable()


def mobilenet(input_shape: Sequence[int] = (1, 8, 8), num_classes: int = 10, width: int = 32, blocks: int = 4):
    """MobileNet-style: a conv stem, depthwise-separable residual blocks with BatchNorm, one stride-2 stage."""
    import torch.nn as nn

    c = input_shape[0]
    layers = [_conv_bn(nn, c, width)]
    for i in range(blocks):
        if i == blocks // 2:
            layers.append(_residual_block(width, 2 * width, 2))
            width *= 2
        else:
            layers.append(_residual_block(width, width, 1))
    layers += [nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(width, num_classes)]
    return nn.Sequential(*layers)


def mlp(input_shape: Sequence[int] = (64,), num_classes: int = 10, hidden: int | Sequence[int] = (256, 256),
        dropout: float = 0.1):
    """Flatten -> [Linear -> ReLU -> Dropout] * len(hidden) -> Linear. `hidden = 16` is one hidden layer."""
    import math

    import torch.nn as nn

    if isinstance(hidden, int) and not isinstance(hidden, bool):
        hidden = (hidden,)
    if not isinstance(hidden, (list, tuple)) or not all(isinstance(h, int) and h > 0 for h in hidden):
        raise ValueError(f"hidden: expected a layer width or a list of widths like [64, 64], got {hidden!r}")

    layers: list = [nn.Flatten()]
    width = math.prod(input_shape)
    for h in hidden:
        layers += [nn.Linear(width, h), nn.ReLU(inplace=True), nn.Dropout(dropout)]
        width = h
    layers.append(nn.Linear(width, num_classes))
    return nn.Sequential(*layers)


IMAGE_MODELS = frozenset({"cnn-large", "cnn-small", "mobilenet"})
"""Built-ins that take (C, H, W) examples; `mlp` takes any shape (it flattens)."""

BUILTINS = {
    "cnn-large": cnn_large,
    "cnn-small": cnn_small,
    "mobilenet": mobilenet,
    "mlp": mlp,
}
