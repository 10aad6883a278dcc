"""Convert an OpenAI guided-diffusion (ADM) state dict into a diffusers `UNet2DModel` directory.

The key plan walks the UNet exactly as guided-diffusion's `UNetModel.__init__` builds it
(`input_blocks.{i}`, `middle_block`, `output_blocks.{i}`, `out`) and pairs every module with its
diffusers twin (`down_blocks.{level}.resnets.{j}`, …). Everything is renamed one to one except
the attention's fused 1×1 `qkv` convolution, which is split into `to_q`, `to_k`, `to_v` in the
layout the checkpoint was trained with (see `split_qkv`).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import pickle
from collections.abc import Mapping
from pathlib import Path

import torch

from service.purify.adm_arch import PRESETS, UPSTREAM_CHECKPOINTS, AdmArchitecture, build_diffusers_unet

# ADM ResBlock submodule → diffusers ResnetBlock2D submodule (indices into ADM's nn.Sequentials:
# in_layers = GroupNorm, SiLU, conv; emb_layers = SiLU, Linear; out_layers = GroupNorm, SiLU, Dropout, conv).
_RESBLOCK_PARTS = {
    "in_layers.0": "norm1",
    "in_layers.2": "conv1",
    "emb_layers.1": "time_emb_proj",
    "out_layers.0": "norm2",
    "out_layers.3": "conv2",
    "skip_connection": "conv_shortcut",  # only where the width changes; the key check enforces it
}
PROVENANCE_FILE = "adm_conversion.json"
_LIST_LIMIT = 12  # keys shown per category in an error message


class AdmCheckpointError(ValueError):
    """The checkpoint cannot be read, is out of scope, or its tensors do not fit the architecture."""


@dataclasses.dataclass(frozen=True)
class _KeyPlan:
    """Where every ADM tensor goes: plain renames (optionally dropping a Conv1d's length-1 axis)
    and attention layers whose fused qkv must be split into `heads` heads."""

    renames: dict[str, tuple[str, bool]]
    qkv_layers: dict[str, tuple[str, int]]


def _key_plan(arch: AdmArchitecture) -> _KeyPlan:
    """Walk the UNet in guided-diffusion's construction order (`UNetModel.__init__`)."""
    renames: dict[str, tuple[str, bool]] = {}
    qkv_layers: dict[str, tuple[str, int]] = {}

    def plain(adm: str, diffusers: str) -> None:
        for param in ("weight", "bias"):
            renames[f"{adm}.{param}"] = (f"{diffusers}.{param}", False)

    def resblock(adm: str, diffusers: str) -> None:
        for adm_part, diffusers_part in _RESBLOCK_PARTS.items():
            plain(f"{adm}.{adm_part}", f"{diffusers}.{diffusers_part}")

    def attention(adm: str, diffusers: str, width: int) -> None:
        plain(f"{adm}.norm", f"{diffusers}.group_norm")
        for param in ("weight", "bias"):  # Conv1d(C, C, 1) → Linear(C, C)
            renames[f"{adm}.proj_out.{param}"] = (f"{diffusers}.to_out.0.{param}", True)
        qkv_layers[adm] = (diffusers, arch.heads(width))

    def resample(adm: str, diffusers: str, adm_conv: str) -> None:
        # A residual up/down block, or ADM's Downsample (its conv is `op`) / Upsample (`conv`).
        if arch.resblock_updown:
            resblock(adm, diffusers)
        else:
            plain(f"{adm}.{adm_conv}", f"{diffusers}.conv")

    plain("time_embed.0", "time_embedding.linear_1")
    plain("time_embed.2", "time_embedding.linear_2")
    plain("input_blocks.0.0", "conv_in")
    widths, attention_levels = arch.level_widths, arch.attention_levels
    block = 1
    for level, width in enumerate(widths):
        for j in range(arch.num_res_blocks):
            resblock(f"input_blocks.{block}.0", f"down_blocks.{level}.resnets.{j}")
            if level in attention_levels:
                attention(f"input_blocks.{block}.1", f"down_blocks.{level}.attentions.{j}", width)
            block += 1
        if level < arch.num_levels - 1:
            resample(f"input_blocks.{block}.0", f"down_blocks.{level}.downsamplers.0", "op")
            block += 1
    resblock("middle_block.0", "mid_block.resnets.0")
    attention("middle_block.1", "mid_block.attentions.0", widths[-1])
    resblock("middle_block.2", "mid_block.resnets.1")
    block = 0
    for up_index, level in enumerate(reversed(range(arch.num_levels))):
        for j in range(arch.num_res_blocks + 1):
            resblock(f"output_blocks.{block}.0", f"up_blocks.{up_index}.resnets.{j}")
            position = 1
            if level in attention_levels:
                attention(f"output_blocks.{block}.1", f"up_blocks.{up_index}.attentions.{j}", widths[level])
                position = 2
            if level > 0 and j == arch.num_res_blocks:
                resample(f"output_blocks.{block}.{position}", f"up_blocks.{up_index}.upsamplers.0", "conv")
            block += 1
    plain("out.0", "conv_norm_out")
    plain("out.2", "conv_out")
    return _KeyPlan(renames, qkv_layers)


def split_qkv(fused: torch.Tensor, heads: int, new_order: bool) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Split ADM's fused qkv Conv1d weight (3C, C, 1) or bias (3C,) into q, k, v of (C, C) or (C,).

    guided-diffusion's two layouts of the 3C output channels (head width c = C / heads):
    - QKVAttentionLegacy reshapes to (heads, 3·c): channel h·3c + j·c + i is part j of head h;
    - QKVAttention (use_new_attention_order) chunks first: channel j·C + h·c + i.
    diffusers splits heads as h·c + i inside each of to_q, to_k, to_v, which both become.

    Args:
        fused: the checkpoint's `qkv.weight` or `qkv.bias`.
        heads: attention heads of this layer.
        new_order: True for QKVAttention, False for QKVAttentionLegacy.

    Returns:
        (q, k, v), each in its own contiguous storage (safetensors refuses shared storage).
    """
    width = fused.shape[0] // 3
    trailing = fused.shape[1:2]  # (C,) for a weight, () for a bias; drops the Conv1d length-1 axis
    rows = fused.reshape(fused.shape[0], -1)
    if new_order:
        parts = rows.reshape(3, heads, width // heads, -1)
    else:
        parts = rows.reshape(heads, 3, width // heads, -1).transpose(0, 1)
    q, k, v = (part.reshape(width, *trailing).clone(memory_format=torch.contiguous_format) for part in parts)
    return q, k, v


def convert_state_dict(adm_state_dict: Mapping[str, torch.Tensor], arch: AdmArchitecture) -> dict[str, torch.Tensor]:
    """Rename (and split) an ADM UNet state dict into `UNet2DModel` keys for `arch`.

    Pure mapping: no tensor values change except the qkv split. Works on "meta" tensors too.

    Args:
        adm_state_dict: the guided-diffusion `UNetModel.state_dict()`.
        arch: the architecture the checkpoint was trained with.

    Returns:
        A state dict that `build_diffusers_unet(arch).load_state_dict(..., strict=True)` accepts.

    Raises:
        AdmCheckpointError: a class-conditional checkpoint, or keys left unmapped, missing, or of
            the wrong shape; the message lists them and what the checkpoint itself looks like.
    """
    if "label_emb.weight" in adm_state_dict:
        raise AdmCheckpointError(
            "this is a class-conditional ADM checkpoint (it has label_emb.weight); only unconditional "
            "models are supported, e.g. 256x256_diffusion_uncond.pt"
        )
    plan = _key_plan(arch)
    converted: dict[str, torch.Tensor] = {}
    unmapped: list[str] = []
    unsplittable: list[str] = []
    for key, tensor in adm_state_dict.items():
        layer, _, param = key.rpartition(".qkv.")
        if key in plan.renames:
            new_key, squeeze = plan.renames[key]
            converted[new_key] = tensor.squeeze(-1) if squeeze else tensor
        elif param in ("weight", "bias") and layer in plan.qkv_layers:
            prefix, heads = plan.qkv_layers[layer]
            try:
                q, k, v = split_qkv(tensor, heads, arch.use_new_attention_order)
            except RuntimeError:  # 3C rows that do not split into `heads` equal heads
                unsplittable.append(f"{key}: checkpoint {tuple(tensor.shape)} does not split into {heads} heads")
                continue
            converted.update({f"{prefix}.to_q.{param}": q, f"{prefix}.to_k.{param}": k, f"{prefix}.to_v.{param}": v})
        else:
            unmapped.append(key)

    expected = {key: tuple(t.shape) for key, t in build_diffusers_unet(arch, device="meta").state_dict().items()}
    missing = sorted(expected.keys() - converted.keys())
    # Renamed from the checkpoint but absent in the target, e.g. a skip conv where widths match.
    unmapped += sorted(_source_keys(plan, converted.keys() - expected.keys()))
    wrong_shape = unsplittable + sorted(
        f"{key}: checkpoint {tuple(converted[key].shape)}, architecture {shape}"
        for key, shape in expected.items()
        if key in converted and tuple(converted[key].shape) != shape
    )
    if unmapped or missing or wrong_shape:
        raise AdmCheckpointError(_mismatch_message(adm_state_dict, arch, unmapped, missing, wrong_shape))
    return converted


def _source_keys(plan: _KeyPlan, diffusers_keys: set[str]) -> list[str]:
    by_target = {new_key: key for key, (new_key, _) in plan.renames.items()}
    return [by_target.get(key, key) for key in diffusers_keys]


def _mismatch_message(
    adm_state_dict: Mapping[str, torch.Tensor],
    arch: AdmArchitecture,
    unmapped: list[str],
    missing: list[str],
    wrong_shape: list[str],
) -> str:
    def listing(title: str, items: list[str]) -> str:
        more = f" … and {len(items) - _LIST_LIMIT} more" if len(items) > _LIST_LIMIT else ""
        return f"\n  {title} ({len(items)}): " + ", ".join(items[:_LIST_LIMIT]) + more if items else ""

    def width(key: str, axis: int) -> object:
        return tuple(adm_state_dict[key].shape)[axis] if key in adm_state_dict else "?"

    blocks = {key.split(".")[1] for key in adm_state_dict if key.startswith("input_blocks.")}
    seen = (
        f"num_channels={width('input_blocks.0.0.weight', 0)}, in_channels={width('input_blocks.0.0.weight', 1)}, "
        f"out_channels={width('out.2.weight', 0)}, {len(blocks)} input_blocks"
    )
    return (
        "the checkpoint does not match the architecture; check the preset and flags against the ones "
        f"the checkpoint was trained with.\n  architecture: {arch}\n  checkpoint: {seen}"
        + listing("checkpoint keys with no place in the architecture", unmapped)
        + listing("diffusers keys the checkpoint does not provide", missing)
        + listing("shape mismatches", wrong_shape)
    )


def _upstream_hint(arch: AdmArchitecture) -> str:
    for preset, preset_arch in PRESETS.items():
        if preset_arch == arch:
            return f"{UPSTREAM_CHECKPOINTS[preset]} (preset {preset.value})"
    return "the guided-diffusion checkpoint these architecture flags describe"


def load_adm_state_dict(checkpoint: Path, arch: AdmArchitecture) -> dict[str, torch.Tensor]:
    """Read a guided-diffusion `.pt` state dict from local disk, tensors only (weights_only=True).

    Raises:
        FileNotFoundError: no such file; the message says what to download and where to put it.
        AdmCheckpointError: the file is not a readable state dict of tensors.
    """
    checkpoint = Path(checkpoint)
    if not checkpoint.is_file():
        raise FileNotFoundError(
            f"ADM checkpoint '{checkpoint}' not found. Nothing is downloaded here: fetch "
            f"{_upstream_hint(arch)} on a machine with internet access, copy it to '{checkpoint}' "
            "(any local path works), and run the conversion again; see docs/adm.md."
        )
    try:
        state = torch.load(checkpoint, map_location="cpu", weights_only=True)
    except (pickle.UnpicklingError, RuntimeError, EOFError, OSError) as exc:
        raise AdmCheckpointError(f"'{checkpoint}' is not a readable PyTorch state dict: {exc}") from exc
    if not isinstance(state, Mapping) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise AdmCheckpointError(
            f"'{checkpoint}' holds a {type(state).__name__}, not a flat state dict of tensors as "
            "guided-diffusion saves them (model.state_dict())"
        )
    return dict(state)


def convert_adm_checkpoint(checkpoint: Path, out_dir: Path, arch: AdmArchitecture) -> Path:
    """Convert a guided-diffusion checkpoint into a diffusers `UNet2DModel` directory.

    The directory holds config.json, diffusion_pytorch_model.safetensors (float32) and
    `adm_conversion.json` (source file name, its sha256 and the architecture), and loads with
    `service.purify.models.load_eps_model` like any other model directory.

    Args:
        checkpoint: local path of the `.pt` file, e.g. models/adm/256x256_diffusion_uncond.pt.
        out_dir: directory to write (created if needed; files in it are overwritten).
        arch: the architecture the checkpoint was trained with (see `architecture_from_preset`).

    Returns:
        out_dir.

    Raises:
        FileNotFoundError: the checkpoint is not there (the message says where to get it).
        AdmCheckpointError: unreadable, class-conditional, or not matching `arch`.
    """
    converted = convert_state_dict(load_adm_state_dict(checkpoint, arch), arch)
    converted = {key: t.float() if t.is_floating_point() else t for key, t in converted.items()}
    # Built on "meta" and filled by assignment: no random init, no second copy of ~2 GB of weights.
    unet = build_diffusers_unet(arch, device="meta")
    unet.load_state_dict(converted, strict=True, assign=True)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    unet.save_pretrained(out_dir, safe_serialization=True)
    provenance = {
        "source": Path(checkpoint).name,
        "source_sha256": _sha256(Path(checkpoint)),
        "architecture": dataclasses.asdict(arch),
        "converter": "zipgate convert adm (service/purify/adm_convert.py)",
    }
    (out_dir / PROVENANCE_FILE).write_text(json.dumps(provenance, indent=2) + "\n")
    return out_dir


def _sha256(path: Path, chunk_bytes: int = 1 << 24) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        while chunk := handle.read(chunk_bytes):
            digest.update(chunk)
    return digest.hexdigest()
