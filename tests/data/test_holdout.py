"""`val_split`: the validation split as a random sample, the newest conversations, or whole contacts
(finetune.data.holdout), the same in the streamed build and the in-memory reference."""

from __future__ import annotations

import json
import re
from datetime import datetime, timedelta, timezone

import pytest

from finetune.data.build import Progress, build_splits, recipe_template, prepare_data
from finetune.errors import DataError, RecipeError

MARK = re.compile(r"conv(\d+)x")


def conversation(number: int, start: str | None, contact: str | None) -> dict:
    row: dict = {"messages": [
        {"role": "user", "content": f"conv{number}x how are you"},
        {"role": "assistant", "content": f"fine thanks, number {number}"},
    ]}
    if start is not None:
        row["start"] = start
    if contact is not None:
        row["contact"] = contact
    return row


def write_rows(path, rows) -> str:
    path.write_text("".join(json.dumps(row) + "\n" for row in rows), encoding="utf-8")
    return str(path)


def numbers_in(rows: list[list[int]], tokenizer) -> list[int]:
    return sorted(int(found) for row in rows for found in MARK.findall(tokenizer.decode(row)))


def both_builds(settings, tokenizer) -> tuple[list[int], list[int]]:
    """(train, eval) conversation numbers; the streamed build's rows must equal the in-memory build's."""
    splits, _ = build_splits(settings, tokenizer, recipe_template(settings, tokenizer), Progress(False))
    memory = {name: [splits[name]["input_ids"][i].tolist() for i in range(len(splits[name]["input_ids"]))]
              for name in ("train", "eval")}
    prepared = prepare_data(settings, tokenizer, progress=False, force=True)
    streamed = {"train": prepared.train["input_ids"], "eval": prepared.eval["input_ids"]}
    assert streamed == memory
    return numbers_in(memory["train"], tokenizer), numbers_in(memory["eval"], tokenizer)


T0 = datetime(2023, 1, 5, 21, 41, tzinfo=timezone.utc)


def at(hours: float, offset_hours: int = 0) -> str:
    zone = timezone(timedelta(hours=offset_hours))
    return (T0 + timedelta(hours=hours)).astimezone(zone).isoformat()


def test_newest_holds_out_the_newest_conversations_across_files_and_time_zones(tmp_path, data_settings, llama3_tokenizer):
    # file order is not time order; times are written in several zones; 14 and 3 start at the same moment
    # 11 is written at +01:00: its wall-clock time (45.5) would beat 7's (45), the instant (44.5) does not
    hours = {0: 5, 1: 40, 2: 1, 3: 50, 4: 7, 5: 30, 6: 2, 7: 45, 8: 3, 9: 10, 10: 20, 11: 44.5}
    first = [conversation(n, at(hours[n], offset_hours=n % 3 - 1), "Alice") for n in range(12)]
    second = [conversation(12, at(48), "Bob"), conversation(13, at(0.5), "Bob"), conversation(14, at(50), "Bob")]
    second.append(conversation(15, (T0 + timedelta(hours=46)).replace(tzinfo=None).isoformat(), "Bob"))  # naive: UTC
    files = [{"path": write_rows(tmp_path / "a.jsonl", first)}, {"path": write_rows(tmp_path / "b.jsonl", second)}]
    settings = data_settings(files, val_split="newest", val_set_size=5)
    train, evaluation = both_builds(settings, llama3_tokenizer)
    # newest first: 3 and 14 (hour 50; 14 is later in dataset order), 12 (48), 15 (46), 7 (45)
    assert evaluation == [3, 7, 12, 14, 15]
    assert train == sorted(set(range(16)) - {3, 7, 12, 14, 15})
    fraction = data_settings(files, val_split="newest", val_set_size=0.2)  # ceil(0.2 * 16) = 4: 7 goes back
    assert both_builds(fraction, llama3_tokenizer)[1] == [3, 12, 14, 15]
    assert at(44.5, offset_hours=1).endswith("+01:00") and at(hours[3], offset_hours=-1).endswith("-01:00")
    one = data_settings(files, val_split="newest", val_set_size=1)  # the tie at hour 50: the later row
    assert both_builds(one, llama3_tokenizer)[1] == [14]


def test_random_is_unchanged_and_differs_from_newest(tmp_path, data_settings, llama3_tokenizer):
    rows = [conversation(n, at(n), "Alice") for n in range(16)]
    path = write_rows(tmp_path / "a.jsonl", rows)
    default = both_builds(data_settings([{"path": path}], val_set_size=4), llama3_tokenizer)
    random = both_builds(data_settings([{"path": path}], val_set_size=4, val_split="random"), llama3_tokenizer)
    assert default == random and default[1] != [12, 13, 14, 15]


def test_contact_holds_out_whole_contacts_that_fit_then_the_smallest(tmp_path, data_settings, llama3_tokenizer):
    sizes = {"Alice": 12, "Bob": 4, "Chen": 4}
    rows, owner = [], {}
    for name, size in sizes.items():
        for _ in range(size):
            owner[len(rows)] = name
            rows.append(conversation(len(rows), at(len(rows)), name))
    order = [5, 17, 0, 12, 9, 2, 19, 14, 7, 1, 11, 4, 16, 8, 3, 13, 18, 6, 15, 10]  # contacts interleaved
    path = write_rows(tmp_path / "chats.jsonl", [rows[i] for i in order])
    for seed in (1, 2, 3):
        # 5 conversations: one of Bob/Chen fits (4), the other does not; Alice (12) never fits; the
        # walk ends short, so the smallest remaining contact joins: both 4-conversation contacts, 8 held out
        train, evaluation = both_builds(data_settings([{"path": path}], val_split="contact", val_set_size=5, seed=seed),
                                        llama3_tokenizer)
        assert {owner[n] for n in evaluation} == {"Bob", "Chen"} and len(evaluation) == 8
        assert {owner[n] for n in train} == {"Alice"} and len(train) == 12
    # exactly 4: one whole 4-conversation contact, which one is the seed's choice
    chosen = set()
    for seed in range(6):
        _, evaluation = both_builds(data_settings([{"path": path}], val_split="contact", val_set_size=4, seed=seed),
                                    llama3_tokenizer)
        held = {owner[n] for n in evaluation}
        assert len(evaluation) == 4 and len(held) == 1 and held <= {"Bob", "Chen"}
        chosen |= held
    assert chosen == {"Bob", "Chen"}


def test_rows_without_a_start_are_a_located_error(tmp_path, data_settings, llama3_tokenizer):
    rows = [conversation(n, at(n), "Alice") for n in range(6)]
    rows[3] = conversation(3, None, "Alice")
    path = write_rows(tmp_path / "chats.jsonl", rows)
    settings = data_settings([{"path": path}], val_split="newest", val_set_size=2)
    line = (tmp_path / "recipe.yml").read_text().splitlines().index("val_split: newest") + 1
    expected = (rf"^{re.escape(path)}:4: this row has no `start`, which val_split: newest \(.*recipe\.yml:{line}\) "
                r"needs on every row \(an ISO 8601 time such as 2023-01-05T21:41:00\+00:00\)")
    with pytest.raises(DataError, match=expected):
        prepare_data(settings, llama3_tokenizer, progress=False)
    with pytest.raises(DataError, match=expected):
        build_splits(settings, llama3_tokenizer, recipe_template(settings, llama3_tokenizer), Progress(False))
    assert not any((tmp_path / "prepared").iterdir())
    rows[3] = conversation(3, "yesterday", "Alice")
    write_rows(tmp_path / "chats.jsonl", rows)
    with pytest.raises(DataError, match=rf"{re.escape(path)}:4: `start` is 'yesterday', not an ISO 8601 time"):
        prepare_data(settings, llama3_tokenizer, progress=False)
    rows[3] = conversation(3, at(3), None)
    write_rows(tmp_path / "chats.jsonl", rows)
    with pytest.raises(DataError, match=rf"{re.escape(path)}:4: this row has no `contact`, which val_split: contact"):
        prepare_data(data_settings([{"path": path}], val_split="contact", val_set_size=2), llama3_tokenizer,
                     progress=False)


def test_one_contact_cannot_be_split_by_contact(tmp_path, data_settings, llama3_tokenizer):
    path = write_rows(tmp_path / "chats.jsonl", [conversation(n, at(n), "Alice") for n in range(6)])
    settings = data_settings([{"path": path}], val_split="contact", val_set_size=2)
    with pytest.raises(RecipeError, match=r"recipe\.yml:\d+: val_split: contact would hold out all 6 conversations "
                                          r"\(they belong to 1 contact\)"):
        prepare_data(settings, llama3_tokenizer, progress=False)


@pytest.mark.parametrize("keys, message", [
    ({"val_split": "newest"}, "val_split: newest chooses the validation conversations; set val_set_size too"),
    ({"val_split": "contact", "val_set_size": 0}, "val_split: contact chooses the validation conversations"),
    ({"val_split": "oldest", "val_set_size": 2}, "val_split: .*'random', 'newest' or 'contact'"),
])
def test_recipe_errors_point_at_val_split(keys, message, tmp_path, data_settings):
    path = write_rows(tmp_path / "chats.jsonl", [conversation(0, at(0), "Alice")])
    with pytest.raises(RecipeError, match=rf"recipe\.yml:\d+: {message}"):
        data_settings([{"path": path}], **keys)


def test_validate_says_how_the_split_is_chosen(tmp_path, data_settings):
    from finetune.config.describe import derived_values

    path = write_rows(tmp_path / "chats.jsonl", [conversation(0, at(0), "Alice")])
    rows = dict(derived_values(data_settings([{"path": path}], val_split="newest", val_set_size=5), 1))
    assert rows["validation split"] == "5 conversations, the newest"
    rows = dict(derived_values(data_settings([{"path": path}], val_set_size=0.05), 1))
    assert rows["validation split"] == "5.00% of conversations, at random"
