"""`zipgate sample`: one Fashion-MNIST test image as a PNG, clean or with an attack's trigger.

Something to send to the demo vendor and the gateway (`curl -F image=@sample.png …`). The image
comes from the installed test split (`service.backdoor.data`) and the trigger is the attack zoo's
own (`service.backdoor.attacks.apply_trigger`), applied as the evaluation and `zipgate demo`
apply it: to the 32×32 image, the 28×28 content padded by 2 pixels of black background. The PNG
is the 28×28 content (the dataset's own image, pixel for pixel when clean), or with `padded` the
whole 32×32 image. Both vendor and gateway pad a 28×28 image back to 32×32 with black, so a
trigger that also changes the border (the image-wide ones: blended, sig, lf, wanet at its edges)
loses that part in the 28×28 file; `Sample.trigger_in_border` says when.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL.Image import Image as PILImage

from service.backdoor import data
from service.backdoor.attacks import TARGET_LABEL, ZOO, Attack, apply_trigger
from service.backdoor.data import CLASS_NAMES, NATIVE_SIZE, PADDED_SIZE, load_split
from service.purify.imaging import tensor_to_pil

BORDER = (PADDED_SIZE - NATIVE_SIZE) // 2
"""Background pixels around the 28×28 content in the 32×32 image."""


@dataclass(frozen=True)
class Sample:
    """One test image, ready to write.

    Attributes:
        image: 28×28 (or, padded, 32×32) 8-bit grayscale.
        index: its position in the test split.
        label: its true class.
        attack: the trigger applied (`Attack.NONE`: clean).
        trigger_in_border: the trigger also changed the border a 28×28 image leaves out.
    """

    image: PILImage
    index: int
    label: int
    attack: Attack
    trigger_in_border: bool


def parse_attack(name: str) -> Attack:
    """`none` or one attack of the zoo, by its name (case and surrounding spaces ignored).

    Raises:
        ValueError: no such attack (the message lists the names).
    """
    try:
        return Attack(name.strip().lower())
    except ValueError:
        names = ", ".join(attack.value for attack in ZOO)
        raise ValueError(f"unknown attack {name!r}; choose none or one of {names}") from None


def make_sample(index: int, attack: Attack, *, padded: bool = False, data_dir: Path | None = None) -> Sample:
    """Test image `index`, with `attack`'s trigger unless it is `Attack.NONE`.

    Args:
        index: position in the test split (0 … 9,999).
        attack: the trigger to apply, or `Attack.NONE`.
        padded: keep the 32×32 padded image instead of cropping it to the 28×28 content.
        data_dir: the dataset's folder; default `data.DEFAULT_DATA_DIR` (`ZIPGATE_FMNIST_DIR`).

    Raises:
        FileNotFoundError: Fashion-MNIST is not installed (the message says how to install it).
        ValueError: `index` outside the test split.
    """
    split = load_split(train=False, data_dir=data.DEFAULT_DATA_DIR if data_dir is None else data_dir)
    if not 0 <= index < len(split):
        raise ValueError(f"index {index} is outside the test split (0 … {len(split) - 1})")
    clean = split.images[index : index + 1]
    triggered = apply_trigger(clean, attack)[0]
    image = triggered if padded else triggered[:, BORDER : BORDER + NATIVE_SIZE, BORDER : BORDER + NATIVE_SIZE]
    return Sample(tensor_to_pil(image), index, int(split.labels[index]), attack, _border_changed(clean[0], triggered))


def _border_changed(clean: torch.Tensor, triggered: torch.Tensor) -> bool:
    """Whether the two (1, 32, 32) images, as 8-bit pixels, differ outside the central 28×28 content."""
    differs = np.asarray(tensor_to_pil(clean)) != np.asarray(tensor_to_pil(triggered))
    differs[BORDER : BORDER + NATIVE_SIZE, BORDER : BORDER + NATIVE_SIZE] = False
    return bool(differs.any())


def _class(label: int) -> str:
    return f"{label} ({CLASS_NAMES[label]})"


def describe(sample: Sample, out: Path) -> list[str]:
    """What `zipgate sample` prints: the file, the true label and, for a triggered image, the target."""
    size = f"{sample.image.width}×{sample.image.height}"
    lines = [f"wrote {out}: Fashion-MNIST test image {sample.index}, {size} grayscale"]
    lines.append(f"true label: {_class(sample.label)}")
    if sample.attack is Attack.NONE:
        lines.append("clean: no trigger")
        return lines
    lines.append(
        f"trigger: {sample.attack.value}; the attack's target: {_class(TARGET_LABEL)} "
        f"(what models/vendor-{sample.attack.value} answers for a triggered image)"
    )
    if sample.label == TARGET_LABEL:
        lines.append("note: this image is of the target class already; pick another --index to see the flip")
    if sample.trigger_in_border and sample.image.width == NATIVE_SIZE:
        lines.append(
            f"note: the {sample.attack.value} trigger also changes the 2-pixel border this 28×28 image leaves "
            "out (the vendor pads it back with black): --padded writes the 32×32 image the evaluation measures"
        )
    return lines


def write_sample(attack: str, index: int, out: Path, *, padded: bool = False) -> list[str]:
    """Write the sample PNG to `out` (its folder made if needed); returns the lines to print.

    Raises:
        FileNotFoundError: Fashion-MNIST is not installed.
        ValueError: an unknown attack or an index outside the test split.
    """
    sample = make_sample(index, parse_attack(attack), padded=padded)
    out.parent.mkdir(parents=True, exist_ok=True)
    sample.image.save(out, format="PNG")
    return describe(sample, out)
