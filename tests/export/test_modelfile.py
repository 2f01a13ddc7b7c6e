"""The Ollama Modelfile: its Go TEMPLATE renders what the training Jinja template renders, and every
end-of-turn string of the template is a stop."""

from __future__ import annotations

import copy
import re
from typing import Any

import jinja2
import pytest

from finetune.data.templates import CHATML_JINJA, LLAMA3_BOS, LLAMA3_JINJA
from finetune.errors import FinetuneError, RecipeError
from finetune.export.modelfile import go_template, modelfile_stops, modelfile_text
from finetune.runs.read import stop_strings, stop_token_ids

EOT, END_OF_TEXT = 128009, 128001
CONVERSATIONS = [
    [{"role": "user", "content": "Hi"}],
    [{"role": "system", "content": "You are terse.\nAnswer in one line."},
     {"role": "user", "content": "Where do you live?"},
     {"role": "assistant", "content": "In a lighthouse.\n\nNear Bergen."},
     {"role": "user", "content": "Since when? {{ .Role }} 🦙"}],
    [{"role": "user", "content": "a"}, {"role": "assistant", "content": "b"}, {"role": "user", "content": "c"},
     {"role": "assistant", "content": "d"}, {"role": "user", "content": "e"}],
]
ACTION = re.compile(r"\{\{(- )?\s*(.*?)\s*( -)?\}\}", re.S)


def render_go(template: str, messages: list[dict[str, str]]) -> str:
    """The subset of Go's text/template that Ollama's Modelfile templates here use: text, `{{ .Role }}`,
    `{{ .Content }}`, `{{ range .Messages }}...{{ end }}`, and the `{{- ` / ` -}}` whitespace trims. Anything
    else fails, so a template that grows new syntax is not silently mis-rendered."""
    pieces: list[tuple[str, str]] = []  # ("text", s) or ("action", s)
    pos = 0
    for match in ACTION.finditer(template):
        text = template[pos:match.start()]
        if match.group(1):
            text = text.rstrip(" \t\r\n")
        pieces.append(("text", text))
        pieces.append(("action", match.group(2)))
        pos = match.end()
        if match.group(3):
            rest = template[pos:]
            pos += len(rest) - len(rest.lstrip(" \t\r\n"))
    pieces.append(("text", template[pos:]))

    def run(items: list[tuple[str, str]], dot: dict[str, Any]) -> str:
        out, i = [], 0
        while i < len(items):
            kind, value = items[i]
            if kind == "text":
                out.append(value)
            elif value in (".Role", ".Content"):
                out.append(dot[value[1:]])
            elif value == "range .Messages":
                depth, j = 1, i + 1
                while depth:
                    if items[j] == ("action", "end"):
                        depth -= 1
                    elif items[j][0] == "action" and items[j][1].startswith("range "):
                        depth += 1
                    j += 1
                for message in dot["Messages"]:
                    out.append(run(items[i + 1:j - 1], {"Role": message["role"], "Content": message["content"]}))
                i = j - 1
            else:
                raise AssertionError(f"Go template action {value!r} is not in the renderer's subset")
            i += 1
        return "".join(out)

    return run(pieces, {"Messages": messages})


def test_the_go_renderer_follows_go_trim_rules() -> None:
    messages = [{"role": "x", "content": "1"}, {"role": "y", "content": "2"}]
    assert render_go("a \n{{- range .Messages }} \n{{ .Role }}{{ end }}", messages) == "a \nx \ny"
    assert render_go("{{ range .Messages -}} \n {{ .Content }} {{- end }}!", messages) == "12!"
    with pytest.raises(AssertionError, match="not in the renderer's subset"):
        render_go("{{ if .System }}x{{ end }}", [])


@pytest.mark.parametrize("jinja, prefix", [(LLAMA3_JINJA, LLAMA3_BOS), (CHATML_JINJA, "")], ids=["llama3", "chatml"])
@pytest.mark.parametrize("messages", CONVERSATIONS, ids=["one-turn", "system-multi-turn", "five-turns"])
def test_the_go_template_renders_the_training_prompt(jinja: str, prefix: str, messages: list[dict[str, str]]) -> None:
    """Ollama renders the Go TEMPLATE (BOS comes from the GGUF's add_bos_token, not the text); training and
    `finetune chat` render the Jinja one with the generation prompt."""
    expected = jinja2.Environment().from_string(jinja).render(messages=messages, add_generation_prompt=True)
    assert prefix + render_go(go_template(jinja), messages) == expected


@pytest.fixture
def llama3(llama3_tokenizer: Any) -> Any:
    tokenizer = copy.deepcopy(llama3_tokenizer)
    tokenizer.eos_token = "<|eot_id|>"
    return tokenizer


def test_a_chatml_modelfile_on_a_llama3_tokenizer_stops_on_im_end(llama3: Any) -> None:
    llama3.chat_template = CHATML_JINJA
    stops = modelfile_stops(llama3, stop_token_ids(llama3))
    text = modelfile_text("./model.gguf", CHATML_JINJA, stops)
    assert 'PARAMETER stop "<|im_end|>"' in text.splitlines()
    assert 'PARAMETER stop "<|eot_id|>"' in text.splitlines()


def test_a_llama3_modelfile_keeps_its_token_stops(llama3: Any) -> None:
    llama3.chat_template = LLAMA3_JINJA
    assert stop_strings(llama3) == ["<|eot_id|>"]
    assert modelfile_stops(llama3, [EOT, END_OF_TEXT]) == ["<|eot_id|>", "<|end_of_text|>"]


def test_a_template_that_never_ends_a_turn_is_refused(llama3: Any) -> None:
    llama3.chat_template = "{% for m in messages %}{{ m['role'] }}: {{ m['content'] }}\n{% endfor %}"
    with pytest.raises(FinetuneError, match="writes no end-of-turn marker after a reply"):
        stop_strings(llama3)
    with pytest.raises(RecipeError, match=r"^recipe\.yml:3: the chat template writes no end-of-turn"):
        stop_strings(llama3, where="recipe.yml:3")
    llama3.chat_template = "{% for m in messages %}{{ m['role'] }}: {{ m['content'] }}{{ eos_token }}{% endfor %}"
    assert stop_strings(llama3) == ["<|eot_id|>"]  # the eos written as a variable is found in the rendering
