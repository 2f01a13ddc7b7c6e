"""Raw rows -> normalized samples, per dataset `type`.

* `chat_template`: the list at `field_messages`; each message's role and content are
  read through `message_property_mappings` (e.g. ShareGPT `{role: from, content:
  value}`), and the role through `role_map` (human -> user, gpt -> assistant, ...).
* `alpaca`: optional system (`field_system`), one user turn (`field_instruction`,
  plus "\\n\\n" + `field_input` when non-empty) and one assistant turn (`field_output`).
* `completion`: the text at `field`; every token is trained.

A chat sample is a list of `{"role": system|user|assistant|tool, "content": str}`;
a completion sample is a `str`. Errors name the row's origin (`file:line`) and say
what to change in the recipe.
"""

from __future__ import annotations

from typing import Any, Union

from finetune.config.settings import DatasetSettings
from finetune.data.readers import RawTable
from finetune.errors import DataError

Message = dict[str, str]
Sample = Union[list[Message], str]
ROLES = ("system", "user", "assistant", "tool")


def format_table(table: RawTable, dataset: DatasetSettings) -> list[Sample]:
    """Every row of `table` as a sample of `dataset.type` (same order, same count)."""
    if dataset.type == "chat_template":
        role_map = dataset.role_map
        role_key = dataset.message_property_mappings.get("role", "role")
        content_key = dataset.message_property_mappings.get("content", "content")
        return [
            chat_messages(row, dataset, role_map, role_key, content_key, table.origins, index)
            for index, row in enumerate(table.rows)
        ]
    if dataset.type == "alpaca":
        return [alpaca_messages(row, dataset, table.origins[index]) for index, row in enumerate(table.rows)]
    return [completion_text(row, dataset, table.origins, index) for index, row in enumerate(table.rows)]


def chat_messages(
    row: dict[str, Any],
    dataset: DatasetSettings,
    role_map: dict[str, str],
    role_key: str,
    content_key: str,
    origins: Any,
    index: int,
) -> list[Message]:
    """One chat row -> normalized messages. `origins[index]` is only formatted on error."""
    messages = row.get(dataset.field_messages)
    if not isinstance(messages, list):
        raise DataError(_missing_messages(row, dataset, origins[index]))
    out: list[Message] = []
    for turn, message in enumerate(messages):
        if type(message) is not dict:
            raise DataError(
                f"{origins[index]}: {dataset.field_messages}[{turn}]: expected a message object "
                f"with `{role_key}` and `{content_key}`, got {type(message).__name__}"
            )
        try:
            source_role, content = message[role_key], message[content_key]
        except KeyError as exc:
            raise DataError(_missing_property(message, exc.args[0], turn, dataset, origins[index])) from None
        role = role_map.get(source_role) if isinstance(source_role, str) else None
        if role is None:
            role = source_role if source_role in ROLES else None
        if role is None:
            raise DataError(_unknown_role(source_role, turn, dataset, origins[index]))
        if type(content) is not str:
            content = _text_parts(content)
            if content is None:
                raise DataError(
                    f"{origins[index]}: {dataset.field_messages}[{turn}].{content_key}: expected a string, "
                    f"got {type(message[content_key]).__name__}"
                )
        out.append({"role": role, "content": content})
    return out


def alpaca_messages(row: dict[str, Any], dataset: DatasetSettings, origin: str) -> list[Message]:
    """Alpaca row -> [system?] + user (instruction [+ "\\n\\n" + input]) + assistant (output)."""
    instruction = _string_field(row, dataset.field_instruction, "field_instruction", dataset, origin, required=True)
    extra = _string_field(row, dataset.field_input, "field_input", dataset, origin, required=False)
    output = _string_field(row, dataset.field_output, "field_output", dataset, origin, required=True)
    system = _string_field(row, dataset.field_system, "field_system", dataset, origin, required=False)
    user = f"{instruction}\n\n{extra}" if extra else instruction
    messages = [{"role": "system", "content": system}] if system else []
    messages += [{"role": "user", "content": user}, {"role": "assistant", "content": output}]
    return messages


def completion_text(row: dict[str, Any], dataset: DatasetSettings, origins: Any, index: int) -> str:
    text = row.get(dataset.field)
    if type(text) is str:
        return text
    return _string_field(row, dataset.field, "field", dataset, origins[index], required=True)


def sample_key(sample: Sample) -> Any:
    """A hashable key equal for exactly-equal samples (for dedup)."""
    if isinstance(sample, str):
        return sample
    return tuple((message["role"], message["content"]) for message in sample)


# --- helpers ---------------------------------------------------------------------------------


def _string_field(
    row: dict[str, Any], name: str, setting: str, dataset: DatasetSettings, origin: str, *, required: bool
) -> str:
    value = row.get(name)
    if value is None:
        if not required:
            return ""
        keys = ", ".join(map(str, row)) or "none"
        raise DataError(
            f"{origin}: missing `{name}` ({dataset.type} data; row keys: {keys}); "
            f"set `{setting}:` on the dataset at {dataset.where()} if the column has another name"
        )
    if type(value) is not str:
        raise DataError(f"{origin}: `{name}`: expected a string, got {type(value).__name__}")
    return value


def _text_parts(content: Any) -> str | None:
    """OpenAI-style content parts `[{"type": "text", "text": ...}, ...]` -> their text, else None."""
    if not isinstance(content, list) or not content:
        return None
    texts = []
    for part in content:
        if type(part) is not dict or part.get("type") != "text" or type(part.get("text")) is not str:
            return None
        texts.append(part["text"])
    return "".join(texts)


def _missing_messages(row: dict[str, Any], dataset: DatasetSettings, origin: str) -> str:
    field = dataset.field_messages
    if field in row:
        return f"{origin}: `{field}`: expected a list of messages, got {type(row[field]).__name__}"
    lists = [key for key, value in row.items() if isinstance(value, list)]
    hint = (
        f"; set `field_messages: {lists[0]}` on the dataset at {dataset.where()}"
        if lists
        else f"; is this {_guess_type(row)} data? set `type:` on the dataset at {dataset.where()}"
    )
    return f"{origin}: missing the messages field `{field}` (row keys: {', '.join(map(str, row)) or 'none'}){hint}"


def _guess_type(row: dict[str, Any]) -> str:
    if "instruction" in row and "output" in row:
        return "alpaca"
    return "completion" if "text" in row else "another kind of"


def _missing_property(message: dict[str, Any], key: str, turn: int, dataset: DatasetSettings, origin: str) -> str:
    keys = ", ".join(map(str, message)) or "none"
    hint = ""
    if "from" in message and "value" in message:
        mapping = "message_property_mappings: {role: from, content: value}"
        hint = f"; for ShareGPT data set `{mapping}` at {dataset.where()}"
    prop = "role" if key == dataset.message_property_mappings.get("role", "role") else "content"
    return (
        f"{origin}: {dataset.field_messages}[{turn}]: message has no `{key}` key (its keys: {keys}){hint}"
        if hint
        else f"{origin}: {dataset.field_messages}[{turn}]: message has no `{key}` key (its keys: {keys}); "
        f"map the {prop} key with `message_property_mappings: {{{prop}: KEY}}` at {dataset.where()}"
    )


def _unknown_role(role: Any, turn: int, dataset: DatasetSettings, origin: str) -> str:
    if not isinstance(role, str):
        return f"{origin}: {dataset.field_messages}[{turn}]: the role must be a string, got {type(role).__name__}"
    known = ", ".join(sorted(dataset.role_map)) or "none"
    return (
        f"{origin}: {dataset.field_messages}[{turn}]: unknown role `{role}` (known: {known}); "
        f"map it under `roles:` on the dataset at {dataset.where()}, e.g. `roles: {{user: [{role}]}}` "
        f"(keys: system, user, assistant, tool)"
    )
