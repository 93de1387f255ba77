"""`lit-swift deploy` on loopback, driven by the official `openai` client and raw HTTP for bad requests."""

from __future__ import annotations

import signal
import threading
import time

import httpx
import openai
import pytest

from tests.serve.helpers import free_port, start_server, stop_server

SMOLLM2 = "smollm2-135m-instruct"
KEY = "sk-test"
CHAT = [{"role": "user", "content": "Name three colours."}]


@pytest.fixture(scope="module")
def server():
    port = free_port()
    args = ["deploy", "--model", SMOLLM2, "--config_overrides", "{num_hidden_layers: 2}", "--device", "cpu"]
    proc = start_server([*args, "--port", str(port), "--api_key", KEY, "--max_batch_size", "8"], port)
    yield proc, f"http://127.0.0.1:{port}"
    stop_server(proc)


@pytest.fixture(scope="module")
def client(server):
    return openai.OpenAI(base_url=server[1] + "/v1", api_key=KEY, max_retries=0, timeout=120)


def greedy(client, **kwargs):
    kwargs = {"model": SMOLLM2, "messages": CHAT, "temperature": 0, "max_tokens": 12, **kwargs}
    return client.chat.completions.create(**kwargs)


def test_models_and_plain_chat_with_usage(client):
    assert [m.id for m in client.models.list().data] == [SMOLLM2]
    out = greedy(client)
    [choice] = out.choices
    assert choice.message.role == "assistant" and choice.message.content
    assert choice.finish_reason in ("stop", "length")
    assert out.usage.prompt_tokens > 5 and 0 < out.usage.completion_tokens <= 12
    assert out.usage.total_tokens == out.usage.prompt_tokens + out.usage.completion_tokens
    assert greedy(client).choices[0].message.content == choice.message.content  # greedy is deterministic


def test_streamed_chat_equals_plain_and_reports_usage(client):
    plain = greedy(client)
    chunks = list(greedy(client, stream=True, stream_options={"include_usage": True}))
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == plain.choices[0].message.content
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == plain.choices[0].finish_reason
    assert chunks[-1].usage.completion_tokens == plain.usage.completion_tokens


def test_n_choices_are_seeded(client):
    kwargs = {"model": SMOLLM2, "messages": CHAT, "max_tokens": 8, "n": 3, "seed": 7, "temperature": 1.0}
    first = client.chat.completions.create(**kwargs)
    assert [c.index for c in first.choices] == [0, 1, 2]
    again = client.chat.completions.create(**kwargs)
    assert [c.message.content for c in again.choices] == [c.message.content for c in first.choices]
    assert first.usage.completion_tokens >= 3  # counted over all choices
    assert len({c.message.content for c in first.choices}) > 1  # each choice samples its own stream


def test_stop_string_cuts_the_answer(client):
    full = greedy(client, max_tokens=24).choices[0].message.content
    stop = full.strip()[len(full.strip()) // 2 :][:3]
    cut = greedy(client, max_tokens=24, stop=[stop]).choices[0]
    assert cut.finish_reason == "stop"
    assert cut.message.content == full[: full.index(stop)]


def test_text_completion(client):
    out = client.completions.create(model=SMOLLM2, prompt="The sky is", max_tokens=5, temperature=0)
    assert out.choices[0].text and out.usage.completion_tokens <= 5


BAD = [  # (body or raw text, status, error param or code)
    ("{not json", 400, None),
    ({"model": SMOLLM2}, 400, "messages"),
    ({"model": SMOLLM2, "messages": []}, 400, "messages"),
    ({"model": SMOLLM2, "messages": [{"role": "user", "content": 5}]}, 400, "messages.0.content.str"),
    ({"model": SMOLLM2, "messages": CHAT, "temperature": "hot"}, 400, "temperature"),
    ({"model": SMOLLM2, "messages": CHAT, "max_tokens": -3}, 400, "max_tokens"),
    ({"model": "gpt-5", "messages": CHAT}, 404, "model"),
    ({"model": SMOLLM2, "messages": [{"role": "user", "content": "word " * 9000}]}, 400, "messages"),
]


@pytest.mark.parametrize(("body", "status", "param"), BAD)
def test_bad_requests_get_openai_errors_and_the_server_keeps_serving(server, body, status, param):
    url, auth = server[1] + "/v1/chat/completions", {"Authorization": f"Bearer {KEY}"}
    kwargs = (
        {"content": body, "headers": {**auth, "content-type": "application/json"}}
        if isinstance(body, str)
        else {"json": body, "headers": auth}
    )
    answer = httpx.post(url, timeout=60, **kwargs)
    assert answer.status_code == status, answer.text
    error = answer.json()["error"]
    assert error["message"] and error["type"]
    if param is not None:
        assert error["param"] == param, error
    ok = httpx.post(url, json={"model": SMOLLM2, "messages": CHAT, "max_tokens": 2}, headers=auth, timeout=60)
    assert ok.status_code == 200


def test_api_key_guards_everything_but_health(server):
    base = server[1]
    assert httpx.get(base + "/health").status_code == 200
    for headers in ({}, {"Authorization": "Bearer wrong"}):
        answer = httpx.get(base + "/v1/models", headers=headers)
        assert answer.status_code == 401 and answer.json()["error"]["code"] == "invalid_api_key"


def test_disconnect_mid_stream_frees_the_slot(server):
    base, auth = server[1], {"Authorization": f"Bearer {KEY}"}
    body = {"model": SMOLLM2, "messages": CHAT, "max_tokens": 4000, "stream": True, "temperature": 1.0}
    with httpx.stream("POST", base + "/v1/chat/completions", json=body, headers=auth, timeout=60) as answer:
        lines = answer.iter_lines()
        assert next(line for line in lines if line.startswith("data:"))
        next(line for line in lines if line.startswith("data:"))
    deadline = time.monotonic() + 60
    while (health := httpx.get(base + "/health").json())["running"] and time.monotonic() < deadline:
        time.sleep(0.2)
    assert health["running"] == 0 and health["waiting"] == 0


def test_sigterm_drains_in_flight_requests_and_exits_0(server, client):
    proc = server[0]
    result = {}
    worker = threading.Thread(target=lambda: result.update(out=greedy(client, max_tokens=40)))
    worker.start()
    deadline = time.monotonic() + 60
    while not httpx.get(server[1] + "/health").json()["running"] and time.monotonic() < deadline:
        time.sleep(0.05)
    proc.send_signal(signal.SIGTERM)
    worker.join(timeout=120)
    assert result["out"].choices[0].message.content
    assert proc.wait(timeout=60) == 0
