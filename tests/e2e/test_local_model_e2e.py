"""A true end-to-end answer: the official client, the real gateway, the bundled model."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import anthropic
import openai
import pytest

from tests.support.gateway import ADMIN_KEY, RunningGateway, make_settings, serve

pytestmark = pytest.mark.model


@pytest.fixture(scope="module")
def gateway(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningGateway]:
    tmp: Path = tmp_path_factory.mktemp("local")
    with serve(make_settings(tmp)) as running:  # no config file: the embedded defaults
        yield running


@pytest.fixture
def client(gateway: RunningGateway) -> Iterator[openai.OpenAI]:
    with openai.OpenAI(base_url=gateway.openai_base_url, api_key=ADMIN_KEY, max_retries=0) as c:
        yield c


# SmolLM2-135M rambles under its built-in system prompt; asked for one sentence it answers.
QUESTION = [
    {"role": "system", "content": "Answer in one short sentence."},
    {"role": "user", "content": "What is the capital of France?"},
]


def test_zero_config_serves_local(client: openai.OpenAI) -> None:
    assert [model.id for model in client.models.list()] == ["local"]


def test_the_embedded_model_answers(client: openai.OpenAI) -> None:
    completion = client.chat.completions.create(
        model="local", messages=QUESTION, temperature=0, max_tokens=40
    )
    assert "Paris" in (completion.choices[0].message.content or "")
    assert completion.usage is not None and completion.usage.completion_tokens > 0


def test_the_embedded_model_streams_token_by_token(client: openai.OpenAI) -> None:
    chunks = list(
        client.chat.completions.create(
            model="local",
            messages=QUESTION,
            temperature=0,
            max_tokens=40,
            stream=True,
            stream_options={"include_usage": True},
        )
    )
    deltas = [
        c.choices[0].delta.content for c in chunks if c.choices and c.choices[0].delta.content
    ]
    assert len(deltas) > 3
    assert "Paris" in "".join(deltas)
    assert chunks[-1].usage is not None and chunks[-1].usage.prompt_tokens > 0


def test_the_embedded_model_answers_the_anthropic_client(gateway: RunningGateway) -> None:
    # temperature is an Anthropic parameter up to API version 2023-06-01 only.
    old_version = {"anthropic-version": "2023-06-01"}
    with (
        anthropic.Anthropic(base_url=gateway.url, api_key=ADMIN_KEY, max_retries=0) as client,
        client.messages.stream(
            model="local",
            system=QUESTION[0]["content"],
            messages=[QUESTION[1]],  # type: ignore[list-item]
            max_tokens=40,
            extra_body={"temperature": 0},
            extra_headers=old_version,
        ) as stream,
    ):
        text = "".join(stream.text_stream)
        final = stream.get_final_message()
    assert "Paris" in text
    assert final.content[0].text == text  # type: ignore[union-attr]
    assert final.stop_reason in {"end_turn", "max_tokens"}
    assert final.usage.input_tokens > 0 and final.usage.output_tokens > 0
