"""The one streaming JSON reader: values, lines and errors do not depend on where the chunks fall."""

import json

import pytest

from finetune.data.jsonstream import JsonStream
from finetune.errors import DataError

DOC = '\ufeff{"a": [1, 23456, {"x": "y\\nz"}],\n "b":\n  [\n   true, null, -1.5e3],\n "c": "é"}\n'


def walk(path, chunk):
    stream = JsonStream(path, chunk_bytes=chunk)
    seen = []
    try:
        for key in stream.items():
            if key in ("a", "b"):
                for _ in stream.elements():
                    seen.append((key, stream.line(), stream.value()))
            else:
                seen.append((key, stream.line(), stream.value()))
        assert stream.peek() == ""
    finally:
        stream.close()
    return seen


@pytest.mark.parametrize("chunk", [1, 2, 3, 7, 1 << 20])
def test_values_and_lines_are_the_same_for_any_chunk_size(tmp_path, chunk):
    path = tmp_path / "doc.json"
    path.write_text(DOC, encoding="utf-8")
    expected = [("a", 1, 1), ("a", 1, 23456), ("a", 1, {"x": "y\nz"}),
                ("b", 4, True), ("b", 4, None), ("b", 4, -1500.0), ("c", 5, "é")]
    assert walk(path, chunk) == expected
    assert [v for _, _, v in expected][:3] == json.loads(DOC.lstrip("\ufeff"))["a"]


@pytest.mark.parametrize(("text", "message"), [
    (b'{"a": [1 2]}', "expected ',' or ']'"),
    (b'{"a": [1, ', "invalid JSON"),
    (b'{"a": "\xff"}', "not UTF-8 text near byte 7"),
])
def test_bad_input_is_a_located_data_error(tmp_path, text, message):
    path = tmp_path / "bad.json"
    path.write_bytes(text)
    with pytest.raises(DataError, match=message):
        walk(path, 3)
