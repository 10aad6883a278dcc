"""`run_eval` end to end on 20 test images: in process, as a sweep, and through a gateway on loopback.

The diffusion model is a tiny random UNet (purification quality is not under test here, the
wiring is); the vendors are the shipped ones when present, else a tiny random classifier.
"""

from __future__ import annotations

import json
import math
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from PIL import Image

from service.backdoor.attacks import TARGET_LABEL, ZOO, Attack, apply_trigger
from service.backdoor.data import load_split
from service.backdoor.metrics import accuracy, attack_success_rate
from service.backdoor.vendor_model import load_vendor, predict_labels
from service.cli import ZOO_NAMES
from service.defense_eval.defenses import Defense, DefenseSetting, InProcessDefender, item_seed
from service.defense_eval.gateway_client import GatewayClient, label_of
from service.defense_eval.report import LABELS_FILE
from service.defense_eval.runner import EvalOptions, parse_defenses, parse_vendors, run_eval
from service.defense_eval.sweep import SweepKnob, parse_sweep, setting_label, sweep_settings, varying_knobs
from service.errors import UpstreamError
from service.purify.local_restore import LocalRestoreConfig, LocalRestorer
from service.purify.models import load_eps_model
from service.purify.options import DType, Method
from service.purify.pipeline import degraded_images, fit_to_model, purify_canvases, restore_images
from service.purify.schedule import timestep_pairs
from service.purify.zip import ZipPurifier
from tests.fp_tolerance import accumulation_depth, reordering_atol
from tests.gateway_servers import gateway_settings, running_gateway, running_vendor, tiny_ddpm_dir, tiny_vendor_dir

ATTACKS = (Attack.BADNETS, Attack.BLENDED, Attack.WANET)
SHIPPED = Path(__file__).resolve().parents[1] / "models"
N = 20  # the first 20 test images include one of the target class (index 19), excluded from ASR and PA


def _shipped(attack: Attack) -> bool:
    return (SHIPPED / f"vendor-{attack.value}" / "config.json").is_file()


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """(tiny ε-model dir, models dir holding vendor-<attack> for the three attacks)."""
    root = tmp_path_factory.mktemp("world")
    models_dir = root / "models"
    tiny_vendor = tiny_vendor_dir(root)
    for attack in ATTACKS:
        source = SHIPPED / f"vendor-{attack.value}" if _shipped(attack) else tiny_vendor
        shutil.copytree(source, models_dir / f"vendor-{attack.value}")
    return tiny_ddpm_dir(root), models_dir


def _options(world: tuple[Path, Path], out_dir: Path, **overrides: object) -> EvalOptions:
    values: dict[str, Any] = dict(
        vendors=ATTACKS,
        defenses=tuple(Defense),
        n=N,
        setting=DefenseSetting("blur:2", steps=2, guidance_power=0.25, method=Method.GLOBAL),
        seed=0,
        batch_size=8,
        dtype=DType.FP32,
        model_path=world[0],
        models_dir=world[1],
        out_dir=out_dir,
        progress=False,
    )
    values.update(overrides)
    return EvalOptions(**values)


@pytest.fixture(scope="module")
def report_dir(world: tuple[Path, Path], tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("report")
    run_eval(_options(world, out))
    return out


# ---- units: settings, seeds, sweep grammar ---------------------------------------------------------


def test_item_seeds_are_consecutive_per_vote_and_disjoint_across_votes_and_seeds() -> None:
    assert item_seed(0, 0, 5) - item_seed(0, 0, 0) == 5  # the gateway's seed + i contract
    seeds = {item_seed(s, v, p) for s in range(2) for v in range(3) for p in range(100)}
    assert len(seeds) == 2 * 3 * 100
    with pytest.raises(ValueError):
        item_seed(0, 0, 1 << 20)


def test_blur_defense_is_the_projection_of_the_first_transform() -> None:
    x = torch.rand(2, 1, 8, 8) * 2 - 1
    out = torch.stack(degraded_images(fit_to_model(list(x), 8), "blur:2,blur:4"))
    blocks = x.reshape(2, 1, 4, 2, 4, 2).mean(dim=(3, 5))
    assert torch.allclose(out, blocks.repeat_interleave(2, -2).repeat_interleave(2, -1), atol=1e-6)


def test_output_keys_ignore_knobs_a_defense_does_not_use() -> None:
    a, b = (
        DefenseSetting("blur:2", 10, 0.25, method=Method.GLOBAL),
        DefenseSetting("blur:2,blur:4", 20, 1.0, votes=3, method=Method.GLOBAL),
    )
    assert a.output_key(Defense.NONE) == b.output_key(Defense.NONE)
    assert a.output_key(Defense.BLUR) == b.output_key(Defense.BLUR)
    assert a.output_key(Defense.ZIP) != b.output_key(Defense.ZIP)
    assert (a.purifications(Defense.ZIP), b.purifications(Defense.ZIP), b.purifications(Defense.BLUR)) == (1, 3, 1)


def test_sweep_is_the_cartesian_grid_last_knob_fastest() -> None:
    base = DefenseSetting("blur:2", 20, 0.25, method=Method.GLOBAL)
    grid = sweep_settings(base, "steps=10,20 guidance_power=1,2 transforms=blur:2,blur:4")
    assert len(grid) == 8
    assert [(s.steps, s.guidance_power, s.transforms) for s in grid[:3]] == [
        (10, 1.0, "blur:2"),
        (10, 1.0, "blur:4"),
        (10, 2.0, "blur:2"),
    ]
    assert varying_knobs(grid) == (SweepKnob.TRANSFORMS, SweepKnob.STEPS, SweepKnob.GUIDANCE_POWER)
    assert all(s.eta == base.eta and s.votes == base.votes for s in grid)


def test_sweep_semicolons_keep_multi_transform_specs_and_accept_inf() -> None:
    grid = parse_sweep(["transforms=blur:2;blur:2,blur:4", "guidance-power=inf,0.5", "votes=1,3,3"])
    assert grid[SweepKnob.TRANSFORMS] == ("blur:2", "blur:2,blur:4")
    assert math.isinf(grid[SweepKnob.GUIDANCE_POWER][0])
    assert grid[SweepKnob.VOTES] == (1, 3)


@pytest.mark.parametrize(
    "spec,message",
    [
        ("steps", "knob=values"),
        ("speed=1", "unknown knob"),
        ("steps=1 steps=2", "twice"),
        ("steps=1,", "empty value"),
        ("steps=ten", "integer"),
        ("", "empty"),
    ],
)
def test_bad_sweep_specs_say_what_is_wrong(spec: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        parse_sweep(spec)


def test_sweep_varies_noise_start_and_time_travel_and_the_purifier_gets_them() -> None:
    grid = sweep_settings(DefenseSetting(steps=20, method=Method.GLOBAL), "t*=0.5,1 L=2 R=1,3")
    assert [(s.noise_start, s.travel_length, s.travel_repeat) for s in grid] == [
        (0.5, 2, 1),
        (0.5, 2, 3),
        (1.0, 2, 1),
        (1.0, 2, 3),
    ]
    assert len({s.output_key(Defense.ZIP) for s in grid}) == 4
    assert "t*=0.5 L=2 R=3" in grid[1].describe() and "t*" not in DefenseSetting(method=Method.GLOBAL).describe()
    model = lambda x, t: torch.zeros_like(x)  # noqa: E731
    purifier = InProcessDefender(model).purifier(grid[1])  # type: ignore[arg-type]
    assert purifier.noise_start == 0.5
    assert purifier.pairs == timestep_pairs(20, 2, 3, num_timesteps=500)


def test_mirror_flips_what_the_vendor_sees_and_is_a_sweep_knob() -> None:
    x = torch.rand(3, 1, 32, 32) * 2 - 1
    defender = InProcessDefender(None)
    plain, mirrored = DefenseSetting(), DefenseSetting(mirror=True)
    assert torch.equal(defender(Defense.BLUR, mirrored, x, 0), defender(Defense.BLUR, plain, x, 0).flip(-1))
    assert plain.output_key(Defense.BLUR) != mirrored.output_key(Defense.BLUR)
    assert [s.mirror for s in sweep_settings(plain, "mirror=0,on")] == [False, True]
    assert "mirror" in mirrored.describe() and "mirror" not in plain.describe()
    assert EvalOptions(setting=mirrored, sweep="votes=1,3").settings()[1] == DefenseSetting(mirror=True, votes=3)
    with pytest.raises(ValueError, match="mirror"):
        parse_sweep("mirror=maybe")


@pytest.mark.parametrize("spec,message", [("t*=0", "noise_start"), ("L=0", "travel_length"), ("R=x", "integer")])
def test_bad_lever_values_are_rejected(spec: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        sweep_settings(DefenseSetting(), spec)


def test_bad_setting_in_sweep_is_rejected() -> None:
    with pytest.raises(ValueError, match="steps"):
        sweep_settings(DefenseSetting(), "steps=0")


def test_options_default_to_the_whole_zoo_and_all_expands_to_it() -> None:
    assert EvalOptions().vendors == ZOO and len(ZOO) >= 8
    assert parse_vendors("sig, ALL,badnets") == (Attack.SIG, *(a for a in ZOO if a is not Attack.SIG))
    assert parse_defenses(["zip", "none,zip"]) == (Defense.ZIP, Defense.NONE)


def test_the_cli_help_names_the_whole_zoo() -> None:
    assert [name.strip() for name in ZOO_NAMES.split(",")] == [attack.value for attack in ZOO]


def test_options_reject_unknown_names_and_gateway_sweeps() -> None:
    with pytest.raises(ValueError, match="badnets"):
        parse_vendors("trojan")
    with pytest.raises(ValueError, match="one vendor"):
        EvalOptions(vendors=())
    with pytest.raises(ValueError, match="only votes"):
        EvalOptions(gateway_url="http://127.0.0.1:1", sweep="guidance_power=1,2")
    EvalOptions(gateway_url="http://127.0.0.1:1", sweep="votes=1,3")  # votes are the client's business


@pytest.mark.parametrize(
    "prediction,label",
    [
        ({"label": 3, "probabilities": [0.9, 0.1]}, 3),
        (7, 7),
        ([0.1, 0.7, 0.2], 1),
        ({"scores": [0.6, 0.4]}, 0),
    ],
)
def test_label_of_reads_the_vendor_shapes(prediction: object, label: int) -> None:
    assert label_of(prediction) == label


@pytest.mark.parametrize("prediction", ["cat", None, [], True])
def test_label_of_rejects_what_it_cannot_read(prediction: object) -> None:
    with pytest.raises(UpstreamError):
        label_of(prediction)


@pytest.mark.slow
def test_zip_defense_does_not_depend_on_the_batch(world: tuple[Path, Path]) -> None:
    model = load_eps_model(world[0])
    defender = InProcessDefender(model, "cpu")
    setting = DefenseSetting("blur:2", steps=2, method=Method.GLOBAL)
    images = load_split(train=False).subset(4).images
    seeds = [item_seed(0, 1, p) for p in range(4)]
    whole = defender(Defense.ZIP, setting, images, seeds[0])
    parts = torch.cat([defender(Defense.ZIP, setting, images[i : i + 1], seeds[i]) for i in range(4)])
    # Batched convolutions add in another order: 2 model calls' worth of fp32 reordering at most.
    atol = reordering_atol(accumulation_depth(model.unet, calls=2), parts.abs().max().item())
    torch.testing.assert_close(whole, parts, atol=atol, rtol=0)
    other_vote = defender(Defense.ZIP, setting, images, item_seed(0, 2, 0))
    assert not torch.allclose(whole, other_vote)


# ---- end to end ---------------------------------------------------------------------------------------


def test_report_files_are_written(report_dir: Path) -> None:
    for name in ["results.json", "results.md", *(f"grid-{a.value}.png" for a in ATTACKS)]:
        assert (report_dir / name).is_file(), name
    assert not (report_dir / "sweep.png").exists()  # one setting: nothing to plot
    with Image.open(report_dir / "grid-badnets.png") as grid:
        assert grid.format == "PNG" and grid.width > grid.height > 100
    table = (report_dir / "results.md").read_text().splitlines()
    # per attack: header + (every defense × 3 attacks); worst case: header + one row per defense
    assert sum(line.startswith("| ") for line in table) == (1 + len(Defense) * 3) + (1 + len(Defense))


def test_results_json_holds_every_row_and_the_model_meta(report_dir: Path, world: tuple[Path, Path]) -> None:
    results = json.loads((report_dir / "results.json").read_text())
    rows = results["rows"]
    assert {(r["attack"], r["defense"]) for r in rows} == {(a.value, d.value) for a in ATTACKS for d in Defense}
    split = load_split(train=False).subset(N)
    victims = int((split.labels != TARGET_LABEL).sum())
    assert victims == N - 1
    for row in rows:
        assert (row["clean_items"], row["poisoned_items"]) == (N, victims)
        for metric in ("clean_accuracy", "attack_success_rate", "poisoned_accuracy"):
            assert 0.0 <= row[metric] <= 1.0
    assert results["meta"]["diffusion_model"]["path"] == str(world[0])
    assert results["meta"]["options"]["n"] == N


def test_results_json_holds_the_worst_case_of_each_defense(report_dir: Path) -> None:
    results = json.loads((report_dir / "results.json").read_text())
    worst = {entry["defense"]: entry for entry in results["worst_case"]}
    assert list(worst) == [defense.value for defense in Defense]
    for defense, entry in worst.items():
        rows = [r for r in results["rows"] if r["defense"] == defense]
        assert entry["attacks"] == [a.value for a in ATTACKS]
        assert entry["max_attack_success_rate"] == max(r["attack_success_rate"] for r in rows)
        assert entry["min_poisoned_accuracy"] == min(r["poisoned_accuracy"] for r in rows)
        assert entry["max_attack_success_rate_attack"] in entry["attacks"]
    assert worst["none"]["max_clean_accuracy_drop"] == 0.0
    assert "Worst case" in (report_dir / "results.md").read_text()
    # The cost columns count what ran: 2 ZIP steps (S = 2); the localiser's 5 steps × 2 draws before
    # the restore's 2; none of it for the model-free defenses.
    forwards = {defense: entry["forwards_per_image"] for defense, entry in worst.items()}
    assert forwards == {
        "none": 0,
        "blur": 0,
        "shrinkpad": 0,
        "diffpure": 2,
        "zip": 2,
        "local": 12,
    }
    assert {entry["upstream_calls_per_image"] for entry in worst.values()} == {1}


def test_no_defense_rows_match_the_vendor_measured_directly(report_dir: Path, world: tuple[Path, Path]) -> None:
    results = json.loads((report_dir / "results.json").read_text())
    split = load_split(train=False).subset(N)
    victims = split.labels != TARGET_LABEL
    for attack in ATTACKS:
        vendor = load_vendor(world[1] / f"vendor-{attack.value}")
        row = next(r for r in results["rows"] if r["attack"] == attack.value and r["defense"] == "none")
        clean = predict_labels(vendor, split.images)
        triggered = predict_labels(vendor, apply_trigger(split.images[victims], attack))
        assert row["clean_accuracy"] == pytest.approx(accuracy(clean, split.labels), abs=1e-4)
        assert row["attack_success_rate"] == pytest.approx(
            attack_success_rate(triggered, split.labels[victims], TARGET_LABEL), abs=1e-4
        )
        if _shipped(attack):  # a real backdoor: the trigger works on the undefended vendor
            assert row["attack_success_rate"] >= 0.8


@pytest.mark.slow
def test_sweep_writes_one_zip_row_per_setting_and_the_plot(world: tuple[Path, Path], tmp_path: Path) -> None:
    report = run_eval(
        _options(
            world,
            tmp_path,
            vendors=(Attack.BADNETS, Attack.WANET),
            defenses=(Defense.NONE, Defense.ZIP),
            n=8,
            sweep="guidance_power=0.25,1 votes=1,3",
        )
    )
    zip_rows = [row for row in report.rows if row.defense is Defense.ZIP]
    assert len(report.settings) == 4 and len(zip_rows) == 4 * 2
    assert sorted({row.purifications_per_image for row in zip_rows}) == [1, 3]
    assert len([row for row in report.rows if row.defense is Defense.NONE]) == 2  # one per vendor, not per setting
    assert report.swept == (SweepKnob.GUIDANCE_POWER, SweepKnob.VOTES)
    with Image.open(tmp_path / "sweep.png") as plot:
        assert plot.format == "PNG"
    assert "K=3" in (tmp_path / "results.md").read_text()


@pytest.fixture(scope="module")
def gateway_url(world: tuple[Path, Path]) -> Iterator[str]:
    """A gateway on loopback (tiny ε-model, ZIP blur:2, λ = 0.25, 2 steps) in front of the badnets vendor."""
    ddpm, models_dir = world
    with (
        running_vendor(models_dir / "vendor-badnets") as vendor_url,
        running_gateway(gateway_settings(ddpm, vendor_url, transforms="blur:2", guidance_power=0.25, steps=2)) as url,
    ):
        yield url


def test_gateway_purifies_with_the_same_seeds_as_the_engine(world: tuple[Path, Path], gateway_url: str) -> None:
    images = load_split(train=False).subset(4).images
    defender = InProcessDefender(load_eps_model(world[0]), "cpu")
    setting = DefenseSetting("blur:2", steps=2, guidance_power=0.25, method=Method.GLOBAL)
    seeds = [item_seed(3, 1, p) for p in range(4)]
    with GatewayClient(gateway_url) as client:
        purified, degraded = client.purify(images, seeds[0])
    # Equal up to the gateway's 8-bit PNG (half a grey level = 1/255 in [-1, 1]).
    assert (purified - defender(Defense.ZIP, setting, images, seeds[0])).abs().max() <= 1 / 255 + 1e-6
    assert (degraded - defender(Defense.BLUR, setting, images, seeds[0])).abs().max() <= 1 / 255 + 1e-6


def test_gateway_pads_an_upload_smaller_than_the_model_instead_of_stretching_it(
    world: tuple[Path, Path], gateway_url: str
) -> None:
    """As a 28² Fashion-MNIST upload sits in the shipped 32² model: here 12² in the tiny 16² one."""
    small = load_split(train=False).subset(2).images[..., 10:22, 10:22]
    defender = InProcessDefender(load_eps_model(world[0]), "cpu")
    setting = DefenseSetting("blur:2", steps=2, guidance_power=0.25, method=Method.GLOBAL)
    seeds = [item_seed(0, 0, p) for p in range(2)]
    with GatewayClient(gateway_url) as client:
        purified, _ = client.purify(small, seeds[0])
    on_black = torch.nn.functional.pad(small, (2, 2, 2, 2), value=-1.0)
    expected = defender(Defense.ZIP, setting, on_black, seeds[0])[..., 2:14, 2:14]
    assert purified.shape == (2, 1, 12, 12)
    assert (purified - expected).abs().max() <= 1 / 255 + 1e-6


def test_the_evaluation_tiles_small_images_as_the_gateway_does(world: tuple[Path, Path], gateway_url: str) -> None:
    """The engine pipeline is shared: 8² images go 2×2 into the tiny 16² model's canvases, canvas i seeded
    seed + i, in process exactly as through the gateway (the evaluation measures what the gateway serves)."""
    small = load_split(train=False).subset(5).images[..., 10:18, 10:18]  # 5 images: 2 canvases
    defender = InProcessDefender(load_eps_model(world[0]), "cpu")
    setting = DefenseSetting("blur:2", steps=2, guidance_power=0.25, method=Method.GLOBAL)  # the gateway's settings
    seed = item_seed(1, 0, 0)
    with GatewayClient(gateway_url) as client:
        purified, degraded = client.purify(small, seed)
    assert purified.shape == small.shape
    # Equal up to the gateway's 8-bit PNG (half a grey level = 1/255 in [-1, 1]).
    assert (purified - defender(Defense.ZIP, setting, small, seed)).abs().max() <= 1 / 255 + 1e-6
    assert (degraded - defender(Defense.BLUR, setting, small, seed)).abs().max() <= 1 / 255 + 1e-6
    # What the evaluation measured before (each image padded into a canvas of its own) differs: the test has teeth.
    alone = fit_to_model(list(small), 16, tile_small=False)
    untiled = restore_images(alone, purify_canvases(defender.purifier(setting), alone.canvases, seed))
    assert (purified - torch.stack(untiled)).abs().max() > 0.1


@pytest.mark.slow
def test_gateway_mode_matches_the_in_process_run(world: tuple[Path, Path], gateway_url: str, tmp_path: Path) -> None:
    options = dict(vendors=(Attack.BADNETS,), defenses=(Defense.NONE, Defense.ZIP), batch_size=8, sweep="votes=1,3")
    local = run_eval(_options(world, tmp_path / "local", **options))
    remote = run_eval(_options(world, tmp_path / "gateway", gateway_url=gateway_url, **options))
    assert remote.meta["gateway_purification"]["steps"] == 2
    assert (tmp_path / "gateway" / "grid-badnets.png").is_file()
    for setting in remote.settings:
        for defense in (Defense.NONE, Defense.ZIP):
            here = local.row(Attack.BADNETS, defense, setting)
            there = remote.row(Attack.BADNETS, defense, setting)
            assert (
                there.upstream_calls_per_image == here.upstream_calls_per_image == here.setting.purifications(defense)
            )
            # Same seeds and model; only the 8-bit PNG of the purified image differs on the way to the vendor.
            assert there.scores.clean_accuracy == pytest.approx(here.scores.clean_accuracy, abs=2 / N)
            assert there.scores.attack_success_rate == pytest.approx(here.scores.attack_success_rate, abs=2 / N)


def test_gateway_errors_surface_as_upstream_errors(world: tuple[Path, Path], tmp_path: Path) -> None:
    with pytest.raises(UpstreamError, match="cannot reach the gateway"):
        run_eval(
            _options(
                world,
                tmp_path,
                vendors=(Attack.BADNETS,),
                defenses=(Defense.ZIP,),
                n=2,
                gateway_url="http://127.0.0.1:9",
                gateway_timeout_s=2.0,
            )
        )


def test_per_image_labels_reproduce_every_rows_rates(report_dir: Path) -> None:
    rows = json.loads((report_dir / "results.json").read_text())["rows"]
    with np.load(report_dir / LABELS_FILE) as saved:
        labels = {key: saved[key] for key in saved.files}
    clean_true = labels["clean/true"]
    for row in rows:
        key = row["labels_key"]
        clean, triggered = labels[f"{key}/clean"], labels[f"{key}/triggered"]
        assert len(clean) == len(clean_true) == row["clean_items"] and len(triggered) == row["poisoned_items"]
        assert row["clean_accuracy"] == pytest.approx(float((clean == clean_true).mean()), abs=1e-4)
        assert row["attack_success_rate"] == pytest.approx(float((triggered == TARGET_LABEL).mean()), abs=1e-4)
        poisoned_true = labels[f"{row['attack']}/triggered/true"]
        assert row["poisoned_accuracy"] == pytest.approx(float((triggered == poisoned_true).mean()), abs=1e-4)


def test_the_cli_evaluates_a_strength_preset_as_the_gateway_runs_it(world: tuple[Path, Path], tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from service.cli import app

    ddpm, models_dir = world
    common = ["eval", "--vendor", "badnets", "--defense", "zip", "--n", "4", "--steps", "2", "--transforms", "blur:2"]
    common += ["--model", str(ddpm), "--models-dir", str(models_dir), "--dtype", "fp32", "--threads", "1"]
    light = CliRunner().invoke(app, [*common, "--strength", "light", "--out", str(tmp_path / "light")])
    assert light.exit_code == 0, light.output
    strict = CliRunner().invoke(app, [*common, "--strength", "strict", "--votes", "2", "--out", str(tmp_path / "s")])
    assert strict.exit_code == 0, strict.output
    light_row = json.loads((tmp_path / "light" / "results.json").read_text())["rows"][0]
    strict_row = json.loads((tmp_path / "s" / "results.json").read_text())["rows"][0]
    assert light_row["setting"]["noise_start"] == 0.6 and light_row["purifications_per_image"] == 1
    assert strict_row["purifications_per_image"] == 3 and strict_row["setting"]["noise_start"] == 1.0  # ≥ 3 votes
    refused = CliRunner().invoke(app, [*common, "--strength", "light", "--gateway", "http://127.0.0.1:1"])
    assert refused.exit_code == 2 and "strength=balanced" in refused.output


def test_eval_progress_counts_stages_and_estimates_the_time_left(
    world: tuple[Path, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    run_eval(_options(world, tmp_path, defenses=(Defense.NONE, Defense.ZIP), progress=True))
    captured = capsys.readouterr()
    lines = (captured.out + captured.err).replace("\r", "\n").splitlines()
    stages = 1 + len(ATTACKS) + (1 + len(ATTACKS))  # none, then zip: the clean set and each triggered set
    assert any(line.startswith(f"stage 1/{stages}: ") and "left for the run" in line for line in lines)
    assert any(line.startswith(f"stage {stages}/{stages}: about ") for line in lines)  # all kinds measured
    none_rows = [line for line in lines if line.split()[1:2] == ["none"] and "CA " in line]
    assert len(none_rows) == len(ATTACKS) and not any("S=" in line or "blur" in line for line in none_rows)


def test_zip_with_method_local_runs_the_gateways_local_engine() -> None:
    grid = sweep_settings(DefenseSetting(), "method=global,local polish_noise=0,0.2")
    assert [(s.method.value, s.polish_noise) for s in grid] == [
        ("global", 0.0),
        ("global", 0.2),
        ("local", 0.0),
        ("local", 0.2),
    ]
    assert grid[2].describe().startswith("local polish=0 S=10") and "jblur" not in grid[3].describe()
    model = lambda x, t: torch.zeros_like(x)  # noqa: E731
    defender = InProcessDefender(model)  # type: ignore[arg-type]
    assert isinstance(defender.purifier(grid[0]), ZipPurifier)
    local = defender.purifier(grid[3])
    assert isinstance(local, LocalRestorer) and local.config == LocalRestoreConfig(steps=10, polish_noise=0.2)
    with pytest.raises(ValueError, match="global or local"):
        sweep_settings(DefenseSetting(), "method=regional")


def test_the_polish_pass_knobs_sweep_into_the_local_engine_and_its_label() -> None:
    default_steps = DefenseSetting().polish_steps  # the label names a pass's knobs only off their defaults
    grid = sweep_settings(DefenseSetting(), f"polish-steps={default_steps},12 polish_eta=1,0")
    assert [(s.polish_steps, s.polish_eta) for s in grid] == [
        (default_steps, 1.0),
        (default_steps, 0.0),
        (12, 1.0),
        (12, 0.0),
    ]
    assert "S_polish" not in grid[0].describe() and grid[3].describe().endswith("S_polish=12 η_polish=0")
    assert len({s.output_key(Defense.ZIP) for s in grid}) == 4, "each pass is its own purification"
    defender = InProcessDefender(lambda x, t: torch.zeros_like(x))  # type: ignore[arg-type]
    local = defender.purifier(grid[3])
    assert isinstance(local, LocalRestorer)
    assert (local.config.polish_steps, local.config.polish_eta) == (12, 0.0)
    assert (local.config.polish_config().steps, local.config.polish_config().eta) == (12, 0.0)
    with pytest.raises(ValueError, match="integer"):
        sweep_settings(DefenseSetting(), "polish_steps=1.5")


def test_the_mask_thresholds_sweep_into_the_localiser_and_the_label_off_their_defaults() -> None:
    seed, grow = DefenseSetting().mask_seed_threshold, DefenseSetting().mask_grow_threshold
    grid = sweep_settings(DefenseSetting(), f"mask_seed_threshold=0.3,{seed:g} mask-grow-threshold={grow:g},0.6")
    assert [(s.mask_seed_threshold, s.mask_grow_threshold) for s in grid] == [
        (0.3, grow),
        (0.3, 0.6),
        (seed, grow),
        (seed, 0.6),
    ]
    assert grid[1].describe().endswith(" mask=0.3/0.6") and grid[3].describe().endswith(f" mask={seed:g}/0.6")
    assert "mask=" not in grid[2].describe(), "the defaults are not labelled"
    assert setting_label(grid[0], varying_knobs(grid)) == f"mask_seed=0.3 mask_grow={grow:g}"
    assert len({s.output_key(Defense.ZIP) for s in grid}) == 4, "each mask is its own purification"
    local = InProcessDefender(lambda x, t: torch.zeros_like(x)).purifier(grid[1])  # type: ignore[arg-type]
    assert isinstance(local, LocalRestorer)
    assert (local.config.localise.seed_threshold, local.config.localise.grow_threshold) == (0.3, 0.6)
    with pytest.raises(ValueError, match="mask_grow_threshold must be >= 0"):
        sweep_settings(DefenseSetting(), "mask_grow_threshold=-1")


def test_the_mask_alone_defense_takes_the_setting_s_thresholds() -> None:
    loose = DefenseSetting(mask_seed_threshold=0.3, mask_grow_threshold=0.6)
    assert loose.output_key(Defense.LOCAL) != DefenseSetting().output_key(Defense.LOCAL)
    defender = InProcessDefender(lambda x, t: torch.zeros_like(x))  # type: ignore[arg-type]
    mask_alone = defender._canvas_purifier(Defense.LOCAL, loose)
    assert isinstance(mask_alone, LocalRestorer) and mask_alone.config.polish_noise is None
    assert (mask_alone.config.localise.seed_threshold, mask_alone.config.localise.grow_threshold) == (0.3, 0.6)
