"""The OpenAI guided-diffusion (ADM) UNet architecture and its exact diffusers `UNet2DModel` equivalent.

ADM (Dhariwal & Nichol 2021, `guided_diffusion/unet.py`) maps block for block onto diffusers:

    ADM                                          diffusers UNet2DModel
    timestep_embedding (cos first, max 10⁴)      Timesteps(flip_sin_to_cos=True, freq_shift=0)
    time_embed = Linear, SiLU, Linear            TimestepEmbedding (linear_1, linear_2), dim 4·C
    ResBlock, scale-shift norm (FiLM)            ResnetBlock2D(time_embedding_norm="scale_shift")
    ResBlock(down=True) / ResBlock(up=True)      ResnetBlock2D(down/up=True): resnet up/down types
    Downsample / Upsample with a 3×3 conv        Downsample2D / Upsample2D (downsample_padding=1)
    AttentionBlock (GroupNorm, fused qkv)        Attention(group_norm, to_q/to_k/to_v, to_out)
    middle: ResBlock, AttentionBlock, ResBlock   UNetMidBlock2D (its attention keeps its GroupNorm
                                                 only with attn_norm_num_groups set)
    GroupNorm32(32 groups, eps 1e-5), SiLU       norm_num_groups=32, norm_eps=1e-5, act_fn="silu"
    learned σ: 2·C_in output channels            out_channels = 2·in_channels

Two things do not map and are refused with a message: a fixed head count (`num_heads`) whose head
width differs between attention levels (diffusers has one head width per model), and
`channel_mult[0] != 1` (ADM sizes its timestep features by `num_channels`, diffusers by the first
block width). No released unconditional OpenAI model uses either.
"""

from __future__ import annotations

import dataclasses
import enum
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from diffusers import UNet2DModel

# guided-diffusion's `normalization()` is GroupNorm32(32, channels) with torch's default eps.
ADM_NORM_GROUPS = 32
ADM_NORM_EPS = 1e-5


class AdmPreset(enum.StrEnum):
    """Named architectures of published guided-diffusion checkpoints."""

    IMAGENET_256_UNCOND = "imagenet-256-uncond"
    IMAGENET_64 = "imagenet-64"


@dataclass(frozen=True)
class AdmArchitecture:
    """The guided-diffusion `create_model` flags that fix a checkpoint's tensor layout.

    Field names and defaults follow guided-diffusion's `model_and_diffusion_defaults()`, so the flags
    printed next to a checkpoint upstream translate one to one. Training-only flags (dropout,
    use_fp16, use_checkpoint) do not change the weights' layout and are not fields; class-conditional
    models (`class_cond`) are out of scope. `num_heads_upsample` is assumed to be its default
    (= num_heads).

    Attributes:
        image_size: native resolution in pixels (square); attention resolutions are relative to it.
        num_channels: base width C; level l has width channel_mult[l]·C.
        num_res_blocks: residual blocks per level on the way down (one more on the way up).
        channel_mult: width multiplier per level, finest first.
        attention_resolutions: feature-map sizes in pixels (e.g. 32, 16, 8) that get self-attention.
        in_channels: image channels.
        learn_sigma: the model also predicts the variance, so it outputs 2·in_channels channels.
        num_head_channels: width of one attention head; None = use a fixed head count `num_heads`.
        num_heads: heads per attention layer, used only when num_head_channels is None.
        use_scale_shift_norm: FiLM time conditioning, GroupNorm(h)·(1 + scale) + shift.
        resblock_updown: down/upsample with residual blocks instead of strided conv / conv.
        use_new_attention_order: fused qkv laid out as [q | k | v] then heads (QKVAttention), not
            per head [q, k, v] (QKVAttentionLegacy).
    """

    image_size: int
    num_channels: int
    num_res_blocks: int
    channel_mult: tuple[int, ...]
    attention_resolutions: tuple[int, ...]
    in_channels: int = 3
    learn_sigma: bool = False
    num_head_channels: int | None = None
    num_heads: int = 4
    use_scale_shift_norm: bool = True
    resblock_updown: bool = False
    use_new_attention_order: bool = False

    def __post_init__(self) -> None:
        # Tuples keep the dataclass hashable and immutable even when built from lists.
        object.__setattr__(self, "channel_mult", tuple(int(m) for m in self.channel_mult))
        object.__setattr__(self, "attention_resolutions", tuple(int(r) for r in self.attention_resolutions))
        for name in ("image_size", "num_channels", "num_res_blocks", "in_channels", "num_heads"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if not self.channel_mult or min(self.channel_mult) < 1:
            raise ValueError(f"channel_mult must be non-empty positive integers, got {self.channel_mult}")
        if self.channel_mult[0] != 1:
            raise ValueError(
                f"channel_mult must start with 1, got {self.channel_mult}: ADM feeds num_channels-wide "
                "timestep features while diffusers UNet2DModel uses the first block's width"
            )
        factor = 2 ** (len(self.channel_mult) - 1)
        if self.image_size % factor:
            raise ValueError(f"image_size {self.image_size} must be divisible by 2^(levels-1) = {factor}")
        for resolution in self.attention_resolutions:
            self._level_of_resolution(resolution)
        for width in self.level_widths:
            if width % ADM_NORM_GROUPS:
                raise ValueError(f"level width {width} is not divisible by the {ADM_NORM_GROUPS} norm groups")
        self._check_heads()

    @property
    def num_levels(self) -> int:
        """Number of resolutions in the UNet (len(channel_mult))."""
        return len(self.channel_mult)

    @property
    def out_channels(self) -> int:
        """Output channels: ε, plus the variance interpolation v when σ is learned."""
        return self.in_channels * (2 if self.learn_sigma else 1)

    @property
    def level_widths(self) -> tuple[int, ...]:
        """Feature width of each level, finest first (diffusers' block_out_channels)."""
        return tuple(m * self.num_channels for m in self.channel_mult)

    @property
    def attention_levels(self) -> frozenset[int]:
        """Levels (0 = full resolution) whose residual blocks are followed by self-attention."""
        return frozenset(self._level_of_resolution(r) for r in self.attention_resolutions)

    def heads(self, width: int) -> int:
        """Number of attention heads of an attention layer `width` channels wide, as ADM counts them."""
        return width // self.num_head_channels if self.num_head_channels else self.num_heads

    def _level_of_resolution(self, resolution: int) -> int:
        # ADM stores attention_ds = image_size // resolution and tests `ds in attention_ds` at each
        # level's ds = 2^level; a resolution matching no level would silently add no attention.
        if resolution >= 1 and self.image_size % resolution == 0:
            downsample = self.image_size // resolution
            level = downsample.bit_length() - 1
            if downsample == 1 << level and level < self.num_levels:
                return level
        sizes = [self.image_size >> level for level in range(self.num_levels)]
        raise ValueError(
            f"attention resolution {resolution} is not one of the UNet's feature-map sizes {sizes} "
            f"(image_size {self.image_size}, {self.num_levels} levels); drop it or fix image_size"
        )

    def _attention_widths(self) -> set[int]:
        # The middle block always has attention, at the coarsest width.
        return {self.level_widths[lv] for lv in self.attention_levels} | {self.level_widths[-1]}

    def _check_heads(self) -> None:
        for width in sorted(self._attention_widths()):
            if self.num_head_channels is not None:
                if self.num_head_channels < 1 or width % self.num_head_channels:
                    raise ValueError(
                        f"attention width {width} is not divisible by num_head_channels {self.num_head_channels}"
                    )
            elif width % self.num_heads:
                raise ValueError(f"attention width {width} is not divisible by num_heads {self.num_heads}")
        if self.num_head_channels is None and self.num_heads > 1:
            head_widths = {w // self.num_heads for w in self._attention_widths()}
            if len(head_widths) > 1:
                raise ValueError(
                    f"num_heads={self.num_heads} gives head widths {sorted(head_widths)} at the attention "
                    "levels, but diffusers UNet2DModel has one head width per model; this checkpoint "
                    "cannot be served as a UNet2DModel (set num_head_channels if the checkpoint used it)"
                )

    def attention_head_dim(self) -> int | None:
        """diffusers' `attention_head_dim`: one head width, or None for one head per layer."""
        if self.num_head_channels is not None:
            return self.num_head_channels
        if self.num_heads == 1:
            return None  # diffusers then uses each block's full width: one head
        return next(iter(self._attention_widths())) // self.num_heads


PRESETS: dict[AdmPreset, AdmArchitecture] = {
    # The ZIP paper's model: openai/guided-diffusion `256x256_diffusion_uncond.pt` (README flags:
    # --attention_resolutions 32,16,8 --class_cond False --image_size 256 --learn_sigma True
    # --num_channels 256 --num_head_channels 64 --num_res_blocks 2 --resblock_updown True
    # --use_scale_shift_norm True; linear noise schedule, 1000 steps). ~552M parameters.
    AdmPreset.IMAGENET_256_UNCOND: AdmArchitecture(
        image_size=256,
        num_channels=256,
        num_res_blocks=2,
        channel_mult=(1, 1, 2, 2, 4, 4),
        attention_resolutions=(32, 16, 8),
        learn_sigma=True,
        num_head_channels=64,
        use_scale_shift_norm=True,
        resblock_updown=True,
        use_new_attention_order=False,
    ),
    # ADM's 64×64 ImageNet architecture (guided-diffusion `64x64_diffusion.pt` flags, ~296M
    # parameters). That released file is class-conditional, which the converter refuses; the preset
    # is for unconditional checkpoints trained with the same flags. It uses the new qkv order.
    AdmPreset.IMAGENET_64: AdmArchitecture(
        image_size=64,
        num_channels=192,
        num_res_blocks=3,
        channel_mult=(1, 2, 3, 4),
        attention_resolutions=(32, 16, 8),
        learn_sigma=True,
        num_head_channels=64,
        use_scale_shift_norm=True,
        resblock_updown=True,
        use_new_attention_order=True,
    ),
}

# Where each preset's weights come from upstream (used in the missing-checkpoint message).
UPSTREAM_CHECKPOINTS: dict[AdmPreset, str] = {
    AdmPreset.IMAGENET_256_UNCOND: "256x256_diffusion_uncond.pt from github.com/openai/guided-diffusion",
    AdmPreset.IMAGENET_64: "an unconditional checkpoint trained with guided-diffusion's 64x64 flags",
}


def parse_int_tuple(value: str | Sequence[int]) -> tuple[int, ...]:
    """`"1,1,2,2,4,4"` (guided-diffusion's flag syntax) or a sequence of ints → tuple of ints.

    Raises:
        ValueError: an item that is not an integer.
    """
    if isinstance(value, str):
        try:
            return tuple(int(item) for item in value.split(",") if item.strip())
        except ValueError as exc:
            raise ValueError(f"expected comma-separated integers like '32,16,8', got '{value}'") from exc
    return tuple(int(item) for item in value)


def architecture_from_preset(preset: AdmPreset | str | None, **overrides: object) -> AdmArchitecture:
    """A preset's architecture with some fields replaced (the CLI's `--preset` plus explicit flags).

    Args:
        preset: a preset name (see `AdmPreset`), or None to give every required field in overrides.
        **overrides: `AdmArchitecture` fields; None values are ignored (unset CLI flags);
            channel_mult / attention_resolutions may be comma-separated strings; num_head_channels=-1
            is guided-diffusion's "unset" and means None.

    Returns:
        The validated architecture.

    Raises:
        ValueError: unknown preset or field, missing required field, or an invalid architecture.
    """
    fields = {f.name for f in dataclasses.fields(AdmArchitecture)}
    unknown = sorted(set(overrides) - fields)
    if unknown:
        raise ValueError(f"unknown architecture field(s) {unknown}; known: {sorted(fields)}")
    changes = {name: value for name, value in overrides.items() if value is not None}
    for name in ("channel_mult", "attention_resolutions"):
        if name in changes:
            changes[name] = parse_int_tuple(changes[name])  # type: ignore[arg-type]
    if changes.get("num_head_channels") == -1:
        changes["num_head_channels"] = None  # kept (not filtered): it must clear a preset's value
    if preset is None:
        try:
            return AdmArchitecture(**changes)  # type: ignore[arg-type]
        except TypeError as exc:
            raise ValueError(f"without a preset, give every architecture flag: {exc}") from exc
    try:
        base = PRESETS[AdmPreset(preset)]
    except ValueError as exc:
        raise ValueError(f"unknown ADM preset '{preset}'; known: {[p.value for p in AdmPreset]}") from exc
    return dataclasses.replace(base, **changes)  # type: ignore[arg-type]


def diffusers_unet_config(arch: AdmArchitecture) -> dict[str, object]:
    """The `UNet2DModel` constructor arguments that reproduce `arch` exactly (see module docstring)."""
    attention = arch.attention_levels
    plain_down = "ResnetDownsampleBlock2D" if arch.resblock_updown else "DownBlock2D"
    plain_up = "ResnetUpsampleBlock2D" if arch.resblock_updown else "UpBlock2D"
    levels = range(arch.num_levels)
    return {
        "sample_size": arch.image_size,
        "in_channels": arch.in_channels,
        "out_channels": arch.out_channels,
        "time_embedding_type": "positional",
        "flip_sin_to_cos": True,  # ADM's embedding is [cos, sin]
        "freq_shift": 0,  # frequencies exp(-ln(10⁴)·i/half), no shift
        "block_out_channels": arch.level_widths,
        "down_block_types": tuple("AttnDownBlock2D" if lv in attention else plain_down for lv in levels),
        "up_block_types": tuple("AttnUpBlock2D" if lv in attention else plain_up for lv in reversed(levels)),
        "layers_per_block": arch.num_res_blocks,
        # Only the Attn* blocks read these; the plain blocks are chosen to match above.
        "downsample_type": "resnet" if arch.resblock_updown else "conv",
        "upsample_type": "resnet" if arch.resblock_updown else "conv",
        "downsample_padding": 1,
        "mid_block_type": "UNetMidBlock2D",
        "add_attention": True,
        "attention_head_dim": arch.attention_head_dim(),
        "norm_num_groups": ADM_NORM_GROUPS,
        # Without this the mid-block attention has no GroupNorm under scale-shift; ADM's has one.
        "attn_norm_num_groups": ADM_NORM_GROUPS,
        "norm_eps": ADM_NORM_EPS,
        "act_fn": "silu",
        "resnet_time_scale_shift": "scale_shift" if arch.use_scale_shift_norm else "default",
    }


def build_diffusers_unet(arch: AdmArchitecture, device: torch.device | str | None = None) -> UNet2DModel:
    """An (untrained) `UNet2DModel` with the layout of `arch`.

    Args:
        arch: the ADM architecture.
        device: where to allocate; "meta" builds shapes only (no memory, no init time).

    Returns:
        The model in eval mode.
    """
    with torch.device(device if device is not None else "cpu"):
        return UNet2DModel(**diffusers_unet_config(arch)).eval()
