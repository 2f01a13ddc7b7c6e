"""Installed-version floors: the pure comparison and the error with the install hint."""

from __future__ import annotations

import pytest

from finetune.errors import MissingDependencyError
from finetune.requirements import TRL_FLOOR, at_least, check_installed


@pytest.mark.parametrize(
    "installed, floor, expected",
    [
        ("1.15.0", "1.15.0", True),
        ("1.15", "1.15.0", True),
        ("1.16.0", "1.15.0", True),
        ("1.15.1", "1.15", True),
        ("2.0.0", "1.15.0", True),
        ("1.15.0.post1", "1.15.0", True),
        ("1.15.0+local", "1.15.0", True),
        ("1.14.2", "1.15.0", False),
        ("1.9.0", "1.15.0", False),  # numeric, not string, order: 1.9 < 1.15
        ("1.0.0", "1.15.0", False),
        ("0.29.1", "1.15.0", False),
        ("1.15.0rc1", "1.15.0", False),
        ("1.15.0.dev0", "1.15.0", False),
        ("1.16.0rc1", "1.15.0", True),
    ],
)
def test_at_least_compares_release_numbers(installed, floor, expected):
    assert at_least(installed, floor) is expected


def test_an_old_trl_is_reported_with_the_install_hint():
    with pytest.raises(MissingDependencyError) as info:
        check_installed("1.14.2")
    message = str(info.value)
    assert "found trl 1.14.2" in message and f"pip install -U 'trl>={TRL_FLOOR}'" in message


def test_a_new_enough_trl_passes_and_the_installed_one_is_new_enough():
    check_installed(TRL_FLOOR)
    check_installed()  # the environment the tests run in satisfies pyproject's floor


def test_the_floor_matches_pyproject():
    from pathlib import Path

    pyproject = (Path(__file__).resolve().parents[1] / "pyproject.toml").read_text(encoding="utf-8")
    floor = TRL_FLOOR.removesuffix(".0")
    assert f'"trl>={floor},' in pyproject
