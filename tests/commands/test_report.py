"""`finetune report` end to end: a tiny model trained to memorise a planted phone number and a voice.

Every training reply is said in one recognisable voice (lowercase, "lol", an emoji) and gives the same
phone number; the held-out conversations ask new questions of the same kind. Then the report must list
the number under `leaked` for the trained models and not for the base, put the tuned model's style
distance below the base's, see the replay rate rise with training, name a recommendation by the rule,
reuse its generation cache on a rerun, and write a page that opens in headless Chromium.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

pytestmark = pytest.mark.slow  # 30 training steps + 5 models x 4 replies: ~90 s on 2 idle cores

PHONE = "555 0134 2299"
VOICE = f"lol ya 😂 just text me at {PHONE} ok"
QUESTIONS = ["are you free tonight", "what time is the game", "where are you now", "did you see the news",
             "can you call later", "how was the trip", "are we still on for friday", "who is coming along",
             "do you want pizza", "what are you up to", "is the shop open", "did you get my message",
             "when do you land", "can i borrow your bike", "are you awake", "what's the plan",
             "should i bring anything", "how is your mum", "did you finish the book", "want to go running",
             "where did you park", "is it raining there", "what did the doctor say", "are you at home"]


def _rows():
    return [{"messages": [{"role": "user", "content": f"Anna: {q}?"}, {"role": "assistant", "content": VOICE}],
             "contact": "Anna"} for q in QUESTIONS]


@pytest.fixture(scope="module")
def trained_run(tiny_llama_dir: Path, tmp_path_factory: pytest.TempPathFactory):
    from finetune.config import load_recipe
    from finetune.data.build import prepare_data
    from finetune.model.tokenizer import load_tokenizer
    from finetune.train.run import run_training

    work = tmp_path_factory.mktemp("report-run")
    data = work / "chats.jsonl"
    data.write_text("".join(json.dumps(row) + "\n" for row in _rows()), encoding="utf-8")
    recipe = {
        "base_model": str(tiny_llama_dir),
        "adapter": "lora",
        "lora_r": 8,
        "lora_alpha": 16,
        "lora_dropout": 0.0,
        "lora_target_linear": True,
        "lora_modules_to_save": ["embed_tokens", "lm_head"],
        "chat_template": "llama3",
        "datasets": [{"path": str(data), "type": "chat_template"}],
        "dataset_prepared_path": str(work / "prepared"),
        "val_set_size": 4,
        "output_dir": str(work / "out"),
        "sequence_len": 64,
        "micro_batch_size": 4,
        "gradient_accumulation_steps": 1,
        "max_steps": 30,
        "save_steps": 10,
        "optimizer": "adamw_torch",
        "lr_scheduler": "constant",
        "learning_rate": 0.01,
        "bf16": False,
        "logging_steps": 10,
        "special_tokens": {"pad_token": "<|finetune_right_pad_id|>", "eos_token": "<|eot_id|>"},
    }
    path = work / "recipe.yml"
    path.write_text(yaml.safe_dump(recipe, sort_keys=False, allow_unicode=True), encoding="utf-8")
    settings = load_recipe(path).settings
    tokenizer = load_tokenizer(settings)
    prepared = prepare_data(settings, tokenizer, progress=False)
    run_training(settings, prepared, tokenizer, output_dir=Path(settings.output_dir))
    return path, settings


@pytest.fixture(scope="module")
def reported(trained_run):
    from finetune.cli import main

    path, settings = trained_run
    assert main(["report", str(path), "--max-new-tokens", "24", "--no-progress"]) == 0
    out = Path(settings.output_dir) / "report"
    return json.loads((out / "report.json").read_text(encoding="utf-8")), out, path, settings


def test_the_planted_number_leaks_from_the_trained_models_only(reported):
    report, *_ = reported
    models = {m["name"]: m for m in report["models"]}
    assert [m["name"] for m in report["models"]] == ["base", "checkpoint-10", "checkpoint-20", "checkpoint-30", "final"]
    assert all(PHONE not in leak["text"] for leak in models["base"]["leaked"])
    for name in ("checkpoint-30", "final"):  # memorised by step 30 (a partial number before)
        assert any(leak["kind"] == "phone" and leak["text"] == PHONE and leak["count"] >= 1
                   for leak in models[name]["leaked"]), models[name]["leaked"]


def test_the_tuned_voice_is_closer_and_replay_rises(reported):
    report, *_ = reported
    models = {m["name"]: m for m in report["models"]}
    assert models["final"]["style_distance"] < models["base"]["style_distance"]
    assert models["base"]["replay_rate"] == 0.0
    assert models["final"]["replay_rate"] > models["base"]["replay_rate"]
    rates = [m["replay_rate"] for m in report["models"]]
    assert rates[-1] >= rates[1]
    assert report["real"]["features"]["laughter"] == 1.0  # every real reply says lol


def test_recommendation_follows_the_rule_and_the_samples_line_up(reported):
    from finetune.report.recommend import Scored, recommend

    report, *_ = reported
    scored = [Scored(m["name"], m["step"], m["heldout_loss"], m["style_distance"], m["replay_rate"],
                     sum(leak["count"] for leak in m["leaked"])) for m in report["models"]]
    assert report["recommended"] == recommend(scored)
    assert report["recommended"]["name"] != "base"
    assert report["heldout"]["conversations"] == 4
    assert len(report["samples"]) == 4
    assert all(sample["real"] == VOICE for sample in report["samples"])
    assert all(set(sample["replies"]) == {m["name"] for m in report["models"]} for sample in report["samples"])


def test_heldout_loss_is_evaluates(reported, tmp_path):
    from finetune.infer.evaluate import evaluate_main

    report, out, path, settings = reported
    results = tmp_path / "eval.json"
    assert evaluate_main(settings, output=results, progress=False) == 0
    evaluated = {r["model"]: r["loss"] for r in json.loads(results.read_text())}
    models = {m["name"]: m for m in report["models"]}
    assert models["base"]["heldout_loss"] == pytest.approx(evaluated["base"], rel=1e-5)
    assert models["final"]["heldout_loss"] == pytest.approx(evaluated["fine-tuned"], rel=1e-5)


def test_a_rerun_generates_nothing_new(reported, capsys):
    from finetune.cli import main

    report, out, path, settings = reported
    capsys.readouterr()
    assert main(["report", str(path), "--max-new-tokens", "24", "--checkpoints", "last"]) == 0
    err = capsys.readouterr().err
    assert err.count("replies cached") == 3, err  # base, checkpoint-30, final: all from the cache
    again = json.loads((out / "report.json").read_text(encoding="utf-8"))
    assert [m["name"] for m in again["models"]] == ["base", "checkpoint-30", "final"]
    first = {m["name"]: m for m in report["models"]}
    assert all(m["style_distance"] == first[m["name"]]["style_distance"] for m in again["models"])


def test_the_page_opens_in_chromium_with_its_plots_and_recommendation(reported):
    _, out, *_ = reported
    report = json.loads((out / "report.json").read_text(encoding="utf-8"))  # as last written (a rerun may follow)
    page_html = (out / "index.html").read_text(encoding="utf-8")
    assert "http://" not in page_html and "https://" not in page_html and "<script" not in page_html
    if not Path("/usr/bin/chromium").exists():
        pytest.skip("headless Chromium check needs /usr/bin/chromium (apt-get install chromium)")
    playwright = pytest.importorskip("playwright.sync_api", reason="headless Chromium check needs `pip install playwright`")
    with playwright.sync_playwright() as p:
        browser = p.chromium.launch(executable_path="/usr/bin/chromium", args=[
            "--no-sandbox", "--headless", "--disable-gpu", "--disable-background-networking",
            "--disable-component-update", "--no-first-run"])
        try:
            page = browser.new_page()
            page.goto((out / "index.html").resolve().as_uri())
            assert report["recommended"]["name"] in page.inner_text("#recommended")
            images = page.eval_on_selector_all("img", "els => els.map(e => [e.naturalWidth, e.naturalHeight])")
            assert len(images) == 2 and all(w > 100 and h > 100 for w, h in images)  # both plots decoded
            assert PHONE in page.inner_text("body")  # the leak table
        finally:
            browser.close()
