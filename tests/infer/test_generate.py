"""The batched generation path: same replies as one prompt at a time, stop ids and stop strings honoured."""

from __future__ import annotations

import pytest

from finetune.infer.generate import GenerationSettings, generate, trim


@pytest.fixture(scope="module")
def tiny(micro_llama_dir):
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from finetune.data.templates import LLAMA3_JINJA

    tokenizer = AutoTokenizer.from_pretrained(micro_llama_dir)
    tokenizer.chat_template = LLAMA3_JINJA
    model = AutoModelForCausalLM.from_pretrained(micro_llama_dir, dtype=torch.float32).eval()
    return model, tokenizer


def _prompts(tokenizer, texts):
    return [tokenizer.apply_chat_template([{"role": "user", "content": t}], tokenize=True, add_generation_prompt=True,
                                          return_dict=False) for t in texts]


TEXTS = ["hi", "what are you doing tonight, any plans with the others?", "ok", "tell me about the river and the stone",
         "lol", "where do you live these days"]


def test_trim_cuts_before_the_first_stop_string():
    assert trim(" see you<|im_end|>\n<|im_start|>user", ["<|im_end|>"]) == "see you"
    assert trim("a END b STOP c", ["STOP", "END"]) == "a"
    assert trim(" plain ", []) == "plain"


def test_batched_greedy_replies_equal_one_prompt_at_a_time(tiny):
    import torch

    model, tokenizer = tiny
    prompts = _prompts(tokenizer, TEXTS)
    eot = tokenizer.convert_tokens_to_ids("<|eot_id|>")
    settings = GenerationSettings(max_new_tokens=12, batch_size=4)
    seen = []
    batched = generate(model, tokenizer, prompts, settings, stop_ids=[eot], pad_id=eot,
                       on_batch=lambda indices, replies: seen.extend(indices))
    assert sorted(seen) == list(range(len(prompts)))
    for prompt, reply in zip(prompts, batched):
        with torch.no_grad():
            out = model.generate(torch.tensor([prompt]), max_new_tokens=12, do_sample=False, eos_token_id=[eot],
                                 pad_token_id=eot)
        new = out[0, len(prompt):].tolist()
        assert reply.text == tokenizer.decode(new, skip_special_tokens=True).strip()
        assert reply.new_tokens == len(new)


def test_a_stop_string_ends_the_reply_before_it(tiny):
    model, tokenizer = tiny
    prompts = _prompts(tokenizer, TEXTS[:3])
    eot = tokenizer.convert_tokens_to_ids("<|eot_id|>")
    settings = GenerationSettings(max_new_tokens=12, batch_size=3)
    free = generate(model, tokenizer, prompts, settings, stop_ids=[eot], pad_id=eot)
    words = free[1].text.split()
    assert len(words) >= 4, free[1].text  # the random model rambles for the whole budget
    marker = words[2]
    stopped = generate(model, tokenizer, prompts, settings, stop_ids=[eot], stop_strings=[marker], pad_id=eot)
    assert marker not in stopped[1].text
    assert free[1].text.startswith(stopped[1].text)
    assert stopped[1].new_tokens < free[1].new_tokens


def test_bad_settings_are_refused():
    from finetune.errors import FinetuneError

    with pytest.raises(FinetuneError, match="--temperature"):
        GenerationSettings(temperature=-1).check()
    with pytest.raises(FinetuneError, match="--batch-size"):
        GenerationSettings(batch_size=0).check()
