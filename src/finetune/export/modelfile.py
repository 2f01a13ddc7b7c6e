"""The Ollama `Modelfile` written beside an exported GGUF: FROM, the chat template as Go template, stop tokens.

Ollama formats prompts with its own Go template, not the GGUF's Jinja `tokenizer.chat_template`, so a model
whose template is lost "never stops". For the built-in `llama3` and `chatml` templates the TEMPLATE below renders
the same text as the training template for any conversation whose contents carry no surrounding whitespace
(`llama3` trims contents; Go templates cannot). BOS is not written: Ollama adds it when the GGUF says
`tokenizer.ggml.add_bos_token` (true exactly when the training template starts with BOS). Other templates get no
TEMPLATE line, so Ollama picks one from the GGUF's own chat template, with a warning. Every end-of-turn string of
the template is a `PARAMETER stop`, a token or not (`modelfile_stops`).
"""

from __future__ import annotations

import json
import logging
from typing import TYPE_CHECKING, Optional, Sequence

from finetune.data.templates import CHATML_JINJA, LLAMA3_JINJA
from finetune.runs.read import stop_strings

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase

logger = logging.getLogger(__name__)

LLAMA3_GO = (
    "{{- range .Messages }}<|start_header_id|>{{ .Role }}<|end_header_id|>\n\n{{ .Content }}<|eot_id|>\n"
    "{{- end }}<|start_header_id|>assistant<|end_header_id|>\n\n"
)
CHATML_GO = "{{- range .Messages }}<|im_start|>{{ .Role }}\n{{ .Content }}<|im_end|>\n{{ end }}<|im_start|>assistant\n"
GO_TEMPLATES = {LLAMA3_JINJA: LLAMA3_GO, CHATML_JINJA: CHATML_GO}


def modelfile_stops(tokenizer: PreTrainedTokenizerBase, stop_ids: Sequence[int]) -> list[str]:
    """The `PARAMETER stop` strings: the stop tokens, then the template's end-of-turn text
    (`finetune.runs.read.stop_strings`; `<|im_end|>` of chatml on a Llama 3 tokenizer is text, no token)."""
    tokens = [tokenizer.convert_ids_to_tokens(i) for i in stop_ids]
    return list(dict.fromkeys([*tokens, *stop_strings(tokenizer)]))


def go_template(jinja: Optional[str]) -> Optional[str]:
    """The Ollama template equivalent to a training template; None when finetune has none for it."""
    return GO_TEMPLATES.get(jinja or "")


def modelfile_text(source: str, jinja: Optional[str], stop_tokens: list[str], adapter: Optional[str] = None) -> str:
    """The Modelfile of the model at `source` (FROM: a path, `./` for a file beside it), with `adapter` on top."""
    lines = [f"FROM {source}"] + ([f"ADAPTER {adapter}"] if adapter is not None else [])
    template = go_template(jinja)
    if template is not None:
        lines.append(f'TEMPLATE """{template}"""')
    else:
        logger.warning("the chat template is not a built-in one (llama3, chatml): the Modelfile has no TEMPLATE, "
                       "so Ollama picks one from the GGUF's chat template; check its prompts with `ollama show`")
    lines += [f"PARAMETER stop {json.dumps(token, ensure_ascii=False)}" for token in stop_tokens]
    return "\n".join(lines) + "\n"
