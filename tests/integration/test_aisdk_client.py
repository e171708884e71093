"""The Vercel AI SDK's own clients against a real gateway: the `ai` package's chat class and
stream parser (5.x latest, and 5.0.0 whose chunk schemas are strict objects) on the UI message
stream and the text stream, and ai 4's `callChatApi` on the data and text streams. Node
scripts in tests/js drive them and print JSON; `npm ci --prefix tests/js` installs them
(scripts/test does it)."""

from __future__ import annotations

import json
import subprocess
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from interlock.api.aisdk_render import UIMessageStreamWriter
from interlock.chat.types import Event, Finish, ReasoningDelta, TextDelta, ToolCallDelta
from interlock.testing.fake_upstream import Behavior, FakeUpstream, ToolCallReply
from tests.support.aisdk import SESSIONS, config, session_token
from tests.support.gateway import RunningGateway, make_settings, serve

JS = Path(__file__).resolve().parents[1] / "js"
V5_PACKAGES = ["ai", "ai-v5-0"]
# What the gateway says when the fake provider's stream fails after the answer started.
MID_STREAM_ERROR = (
    "The model provider is overloaded or failing. Provider said: "
    "The fake upstream failed mid-stream."
)


@pytest.fixture(scope="module")
def upstream() -> Iterator[FakeUpstream]:
    with FakeUpstream() as fake:
        yield fake


@pytest.fixture(scope="module")
def gateway(
    upstream: FakeUpstream, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[RunningGateway]:
    tmp = tmp_path_factory.mktemp("aisdk")
    with serve(make_settings(tmp, config(upstream), SESSIONS)) as running:
        yield running


@pytest.fixture(autouse=True)
def fresh_upstream(upstream: FakeUpstream) -> None:
    upstream.reset()


@pytest.fixture
def token() -> str:
    return session_token(f"web|{uuid.uuid4().hex}")


def node(script: str, **options: Any) -> Any:
    if not (JS / "node_modules" / "ai" / "package.json").is_file():
        pytest.fail("the AI SDK packages are not installed: run `npm ci --prefix tests/js`")
    completed = subprocess.run(
        ["node", str(JS / script), json.dumps(options)],
        cwd=JS,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert completed.returncode == 0, completed.stderr
    return json.loads(completed.stdout)


def stored(gateway: RunningGateway, token: str, chat_id: str) -> httpx.Response:
    return httpx.get(
        f"{gateway.url}/api/conversations/{chat_id}",
        headers={"authorization": f"Bearer {token}"},
    )


def texts(message: dict[str, Any]) -> str:
    return "".join(part["text"] for part in message["parts"] if part["type"] == "text")


def prompt(served: Any) -> list[tuple[str, str]]:
    """What the provider was sent: (role, text) per message."""
    return [(m["role"], m["content"]) for m in served.body["messages"]]


@pytest.mark.parametrize("package", V5_PACKAGES)
def test_use_chat_sends_follows_up_and_regenerates(
    gateway: RunningGateway, upstream: FakeUpstream, token: str, package: str
) -> None:
    for answer in ("First answer", "Second answer", "Regenerated answer"):
        upstream.push(Behavior(text=answer))
    chat_id = f"chat-{uuid.uuid4().hex}"
    result = node(
        "chat.mjs",
        package=package,
        url=gateway.url,
        token=token,
        scenario="conversation",
        chatId=chat_id,
        first="Hello",
        second="Tell me more",
    )
    first, second, regenerated = result["steps"]
    for step in result["steps"]:
        assert (step["status"], step["error"]) == ("ready", None)
        [finish] = step["finishes"]
        assert finish["isError"] in (False, None)
        assert finish["finishReason"] is None  # not sent to clients older than 5.0.92
    assert [(m["role"], texts(m)) for m in first["messages"]] == [
        ("user", "Hello"),
        ("assistant", "First answer"),
    ]
    answer = first["messages"][1]
    assert answer["id"].startswith("msg-")
    assert answer["parts"] == [
        {"type": "step-start"},
        {"type": "text", "text": "First answer", "state": "done"},
    ]
    assert [texts(m) for m in second["messages"]] == [
        "Hello",
        "First answer",
        "Tell me more",
        "Second answer",
    ]
    assert [texts(m) for m in regenerated["messages"]] == [
        "Hello",
        "First answer",
        "Tell me more",
        "Regenerated answer",
    ]
    assert regenerated["messages"][3]["id"] != second["messages"][3]["id"]
    # the follow-up and the regenerate sent the history, without the answer being replaced
    served = upstream.ledger
    assert [prompt(s) for s in served] == [
        [("user", "Hello")],
        [("user", "Hello"), ("assistant", "First answer"), ("user", "Tell me more")],
        [("user", "Hello"), ("assistant", "First answer"), ("user", "Tell me more")],
    ]
    # the server holds exactly what the client holds: the regenerated answer replaced the old
    response = stored(gateway, token, chat_id)
    assert response.status_code == 200
    assert response.json()["messages"] == regenerated["messages"]
    assert response.json()["title"] == "Hello"
    # and nobody else can see it
    assert stored(gateway, session_token("web|someone-else"), chat_id).status_code == 404


@pytest.mark.parametrize("package", V5_PACKAGES)
def test_every_chunk_passes_the_sdks_own_schema(
    gateway: RunningGateway, upstream: FakeUpstream, token: str, package: str
) -> None:
    upstream.push(
        Behavior(text="Let me check.", tool_call=ToolCallReply("get_weather", '{"city": "Paris"}'))
    )
    result = node(
        "chat.mjs",
        package=package,
        url=gateway.url,
        token=token,
        scenario="chunks",
        chatId=f"chat-{uuid.uuid4().hex}",
    )
    assert result["failure"] is None
    types = [chunk["type"] for chunk in result["chunks"]]
    # consecutive deltas of one block count once: how many depends on the tokens
    runs = [kind for index, kind in enumerate(types) if index == 0 or types[index - 1] != kind]
    assert runs == [
        "start",
        "start-step",
        "text-start",
        "text-delta",
        "text-end",
        "tool-input-start",
        "tool-input-delta",
        "tool-input-available",
        "finish-step",
        "finish",
    ]
    message = result["message"]
    assert message["role"] == "assistant"
    assert message["parts"][1] == {"type": "text", "text": "Let me check.", "state": "done"}
    tool = message["parts"][2]
    assert tool["type"] == "tool-get_weather"
    assert tool["state"] == "input-available"
    assert tool["input"] == {"city": "Paris"}


def test_an_error_before_the_stream_is_the_clients_error(
    gateway: RunningGateway, upstream: FakeUpstream, token: str
) -> None:
    chat_id = f"chat-{uuid.uuid4().hex}"
    options = {"url": gateway.url, "token": token, "scenario": "error", "chatId": chat_id}
    result = node("chat.mjs", package="ai", model="no-such-model", **options)
    assert result["status"] == "error"
    assert result["error"] == "The model 'no-such-model' does not exist."
    assert result["errors"] == [result["error"]]
    assert upstream.ledger == []
    assert stored(gateway, token, chat_id).status_code == 404


@pytest.mark.parametrize("package", V5_PACKAGES)
def test_an_error_mid_stream_is_an_error_part_and_nothing_is_stored(
    gateway: RunningGateway, upstream: FakeUpstream, token: str, package: str
) -> None:
    upstream.push(Behavior(text="one two three four", error_event_after=2))
    chat_id = f"chat-{uuid.uuid4().hex}"
    result = node(
        "chat.mjs", package=package, url=gateway.url, token=token, scenario="error", chatId=chat_id
    )
    assert result["status"] == "error"
    assert result["error"] == MID_STREAM_ERROR
    [_, answer] = result["messages"]
    assert texts(answer) == "one two"  # what had arrived stays on screen
    assert stored(gateway, token, chat_id).status_code == 404


def test_the_text_stream_transport(
    gateway: RunningGateway, upstream: FakeUpstream, token: str
) -> None:
    upstream.push(Behavior(text="Plain text, é and all"))
    chat_id = f"chat-{uuid.uuid4().hex}"
    result = node(
        "chat.mjs", package="ai", url=gateway.url, token=token, scenario="text", chatId=chat_id
    )
    assert (result["status"], result["error"]) == ("ready", None)
    assert [texts(m) for m in result["messages"]] == ["Hello", "Plain text, é and all"]
    conversation = stored(gateway, token, chat_id).json()
    assert [texts(m) for m in conversation["messages"]] == ["Hello", "Plain text, é and all"]


def test_finish_reason_goes_only_to_clients_that_accept_it(
    upstream: FakeUpstream, tmp_path: Path, token: str
) -> None:
    settings = make_settings(tmp_path, config(upstream, client_version="5.0.92"), SESSIONS)
    with serve(settings) as newer:
        options = {"url": newer.url, "token": token, "scenario": "chunks", "chatId": "c"}
        latest = node("chat.mjs", package="ai", **options)
        assert latest["failure"] is None
        assert latest["chunks"][-1] == {"type": "finish", "finishReason": "stop"}
        # ai 5.0.0's strict schema refuses the field: the whole stream fails
        oldest = node("chat.mjs", package="ai-v5-0", **options)
        assert oldest["failure"] is not None
        assert "finishReason" in oldest["failure"] or "Type validation" in oldest["failure"]


# ---- ai 4 -----------------------------------------------------------------------------------


def test_ai_4_data_stream_conversation(
    gateway: RunningGateway, upstream: FakeUpstream, token: str
) -> None:
    upstream.push(Behavior(text="First answer"))
    upstream.push(Behavior(text="Second answer"))
    result = node(
        "chat-v4.mjs",
        url=gateway.url,
        token=token,
        scenario="conversation",
        chatId="v4-chat",
        first="Hello",
        second="Tell me more",
    )
    first = result["first"]["finish"]
    assert first["message"]["content"] == "First answer"
    assert first["message"]["role"] == "assistant"
    assert first["finishReason"] == "stop"
    assert first["usage"]["completionTokens"] == 2
    assert first["usage"]["promptTokens"] > 0
    assert result["second"]["finish"]["message"]["content"] == "Second answer"
    assert [prompt(s) for s in upstream.ledger][1] == [
        ("user", "Hello"),
        ("assistant", "First answer"),
        ("user", "Tell me more"),
    ]


def test_ai_4_errors(gateway: RunningGateway, upstream: FakeUpstream, token: str) -> None:
    options = {"url": gateway.url, "token": token, "scenario": "error"}
    before = node("chat-v4.mjs", model="no-such-model", **options)
    assert before["error"] == "The model 'no-such-model' does not exist."
    upstream.push(Behavior(text="one two three", error_event_after=1))
    during = node("chat-v4.mjs", **options)
    assert during["error"] == MID_STREAM_ERROR


def test_ai_4_text_stream(gateway: RunningGateway, upstream: FakeUpstream, token: str) -> None:
    upstream.push(Behavior(text="Just text"))
    result = node("chat-v4.mjs", url=gateway.url, token=token, scenario="text")
    assert result["finish"]["message"]["content"] == "Just text"


@pytest.mark.parametrize("package", V5_PACKAGES)
def test_the_sdk_builds_the_message_the_server_stores(package: str) -> None:
    """Reasoning, text and tool calls (the fake provider sends no reasoning, so the stream is
    rendered here): the SDK accepts every chunk and builds exactly the stored message."""
    events: list[Event] = [
        ReasoningDelta("Let me"),
        ReasoningDelta(" think."),
        TextDelta("It is "),
        TextDelta("sunny."),
        ToolCallDelta(0, id="call-1", name="get_weather", arguments='{"city":'),
        ToolCallDelta(0, arguments='"Paris"}'),
        ToolCallDelta(1, id="call-2", name="get_time", arguments="not json"),
        TextDelta("Done."),
        Finish("tool_calls"),
    ]
    writer = UIMessageStreamWriter("msg-1", finish_reason=False)
    body = writer.start() + b"".join(writer.event(event) for event in events) + writer.end()
    result = node("chat.mjs", package=package, scenario="parse", body=body.decode())
    assert result["failure"] is None
    built = result["message"]
    # Newer clients also keep the block id on reasoning parts (optional in their UIMessage
    # schema, unknown to 5.0.0's strict one): the stored message leaves it out.
    for part in built["parts"]:
        if part["type"] == "reasoning" and package == "ai":
            assert part.pop("id") == "reasoning-1"
    assert built == writer.message()
