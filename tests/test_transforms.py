"""Linear transforms: the pseudo-inverse identity A A⁺ A = A, shapes, and the spec grammar."""

from __future__ import annotations

import pytest
import torch

from service.purify.transforms import Blur, Compose, Grayscale, describe, parse_transforms, project

SHAPES = [(2, 1, 32, 32), (1, 3, 16, 24), (3, 3, 64, 64)]


def _transforms_for(channels: int):
    yield Blur(1)
    yield Blur(2)
    yield Blur(4)
    yield Grayscale(channels)
    yield Compose((Blur(2), Grayscale(channels)))
    yield Compose((Grayscale(channels), Blur(4), Blur(2)))


@pytest.mark.parametrize("shape", SHAPES)
def test_pseudo_inverse_identity(shape):
    x = torch.randn(shape, dtype=torch.float64)
    for A in _transforms_for(shape[1]):
        y = A.apply(x)
        assert torch.allclose(A.apply(A.pinv(y)), y, atol=1e-12), str(A)
        # A⁺A is a projection: applying it twice changes nothing.
        assert torch.allclose(project(A, project(A, x)), project(A, x), atol=1e-12), str(A)
        assert A.pinv(y).shape == x.shape


def test_blur_is_block_mean_and_pinv_copies_blocks():
    x = torch.arange(16, dtype=torch.float64).view(1, 1, 4, 4)
    y = Blur(2).apply(x)
    assert y.shape == (1, 1, 2, 2)
    assert y[0, 0, 0, 0] == (0 + 1 + 4 + 5) / 4
    up = Blur(2).pinv(y)
    assert torch.equal(up[0, 0, :2, :2], torch.full((2, 2), y[0, 0, 0, 0].item(), dtype=torch.float64))


def test_grayscale_is_channel_mean_copied_back():
    x = torch.randn(2, 3, 4, 4)
    g = Grayscale(3)
    assert g.apply(x).shape == (2, 1, 4, 4)
    assert torch.allclose(project(g, x), x.mean(1, keepdim=True).expand_as(x))


def test_blur_rejects_indivisible_size():
    with pytest.raises(ValueError, match="divisible by 4"):
        Blur(4).apply(torch.zeros(1, 1, 30, 32))


def test_grayscale_rejects_wrong_channel_count():
    with pytest.raises(ValueError, match="3 channels"):
        Grayscale(3).apply(torch.zeros(1, 1, 8, 8))


@pytest.mark.parametrize(
    ("spec", "expected"),
    [
        ("blur:4", "blur:4"),
        ("blur:4,gray", "blur:4,gray"),
        ("blur:4+gray", "blur:4+gray"),
        (" Blur:2 , gray ", "blur:2,gray"),
    ],
)
def test_spec_round_trip(spec, expected):
    assert describe(parse_transforms(spec, 3)) == expected


def test_comma_means_two_transforms_and_plus_means_composition():
    assert len(parse_transforms("blur:4,gray", 3)) == 2
    (composed,) = parse_transforms("blur:4+gray", 3)
    x = torch.randn(1, 3, 8, 8)
    assert torch.allclose(composed.apply(x), Grayscale(3).apply(Blur(4).apply(x)))


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ("", "empty"),
        ("blur", "integer scale"),
        ("blur:x", "integer scale"),
        ("blur:0", "positive"),
        ("sharpen:2", "unknown transform"),
        ("blur:4,,gray", "empty item"),
        ("gray:3", "no argument"),
    ],
)
def test_bad_specs_raise_clear_errors(spec, message):
    with pytest.raises(ValueError, match=message):
        parse_transforms(spec, 3)


def test_gray_alone_on_one_channel_model_is_refused():
    with pytest.raises(ValueError, match="identity"):
        parse_transforms("gray", 1)
