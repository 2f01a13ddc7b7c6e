"""Near-duplicate filtering (`dedup: near`) and filler assistant turns (`min_assistant_chars`)."""

from __future__ import annotations

import pytest

from finetune.data import cache
from finetune.data.build import prepare_data
from finetune.data.neardup import conversation_text, drop_filler_turns, jaccard, near_duplicates, shingles
from finetune.errors import RecipeError


def messages(rows):
    return [row["messages"] for row in rows]


def similarity(a, b, ngram=3):
    return jaccard(shingles(conversation_text(a), ngram), shingles(conversation_text(b), ngram))


def pair_with_jaccard_near_0_6():
    common = " ".join(f"c{i}" for i in range(30))
    left, right = (
        [{"role": "user", "content": "hello there"},
         {"role": "assistant", "content": common + " " + " ".join(f"{tag}{i}" for i in range(10))}]
        for tag in "ab"
    )
    return left, right


def decoded_train(result, tokenizer) -> list[str]:
    return [tokenizer.decode(row["input_ids"]) for row in result.train]


# --- the algorithm ----------------------------------------------------------------------------


def test_small_edit_copies_are_removed_distinct_kept_first_occurrence_kept(near_duplicate_rows):
    rows, sources = near_duplicate_rows
    found = near_duplicates(messages(rows), threshold=0.8, ngram=3, seed=42)
    assert {pair.removed: pair.kept for pair in found} == sources
    assert all(pair.similarity >= 0.9 for pair in found)
    for pair in found:  # the removed copies really are not exact duplicates
        assert rows[pair.removed] != rows[pair.kept]


def test_the_first_of_a_group_is_kept_even_when_a_later_copy_comes_first_in_the_list(near_duplicate_rows):
    rows, _ = near_duplicate_rows
    reordered = [rows[12]] + rows[:12]  # the near copy of row 4 now leads
    found = near_duplicates(messages(reordered), threshold=0.8, ngram=3, seed=42)
    assert [(pair.kept, pair.removed) for pair in found] == [(0, 5)]


def test_threshold_is_respected():
    left, right = pair_with_jaccard_near_0_6()
    assert 0.55 < similarity(left, right) < 0.65
    assert near_duplicates([left, right], threshold=0.8, ngram=3, seed=42) == []
    found = near_duplicates([left, right], threshold=0.5, ngram=3, seed=42)
    assert [(pair.kept, pair.removed) for pair in found] == [(0, 1)]
    assert found[0].similarity == round(similarity(left, right), 4)


def test_deterministic_for_a_seed(near_duplicate_rows):
    rows, _ = near_duplicate_rows
    samples = messages(rows) + list(pair_with_jaccard_near_0_6())
    runs = [near_duplicates(samples, threshold=0.6, ngram=2, seed=seed) for seed in (7, 7, 8)]
    assert len(runs[0]) == 4
    assert runs[0] == runs[1]
    assert {pair.removed for pair in runs[2]} == {pair.removed for pair in runs[0]}  # candidates checked exactly


def test_deterministic_across_processes_whatever_the_string_hash_seed(near_duplicate_rows, tmp_path):
    import json
    import os
    import subprocess
    import sys

    rows, _ = near_duplicate_rows
    (tmp_path / "rows.json").write_text(json.dumps(messages(rows)), encoding="utf-8")
    code = (
        "import json, sys; from finetune.data.neardup import near_duplicates; "
        "found = near_duplicates(json.load(open(sys.argv[1])), threshold=0.8, ngram=3, seed=42); "
        "print(json.dumps([(p.kept, p.removed, p.similarity) for p in found]))"
    )
    outputs = []
    for hash_seed in ("1", "2"):
        env = {**os.environ, "PYTHONHASHSEED": hash_seed}
        done = subprocess.run([sys.executable, "-c", code, str(tmp_path / "rows.json")],
                              capture_output=True, text=True, env=env, check=True)
        outputs.append(json.loads(done.stdout.strip().splitlines()[-1]))
    assert outputs[0] == outputs[1] and len(outputs[0]) == 3


def test_a_shared_system_prompt_does_not_make_conversations_alike(make_conversation):
    system = {"role": "system", "content": " ".join(f"rule{i}" for i in range(200))}
    rows = [[system] + [m for m in make_conversation(i)["messages"] if m["role"] != "system"] for i in range(1, 9)]
    assert near_duplicates(rows, threshold=0.5, ngram=3, seed=42) == []
    assert "rule1" not in conversation_text(rows[0])


def test_shingles_ignore_case_and_punctuation_and_count_words():
    assert shingles("Hello, World!  hello world", 2) == {"hello world", "world hello"}
    assert shingles("ok", 3) == {"ok"}


def chat(*turns: str) -> list[dict[str, str]]:
    return [{"role": ("user", "assistant")[i % 2], "content": text} for i, text in enumerate(turns)]


def test_replies_that_differ_only_in_emoji_are_both_kept():
    cheer, cry = chat("did you get the job?", "🎉🎉"), chat("did you get the job?", "😭")
    assert similarity(cheer, cry) < 0.8
    assert near_duplicates([cheer, cry], threshold=0.8, ngram=3, seed=42) == []
    # every emoji-only reply to the same message stays: they are different answers
    replies = [chat("ok", emoji) for emoji in ("😂", "❤️", "👍🏽", "👍", "🇩🇪", "🎉🎉", "🎉")]
    assert near_duplicates(replies, threshold=0.8, ngram=3, seed=42) == []
    # and the same emoji reply copied is still a duplicate
    found = near_duplicates([cheer, chat("Did you get the job", "🎉🎉"), cry], threshold=0.8, ngram=3, seed=42)
    assert [(pair.kept, pair.removed, pair.similarity) for pair in found] == [(0, 1, 1.0)]


def test_symbols_and_standalone_punctuation_count_attached_punctuation_does_not():
    assert shingles("ok :) 🎉🎉 👍🏽 £5", 9) == {"ok :) 🎉 🎉 👍🏽 £ 5"}
    assert similarity(chat("see you", "ok :)"), chat("see you", "ok :(")) < 0.8
    assert shingles("Hello, World!", 3) == shingles("hello world", 3)


def test_turn_boundaries_and_role_names_never_match_words_of_a_message():
    two_turns = chat("hi", "yo")
    one_turn = chat("hi assistant yo")
    words = chat("user hi", "assistant yo")
    assert similarity(two_turns, one_turn, ngram=2) < 0.5
    assert similarity(two_turns, words, ngram=2) < 0.5
    assert similarity(chat("hi\nassistant: yo"), two_turns, ngram=2) < 0.5  # a line break cannot open a turn
    assert similarity("user: hi\nassistant: yo", two_turns, ngram=2) < 0.5  # nor can a completion text
    assert near_duplicates([two_turns, one_turn, words], threshold=0.5, ngram=2, seed=42) == []


def test_filler_turns_are_removed_with_the_turns_they_answer():
    sample = [
        {"role": "system", "content": "be brief"},
        {"role": "user", "content": "ping"},
        {"role": "assistant", "content": " ok "},
        {"role": "user", "content": "explain rivers"},
        {"role": "assistant", "content": "Rivers flow downhill."},
        {"role": "user", "content": "thanks"},
        {"role": "assistant", "content": "lol"},
    ]
    cleaned, removed = drop_filler_turns(sample, 5)
    assert removed == 2
    assert cleaned == [sample[0], sample[3], sample[4]]
    assert drop_filler_turns(sample, 0) == (sample, 0)
    assert drop_filler_turns("a completion text", 5) == ("a completion text", 0)


# --- settings ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("key, value", [("dedup_threshold", 0.7), ("dedup_ngram", 5)])
@pytest.mark.parametrize("dedup", [False, True])
def test_near_settings_without_dedup_near_are_located_errors(data_settings, write_chats, key, value, dedup):
    chats = write_chats(4)
    with pytest.raises(RecipeError, match=rf"recipe\.yml:\d+: {key} is used only with dedup: near"):
        data_settings([{"path": chats}], dedup=dedup, **{key: value})
    settings = data_settings([{"path": chats}], dedup="near", **{key: value})
    assert getattr(settings, key) == value and settings.dedup == "near"


@pytest.mark.parametrize("value", ["fuzzy", 3])
def test_dedup_accepts_only_true_false_or_near(data_settings, write_chats, value):
    with pytest.raises(RecipeError, match=r"recipe\.yml:\d+: dedup: expected true, false or near"):
        data_settings([{"path": write_chats(4)}], dedup=value)
    assert [data_settings([{"path": write_chats(4)}], dedup=v).dedup for v in (True, False, "near")] == [
        True, False, "near"
    ]


@pytest.mark.parametrize("value", [0, 1, 1.5])
def test_threshold_must_be_strictly_between_0_and_1(data_settings, write_chats, value):
    chats = write_chats(4)
    with pytest.raises(RecipeError, match="dedup_threshold"):
        data_settings([{"path": chats}], dedup="near", dedup_threshold=value)


def test_each_new_setting_changes_the_fingerprint(data_settings, write_chats, llama3_tokenizer):
    chats = write_chats(4)
    variants = [
        {},
        {"dedup": "near"},
        {"dedup": "near", "dedup_threshold": 0.7},
        {"dedup": "near", "dedup_ngram": 2},
        {"min_assistant_chars": 5},
    ]
    keys = [cache.fingerprint(data_settings([{"path": chats}], **v), llama3_tokenizer, "") for v in variants]
    assert len(set(keys)) == len(variants)
    assert cache.fingerprint(data_settings([{"path": chats}], dedup=True), llama3_tokenizer, "") not in keys


# --- preprocessing --------------------------------------------------------------------------------


def test_a_dedup_near_recipe_preprocesses_and_counts(data_settings, write_chats, near_duplicate_rows, llama3_tokenizer):
    rows, _ = near_duplicate_rows
    path = write_chats(rows=rows)
    exact = prepare_data(data_settings([{"path": path}], dedup=True), llama3_tokenizer, progress=False).summary
    assert exact.dropped["duplicate"] == 0 and exact.train_samples == 15  # exact dedup misses them
    result = prepare_data(data_settings([{"path": path}], dedup="near"), llama3_tokenizer, progress=False)
    summary = result.summary
    assert summary.dropped["near duplicate"] == 3 and summary.train_samples == 12
    texts = decoded_train(result, llama3_tokenizer)
    assert len(texts) == 12 and not any(" indeed<|eot_id|>" in text or " too<|eot_id|>" in text for text in texts)
    assert "near duplicate" in summary.format_table()
    examples = summary.near_duplicate_examples
    assert [pair["removed"].split(": ")[0] for pair in examples] == [f"{path}:13", f"{path}:14"]
    assert [pair["kept"].split(": ")[0] for pair in examples] == [f"{path}:5", f"{path}:8"]
    again = prepare_data(data_settings([{"path": path}], dedup="near"), llama3_tokenizer, progress=False, force=True)
    assert again.train["input_ids"] == result.train["input_ids"]


def test_show_prints_two_example_pairs(data_settings, write_chats, near_duplicate_rows, capsys):
    from finetune.train.preprocess import preprocess

    rows, _ = near_duplicate_rows
    path = write_chats(rows=rows)
    settings = data_settings([{"path": path}], dedup="near", special_tokens={"eos_token": "<|eot_id|>"})
    preprocess(settings, show=1, progress=False)
    out = capsys.readouterr().out
    assert out.count("near-duplicate ") == 2 and "near-duplicate 3" not in out
    kept = out.split("near-duplicate 1 (Jaccard ")[1].splitlines()
    assert kept[1].startswith(f"  kept:    {path}:5: user: ") and kept[2].startswith(f"  removed: {path}:13: user: ")
    text = kept[1][len(f"  kept:    {path}:5: "):]
    assert len(text) == 160 and text.endswith("…") and "\n" not in text  # truncated, one line
    assert text.startswith(conversation_text(rows[4]["messages"]).split("\n")[0])
    preprocess(settings, show=0, progress=False)  # without --show: only the count
    out = capsys.readouterr().out
    assert "near duplicate" in out and "kept:" not in out


def test_min_assistant_chars_removes_filler_and_counts(data_settings, write_chats, make_conversation, llama3_tokenizer):
    filler_only = {"messages": [{"role": "user", "content": "ping 7"}, {"role": "assistant", "content": "k."}]}
    mixed = {"messages": [
        {"role": "user", "content": "ping 8"}, {"role": "assistant", "content": "ok"},
        {"role": "user", "content": "explain the river stone"}, {"role": "assistant", "content": "Stones sink."},
    ]}
    rows = [make_conversation(i) for i in range(4)] + [filler_only, mixed]
    path = write_chats(rows=rows)
    plain = prepare_data(data_settings([{"path": path}]), llama3_tokenizer, progress=False)
    assert plain.summary.train_samples == 6 and plain.summary.filler_turns == 0
    assert any("ping 7" in text for text in decoded_train(plain, llama3_tokenizer))
    result = prepare_data(data_settings([{"path": path}], min_assistant_chars=3), llama3_tokenizer, progress=False)
    summary = result.summary
    assert summary.filler_turns == 2 and summary.dropped["only filler replies"] == 1
    assert summary.train_samples == 5
    texts = decoded_train(result, llama3_tokenizer)
    assert not any("ping 7" in text or "ping 8" in text for text in texts)
    assert any("explain the river stone" in text and "Stones sink." in text for text in texts)
    assert "filler turns removed" in summary.format_table() and "only filler replies" in summary.format_table()


def test_example_pairs_start_near_the_first_difference(data_settings, write_chats):
    import numpy as np

    from finetune.data.build import Corpus

    long = " ".join(f"w{i}" for i in range(80))
    kept = [{"role": "user", "content": "q"}, {"role": "assistant", "content": long}]
    removed = [{"role": "user", "content": "q"}, {"role": "assistant", "content": long + " extra"}]
    corpus = Corpus([kept, removed], np.zeros(2, dtype=np.int32), np.arange(2), [["a.jsonl:1", "a.jsonl:2"]])
    dropped: dict[str, int] = {}
    left, examples = corpus.near_deduplicated(data_settings([{"path": write_chats(4)}], dedup="near"), dropped)
    assert dropped == {"near duplicate": 1} and left.samples == [kept]
    pair = examples[0]
    assert pair["kept"].startswith("a.jsonl:1: …") and pair["kept"].endswith("w79")
    assert pair["removed"].startswith("a.jsonl:2: …") and pair["removed"].endswith("w79 extra")


def test_a_dedup_near_recipe_trains_on_the_deduplicated_rows(micro_llama_dir, tmp_path, write_chats, near_duplicate_rows):
    import math

    from finetune.config import load_recipe_text
    from finetune.model.tokenizer import load_tokenizer
    from finetune.train.run import run_training

    rows, _ = near_duplicate_rows
    path = write_chats(rows=rows + [{"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "k"}]}])
    settings = load_recipe_text(
        f"base_model: {micro_llama_dir}\ndatasets: [{{path: {path}}}]\ndataset_prepared_path: {tmp_path / 'prepared'}\n"
        "chat_template: llama3\ndedup: near\ndedup_threshold: 0.85\nmin_assistant_chars: 3\nadapter: lora\nlora_target_linear: true\n"
        "lora_r: 4\nlora_alpha: 8\nsequence_len: 256\nbf16: false\noptimizer: sgd\nlearning_rate: 0.1\n"
        "lr_scheduler: constant\nwarmup_steps: 0\nmax_steps: 2\nmicro_batch_size: 2\ngradient_accumulation_steps: 1\n"
        'special_tokens: {pad_token: "<|finetune_right_pad_id|>", eos_token: "<|eot_id|>"}\n'
    ).settings
    tokenizer = load_tokenizer(settings)
    prepared = prepare_data(settings, tokenizer, progress=False)
    assert prepared.summary.dropped["near duplicate"] == 3 and prepared.summary.dropped["only filler replies"] == 1
    assert len(prepared.train) == 12
    result = run_training(settings, prepared, tokenizer, output_dir=tmp_path / "out")
    assert result.global_step == 2 and math.isfinite(result.train_loss)
