"""Tiny random-init diffusers UNets for tests: no trained weights needed, seconds on CPU."""

from __future__ import annotations

import torch
from diffusers import UNet2DModel


def tiny_unet(channels: int = 1, size: int = 16, out_channels: int | None = None, seed: int = 0) -> UNet2DModel:
    """A two-level UNet2DModel with random weights (its output layer is not left at zero)."""
    torch.manual_seed(seed)
    unet = UNet2DModel(
        sample_size=size,
        in_channels=channels,
        out_channels=out_channels or channels,
        block_out_channels=(16, 32),
        layers_per_block=1,
        down_block_types=("DownBlock2D", "AttnDownBlock2D"),
        up_block_types=("AttnUpBlock2D", "UpBlock2D"),
        norm_num_groups=8,
        attention_head_dim=8,
    )
    # diffusers zero-inits nothing here, but make sure the output moves so identity tests can fail.
    with torch.no_grad():
        unet.conv_out.weight.normal_(0, 0.5)
    return unet.eval()
