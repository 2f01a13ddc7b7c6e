"""`finetune serve`'s web page in a real headless Chromium (Debian's `chromium`, driven by Playwright's Python
package): chat shows the model's reply, compare shows one column per model, and a blind pick writes a pair
that `finetune preprocess` accepts under `rl: dpo`."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any, Iterator

import pytest

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
if not Path(CHROMIUM).is_file():
    pytest.skip("needs Debian's chromium (apt-get install -y chromium; .ci/run installs it)", allow_module_level=True)
sync_api = pytest.importorskip("playwright.sync_api", reason="needs Playwright's Python package (pip install playwright)")
openai = pytest.importorskip("openai")

from serving import ServerThread  # noqa: E402

FLAGS = ["--no-sandbox", "--headless", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync"]


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    with sync_api.sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=FLAGS)
        yield browser
        browser.close()


def api_answer(url: str, model: str, messages: list[dict[str, str]]) -> str:
    """What the page must show: the API's greedy answer (equal to `finetune chat`, tests/serve/test_app.py)."""
    api = openai.OpenAI(base_url=f"{url}/v1", api_key="unused", max_retries=0)
    return api.chat.completions.create(model=model, messages=messages, temperature=0).choices[0].message.content


def open_page(browser: Any, url: str) -> Any:
    page = browser.new_page()
    page.goto(url)
    sync_api.expect(page.get_by_role("status").first).to_contain_text("models ready", timeout=30_000)
    return page


def test_chat_shows_the_models_reply(browser: Any, server: Any, served_runs: Any) -> None:
    thread, _, _ = server
    model = served_runs[0][0].name
    page = open_page(browser, thread.url)
    page.get_by_label("Model").select_option(model)
    page.get_by_role("textbox", name="Message").fill("How many legs has a spider?")
    page.get_by_role("button", name="Send").click()
    reply = page.locator("#chat-log li.assistant").last
    expected = api_answer(thread.url, model, [{"role": "user", "content": "How many legs has a spider?"}])
    sync_api.expect(reply).to_have_text(expected, timeout=60_000)
    sync_api.expect(page.get_by_role("button", name="Send")).to_be_enabled()
    page.close()


def test_compare_shows_one_column_per_model(browser: Any, server: Any, served_runs: Any) -> None:
    thread, pool, _ = server
    page = open_page(browser, thread.url)
    page.get_by_role("tab", name="Compare").click()
    page.get_by_role("textbox", name="Prompt").fill("What is the capital of France?")
    page.get_by_role("button", name="Compare").click()
    columns = page.locator("#compare-columns article")
    sync_api.expect(columns).to_have_count(len(pool.served))
    sync_api.expect(page.locator('#compare-columns article[data-done="true"]')).to_have_count(len(pool.served),
                                                                                           timeout=90_000)
    shown = {columns.nth(i).locator("h3").inner_text(): columns.nth(i).locator("p").inner_text()
             for i in range(len(pool.served))}
    messages = [{"role": "user", "content": "What is the capital of France?"}]
    assert shown == {name: api_answer(thread.url, name, messages) for name in pool.served}
    page.close()


def test_a_blind_pick_writes_a_pair_that_preprocess_accepts(browser: Any, server: Any, served_runs: Any,
                                                            tmp_path: Path, tiny_llama_dir: Path) -> None:
    from finetune.config import load_recipe_text
    from finetune.serve.app import ServeOptions, create_app
    from finetune.train.preprocess import preprocess

    _, pool, engine = server
    preferences = tmp_path / "preferences.jsonl"
    heldout = [{"messages": [{"role": "user", "content": "are you coming tonight?"}], "reply": "ya obviously, 8?"}]
    app = create_app(pool, engine, ServeOptions(api_key=None, preferences=preferences, heldout=heldout))
    with ServerThread(app) as thread:
        page = open_page(browser, thread.url)
        page.get_by_role("tab", name="Blind test").click()
        for round_ in range(3):
            page.get_by_role("button", name="Next pair").click()
            pick = page.get_by_role("button", name="A sounds like me")
            sync_api.expect(pick).to_be_enabled(timeout=90_000)
            assert "are you coming tonight?" in page.locator("#blind-context").inner_text()
            pick.click()
            sync_api.expect(page.locator("#blind-saved")).to_contain_text(f"saved ({round_ + 1} pairs", timeout=30_000)
        page.get_by_role("button", name="Reveal the tally").click()
        tally = page.locator("#blind-tally tbody tr")
        assert tally.count() >= 2
        assert sum(int(tally.nth(i).locator("td").nth(1).inner_text()) for i in range(tally.count())) == 3
        page.close()

    rows = [json.loads(line) for line in preferences.read_text(encoding="utf-8").splitlines()]
    assert len(rows) == 3
    for row in rows:
        assert row["messages"] == heldout[0]["messages"]
        assert row["chosen"]["role"] == row["rejected"]["role"] == "assistant"
        assert row["chosen"]["content"] != row["rejected"]["content"]
        assert set(row["models"].values()) <= {*pool.served, "your real reply"}
    recipe = f"""
base_model: {tiny_llama_dir}
adapter: lora
lora_target_linear: true
rl: dpo
chat_template: llama3
datasets:
  - path: {preferences}
    type: chat_template.default
    field_messages: messages
    field_chosen: chosen
    field_rejected: rejected
dataset_prepared_path: {tmp_path / "prepared"}
val_set_size: 0
output_dir: {tmp_path / "out"}
sequence_len: 128
micro_batch_size: 1
precompute_ref_log_probs: false
special_tokens:
  pad_token: "<|finetune_right_pad_id|>"
  eos_token: "<|eot_id|>"
"""
    settings = load_recipe_text(recipe).settings
    prepared = preprocess(settings)
    assert len(prepared.train) == 3


def test_the_page_asks_for_the_api_key_once_and_sends_it(browser: Any, server: Any) -> None:
    from finetune.serve.app import ServeOptions, create_app

    _, pool, engine = server
    keyed = create_app(pool, engine, ServeOptions(api_key="sesame", preferences=Path("unused"), heldout=[]))
    with ServerThread(keyed) as thread:
        page = browser.new_page()
        page.goto(thread.url)
        sync_api.expect(page.get_by_role("status").first).to_contain_text("needs its API key", timeout=30_000)
        key = page.get_by_label("API key")
        key.fill("sesame")
        key.press("Enter")
        key.dispatch_event("change")
        sync_api.expect(page.get_by_role("status").first).to_contain_text("models ready", timeout=30_000)
        page.close()
