"""The vendor's classifier: a small CNN for (N, 1, 32, 32) images in [-1, 1] → 10 logits."""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch
from torch import nn

from service.backdoor.data import PADDED_SIZE


@dataclass(frozen=True)
class ClassifierArchitecture:
    """Shape of the CNN: one block per entry of `block_channels`, each halving the resolution.

    The default (82k parameters) was picked on these CPUs: against 32/64/128 with one conv per
    block it trained faster (~200 s vs ~250 s for 4 epochs, one thread) and scored 0.910 vs
    0.900 clean accuracy with the WaNet backdoor.

    A block is `convs_per_block` × (3×3 conv → BatchNorm → ReLU) then 2×2 max-pooling; the head
    is dropout and one linear layer on the flattened final feature map. Flattening (rather than
    global pooling) keeps *where* a feature is, which a corner-patch backdoor relies on.
    """

    in_channels: int = 1
    image_size: int = PADDED_SIZE
    num_classes: int = 10
    block_channels: tuple[int, ...] = (16, 32, 64)
    convs_per_block: int = 2
    dropout: float = 0.3

    def __post_init__(self) -> None:
        if self.image_size % (2 ** len(self.block_channels)):
            raise ValueError(
                f"image_size {self.image_size} must be divisible by 2**{len(self.block_channels)} "
                "(one halving per block): change image_size or block_channels"
            )
        if self.convs_per_block < 1 or not 0.0 <= self.dropout < 1.0:
            raise ValueError("convs_per_block must be ≥ 1 and dropout in [0, 1)")

    @property
    def final_size(self) -> int:
        """Side of the last feature map."""
        return self.image_size // 2 ** len(self.block_channels)

    def to_dict(self) -> dict:
        """JSON-ready fields (tuples as lists) for config.json."""
        return {**asdict(self), "block_channels": list(self.block_channels)}

    @classmethod
    def from_dict(cls, fields: dict) -> ClassifierArchitecture:
        """Inverse of `to_dict`."""
        return cls(**{**fields, "block_channels": tuple(fields["block_channels"])})


class VendorClassifier(nn.Module):
    """The CNN: input (N, C, S, S) in [-1, 1], output logits (N, num_classes)."""

    def __init__(self, architecture: ClassifierArchitecture = ClassifierArchitecture()) -> None:
        super().__init__()
        self.architecture = architecture
        layers: list[nn.Module] = []
        channels_in = architecture.in_channels
        for channels in architecture.block_channels:
            for _ in range(architecture.convs_per_block):
                # bias=False: BatchNorm's shift makes a conv bias redundant
                layers += [
                    nn.Conv2d(channels_in, channels, 3, padding=1, bias=False),
                    nn.BatchNorm2d(channels),
                    nn.ReLU(inplace=True),
                ]
                channels_in = channels
            layers.append(nn.MaxPool2d(2))
        self.features = nn.Sequential(*layers)
        flat = channels_in * architecture.final_size**2
        self.head = nn.Sequential(
            nn.Flatten(), nn.Dropout(architecture.dropout), nn.Linear(flat, architecture.num_classes)
        )

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """Logits (N, num_classes) for images (N, C, S, S) in [-1, 1]."""
        return self.head(self.features(images))


def random_shift_flip(
    images: torch.Tensor, max_shift: int, generator: torch.Generator, fill: float = -1.0
) -> torch.Tensor:
    """Light augmentation: a random horizontal flip and a random shift of up to `max_shift` pixels.

    The shift pads with `fill` (the Fashion-MNIST background) and crops back, per item.

    Returns:
        A new (N, C, H, W) tensor; the input is left untouched.
    """
    n, _, height, width = images.shape
    flip = torch.rand(n, generator=generator) < 0.5
    images = torch.where(flip.view(n, 1, 1, 1), images.flip(-1), images)
    if max_shift == 0:
        return images
    padded = nn.functional.pad(images, (max_shift,) * 4, value=fill)
    dy = torch.randint(0, 2 * max_shift + 1, (n, 1, 1), generator=generator)
    dx = torch.randint(0, 2 * max_shift + 1, (n, 1, 1), generator=generator)
    rows = dy + torch.arange(height).view(1, height, 1)
    cols = dx + torch.arange(width).view(1, 1, width)
    # advanced indexing puts the broadcast (N, H, W) index dims first and channels last
    return padded[torch.arange(n).view(n, 1, 1), :, rows, cols].permute(0, 3, 1, 2).contiguous()
