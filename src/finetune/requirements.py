"""Installed-version floors that the package metadata alone cannot enforce (an older install stays put).

`check_installed` runs when a recipe is validated or trained, so an old TRL is reported with the
install hint up front instead of an ImportError deep inside a training step.
"""

from __future__ import annotations

import re

from finetune.errors import MissingDependencyError

# The first TRL release with `trl.kernels.ChunkedLogProbFunction` (finetune.model.loss, `loss_head: trl`);
# 1.14 has a `trl.kernels` package without it. Keep in step with pyproject.toml.
TRL_FLOOR = "1.15.0"


def release(version: str) -> tuple[tuple[int, ...], bool]:
    """(numeric release, is a final release) of a PEP 440 version string: "1.15.0rc1" -> ((1, 15, 0), False)."""
    match = re.match(r"\s*v?(\d+(?:\.\d+)*)(.*)", version)
    if match is None:
        raise ValueError(f"not a version: {version!r}")
    numbers = tuple(int(part) for part in match.group(1).split("."))
    while len(numbers) > 1 and numbers[-1] == 0:
        numbers = numbers[:-1]
    rest = match.group(2).lower()
    final = not re.match(r"[._-]?(a|b|c|rc|alpha|beta|pre|preview|dev)\d*", rest)
    return numbers, final


def at_least(installed: str, floor: str) -> bool:
    """True when `installed` is `floor` or newer; a pre-release of the floor itself is older than it."""
    have, have_final = release(installed)
    need, _ = release(floor)
    return have > need or (have == need and have_final)


def check_installed(trl_version: str | None = None) -> None:
    """MissingDependencyError with the pip hint when TRL is missing or older than TRL_FLOOR.

    `trl_version` defaults to the installed distribution's version.
    """
    hint = f"pip install -U 'trl>={TRL_FLOOR}'"
    if trl_version is None:
        from importlib.metadata import PackageNotFoundError, version

        try:
            trl_version = version("trl")
        except PackageNotFoundError:
            raise MissingDependencyError(f"finetune needs trl>={TRL_FLOOR}, which is not installed: {hint}") from None
    if not at_least(trl_version, TRL_FLOOR):
        raise MissingDependencyError(
            f"finetune needs trl>={TRL_FLOOR} (trl.kernels, used by the loss), found trl {trl_version}: {hint}"
        )
