"""An evaluation's progress: which defended pass runs (stage i of N), and the run time left, estimated
from the first batches at the rates measured so far (`zipgate eval --n 1000` over the zoo takes hours)."""

from __future__ import annotations

from collections import Counter, defaultdict
from collections.abc import Callable, Hashable, Mapping, Sequence

from service.backdoor.attacks import Attack
from service.defense_eval.defenses import Defense, DefenseSetting


def stage_label(defense: Defense, setting: DefenseSetting) -> str:
    """What a defense's output depends on, for progress lines: `none` and `blur` take no ZIP knobs."""
    if defense is Defense.NONE:
        return defense.value
    if defense is Defense.BLUR:
        return f"{defense.value} {setting.transforms.split(',')[0].strip()}{' mirror' if setting.mirror else ''}"
    return f"{defense.value} {setting.describe()}"


def planned_stages(
    settings: Sequence[DefenseSetting],
    defenses: Sequence[Defense],
    attacks: Sequence[Attack],
    set_sizes: Mapping[Attack | None, int],
    gateway_class: Hashable | None,
) -> list[tuple[Hashable, int]]:
    """(cost class, images) of every defended pass a run computes, each once (as the runner caches them).

    Args:
        gateway_class: the cost class of ZIP through a gateway, or None when ZIP runs in process.
    """
    stages: dict[tuple[object, ...], tuple[Hashable, int]] = {}
    for setting in settings:
        for defense in defenses:
            count = setting.purifications(defense)
            for attack in attacks:
                for key in (None, attack):
                    if gateway_class is not None and defense is Defense.ZIP:
                        stages[(key, gateway_class, count)] = (gateway_class, set_sizes[key])
                        continue
                    for vote in range(count):
                        output = setting.output_key(defense)
                        stages[(key, output, vote)] = (output, set_sizes[key])
    return list(stages.values())


def format_duration(seconds: float) -> str:
    """'2 h 05 min', '7 min', '40 s'."""
    if seconds >= 3600:
        return f"{int(seconds // 3600)} h {int(seconds % 3600 // 60):02d} min"
    return f"{round(seconds / 60)} min" if seconds >= 90 else f"{round(seconds)} s"


class EvalProgress:
    """Counts the run's stages (one defended pass over an image set each) and estimates the time left.

    Args:
        planned: one (cost class, images) per stage the run will compute; stages of a class cost the
            same per image (the runner's timer key: a defense and the knobs its output depends on).
        write: where progress lines go (tqdm.write beside the bars).
    """

    def __init__(self, planned: list[tuple[Hashable, int]], write: Callable[[str], None]) -> None:
        self.stages = len(planned)
        self.left: Counter[Hashable] = Counter()
        for cost_class, images in planned:
            self.left[cost_class] += images
        self.seconds: defaultdict[Hashable, float] = defaultdict(float)
        self.done: Counter[Hashable] = Counter()
        self.stage = 0
        self._write = write

    def start_stage(self, label: str) -> str:
        """Count a new stage; returns its progress-bar label, 'stage i/N <label>'."""
        self.stage += 1
        return f"stage {self.stage}/{max(self.stage, self.stages)} {label}"

    def timed_batch(self, cost_class: Hashable, images: int, seconds: float, first: bool) -> None:
        """Record one batch; after a stage's first batch, write the estimate of the time the run has left."""
        self.seconds[cost_class] += seconds
        self.done[cost_class] += images
        self.left[cost_class] = max(0, self.left[cost_class] - images)
        if first:
            self._write(f"stage {self.stage}/{max(self.stage, self.stages)}: {self.estimate(cost_class)}")

    def estimate(self, current: Hashable) -> str:
        """'about 2 h 05 min left for the run (1.2 s per image here)', from the rates measured so far;
        'at least …' while stages of a kind not run yet remain (priced at the slowest rate measured)."""
        rate = self.seconds[current] / max(1, self.done[current])
        measured = {c: self.seconds[c] / self.done[c] for c in self.done if self.done[c]}
        slowest = max(measured.values(), default=rate)
        left = sum(images * measured.get(c, slowest) for c, images in self.left.items())
        unmeasured = any(images and c not in measured for c, images in self.left.items())
        bound = "at least" if unmeasured else "about"
        return f"{bound} {format_duration(left)} left for the run ({rate:.3g} s per image here)"
