"""`zipgate purify` and `zipgate eval` hand `locals()` to an arguments dataclass: the two must not drift."""

from __future__ import annotations

import dataclasses
import inspect

import pytest

from service.cli import EvalArgs, PurifyArgs, eval_command, purify


@pytest.mark.parametrize(("command", "args"), [(purify, PurifyArgs), (eval_command, EvalArgs)])
def test_the_arguments_dataclass_has_exactly_the_commands_parameters(command, args) -> None:
    assert [field.name for field in dataclasses.fields(args)] == list(inspect.signature(command).parameters)
