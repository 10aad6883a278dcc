"""bench/gpu.py's results: the figures as `key=value` lines and a markdown table, and the GPUs' peaks."""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from pathlib import Path

# Dense bf16/fp16 tensor-core peaks from the vendors' datasheets, in TFLOP/s, by a token of the
# GPU's name. H100 PCIe differs from SXM; V100 has no bf16 (its figure is fp16).
PEAK_TFLOPS = {
    "h200": 989.0,
    "gh200": 989.0,
    "h100": 989.0,
    "a100": 312.0,
    "l40s": 362.0,
    "l40": 181.0,
    "l4": 121.0,
    "a10g": 125.0,
    "a10": 125.0,
    "v100": 125.0,
    "t4": 65.0,
}
H100_PCIE_TFLOPS = 756.0


def peak_tflops_for(gpu_name: str) -> float | None:
    """The datasheet's dense bf16/fp16 TFLOP/s for a GPU named like torch.cuda.get_device_name; None if unknown."""
    tokens = re.split(r"[^a-z0-9]+", gpu_name.lower())
    for token in tokens:
        if token in PEAK_TFLOPS:
            if token == "h100" and "pcie" in tokens:
                return H100_PCIE_TFLOPS
            return PEAK_TFLOPS[token]
    return None


@dataclass
class Row:
    """One (model, dtype, batch) setting's figures; None = not measured (skipped or out of memory)."""

    model: str
    dtype: str
    batch: int
    forward_ips: float | None = None
    forward_cl_ips: float | None = None
    zip_ips: float | None = None
    zip_over_forward: float | None = None
    forward_mfu: float | None = None
    zip_mfu: float | None = None
    peak_mem_gib: float | None = None
    note: str = ""


@dataclass
class Report:
    """Everything measured so far, printed as `key=value` lines as it comes and rendered as markdown."""

    out: Path
    header: dict[str, str] = field(default_factory=dict)
    figures: dict[str, str] = field(default_factory=dict)
    rows: list[Row] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    def figure(self, key: str, value: float | int | str) -> None:
        text = f"{value:.4g}" if isinstance(value, float) else str(value)
        self.figures[key] = text
        print(f"{key}={text}", flush=True)

    def note(self, text: str) -> None:
        self.notes.append(text)
        print(f"note: {text}", flush=True)

    def write(self) -> None:
        self.out.parent.mkdir(parents=True, exist_ok=True)
        self.out.write_text(render_markdown(self))


def _cell(value: float | None, digits: int = 2) -> str:
    return "—" if value is None else f"{value:.{digits}f}"


def render_markdown(report: Report) -> str:
    lines = ["# GPU benchmark (`bash bench/gpu.sh`)", ""]
    lines += [f"- {key}: {value}" for key, value in report.header.items()]
    lines += [
        "",
        "ZIP/forward = ZIP images/s ÷ (forward images/s ÷ S): 1.0 means the loop costs nothing beyond its S "
        "forwards. MFU = FLOPs done ÷ time ÷ the peak above. Peak memory: `max_memory_allocated` on CUDA, "
        "the process's peak RSS on a CPU.",
        "",
        "| model | dtype | batch | ZIP images/s | forward images/s | forward channels_last images/s | "
        "ZIP/forward | forward MFU | ZIP MFU | peak memory GiB | note |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for row in report.rows:
        lines.append(
            f"| {row.model} | {row.dtype} | {row.batch} | {_cell(row.zip_ips)} | {_cell(row.forward_ips)} | "
            f"{_cell(row.forward_cl_ips)} | {_cell(row.zip_over_forward, 3)} | {_cell(row.forward_mfu, 3)} | "
            f"{_cell(row.zip_mfu, 3)} | {_cell(row.peak_mem_gib)} | {row.note} |"
        )
    if report.notes:
        lines += ["", "Notes:", ""] + [f"- {note}" for note in report.notes]
    lines += ["", "All figures, as printed:", "", "```"] + [f"{k}={v}" for k, v in report.figures.items()] + ["```", ""]
    return "\n".join(lines)


def summarise(rows: list[Row], report: Report) -> float | None:
    """The best ADM ZIP setting's figures; its ZIP/forward ratio, or None if no ADM ZIP setting completed."""
    adm = [row for row in rows if row.model == "adm" and row.zip_ips is not None and row.zip_over_forward is not None]
    if not adm:
        return None
    best = max(adm, key=lambda row: row.zip_ips or 0.0)
    report.figure("adm_best_zip_images_per_s", best.zip_ips or 0.0)
    report.figure("adm_best_zip_setting", f"{best.dtype}/b{best.batch}")
    if best.zip_mfu is not None:
        report.figure("adm_best_zip_mfu", best.zip_mfu)
    report.figure("zip_over_forward", best.zip_over_forward or math.nan)
    report.write()
    return best.zip_over_forward
