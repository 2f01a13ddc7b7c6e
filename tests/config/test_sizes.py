"""Byte sizes as people write them (`24GiB`, `80GB`, a bare number in the unit the caller names)."""

from __future__ import annotations

import pytest

from finetune.config.sizes import parse_size
from finetune.errors import RecipeError

GIB, MIB = 1024**3, 1024**2


@pytest.mark.parametrize("text,expected", [
    ("24GiB", 24 * GIB), ("80GB", 80 * 10**9), ("24000MiB", 24000 * MIB), ("24 GiB", 24 * GIB),
    ("1.5GiB", int(1.5 * GIB)), ("24", 24 * GIB), ("24G", 24 * GIB), ("512MB", 512 * 10**6), ("1TiB", 1024 * GIB),
    ("4096B", 4096),
])
def test_parse_size(text: str, expected: int) -> None:
    assert parse_size(text, bare_unit=GIB) == expected


@pytest.mark.parametrize("text", ["", "GiB", "24XB", "lots", "-1GiB", "24 i"])
def test_parse_size_rejects_nonsense(text: str) -> None:
    with pytest.raises(RecipeError, match="24GiB"):
        parse_size(text, bare_unit=GIB)
