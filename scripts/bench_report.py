"""Generation throughput of `finetune report` vs a plain one-prompt-at-a-time `model.generate` loop.

Same base, same checkpoints (random LoRA adapters on the tiny local Llama, saved as `checkpoint-N`), same
prompts, same greedy settings, in one run:

- report: the base loaded once, every checkpoint attached as a named PEFT adapter
  (finetune.report.models.loaded_models), replies from finetune.infer.generate (batches sorted by length,
  left-padded);
- plain: per checkpoint, the base loaded and the adapter applied with PeftModel.from_pretrained, then
  `model.generate` on one prompt at a time.

Prints a table: load seconds, generation seconds, new tokens, tokens/s, and the speed-up; and whether
both produced the same replies. Run: `python scripts/bench_report.py [--prompts 48] [--checkpoints 3]`.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path


def build_run(work: Path, checkpoints: int, hidden: int, layers: int) -> Path:
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoTokenizer, LlamaForCausalLM

    from finetune.data.templates import LLAMA3_JINJA
    from finetune.testing.tiny_llama import build_tiny_llama, tiny_llama_config

    tiny = build_tiny_llama(work / "tiny")
    base = work / "base"
    torch.manual_seed(0)
    LlamaForCausalLM(tiny_llama_config(hidden_size=hidden, layers=layers)).save_pretrained(base)
    tokenizer = AutoTokenizer.from_pretrained(tiny)
    tokenizer.add_special_tokens({"eos_token": "<|eot_id|>", "pad_token": "<|finetune_right_pad_id|>"})
    tokenizer.chat_template = LLAMA3_JINJA
    tokenizer.save_pretrained(base)
    out = work / "out"
    for index in range(checkpoints):
        model = get_peft_model(LlamaForCausalLM.from_pretrained(base),
                               LoraConfig(r=8, lora_alpha=16, target_modules="all-linear", task_type="CAUSAL_LM"))
        with torch.no_grad():
            for name, param in model.named_parameters():
                if "lora_B" in name:
                    param.copy_(torch.randn(param.shape) * 0.2)
        model.save_pretrained(out / f"checkpoint-{(index + 1) * 10}")
        tokenizer.save_pretrained(out / f"checkpoint-{(index + 1) * 10}")
    tokenizer.save_pretrained(out)
    return base


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--prompts", type=int, default=48)
    parser.add_argument("--checkpoints", type=int, default=3)
    parser.add_argument("--max-new-tokens", type=int, default=32)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--hidden", type=int, default=256)
    parser.add_argument("--layers", type=int, default=4)
    args = parser.parse_args()

    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from finetune.config import load_recipe_text
    from finetune.infer.generate import GenerationSettings, generate
    from finetune.report.models import loaded_models, select_targets

    torch.set_num_threads(max(1, torch.get_num_threads()))
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        base = build_run(work, args.checkpoints, args.hidden, args.layers)
        settings = load_recipe_text(
            f"base_model: {base}\nadapter: lora\nlora_r: 8\nlora_alpha: 16\nlora_target_linear: true\n"
            f"chat_template: llama3\nbf16: false\ndatasets:\n  - path: unused.jsonl\noutput_dir: {work / 'out'}\n"
            "special_tokens:\n  eos_token: <|eot_id|>\n  pad_token: <|finetune_right_pad_id|>\n").settings
        tokenizer = AutoTokenizer.from_pretrained(work / "out")
        words = "are you free tonight what time is the game where did you park can i borrow your bike".split()
        prompts = [tokenizer.apply_chat_template(
            [{"role": "user", "content": " ".join(words[(i * 7) % len(words):][: 3 + i % 11]) or "hi"}],
            tokenize=True, add_generation_prompt=True, return_dict=False) for i in range(args.prompts)]
        eot = tokenizer.convert_tokens_to_ids("<|eot_id|>")
        pad = tokenizer.pad_token_id
        targets = [t for t in select_targets(settings, work / "out", "all") if t.path is not None]
        generation = GenerationSettings(max_new_tokens=args.max_new_tokens, batch_size=args.batch_size)

        started = time.perf_counter()
        with loaded_models(settings, tokenizer, targets) as use:
            load_report = time.perf_counter() - started
            report_replies, report_tokens, report_gen = {}, 0, 0.0
            for target in targets:
                with use(target) as model:
                    t0 = time.perf_counter()
                    out = generate(model, tokenizer, prompts, generation, stop_ids=[eot], pad_id=pad)
                    report_gen += time.perf_counter() - t0
                report_replies[target.name] = [r.text for r in out]
                report_tokens += sum(r.new_tokens for r in out)

        plain_replies, plain_tokens, plain_gen, load_plain = {}, 0, 0.0, 0.0
        for target in targets:
            t0 = time.perf_counter()
            model = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(base, dtype=torch.float32),
                                              str(target.path)).eval()
            load_plain += time.perf_counter() - t0
            replies = []
            t0 = time.perf_counter()
            for prompt in prompts:
                with torch.no_grad():
                    ids = model.generate(torch.tensor([prompt]), max_new_tokens=args.max_new_tokens, do_sample=False,
                                         eos_token_id=[eot], pad_token_id=pad)
                new = ids[0, len(prompt):].tolist()
                plain_tokens += len(new)
                replies.append(tokenizer.decode(new, skip_special_tokens=True).strip())
            plain_gen += time.perf_counter() - t0
            plain_replies[target.name] = replies
            del model

    same = sum(a == b for name in plain_replies for a, b in zip(plain_replies[name], report_replies[name]))
    total = sum(len(v) for v in plain_replies.values())
    print(f"tiny Llama hidden {args.hidden}, {args.layers} layers; {len(targets)} checkpoints x {args.prompts} prompts, "
          f"greedy, max {args.max_new_tokens} new tokens, CPU threads {torch.get_num_threads()}")
    print(f"| path | load s | generate s | new tokens | tokens/s |")
    print(f"|---|---:|---:|---:|---:|")
    print(f"| report (one base + adapters, batch {args.batch_size}) | {load_report:.1f} | {report_gen:.1f} | "
          f"{report_tokens} | {report_tokens / report_gen:.0f} |")
    print(f"| plain (base per checkpoint, one prompt at a time) | {load_plain:.1f} | {plain_gen:.1f} | "
          f"{plain_tokens} | {plain_tokens / plain_gen:.0f} |")
    print(f"speed-up (tokens/s): {(report_tokens / report_gen) / (plain_tokens / plain_gen):.2f}x; "
          f"identical replies: {same}/{total}")


if __name__ == "__main__":
    main()
