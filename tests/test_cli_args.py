"""`zipgate purify` and `zipgate eval` hand `locals()` to an arguments dataclass: the two must not drift."""

from __future__ import annotations

import dataclasses
import inspect

import pytest

from service.cli import EvalArgs, PurifyArgs, eval_command, purify


@pytest.mark.parametrize(("command", "args"), [(purify, PurifyArgs), (eval_command, EvalArgs)])
def test_the_arguments_dataclass_has_exactly_the_commands_parameters(command, args) -> None:
    assert [field.name for field in dataclasses.fields(args)] == list(inspect.signature(command).parameters)


def test_eval_runs_every_defense_unless_told_otherwise() -> None:
    from service.defense_eval.defenses import Defense
    from service.defense_eval.runner import EvalOptions, parse_defenses

    cli_default = inspect.signature(eval_command).parameters["defense"].default
    assert parse_defenses(cli_default) == EvalOptions().defenses == tuple(Defense)
