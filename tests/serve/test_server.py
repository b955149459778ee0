"""`moses serve` for real: uvicorn on a free loopback port, called with the official `openai` client, on a
MoSEs run of the embedded demo stream (tasks "alive" and "size") with the tiny random Llama."""

import json
import socket
import threading
import time
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import openai
import pytest
import torch
import uvicorn

from moses.data.collate import generation_batch
from moses.data.demo import demo_stream
from moses.runner.run import run
from moses.serve import Engine, create_app
from moses.serve import engine as engine_module
from moses.serve.engine import GenerationRequest
from moses.serve.prefill import bucketed_prefill, should_bucket

from conftest import tiny_config


def http(method: str, url: str, body: bytes | dict | None = None, timeout: float = 120) -> tuple[int, str]:
    """(status, text) of one plain HTTP request (the stdlib client: what the server answers, unparsed)."""
    data = json.dumps(body).encode() if isinstance(body, dict) else body
    request = urllib.request.Request(url, data=data, method=method, headers={"content-type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return response.status, response.read().decode()
    except urllib.error.HTTPError as err:
        return err.code, err.read().decode()


CHAT_TEMPLATE = ("{% for m in messages %}{{ m['role'] }}: {{ m['content'] }}\n{% endfor %}"
                 "{% if add_generation_prompt %}assistant:{% endif %}")


@pytest.fixture(scope="module")
def run_dir(tiny_model_dir, tmp_path_factory) -> Path:
    config = tiny_config(tiny_model_dir, tmp_path_factory.mktemp("serve") / "run", epochs=2)
    run(config, echo=lambda *_: None)
    return Path(config.output)


class Server:
    """A real uvicorn server in a thread, on a free port of 127.0.0.1."""

    def __init__(self, engine: Engine, **options) -> None:
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            self.port = probe.getsockname()[1]
        self.app = create_app(engine, **options)
        self.server = uvicorn.Server(uvicorn.Config(self.app, host="127.0.0.1", port=self.port, log_level="warning"))
        self.thread = threading.Thread(target=self.server.run, daemon=True)

    def __enter__(self):
        self.thread.start()
        deadline = time.time() + 30
        while not self.server.started:
            if time.time() > deadline or not self.thread.is_alive():
                raise RuntimeError("the server did not start")
            time.sleep(0.02)
        return self

    def __exit__(self, *exc):
        self.server.should_exit = True
        self.thread.join(timeout=30)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def client(self) -> openai.OpenAI:
        return openai.OpenAI(base_url=self.url + "/v1", api_key="unused", max_retries=0, timeout=120)


@pytest.fixture(scope="module")
def served(run_dir):
    engine = Engine.load(run_dir, precision="fp32")
    engine.tokenizer.chat_template = CHAT_TEMPLATE
    with Server(engine, window_seconds=0.5) as server:
        yield server, engine


def expected_greedy(engine: Engine, prompts: list[str], tasks: list[int], max_tokens: int) -> list[str]:
    """What MoSEsModel.generate gives for those prompts with those per-sample task ids (the reference)."""
    batch = generation_batch(engine.tokenizer, prompts, engine.max_prompt_tokens)
    with torch.no_grad():
        out = engine.model.generate(**batch, task_ids=torch.tensor(tasks), max_new_tokens=max_tokens,
                                    do_sample=False, pad_token_id=engine.tokenizer.pad_token_id)
    texts = []
    for row in out[:, batch["input_ids"].shape[1]:].tolist():
        eos = engine.tokenizer.eos_token_id
        texts.append(engine.tokenizer.decode(row[: row.index(eos)] if eos in row else row, skip_special_tokens=True))
    return texts


def batch_counts(server) -> tuple[float, float]:
    text = http("GET", server.url + "/metrics")[1]
    values = {line.split()[0]: float(line.split()[1]) for line in text.splitlines() if line.startswith("moses_batch")}
    return values.get("moses_batch_size_count", 0.0), values.get("moses_batch_size_sum", 0.0)


def test_models_lists_the_base_auto_and_every_task(served):
    server, engine = served
    models = {m.id: m for m in server.client().models.list().data}
    assert set(models) == {engine.base_name, "auto", "alive", "size"}
    assert models["alive"].parent == engine.base_name and models[engine.base_name].parent is None
    assert json.loads(http("GET", server.url + "/health")[1]) == {"status": "ok", "tasks": 2, "waiting": 0}


def test_two_tasks_in_one_batch_equal_generate_with_their_task_ids(served):
    server, engine = served
    alive, size = demo_stream(n_test=4)
    prompts = [alive.test[0]["prompt"], size.test[1]["prompt"]]
    before = batch_counts(server)
    client = server.client()
    with ThreadPoolExecutor(2) as pool:
        futures = [pool.submit(client.completions.create, model=task, prompt=prompt, max_tokens=6, temperature=0)
                   for task, prompt in zip(("alive", "size"), prompts, strict=True)]
        answers = [f.result() for f in futures]
    after = batch_counts(server)
    assert after[0] - before[0] == 1 and after[1] - before[1] == 2  # one batch of the two requests
    assert [a.model for a in answers] == ["alive", "size"]
    assert [a.choices[0].text for a in answers] == expected_greedy(engine, prompts, [0, 1], 6)
    assert answers[0].usage.prompt_tokens == len(engine.tokenizer(prompts[0], add_special_tokens=False)["input_ids"])


def test_auto_infers_each_prompts_task(served):
    server, _ = served
    client = server.client()
    for task in demo_stream(n_test=6):
        for example in task.test:
            answer = client.completions.create(model="auto", prompt=example["prompt"], max_tokens=2, temperature=0)
            assert answer.model == task.name


def test_streaming_gives_the_same_text_as_not_streaming(served):
    server, _ = served
    client = server.client()
    prompt = demo_stream(n_test=4)[1].test[0]["prompt"]
    whole = client.completions.create(model="size", prompt=prompt, max_tokens=8, temperature=0)
    chunks = list(client.completions.create(model="size", prompt=prompt, max_tokens=8, temperature=0, stream=True))
    assert "".join(c.choices[0].text for c in chunks) == whole.choices[0].text
    assert chunks[-1].choices[0].finish_reason == whole.choices[0].finish_reason
    messages = [{"role": "user", "content": prompt}]
    chat = client.chat.completions.create(model="size", messages=messages, max_tokens=8, temperature=0)
    streamed = list(client.chat.completions.create(model="size", messages=messages, max_tokens=8, temperature=0,
                                                   stream=True))
    assert "".join(c.choices[0].delta.content or "" for c in streamed) == chat.choices[0].message.content
    assert chat.model == "size" and chat.choices[0].message.role == "assistant"


def test_stop_max_tokens_seed_and_the_base_model(served):
    server, engine = served
    client = server.client()
    prompt = demo_stream(n_test=4)[0].test[0]["prompt"]
    long = client.completions.create(model=engine.base_name, prompt=prompt, max_tokens=12, temperature=0)
    assert long.model == engine.base_name and long.usage.completion_tokens <= 12
    text = long.choices[0].text
    assert len(text) > 4, text  # a random model rambles on
    cut = client.completions.create(model=engine.base_name, prompt=prompt, max_tokens=12, temperature=0,
                                    stop=[text[2:4]])
    assert cut.choices[0].text == text[: text.find(text[2:4])] and cut.choices[0].finish_reason == "stop"
    streamed = client.completions.create(model=engine.base_name, prompt=prompt, max_tokens=12, temperature=0,
                                         stop=text[2:4], stream=True)
    assert "".join(c.choices[0].text for c in streamed) == cut.choices[0].text
    one = client.completions.create(model="alive", prompt=prompt, max_tokens=1, temperature=0)
    assert one.usage.completion_tokens <= 1
    exact = client.completions.create(model="alive", prompt=prompt, max_tokens=9, temperature=0,
                                      extra_body={"ignore_eos": True})  # vLLM's extension
    assert exact.usage.completion_tokens == 9 and exact.choices[0].finish_reason == "length"
    sampled = [client.completions.create(model="alive", prompt=prompt, max_tokens=6, temperature=1.0, seed=7)
               .choices[0].text for _ in range(2)]
    assert sampled[0] == sampled[1]  # the same seed samples the same text


def test_errors_are_openai_errors(served, run_dir):
    server, engine = served
    client = server.client()
    with pytest.raises(openai.NotFoundError, match="The model `nope` does not exist"):
        client.completions.create(model="nope", prompt="x", max_tokens=2)
    with pytest.raises(openai.BadRequestError, match="max_tokens"):
        client.completions.create(model="alive", prompt="x", max_tokens=0)
    status, text = http("POST", server.url + "/v1/completions", b"{not json")
    assert status == 400 and set(json.loads(text)["error"]) == {"message", "type", "param", "code"}
    with Server(engine, queue_limit=0) as full, pytest.raises(openai.RateLimitError, match="queue limit 0"):
        full.client().completions.create(model="alive", prompt="x", max_tokens=2)


def test_reload_adds_a_task_without_a_restart(run_dir, tiny_model_dir):
    engine = Engine.load(run_dir / "checkpoints" / "00-alive", tiny_model_dir, precision="fp32")
    with Server(engine) as server:
        client = server.client()
        assert {m.id for m in client.models.list().data} >= {"alive"} and engine.tasks == ["alive"]
        with pytest.raises(openai.NotFoundError):
            client.completions.create(model="size", prompt="x", max_tokens=2)
        status, text = http("POST", server.url + "/v1/adapters/reload",
                            {"path": str(run_dir / "checkpoints" / "01-size")})
        reloaded = json.loads(text)
        assert status == 200, text
        assert reloaded["tasks"] == ["alive", "size"] and reloaded["added"] == ["size"]
        answer = client.completions.create(model="size", prompt="x", max_tokens=2, temperature=0)
        assert answer.model == "size"
        metrics = http("GET", server.url + "/metrics")[1]
        assert 'moses_requests_total{status="ok",task="size"} 1.0' in metrics


def test_a_stream_delivers_tokens_while_the_batch_is_still_generating(served):
    """Tokens reach the stream as they are made (the batcher's queue), before the whole answer exists."""
    import asyncio

    from moses.serve.batcher import Batcher

    _, engine = served
    prompt = demo_stream(n_test=4)[0].test[0]["prompt"]

    async def first_token_before_the_end() -> bool:
        batcher = Batcher(engine, window_seconds=0.0)
        batcher.start()
        try:
            tokens, future = batcher.submit_streaming(GenerationRequest(prompt, None, max_tokens=48, temperature=0))
            first = await tokens.get()
            early = first is not None and not future.done()
            while await tokens.get() is not None:
                pass
            await future
            return early
        finally:
            await batcher.stop()

    assert asyncio.run(first_token_before_the_end())


def test_prompts_of_very_different_lengths_are_prefilled_in_buckets_with_the_same_answers(served, monkeypatch):
    _, engine = served
    alive, size = demo_stream(n_test=4)
    prompts = [alive.test[0]["prompt"], " ".join(e["prompt"] for e in size.test), size.test[2]["prompt"] * 3]
    requests = [GenerationRequest(prompt=p, task=t, max_tokens=5, temperature=0)
                for p, t in zip(prompts, ("alive", "size", None), strict=True)]
    batch = generation_batch(engine.tokenizer, prompts, engine.max_prompt_tokens)
    assert should_bucket(batch["attention_mask"])  # the case the buckets are for
    calls = []
    monkeypatch.setattr(engine_module, "bucketed_prefill", lambda *a: calls.append(1) or bucketed_prefill(*a))
    streamed: dict[int, list[int]] = {}
    bucketed = engine.generate(requests, on_token=lambda row, token: streamed.setdefault(row, []).append(token))
    eos = engine.tokenizer.eos_token_id
    cut = [ids[:5][: ids[:5].index(eos)] if eos in ids[:5] else ids[:5] for ids in (streamed[row] for row in range(3))]
    assert [engine.tokenizer.decode(ids, skip_special_tokens=True) for ids in cut] == [r.text for r in bucketed]
    engine.bucket_prefill = False
    try:
        padded = engine.generate(requests)
    finally:
        engine.bucket_prefill = True
    assert calls == [1] and [r.text for r in bucketed] == [r.text for r in padded]
    assert [r.text for r in bucketed] == expected_greedy(engine, prompts, [0, 1, -1], 5)


def test_every_forward_runs_on_the_one_generation_thread(served, monkeypatch):
    """Batches and the task inference of streamed requests run on the batcher's single thread (one OpenMP team)."""
    server, engine = served
    threads = []
    for name in ("generate", "task_indices"):
        original = getattr(engine, name)
        monkeypatch.setattr(engine, name, lambda *a, _original=original, **k: threads.append(
            threading.current_thread().name) or _original(*a, **k))
    client = server.client()
    alive, _ = demo_stream(n_test=4)
    for prompt in (alive.test[0]["prompt"], alive.test[1]["prompt"]):
        client.completions.create(model="alive", prompt=prompt, max_tokens=2, temperature=0)
    list(client.completions.create(model="auto", prompt=alive.test[0]["prompt"], max_tokens=2, temperature=0,
                                   stream=True))
    assert len(threads) >= 4 and len(set(threads)) == 1 and threads[0].startswith("moses-generate")
