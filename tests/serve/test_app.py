"""`finetune serve`'s API through the official `openai` client: the same answers as `finetune chat`, streamed or
not, concurrent requests kept apart, disconnects freeing their row, and every error in OpenAI's shape."""

from __future__ import annotations

import io
import json
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest

openai = pytest.importorskip("openai")
httpx = pytest.importorskip("httpx")

from serving import ServerThread  # noqa: E402

from finetune.infer.chat import chat_main  # noqa: E402

PROMPTS = ["How many legs has a spider?", "What is the capital of France?"]


def client(url: str, **kwargs: Any) -> Any:
    return openai.OpenAI(base_url=f"{url}/v1", api_key=kwargs.pop("api_key", "unused"), max_retries=0, **kwargs)


def chat_answer(settings: Any, prompt: str, max_new_tokens: int = 16, base_only: bool = False) -> str:
    out = io.StringIO()
    assert chat_main(settings, prompt=prompt, temperature=0, max_new_tokens=max_new_tokens, stdout=out,
                     base_only=base_only) == 0
    return out.getvalue().strip()


@pytest.fixture(scope="module")
def expected(served_runs: list[tuple[Path, Any]]) -> dict[tuple[str, str], str]:
    """`finetune chat --temperature 0` for every (model, prompt): the answers the server must give."""
    answers = {}
    for run_dir, settings in served_runs:
        for prompt in PROMPTS:
            answers[(run_dir.name, prompt)] = chat_answer(settings, prompt)
    answers[("base", PROMPTS[0])] = chat_answer(served_runs[0][1], PROMPTS[0], base_only=True)
    return answers


def test_models_are_listed(server: Any, served_runs: list[tuple[Path, Any]]) -> None:
    thread, _, _ = server
    names = [model.id for model in client(thread.url).models.list().data]
    assert names == ["base", *(run_dir.name for run_dir, _ in served_runs)]


def test_temperature_zero_equals_finetune_chat(server: Any, served_runs: Any, expected: dict) -> None:
    thread, _, _ = server
    api = client(thread.url)
    for model, prompt in [(served_runs[0][0].name, PROMPTS[0]), ("base", PROMPTS[0])]:
        reply = api.chat.completions.create(model=model, messages=[{"role": "user", "content": prompt}],
                                            temperature=0, max_tokens=16)
        assert reply.choices[0].message.content == expected[(model, prompt)]
        assert reply.choices[0].message.role == "assistant"
        assert reply.usage.completion_tokens > 0 and reply.usage.prompt_tokens > 0
        assert reply.usage.total_tokens == reply.usage.prompt_tokens + reply.usage.completion_tokens
    assert expected[(served_runs[0][0].name, PROMPTS[0])] != expected[("base", PROMPTS[0])]  # the adapter is on


def test_streamed_deltas_join_to_the_same_text(server: Any, served_runs: Any, expected: dict) -> None:
    thread, _, _ = server
    model = served_runs[1][0].name
    stream = client(thread.url).chat.completions.create(
        model=model, messages=[{"role": "user", "content": PROMPTS[1]}], temperature=0, max_tokens=16, stream=True,
        stream_options={"include_usage": True})
    chunks = list(stream)
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == expected[(model, PROMPTS[1])]
    assert len([c for c in chunks if c.choices and c.choices[0].delta.content]) > 1  # really streamed
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] in ("stop", "length")
    assert chunks[-1].usage is not None and chunks[-1].usage.completion_tokens > 0


def test_concurrent_requests_to_two_adapters_each_get_their_own_answer(server: Any, served_runs: Any,
                                                                       expected: dict) -> None:
    thread, _, _ = server
    api = client(thread.url)
    asks = [(run_dir.name, prompt) for run_dir, _ in served_runs for prompt in PROMPTS]  # 4 requests

    def ask(item: tuple[str, str]) -> str:
        model, prompt = item
        reply = api.chat.completions.create(model=model, messages=[{"role": "user", "content": prompt}],
                                            temperature=0, max_tokens=16)
        return reply.choices[0].message.content

    with ThreadPoolExecutor(len(asks)) as pool:
        answers = list(pool.map(ask, asks))
    assert answers == [expected[item] for item in asks]
    assert len(set(answers)) > 1


def test_a_disconnect_mid_stream_frees_the_slot(server: Any, served_runs: Any, expected: dict) -> None:
    thread, _, engine = server
    model = served_runs[0][0].name
    body = {"model": model, "messages": [{"role": "user", "content": "Tell me a long story."}], "stream": True,
            "temperature": 0, "max_tokens": 2000}
    with httpx.stream("POST", f"{thread.url}/v1/chat/completions", json=body, timeout=30) as response:
        assert response.status_code == 200
        lines = response.iter_lines()
        next(line for line in lines if '"content": "' in line and '"content": ""' not in line)
    # the client is gone: the engine ends that row at its next token and is free again
    deadline = time.monotonic() + 20
    while engine.busy.is_set():
        assert time.monotonic() < deadline, "generation went on after the client left"
        time.sleep(0.05)
    reply = client(thread.url).chat.completions.create(
        model=model, messages=[{"role": "user", "content": PROMPTS[0]}], temperature=0, max_tokens=16)
    assert reply.choices[0].message.content == expected[(model, PROMPTS[0])]


def test_errors_have_openai_shape_and_the_server_keeps_serving(server: Any, served_runs: Any) -> None:
    thread, _, _ = server
    api = client(thread.url)
    model = served_runs[0][0].name
    with pytest.raises(openai.NotFoundError) as unknown:
        api.chat.completions.create(model="nope", messages=[{"role": "user", "content": "hi"}])
    assert unknown.value.status_code == 404 and "nope" in unknown.value.body["message"]
    assert unknown.value.body["type"] == "invalid_request_error"
    with pytest.raises(openai.BadRequestError) as too_long:
        api.chat.completions.create(model=model, messages=[{"role": "user", "content": "word " * 200}])
    assert "sequence_len" in too_long.value.body["message"]
    assert too_long.value.body["code"] == "context_length_exceeded"
    for raw, status in [(b"{not json", 400), (json.dumps({"model": model}).encode(), 400),
                        (json.dumps({"model": model, "messages": [{"role": "wizard", "content": "x"}]}).encode(), 400),
                        (json.dumps({"model": model, "messages": [{"role": "user", "content": "x"}],
                                     "temperature": -1}).encode(), 400)]:
        response = httpx.post(f"{thread.url}/v1/chat/completions", content=raw,
                              headers={"Content-Type": "application/json"})
        assert response.status_code == status, response.text
        error = response.json()["error"]
        assert set(error) == {"message", "type", "param", "code"} and error["message"]
    assert api.chat.completions.create(model=model, messages=[{"role": "user", "content": "hi"}],
                                       max_tokens=2).choices[0].message.content is not None


def test_api_key_is_required_when_set_and_503_while_loading(served_runs: Any, server: Any) -> None:
    from finetune.serve.app import ServeOptions, create_app
    from finetune.serve.engine import Engine
    from finetune.serve.models import ModelPool

    _, pool, engine = server
    keyed = create_app(pool, engine, ServeOptions(api_key="sesame", preferences=served_runs[0][0] / "p.jsonl",
                                                  heldout=[]))
    with ServerThread(keyed) as thread:
        with pytest.raises(openai.AuthenticationError) as denied:
            client(thread.url, api_key="wrong").models.list()
        assert denied.value.status_code == 401 and denied.value.body["code"] == "invalid_api_key"
        assert len(client(thread.url, api_key="sesame").models.list().data) == 3
        assert httpx.get(f"{thread.url}/").status_code == 200  # the page itself needs no key
    empty = ModelPool()
    loading = create_app(empty, Engine(empty), ServeOptions(api_key=None, preferences=Path("unused"), heldout=[]))
    with ServerThread(loading) as thread:
        with pytest.raises(openai.InternalServerError) as busy:
            client(thread.url).models.list()
        assert busy.value.status_code == 503 and "loading" in busy.value.body["message"]


def test_a_pick_becomes_a_pair_row_rl_dpo_reads(server: Any, served_runs: Any) -> None:
    thread, _, _ = server
    path = Path(served_runs[0][1].output_dir) / "preferences.jsonl"
    path.unlink(missing_ok=True)
    pick = {"messages": [{"role": "user", "content": "hi"}], "chosen": "hey you", "rejected": "Greetings.",
            "models": {"chosen": "a", "rejected": "base"}}
    threads = [threading.Thread(target=httpx.post, args=(f"{thread.url}/v1/preferences",), kwargs={"json": pick})
               for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    rows = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]
    assert len(rows) == 4 and rows[0]["chosen"] == {"role": "assistant", "content": "hey you"}
    bad = httpx.post(f"{thread.url}/v1/preferences", json={**pick, "rejected": "hey you"})
    assert bad.status_code == 400 and "same" in bad.json()["error"]["message"]


def test_checkpoints_are_served_as_their_own_models(make_adapter_run: Any) -> None:
    import shutil

    from finetune.serve.engine import Engine, Job, Sampling
    from finetune.serve.models import ModelPool, resolve_sources

    run_dir, settings = make_adapter_run(seed=4)
    other, _ = make_adapter_run(seed=5)
    checkpoint = run_dir / "checkpoint-3"
    shutil.copytree(other, checkpoint, ignore=shutil.ignore_patterns("recipe.yml"))
    pool = ModelPool()
    pool.load(resolve_sources([str(run_dir / "recipe.yml")]), checkpoints=True)
    name = f"{run_dir.name}/checkpoint-3"
    assert list(pool.served) == ["base", run_dir.name, name]
    engine = Engine(pool)
    served = pool.served[name]
    prompt = served.tokenizer.apply_chat_template([{"role": "user", "content": PROMPTS[0]}], tokenize=False,
                                                  add_generation_prompt=True)
    job = Job(model=name, prompt_ids=served.tokenizer(prompt, add_special_tokens=False)["input_ids"],
              sampling=Sampling(max_tokens=16))
    engine.run_batch([job])
    out = io.StringIO()
    chat_main(settings, adapter_dir=checkpoint, prompt=PROMPTS[0], temperature=0, max_new_tokens=16, stdout=out)
    assert job.text == out.getvalue().strip()
