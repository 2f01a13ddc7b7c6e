"""`finetune chat recipe.yml`: talk to the trained model, formatted exactly as it was trained.

The base is loaded as training loaded it (4-bit NF4 for QLoRA, same precision, embeddings sized to
the saved tokenizer) through `finetune.model.load.load_model`, then the adapter from `output_dir`
(or `--adapter DIR`) on top. Prompts are rendered with the chat template SAVED with the run's
tokenizer (not the recipe's name for it), tokenized without extra special tokens (the template
writes BOS itself), and generation stops at the trained end-of-turn token: the tokenizer's eos,
the eos ids of the model's generation config, and the template's end-of-turn marker; and at the
template's end-of-turn TEXT (`finetune.runs.read.stop_strings`: chatml's `<|im_end|>` on a Llama 3
tokenizer is several tokens, no stop id), which is cut from the reply and never printed.

Modes: one `--prompt`; a `--file` of JSONL rows (`{"prompt": ...}` or `{"messages": [...]}`)
answered as JSONL; or an interactive loop keeping the conversation (`/reset`, `/exit`).
`--base-only` answers with the base model (same template) to compare.
"""

from __future__ import annotations

import json
import logging
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Optional, TextIO

from finetune.config.settings import Settings
from finetune.errors import DataError, FinetuneError
from finetune.infer.generate import GenerationSettings, generation_config
from finetune.model.load import load_model, place_for_inference
from finetune.runs.read import (adapter_kind, cut_at_stop, load_run_tokenizer, read_adapter_config, resolve_adapter_dir,
                                stop_strings, stop_token_ids)

if TYPE_CHECKING:
    from transformers import GenerationConfig, PreTrainedModel, PreTrainedTokenizerBase

logger = logging.getLogger(__name__)

HELP = "commands: /reset (forget the conversation), /exit (or Ctrl-D), /help"


@dataclass
class ChatModel:
    """A loaded model ready to answer: model, the run's tokenizer, and the ids and strings that end a turn."""

    model: PreTrainedModel
    tokenizer: PreTrainedTokenizerBase
    stop_ids: list[int]
    label: str
    stop_strings: list[str] = field(default_factory=list)
    last_prompt: Optional[str] = field(default=None, repr=False)
    last_new_tokens: int = field(default=0, repr=False)  # tokens generated for the last answer


@dataclass
class History:
    """The conversation so far; `/reset` keeps the system prompt."""

    system: Optional[str] = None
    turns: list[dict[str, str]] = field(default_factory=list)

    @property
    def messages(self) -> list[dict[str, str]]:
        head = [{"role": "system", "content": self.system}] if self.system else []
        return head + self.turns

    def reset(self) -> None:
        self.turns.clear()


# --- loading ---------------------------------------------------------------------------------------


def load_chat_model(settings: Settings, *, adapter_dir: str | Path | None = None, base_only: bool = False) -> ChatModel:
    """Base (quantized as trained) + adapter, or the base alone; raises FinetuneError/RecipeError with hints."""
    full_model = settings.adapter is None and not base_only
    if full_model:  # full fine-tuning: output_dir is the model itself
        path = Path(adapter_dir if adapter_dir is not None else settings.output_dir)
        if not (path / "config.json").is_file():
            raise FinetuneError(f"no trained model in {path} (config.json missing); "
                                "run `finetune train` first or pass --adapter DIR")
        adapter_kind(path)  # config and weights whole, else a DataError naming the file
        settings = settings.model_copy(update={"base_model": str(path)})
        run_dir: Optional[Path] = path
    elif base_only:
        try:
            run_dir = resolve_adapter_dir(settings, adapter_dir)
        except FinetuneError:
            run_dir = None  # no run yet: the recipe's tokenizer and template
    else:
        run_dir = resolve_adapter_dir(settings, adapter_dir)
        read_adapter_config(run_dir)  # config and weights whole, else a DataError naming the file
    tokenizer = load_run_tokenizer(settings, run_dir)
    if not isinstance(getattr(tokenizer, "chat_template", None), str) or not tokenizer.chat_template:
        raise FinetuneError(f"the tokenizer in {run_dir} has no chat template; set chat_template in the recipe")
    model = _load_base(settings, tokenizer)
    if not base_only and not full_model:
        from peft import PeftModel

        model = PeftModel.from_pretrained(model, run_dir)
    model.eval()
    model.config.use_cache = True  # training switched the KV cache off
    stop = stop_token_ids(tokenizer, model.generation_config, run_dir)
    label = "base model only" if base_only else f"{'model' if full_model else 'base + adapter'} from {run_dir}"
    return ChatModel(model=model, tokenizer=tokenizer, stop_ids=stop, label=label, stop_strings=stop_strings(tokenizer))


def _load_base(settings: Settings, tokenizer: PreTrainedTokenizerBase) -> PreTrainedModel:
    """The base through the training loader (same quantization, precision and embedding size), placed for inference."""
    return place_for_inference(load_model(settings, tokenizer, training=False), quantized=settings.quantized)


# --- answering ---------------------------------------------------------------------------------------


def format_prompt(tokenizer: PreTrainedTokenizerBase, messages: list[dict[str, str]]) -> str:
    """The conversation rendered with the saved template, ending with the assistant header."""
    return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)


def chat_generation_config(chat: ChatModel, sampling: GenerationSettings) -> GenerationConfig:
    """`sampling` for this model (its stop ids, its pad), by the one translation every generating command uses."""
    pad = chat.tokenizer.pad_token_id
    return generation_config(temperature=sampling.temperature, top_p=sampling.top_p,
                             max_new_tokens=sampling.max_new_tokens, stop_ids=chat.stop_ids,
                             pad_id=pad if pad is not None else chat.stop_ids[0])


def answer(chat: ChatModel, messages: list[dict[str, str]], sampling: GenerationSettings, stream: TextIO | None = None) -> str:
    """Generate the next assistant turn; with `stream`, tokens are written there as they come."""
    import torch

    text = format_prompt(chat.tokenizer, messages)
    chat.last_prompt = text
    device = next(chat.model.parameters()).device
    inputs = chat.tokenizer(text, add_special_tokens=False, return_tensors="pt").to(device)
    streamer = _streamer(chat.tokenizer, stream, chat.stop_strings) if stream is not None else None
    prompt_len = inputs["input_ids"].shape[1]
    criteria = [_stop_on_text(chat.tokenizer, chat.stop_strings, prompt_len)] if chat.stop_strings else None
    with torch.no_grad():
        output = chat.model.generate(**inputs, generation_config=chat_generation_config(chat, sampling), streamer=streamer,
                                     stopping_criteria=criteria)
    chat.last_new_tokens = output.shape[1] - prompt_len
    text = chat.tokenizer.decode(output[0, prompt_len:], skip_special_tokens=True)
    return cut_at_stop(text, chat.stop_strings)[0].strip()


def _stop_on_text(tokenizer: PreTrainedTokenizerBase, stops: list[str], prompt_len: int) -> Any:
    """A StoppingCriteria: true once the reply's text contains a stop string (only the last tokens are decoded:
    enough of them to hold the longest stop string, each token being at least one character)."""
    import torch
    from transformers import StoppingCriteria

    window = max(len(s) for s in stops) + 1

    class StopOnText(StoppingCriteria):
        def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor, **kwargs: Any) -> torch.BoolTensor:
            done = [cut_at_stop(tokenizer.decode(row[prompt_len:][-window:], skip_special_tokens=True), stops)[1]
                    for row in input_ids]
            return torch.tensor(done, dtype=torch.bool, device=input_ids.device)

    return StopOnText()


def _streamer(tokenizer: PreTrainedTokenizerBase, out: TextIO, stops: list[str]) -> Any:
    """Writes the reply as it comes, holding back text that may be the start of a stop string and never
    writing a stop string or anything after it."""
    from transformers import TextStreamer

    class WriteStreamer(TextStreamer):
        pending, stopped = "", False

        def on_finalized_text(self, text: str, stream_end: bool = False) -> None:
            if not self.stopped:
                self.pending, self.stopped = cut_at_stop(self.pending + text, stops)
                keep = 0 if self.stopped or stream_end else _held_back(self.pending, stops)
                out.write(self.pending[: len(self.pending) - keep])
                self.pending = self.pending[len(self.pending) - keep:]
            if stream_end:
                out.write("\n")
                self.pending, self.stopped = "", False
            out.flush()

    return WriteStreamer(tokenizer, skip_prompt=True, skip_special_tokens=True)


def _held_back(text: str, stops: list[str]) -> int:
    """The length of the longest end of `text` that begins a stop string."""
    return max((n for stop in stops for n in range(1, min(len(stop), len(text) + 1)) if text.endswith(stop[:n])),
               default=0)


def interactive(chat: ChatModel, sampling: GenerationSettings, *, system: str | None = None,
                read: Callable[[str], str] = input, out: TextIO | None = None) -> int:
    """The REPL: each answer streams; the conversation is kept until /reset."""
    out = out or sys.stdout
    history = History(system=system)
    out.write(f"chatting with the {chat.label}. {HELP}\n")
    while True:
        try:
            line = read(">>> ").strip()
        except (EOFError, KeyboardInterrupt):
            out.write("\n")
            return 0
        if not line:
            continue
        if line in ("/exit", "/quit"):
            return 0
        if line == "/reset":
            history.reset()
            out.write("(conversation cleared)\n")
            continue
        if line.startswith("/"):
            out.write(f"unknown command {line.split()[0]}; {HELP}\n")
            continue
        history.turns.append({"role": "user", "content": line})
        reply = answer(chat, history.messages, sampling, stream=out)
        history.turns.append({"role": "assistant", "content": reply})


def read_prompt_file(path: str | Path, system: str | None = None) -> list[tuple[dict, list[dict[str, str]]]]:
    """JSONL rows -> (row, messages to answer); DataError naming file:line for a bad row."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"--file {path}: no such file")
    rows = []
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as exc:
            raise DataError(f"{path}:{number}: not valid JSON ({exc.msg})") from None
        if isinstance(row, dict) and isinstance(row.get("prompt"), str):
            head = [{"role": "system", "content": system}] if system else []
            messages = head + [{"role": "user", "content": row["prompt"]}]
        elif isinstance(row, dict) and isinstance(row.get("messages"), list) and row["messages"]:
            messages = row["messages"]
            if not all(isinstance(m, dict) and isinstance(m.get("role"), str) and isinstance(m.get("content"), str)
                       for m in messages):
                raise DataError(f"{path}:{number}: every message needs string `role` and `content`")
            if messages[-1]["role"] == "assistant":
                raise DataError(f"{path}:{number}: the last message is the assistant's; nothing to answer")
        else:
            raise DataError(f'{path}:{number}: expected {{"prompt": "..."}} or {{"messages": [...]}}')
        rows.append((row, messages))
    return rows


def chat_main(
    settings: Settings,
    *,
    adapter_dir: str | Path | None = None,
    prompt: str | None = None,
    file: str | Path | None = None,
    output: str | Path | None = None,
    base_only: bool = False,
    temperature: float = 0.7,
    top_p: float = 0.9,
    max_new_tokens: int = 512,
    seed: int | None = None,
    system: str | None = None,
    stdout: TextIO | None = None,
    read: Callable[[str], str] = input,
) -> int:
    """`finetune chat`: one --prompt, a --file of prompts (JSONL out), or the interactive loop; the exit code."""
    out = stdout or sys.stdout
    sampling = GenerationSettings(temperature=temperature, top_p=top_p, max_new_tokens=max_new_tokens)
    sampling.check()
    if prompt is not None and file is not None:
        raise FinetuneError("--prompt and --file are exclusive; pass one")
    if output is not None and file is None:
        raise FinetuneError("--output writes the answers of --file; pass --file too")
    rows = read_prompt_file(file, system) if file is not None else None  # fail on bad data before loading
    if seed is not None:
        from transformers import set_seed

        set_seed(seed)
    chat = load_chat_model(settings, adapter_dir=adapter_dir, base_only=base_only)
    if prompt is not None:
        messages = ([{"role": "system", "content": system}] if system else []) + [{"role": "user", "content": prompt}]
        answer(chat, messages, sampling, stream=out)
        return 0
    if rows is not None:
        sink = open(output, "w", encoding="utf-8") if output is not None else out
        try:
            for number, (row, messages) in enumerate(rows, 1):
                sink.write(json.dumps({**row, "answer": answer(chat, messages, sampling)}, ensure_ascii=False) + "\n")
                sink.flush()
                if output is not None:
                    logger.info("answered %d/%d", number, len(rows))
        finally:
            if output is not None:
                sink.close()
        return 0
    return interactive(chat, sampling, system=system, read=read, out=out)
