"""Byte sizes written by people: `24GiB`, `80GB`, `500MB`, `24G`, `4096B`."""

from __future__ import annotations

import re

from finetune.errors import RecipeError

_SIZE = re.compile(r"\s*([0-9]*\.?[0-9]+)\s*([kmgt]?)(i?)(b?)\s*", re.I)


def parse_size(text: str | int, *, bare_unit: int = 1, what: str = "size") -> int:
    """Bytes from `text`: KiB/MiB/GiB/TiB and bare K/M/G/T are binary, KB/MB/GB/TB decimal, B bytes.

    A plain number is multiplied by `bare_unit` (1 = bytes; `finetune plan` reads `24` as 24 GiB).
    Raises RecipeError naming `what` when the text is not a positive size.
    """
    if isinstance(text, int):
        value = text
    else:
        match = _SIZE.fullmatch(str(text))
        if not match or (match.group(3) and not match.group(2)):
            raise RecipeError(f"{what} `{text}`: expected a size such as 24GiB, 80GB, 500MB or 24000MiB")
        number, prefix, binary, byte = float(match.group(1)), match.group(2).lower(), match.group(3), match.group(4)
        if not prefix:
            value = int(number * (1 if byte else bare_unit))
        else:
            base = 1000 if (byte and not binary) else 1024
            value = int(number * base ** ("kmgt".index(prefix) + 1))
    if value <= 0:
        raise RecipeError(f"{what} `{text}`: must be positive")
    return value
