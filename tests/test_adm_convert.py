"""ADM (OpenAI guided-diffusion) → diffusers UNet2DModel conversion, checked against the reference code.

The reference is guided-diffusion itself (PyPI `guided-diffusion-sdk`, a test-only dependency): we
build its `UNetModel` with `create_model` from the upstream flags, give every tensor random values
(including the layers guided-diffusion zero-initialises and the GroupNorm affines, so a swapped or
dropped tensor changes the output), convert its state dict, and require the same output in fp32.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import warnings

import pytest
import torch
from torch import nn

from service.purify.adm_arch import (
    PRESETS,
    AdmArchitecture,
    AdmPreset,
    architecture_from_preset,
    build_diffusers_unet,
    diffusers_unet_config,
)
from service.purify.adm_convert import (
    PROVENANCE_FILE,
    AdmCheckpointError,
    convert_adm_checkpoint,
    convert_state_dict,
    split_qkv,
)
from service.purify.models import load_eps_model, load_unet
from tests.fp_tolerance import accumulation_depth, reordering_atol

with warnings.catch_warnings():
    # guided_diffusion/nn.py uses the deprecated torch.cuda.amp decorators at import time.
    warnings.simplefilter("ignore", FutureWarning)
    from guided_diffusion.script_util import create_model
    from guided_diffusion.unet import QKVAttention, QKVAttentionLegacy

# create_model() flags of the released checkpoints (openai/guided-diffusion README). channel_mult
# is left "" so that guided-diffusion derives it from image_size, independently of our presets.
UPSTREAM_256_UNCOND = dict(
    image_size=256,
    num_channels=256,
    num_res_blocks=2,
    channel_mult="",
    learn_sigma=True,
    attention_resolutions="32,16,8",
    num_head_channels=64,
    resblock_updown=True,
    use_scale_shift_norm=True,
    use_new_attention_order=False,
)
UPSTREAM_64 = dict(
    image_size=64,
    num_channels=192,
    num_res_blocks=3,
    channel_mult="",
    learn_sigma=True,
    attention_resolutions="32,16,8",
    num_head_channels=64,
    resblock_updown=True,
    use_scale_shift_norm=True,
    use_new_attention_order=True,
)
# Narrow but otherwise identical: every level, block type and attention level is kept; 32-wide
# heads so the attention layers have 2-4 heads and a wrong qkv split cannot go unnoticed.
NARROW = dict(num_channels=32, num_head_channels=32)
TIMESTEPS = torch.tensor([0, 1, 500, 999])


@pytest.fixture(autouse=True)
def _few_threads():
    previous = torch.get_num_threads()
    # One thread: on the shared, oversubscribed 2-core machine a second OpenMP thread spin-waits and
    # made these forwards 5-15x slower.
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


def randomize_(model: nn.Module, seed: int = 0) -> nn.Module:
    """Give every parameter a random value of a sensible scale (nothing left at 0 or 1)."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, nn.GroupNorm):
                module.weight.normal_(1.0, 0.1, generator=generator)
                module.bias.normal_(0.0, 0.1, generator=generator)
            elif isinstance(module, (nn.Conv1d, nn.Conv2d, nn.Linear)):
                module.weight.normal_(0.0, module.weight[0].numel() ** -0.5, generator=generator)
                module.bias.normal_(0.0, 0.1, generator=generator)
    return model.eval()


def reference_unet(flags: dict, seed: int = 0, **overrides) -> nn.Module:
    return randomize_(create_model(**{**flags, **overrides}), seed)


def assert_same_output(reference: nn.Module, unet: nn.Module, size: int, timesteps: torch.Tensor = TIMESTEPS) -> None:
    x = torch.randn(len(timesteps), 3, size, size, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        expected = reference(x, timesteps)
        got = unet(x, timesteps).sample
    assert got.shape == expected.shape
    assert expected.abs().max() > 0.5  # the random output layer really moves the output
    # Two implementations of one network add the same terms in different orders (fp_tolerance.py).
    atol = reordering_atol(accumulation_depth(unet), float(expected.abs().max()))
    torch.testing.assert_close(got, expected, rtol=0, atol=atol)


def convert_through_files(tmp_path, reference: nn.Module, arch: AdmArchitecture) -> nn.Module:
    checkpoint = tmp_path / "adm.pt"
    torch.save(reference.state_dict(), checkpoint)
    out_dir = convert_adm_checkpoint(checkpoint, tmp_path / "converted", arch)
    return load_unet(out_dir)  # the engine's own loader


@pytest.mark.parametrize("new_order", [False, True], ids=["legacy-qkv", "new-qkv"])
def test_narrow_256_uncond_matches_reference(tmp_path, new_order):
    reference = reference_unet(UPSTREAM_256_UNCOND, **NARROW, use_new_attention_order=new_order)
    arch = architecture_from_preset("imagenet-256-uncond", **NARROW, use_new_attention_order=new_order)
    unet = convert_through_files(tmp_path, reference, arch)
    # The network is fully convolutional and image_size only places the attention levels (at
    # downsampling 8, 16, 32), so 64² inputs run the identical layers in 1/16 of the time; the
    # coarsest attention level is then 2×2 (4 tokens), still a real softmax over several positions.
    assert_same_output(reference, unet, size=64)
    assert unet.config.sample_size == 256 and unet.config.out_channels == 6


def test_narrow_256_uncond_at_native_size(tmp_path):
    reference = reference_unet(UPSTREAM_256_UNCOND, **NARROW)
    unet = convert_through_files(tmp_path, reference, architecture_from_preset("imagenet-256-uncond", **NARROW))
    assert_same_output(reference, unet, size=256, timesteps=torch.tensor([250]))


def test_wrong_qkv_order_is_detected():
    """The proof above has teeth: declaring the other qkv layout gives a different model."""
    reference = reference_unet(UPSTREAM_256_UNCOND, **NARROW, use_new_attention_order=False)
    wrong = architecture_from_preset("imagenet-256-uncond", **NARROW, use_new_attention_order=True)
    unet = build_diffusers_unet(wrong)
    unet.load_state_dict(convert_state_dict(reference.state_dict(), wrong), strict=True)
    with pytest.raises(AssertionError):
        assert_same_output(reference, unet, size=64)


def test_narrow_64_matches_reference(tmp_path):
    reference = reference_unet(UPSTREAM_64, **NARROW)
    unet = convert_through_files(tmp_path, reference, architecture_from_preset("imagenet-64", **NARROW))
    assert_same_output(reference, unet, size=64)
    assert unet.config.block_out_channels == [32, 64, 96, 128]


@pytest.mark.parametrize(
    ("num_heads", "channel_mult", "attention"),
    [(2, "1,2,2", "16"), (1, "1,2,4", "16,8")],
    ids=["two-heads-uniform-width", "one-head-per-width"],
)
def test_conv_resampling_fixed_heads_and_additive_time_match_reference(num_heads, channel_mult, attention):
    """The improved-diffusion style: conv up/down, no scale-shift, fixed head count, no learned σ."""
    flags = dict(
        image_size=32,
        num_channels=32,
        num_res_blocks=1,
        channel_mult=channel_mult,
        learn_sigma=False,
        attention_resolutions=attention,
        num_heads=num_heads,
        num_head_channels=-1,
        resblock_updown=False,
        use_scale_shift_norm=False,
        use_new_attention_order=False,
    )
    reference = reference_unet(flags)
    arch = architecture_from_preset(None, **flags)
    unet = build_diffusers_unet(arch)
    unet.load_state_dict(convert_state_dict(reference.state_dict(), arch), strict=True)
    assert_same_output(reference, unet, size=32)


@pytest.mark.parametrize("new_order", [False, True], ids=["legacy-qkv", "new-qkv"])
def test_split_qkv_reproduces_reference_attention(new_order):
    heads, width, tokens = 4, 64, 10
    generator = torch.Generator().manual_seed(2)
    # Weights scaled like a trained layer's, so the softmax is not saturated and fp32 noise stays small.
    weight = torch.randn(3 * width, width, 1, generator=generator) * width**-0.5
    bias = 0.1 * torch.randn(3 * width, generator=generator)
    x = torch.randn(2, width, tokens, generator=generator)
    attention = QKVAttention(heads) if new_order else QKVAttentionLegacy(heads)
    expected = attention(nn.functional.conv1d(x, weight, bias))

    def project(w: torch.Tensor, b: torch.Tensor) -> torch.Tensor:  # (B, heads, T, c) as diffusers splits heads
        return (x.transpose(1, 2) @ w.T + b).reshape(2, tokens, heads, width // heads).transpose(1, 2)

    (wq, wk, wv), (bq, bk, bv) = split_qkv(weight, heads, new_order), split_qkv(bias, heads, new_order)
    out = nn.functional.scaled_dot_product_attention(project(wq, bq), project(wk, bk), project(wv, bv))
    # Reordered sums only: the projection (width terms), q·k (width // heads) and the weighted values (tokens).
    atol = reordering_atol(width + width // heads + tokens, float(expected.abs().max()))
    torch.testing.assert_close(
        out.transpose(1, 2).reshape(2, tokens, width).transpose(1, 2), expected, rtol=0, atol=atol
    )


def test_full_width_256_uncond_shapes_and_parameter_count():
    """The real architecture on the meta device: same parameter count as guided-diffusion, every
    tensor placed with the right shape (no memory, well under a second)."""
    with torch.device("meta"):
        reference = create_model(**UPSTREAM_256_UNCOND)
    arch = PRESETS[AdmPreset.IMAGENET_256_UNCOND]
    unet = build_diffusers_unet(arch, device="meta")
    count = sum(p.numel() for p in unet.parameters())
    assert count == sum(p.numel() for p in reference.parameters())
    assert 551e6 < count < 554e6  # the paper's ≈ 552M
    converted = convert_state_dict(reference.state_dict(), arch)
    assert {k: v.shape for k, v in converted.items()} == {k: v.shape for k, v in unet.state_dict().items()}
    config = diffusers_unet_config(arch)
    assert config["block_out_channels"] == (256, 256, 512, 512, 1024, 1024)
    assert config["down_block_types"][3:] == ("AttnDownBlock2D",) * 3
    assert config["out_channels"] == 6 and config["attention_head_dim"] == 64


@pytest.mark.slow
def test_full_width_256_uncond_matches_reference():
    """Full width, real memory (~3 GB, ~30 s on 2 cores): one forward at 64² input, as above."""
    with torch.device("meta"):
        reference = create_model(**UPSTREAM_256_UNCOND)
    reference = randomize_(reference.to_empty(device="cpu"))
    arch = PRESETS[AdmPreset.IMAGENET_256_UNCOND]
    unet = build_diffusers_unet(arch, device="meta")
    # assign=True shares the reference's storage instead of holding a second 2.2 GB copy.
    unet.load_state_dict(convert_state_dict(reference.state_dict(), arch), strict=True, assign=True)
    assert_same_output(reference, unet, size=64, timesteps=torch.tensor([500]))


def test_converted_directory_serves_through_the_engine_loader(tmp_path):
    reference = reference_unet(UPSTREAM_64, **NARROW)
    checkpoint = tmp_path / "ema.pt"
    torch.save(reference.state_dict(), checkpoint)
    out_dir = convert_adm_checkpoint(checkpoint, tmp_path / "out", architecture_from_preset("imagenet-64", **NARROW))
    model = load_eps_model(out_dir)
    assert (model.sample_size, model.channels, model.learned_sigma) == (64, 3, True)
    x, t = torch.randn(2, 3, 64, 64), torch.tensor([3, 700])
    with torch.no_grad():
        expected = reference(x, t)[:, :3]
        atol = reordering_atol(accumulation_depth(model.unet), float(expected.abs().max()))  # fp_tolerance.py
        torch.testing.assert_close(model(x, t), expected, rtol=0, atol=atol)
    provenance = json.loads((out_dir / PROVENANCE_FILE).read_text())
    assert provenance["source"] == "ema.pt"
    assert provenance["source_sha256"] == hashlib.sha256(checkpoint.read_bytes()).hexdigest()
    assert provenance["architecture"]["num_channels"] == 32


def test_missing_checkpoint_says_what_to_download_and_where(tmp_path):
    path = tmp_path / "models" / "256x256_diffusion_uncond.pt"
    with pytest.raises(FileNotFoundError) as info:
        convert_adm_checkpoint(path, tmp_path / "out", PRESETS[AdmPreset.IMAGENET_256_UNCOND])
    message = str(info.value)
    assert "256x256_diffusion_uncond.pt from github.com/openai/guided-diffusion" in message
    assert str(path) in message and "docs/adm.md" in message
    assert not (tmp_path / "out").exists()


def test_unreadable_or_non_state_dict_files_are_refused(tmp_path):
    arch = architecture_from_preset("imagenet-64", **NARROW)
    garbage = tmp_path / "garbage.pt"
    garbage.write_bytes(b"not a checkpoint")
    with pytest.raises(AdmCheckpointError, match="not a readable PyTorch state dict"):
        convert_adm_checkpoint(garbage, tmp_path / "out", arch)
    wrapped = tmp_path / "wrapped.pt"
    torch.save({"model": {"w": torch.zeros(1)}, "step": 3}, wrapped)
    with pytest.raises(AdmCheckpointError, match="not a flat state dict"):
        convert_adm_checkpoint(wrapped, tmp_path / "out", arch)


def test_state_dict_of_another_architecture_lists_the_differences():
    state = reference_unet(UPSTREAM_64, **NARROW).state_dict()
    with pytest.raises(AdmCheckpointError) as info:
        convert_state_dict(state, architecture_from_preset("imagenet-256-uncond", **NARROW))
    message = str(info.value)
    assert "does not match the architecture" in message
    assert "diffusers keys the checkpoint does not provide" in message
    assert "num_channels=32" in message  # what the checkpoint itself looks like


def test_missing_key_and_wrong_width_are_named():
    arch = architecture_from_preset("imagenet-64", **NARROW)
    state = reference_unet(UPSTREAM_64, **NARROW).state_dict()
    del state["middle_block.1.proj_out.bias"]
    with pytest.raises(AdmCheckpointError, match=r"mid_block\.attentions\.0\.to_out\.0\.bias"):
        convert_state_dict(state, arch)
    wider = dataclasses.replace(arch, num_channels=64, num_head_channels=64)
    with pytest.raises(AdmCheckpointError, match="shape mismatches"):
        convert_state_dict(reference_unet(UPSTREAM_64, **NARROW).state_dict(), wider)


def test_extra_checkpoint_key_is_reported():
    arch = architecture_from_preset("imagenet-64", **NARROW)
    state = reference_unet(UPSTREAM_64, **NARROW).state_dict()
    state["input_blocks.1.0.skip_connection.weight"] = torch.zeros(32, 32, 1, 1)  # widths match there
    with pytest.raises(AdmCheckpointError, match=r"no place in the architecture \(1\): input_blocks\.1\.0\.skip"):
        convert_state_dict(state, arch)


def test_class_conditional_checkpoint_is_out_of_scope():
    state = reference_unet(UPSTREAM_64, **NARROW).state_dict()
    state["label_emb.weight"] = torch.zeros(1000, 128)
    with pytest.raises(AdmCheckpointError, match="class-conditional"):
        convert_state_dict(state, architecture_from_preset("imagenet-64", **NARROW))


def test_presets_match_the_upstream_flags():
    assert (
        PRESETS[AdmPreset.IMAGENET_256_UNCOND].channel_mult
        == create_model(**{**UPSTREAM_256_UNCOND, **NARROW}).channel_mult
    )
    assert PRESETS[AdmPreset.IMAGENET_64].channel_mult == create_model(**{**UPSTREAM_64, **NARROW}).channel_mult
    paper = PRESETS[AdmPreset.IMAGENET_256_UNCOND]
    assert (paper.out_channels, paper.attention_levels) == (6, frozenset({3, 4, 5}))


def test_architecture_from_preset_takes_cli_style_values():
    arch = architecture_from_preset(
        "imagenet-256-uncond",
        channel_mult="1,2,2",
        attention_resolutions="64",
        image_size=256,
        num_head_channels=-1,
        num_heads=1,
        learn_sigma=None,
    )
    assert arch.channel_mult == (1, 2, 2) and arch.attention_resolutions == (64,)
    assert arch.num_head_channels is None and arch.attention_head_dim() is None
    assert arch.learn_sigma is True  # None = flag not given: the preset's value stays


@pytest.mark.parametrize(
    ("preset", "overrides", "message"),
    [
        ("imagenet-1024", {}, "unknown ADM preset"),
        ("imagenet-64", {"dropout": 0.1}, "unknown architecture field"),
        (None, {"image_size": 64}, "give every architecture flag"),
        ("imagenet-256-uncond", {"attention_resolutions": "24"}, "not one of the UNet's feature-map sizes"),
        ("imagenet-256-uncond", {"attention_resolutions": "4"}, "not one of the UNet's feature-map sizes"),
        ("imagenet-256-uncond", {"channel_mult": "0,1,2"}, "positive integers"),
        ("imagenet-256-uncond", {"channel_mult": "2,2,4"}, "must start with 1"),
        ("imagenet-256-uncond", {"image_size": 200}, "divisible by 2"),
        ("imagenet-256-uncond", {"num_channels": 48}, "norm groups"),
        ("imagenet-256-uncond", {"num_head_channels": 48}, "not divisible by num_head_channels"),
        ("imagenet-256-uncond", {"num_head_channels": -1, "num_heads": 4}, "one head width per model"),
        ("imagenet-256-uncond", {"channel_mult": "1,x"}, "comma-separated integers"),
    ],
)
def test_invalid_architectures_are_explained(preset, overrides, message):
    with pytest.raises(ValueError, match=message):
        architecture_from_preset(preset, **overrides)


def test_qkv_that_does_not_split_into_the_declared_heads_is_reported():
    arch = architecture_from_preset("imagenet-64", **NARROW)
    state = reference_unet(UPSTREAM_64, **NARROW).state_dict()
    state["middle_block.1.qkv.weight"] = torch.zeros(3 * 102, 128, 1)  # 102 channels, 4 heads declared
    with pytest.raises(AdmCheckpointError, match=r"middle_block\.1\.qkv\.weight: .* does not split into 4 heads"):
        convert_state_dict(state, arch)
