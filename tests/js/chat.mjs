// Drives the `ai` package's own chat client (AbstractChat + DefaultChatTransport, as useChat
// does) against a running Interlock, and prints what the client ended up with as JSON.
//
//   node chat.mjs '{"package": "ai", "url": "...", "token": "...", "scenario": "...", ...}'
//
// package: "ai" (5.x latest) or "ai-v5-0" (5.0.0, whose chunk schemas are strict objects).
// scenario:
//   conversation  send a message, a follow-up with the history, then regenerate the answer
//   error         send one message and report the client's error
//   text          one message through TextStreamChatTransport (the text stream protocol)
//   chunks        one request through the transport alone: every chunk as the SDK parsed it
//                 (validated against the package's own uiMessageChunkSchema), then the message
//                 readUIMessageStream builds from them
//   parse         the same for a response body given as `body` (no server): the transport's
//                 fetch answers with it

const options = JSON.parse(process.argv[2]);
const ai = await import(options.package ?? "ai");

class State {
  constructor() {
    this.status = "ready";
    this.error = undefined;
    this.messages = [];
  }
  pushMessage(message) {
    this.messages = this.messages.concat(message);
  }
  popMessage() {
    this.messages = this.messages.slice(0, -1);
  }
  replaceMessage(index, message) {
    this.messages = [
      ...this.messages.slice(0, index),
      this.snapshot(message),
      ...this.messages.slice(index + 1),
    ];
  }
  snapshot(value) {
    return structuredClone(value);
  }
}

class Chat extends ai.AbstractChat {
  constructor(init) {
    super({ ...init, state: new State() });
  }
}

function transportOptions(path) {
  return {
    api: `${options.url}${path}`,
    headers: { Authorization: `Bearer ${options.token}` },
    body: options.model ? { model: options.model } : {},
  };
}

function snapshot(chat, finishes) {
  return {
    status: chat.status,
    error: chat.error ? chat.error.message : null,
    messages: chat.messages,
    finishes,
  };
}

async function conversation() {
  const finishes = [];
  const chat = new Chat({
    id: options.chatId,
    transport: new ai.DefaultChatTransport(transportOptions("/api/chat")),
    onFinish: (event) =>
      finishes.push({
        messageId: event.message.id,
        isError: event.isError ?? null,
        finishReason: event.finishReason ?? null,
      }),
  });
  const steps = [];
  await chat.sendMessage({ text: options.first ?? "Hello" });
  steps.push(snapshot(chat, finishes.splice(0)));
  await chat.sendMessage({ text: options.second ?? "Tell me more" });
  steps.push(snapshot(chat, finishes.splice(0)));
  await chat.regenerate();
  steps.push(snapshot(chat, finishes.splice(0)));
  return { steps };
}

async function error() {
  const errors = [];
  const chat = new Chat({
    id: options.chatId,
    transport: new ai.DefaultChatTransport(transportOptions("/api/chat")),
    onError: (err) => errors.push(err.message),
  });
  await chat.sendMessage({ text: options.first ?? "Hello" });
  return { ...snapshot(chat, []), errors };
}

async function text() {
  const chat = new Chat({
    id: options.chatId,
    transport: new ai.TextStreamChatTransport(transportOptions("/api/chat/text")),
  });
  await chat.sendMessage({ text: options.first ?? "Hello" });
  return snapshot(chat, []);
}

async function chunks(transport = new ai.DefaultChatTransport(transportOptions("/api/chat"))) {
  const stream = await transport.sendMessages({
    chatId: options.chatId,
    trigger: "submit-message",
    messageId: undefined,
    abortSignal: undefined,
    messages: options.messages ?? [
      { id: "u1", role: "user", parts: [{ type: "text", text: options.first ?? "Hello" }] },
    ],
  });
  const [forChunks, forMessage] = stream.tee();
  const seen = [];
  const reading = (async () => {
    const reader = forChunks.getReader();
    for (;;) {
      const { done, value } = await reader.read();
      if (done) return;
      seen.push(value);
    }
  })();
  let message = null;
  let failure = null;
  try {
    for await (const built of ai.readUIMessageStream({ stream: forMessage })) {
      message = built;
    }
  } catch (err) {
    failure = err.message;
  }
  try {
    await reading;
  } catch (err) {
    failure = failure ?? err.message;
  }
  return { chunks: seen, message, failure };
}

async function parse() {
  const body = options.body;
  const fetch = async () =>
    new Response(body, { headers: { "content-type": "text/event-stream" } });
  return chunks(new ai.DefaultChatTransport({ api: "http://127.0.0.1/unused", fetch }));
}

const scenarios = { conversation, error, text, chunks: () => chunks(), parse };
const result = await scenarios[options.scenario]();
process.stdout.write(JSON.stringify(result));
