"""The AI SDK routes over HTTP against a real gateway: the wire formats byte for byte, every
bad request a clear 4xx, and the conversations API scoped to its owner."""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from interlock.testing.fake_upstream import Behavior, FakeUpstream
from tests.support.aisdk import SESSIONS, config, session_token
from tests.support.gateway import ADMIN_KEY, RunningGateway, make_settings, serve

MAX_CONVERSATION = 4096


@pytest.fixture(scope="module")
def upstream() -> Iterator[FakeUpstream]:
    with FakeUpstream() as fake:
        yield fake


@pytest.fixture(scope="module")
def gateway(
    upstream: FakeUpstream, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[RunningGateway]:
    tmp = tmp_path_factory.mktemp("aisdk-api")
    settings_config = config(upstream, max_conversation_bytes=MAX_CONVERSATION)
    settings_config["server"] = {"max_body_bytes": 64 * 1024, "max_output_tokens": 4096}
    with serve(make_settings(tmp, settings_config, SESSIONS)) as running:
        yield running


@pytest.fixture(autouse=True)
def fresh_upstream(upstream: FakeUpstream) -> None:
    upstream.reset()


@pytest.fixture
def token() -> str:
    return session_token(f"web|{uuid.uuid4().hex}")


def user(text: str, id: str | None = None) -> dict[str, Any]:
    return {"id": id or uuid.uuid4().hex, "role": "user", "parts": [{"type": "text", "text": text}]}


def post(
    gateway: RunningGateway,
    path: str,
    body: Any = None,
    *,
    token: str | None,
    content: bytes | None = None,
) -> httpx.Response:
    headers = {"content-type": "application/json"}
    if token is not None:
        headers["authorization"] = f"Bearer {token}"
    if content is None:
        content = json.dumps(body).encode()
    return httpx.post(f"{gateway.url}{path}", content=content, headers=headers, timeout=30)


def get(gateway: RunningGateway, path: str, token: str | None) -> httpx.Response:
    headers = {} if token is None else {"authorization": f"Bearer {token}"}
    return httpx.get(f"{gateway.url}{path}", headers=headers)


def sse(response: httpx.Response) -> list[Any]:
    events = response.text.split("\n\n")
    assert events[-1] == ""
    assert events[-2] == "data: [DONE]"
    return [json.loads(event.removeprefix("data: ")) for event in events[:-2]]


def test_the_ui_message_stream_on_the_wire(
    gateway: RunningGateway, upstream: FakeUpstream, token: str
) -> None:
    upstream.push(Behavior(text="Hi there"))
    response = post(gateway, "/api/chat", {"id": "c1", "messages": [user("Hello")]}, token=token)
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/event-stream")
    assert response.headers["x-vercel-ai-ui-message-stream"] == "v1"
    assert response.headers["cache-control"] == "no-cache"
    assert response.headers["x-accel-buffering"] == "no"
    assert response.headers["x-request-id"].startswith("req_")
    assert response.headers["x-interlock-model"] == "gpt-fake"
    chunks = sse(response)
    assert chunks[0] == {
        "type": "start",
        "messageId": "msg-" + response.headers["x-request-id"][4:],
    }
    assert [c["type"] for c in chunks] == [
        "start",
        "start-step",
        "text-start",
        "text-delta",
        "text-delta",
        "text-end",
        "finish-step",
        "finish",
    ]
    assert "".join(c["delta"] for c in chunks if c["type"] == "text-delta") == "Hi there"


def test_the_data_stream_on_the_wire(
    gateway: RunningGateway, upstream: FakeUpstream, token: str
) -> None:
    upstream.push(Behavior(text="Hi there"))
    body = {"id": "v4", "messages": [{"role": "user", "content": "Hello"}]}
    response = post(gateway, "/api/chat/v4", body, token=token)
    assert response.status_code == 200
    assert response.headers["content-type"] == "text/plain; charset=utf-8"
    assert response.headers["x-vercel-ai-data-stream"] == "v1"
    lines = response.text.splitlines()
    assert response.text.endswith("\n")
    assert [line.split(":", 1)[0] for line in lines] == ["f", "0", "0", "e", "d"]
    assert json.loads(lines[-1].split(":", 1)[1])["finishReason"] == "stop"


def test_the_text_stream_is_plain_text(
    gateway: RunningGateway, upstream: FakeUpstream, token: str
) -> None:
    upstream.push(Behavior(text="Hi there"))
    response = post(gateway, "/api/chat/text", {"messages": [user("Hello")]}, token=token)
    assert response.status_code == 200
    assert response.headers["content-type"] == "text/plain; charset=utf-8"
    assert response.text == "Hi there"


def test_a_text_stream_that_fails_midway_is_cut(
    gateway: RunningGateway, upstream: FakeUpstream, token: str
) -> None:
    upstream.push(Behavior(text="one two three four", error_event_after=2))
    with pytest.raises(httpx.RemoteProtocolError):
        post(gateway, "/api/chat/text", {"messages": [user("Hello")]}, token=token)


BAD_BODIES: list[tuple[str, str, bytes]] = [
    ("/api/chat", "not json", b"{oops"),
    ("/api/chat", "no messages", b'{"id": "x"}'),
    ("/api/chat", "content instead of parts", b'{"messages": [{"role": "user", "content": "x"}]}'),
    ("/api/chat", "a number", b"42"),
    ("/api/chat", "empty", b""),
    ("/api/chat", "part type missing", b'{"messages": [{"role": "user", "parts": [{}]}]}'),
    (
        "/api/chat",
        "pdf",
        b'{"messages": [{"role": "user", "parts": [{"type": "file", "mediaType": '
        b'"application/pdf", "url": "data:application/pdf;base64,AA=="}]}]}',
    ),
    (
        "/api/chat",
        "unknown model",
        b'{"model": "nope", "messages": [{"role": "user", "parts": []}]}',
    ),
    ("/api/chat/v4", "ai 5 body", b'{"messages": [{"role": "user", "parts": "x"}]}'),
    ("/api/chat/v4", "bad role", b'{"messages": [{"role": "robot", "content": "x"}]}'),
    ("/api/chat/v4", "null", b"null"),
    ("/api/chat/text", "not json", b"\xff\xfe"),
    ("/api/chat/text", "no messages", b"{}"),
]


@pytest.mark.parametrize(
    ("path", "content"),
    [(path, content) for path, _, content in BAD_BODIES],
    ids=[f"{path}-{name}" for path, name, _ in BAD_BODIES],
)
def test_bad_bodies_are_readable_4xx(
    gateway: RunningGateway, upstream: FakeUpstream, token: str, path: str, content: bytes
) -> None:
    response = post(gateway, path, token=token, content=content)
    assert 400 <= response.status_code < 500
    assert response.headers["content-type"].startswith("text/plain")
    assert response.headers["x-interlock-error-code"]
    assert response.text and not response.text.startswith("{")  # shown as is by useChat
    assert upstream.ledger == []


def test_errors_before_the_stream_carry_status_message_and_code(
    gateway: RunningGateway, token: str
) -> None:
    missing = post(gateway, "/api/chat", {"messages": [user("x")]}, token=None)
    assert (missing.status_code, missing.headers["x-interlock-error-code"]) == (
        401,
        "invalid_api_key",
    )
    assert missing.text == "Missing API key: send it as `Authorization: Bearer <key>`."
    big = post(gateway, "/api/chat", {"messages": [user("x" * 70_000)]}, token=token)
    assert (big.status_code, big.headers["x-interlock-error-code"]) == (413, "request_too_large")
    pdf = post(
        gateway,
        "/api/chat",
        {
            "messages": [
                {
                    "role": "user",
                    "parts": [{"type": "file", "mediaType": "application/pdf", "url": "data:,"}],
                }
            ]
        },
        token=token,
    )
    assert (pdf.status_code, pdf.headers["x-interlock-error-code"]) == (400, "unsupported_file")
    assert "only images" in pdf.text


def test_resume_has_nothing_to_resume(gateway: RunningGateway, token: str) -> None:
    assert get(gateway, "/api/chat/c1/stream", token).status_code == 204
    assert get(gateway, "/api/chat/c1/stream", None).status_code == 401


def turn(
    gateway: RunningGateway,
    upstream: FakeUpstream,
    token: str,
    chat_id: str,
    *messages: Any,
    **body: Any,
) -> list[Any]:
    upstream.push(Behavior(text="An answer"))
    response = post(
        gateway, "/api/chat", {"id": chat_id, "messages": list(messages), **body}, token=token
    )
    assert response.status_code == 200, response.text
    return sse(response)


def test_conversations_are_listed_read_and_deleted_by_their_owner_only(
    gateway: RunningGateway, upstream: FakeUpstream, token: str
) -> None:
    for name in ("first", "second", "third"):
        turn(gateway, upstream, token, f"chat-{name}", user(f"About {name}"))
    listed = get(gateway, "/api/conversations", token).json()
    assert [item["id"] for item in listed["data"]] == ["chat-third", "chat-second", "chat-first"]
    assert [item["title"] for item in listed["data"]] == [
        "About third",
        "About second",
        "About first",
    ]
    assert listed["has_more"] is False
    assert all(item["message_count"] == 2 for item in listed["data"])
    assert "messages" not in listed["data"][0]
    page = get(gateway, "/api/conversations?limit=2&offset=1", token).json()
    assert [item["id"] for item in page["data"]] == ["chat-second", "chat-first"]
    assert get(gateway, "/api/conversations?limit=1", token).json()["has_more"] is True
    conversation = get(gateway, "/api/conversations/chat-first", token).json()
    assert [m["role"] for m in conversation["messages"]] == ["user", "assistant"]
    assert conversation["messages"][1]["parts"][1] == {
        "type": "text",
        "text": "An answer",
        "state": "done",
    }

    stranger = session_token(f"web|{uuid.uuid4().hex}")
    assert get(gateway, "/api/conversations", stranger).json()["data"] == []
    for method in ("GET", "DELETE"):
        response = httpx.request(
            method,
            f"{gateway.url}/api/conversations/chat-first",
            headers={"authorization": f"Bearer {stranger}"},
        )
        assert response.status_code == 404
        assert response.json()["error"]["code"] == "not_found"

    deleted = httpx.delete(
        f"{gateway.url}/api/conversations/chat-first", headers={"authorization": f"Bearer {token}"}
    )
    assert deleted.json() == {"object": "conversation", "id": "chat-first", "deleted": True}
    assert get(gateway, "/api/conversations/chat-first", token).status_code == 404


@pytest.mark.parametrize("query", ["limit=0", "limit=101", "limit=x", "offset=-1"])
def test_bad_pages_are_400(gateway: RunningGateway, token: str, query: str) -> None:
    response = get(gateway, f"/api/conversations?{query}", token)
    assert response.status_code == 400
    assert response.json()["error"]["param"] in ("limit", "offset")


def test_conversation_routes_need_a_credential(gateway: RunningGateway) -> None:
    assert get(gateway, "/api/conversations", None).status_code == 401
    assert get(gateway, "/api/conversations/x", "not-a-key").status_code == 401
    assert get(gateway, f"/api/conversations/{'x' * 200}", ADMIN_KEY).status_code == 404


def test_regenerate_replaces_the_named_answer_on_the_server(
    gateway: RunningGateway, upstream: FakeUpstream, token: str
) -> None:
    question = user("Question", id="q1")
    first = turn(gateway, upstream, token, "regen", question)
    answer_id = first[0]["messageId"]
    again = turn(
        gateway,
        upstream,
        token,
        "regen",
        question,
        trigger="regenerate-message",
        messageId=answer_id,
    )
    messages = get(gateway, "/api/conversations/regen", token).json()["messages"]
    assert [m["id"] for m in messages] == ["q1", again[0]["messageId"]]
    assert again[0]["messageId"] != answer_id


def test_a_full_conversation_takes_no_new_turn(
    gateway: RunningGateway, upstream: FakeUpstream, token: str
) -> None:
    history = [user("x" * 1500, id="m1")]
    turn(gateway, upstream, token, "full", *history)
    history.append(user("y" * 1500, id="m2"))
    turn(gateway, upstream, token, "full", *history)
    history.append(user("z" * 1500, id="m3"))
    upstream.reset()
    response = post(gateway, "/api/chat", {"id": "full", "messages": history}, token=token)
    assert response.status_code == 413
    assert response.headers["x-interlock-error-code"] == "conversation_too_large"
    assert upstream.ledger == []
    # a new chat is fine, unless what it starts with is already too much
    turn(gateway, upstream, token, "fresh", user("z" * 1500))
    upstream.reset()
    too_much = post(gateway, "/api/chat", {"id": "new", "messages": history}, token=token)
    assert too_much.status_code == 413
    assert upstream.ledger == []


def test_api_keys_own_conversations_too(gateway: RunningGateway, upstream: FakeUpstream) -> None:
    turn(gateway, upstream, ADMIN_KEY, "admin-chat", user("From a server"))
    assert get(gateway, "/api/conversations/admin-chat", ADMIN_KEY).status_code == 200


def test_an_answer_the_client_abandons_is_not_stored(
    gateway: RunningGateway, upstream: FakeUpstream, token: str
) -> None:
    upstream.push(Behavior(text="one two three four", stall_after=2))
    body = {"id": "left", "messages": [user("Hello")]}
    headers = {"authorization": f"Bearer {token}"}
    with httpx.stream("POST", f"{gateway.url}/api/chat", json=body, headers=headers) as response:
        assert response.status_code == 200
        for chunk in response.iter_bytes():
            if b"text-delta" in chunk:
                break  # the answer has started: leave
    upstream.push(Behavior(text="later"))
    turn(gateway, upstream, token, "other", user("Anything"))  # the gateway has moved on
    assert get(gateway, "/api/conversations/left", token).status_code == 404


def test_client_tool_results_continue_the_assistant_message(
    gateway: RunningGateway, upstream: FakeUpstream, token: str
) -> None:
    question = user("Weather in Oslo?", id="q")
    asking = {
        "id": "a-tool",
        "role": "assistant",
        "parts": [
            {"type": "step-start"},
            {
                "type": "tool-get_weather",
                "toolCallId": "call-7",
                "state": "output-available",
                "input": {"city": "Oslo"},
                "output": {"celsius": 3},
            },
        ],
    }
    chunks = turn(gateway, upstream, token, "tools", question, asking)
    assert chunks[0] == {"type": "start", "messageId": "a-tool"}
    [served] = upstream.ledger
    assert served.body["messages"][1]["tool_calls"][0]["id"] == "call-7"
    assert served.body["messages"][2] == {
        "role": "tool",
        "tool_call_id": "call-7",
        "content": '{"celsius":3}',
    }
    [stored_question, stored_answer] = get(gateway, "/api/conversations/tools", token).json()[
        "messages"
    ]
    assert stored_question == question
    assert stored_answer["id"] == "a-tool"
    assert stored_answer["parts"][:2] == asking["parts"]
    assert stored_answer["parts"][2:] == [
        {"type": "step-start"},
        {"type": "text", "text": "An answer", "state": "done"},
    ]


def test_an_image_file_part_reaches_the_model(
    gateway: RunningGateway, upstream: FakeUpstream, token: str
) -> None:
    image = "data:image/png;base64,iVBORw0KGgo="
    message = {
        "id": "u-img",
        "role": "user",
        "parts": [
            {"type": "file", "mediaType": "image/png", "url": image, "filename": "a.png"},
            {"type": "text", "text": "What is this?"},
        ],
    }
    turn(gateway, upstream, token, "image-chat", message)
    [served] = upstream.ledger
    assert served.body["messages"][0]["content"] == [
        {"type": "image_url", "image_url": {"url": image}},
        {"type": "text", "text": "What is this?"},
    ]


def test_every_ai_sdk_request_is_accounted(
    gateway: RunningGateway, upstream: FakeUpstream, token: str
) -> None:
    turn(gateway, upstream, token, "billed", user("Hello"))  # answered: 2 output tokens
    refused = post(gateway, "/api/chat/v4", {"model": "nope", "messages": []}, token=token)
    assert refused.status_code == 400
    upstream.push(Behavior(text="one two three", error_event_after=1))
    cut = post(gateway, "/api/chat", {"messages": [user("Hi")]}, token=token)
    assert sse(cut)[-1]["type"] == "error"
    deadline = time.monotonic() + 15
    while True:
        total = get(gateway, "/v1/usage", token).json()["total"]
        if total["requests"] >= 3 or time.monotonic() > deadline:
            break
        time.sleep(0.2)
    assert total["requests"] == 3
    assert total["errors"] == 1  # the 400; the cut stream had answered 200
    assert total["output_tokens"] >= 2
