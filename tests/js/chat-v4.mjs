// Drives ai 4's chat client (callChatApi from @ai-sdk/ui-utils, which ai@4's useChat calls,
// with the request body useChat@4 builds) against a running Interlock; prints JSON.
//
//   node chat-v4.mjs '{"url": "...", "token": "...", "scenario": "...", "model": "..."}'
//
// scenario:
//   conversation  a first message, then a follow-up with the history (data stream protocol)
//   error         one message; the error the client throws
//   text          one message with streamProtocol 'text'

import { callChatApi } from "@ai-sdk/ui-utils";
import { generateId } from "ai-v4";

const options = JSON.parse(process.argv[2]);

// What useChat@4 sends for each message (sendExtraMessageFields: false).
function payload(messages) {
  return messages.map(({ role, content, experimental_attachments, data, annotations, toolInvocations, parts }) => ({
    role,
    content,
    ...(experimental_attachments !== undefined && { experimental_attachments }),
    ...(data !== undefined && { data }),
    ...(annotations !== undefined && { annotations }),
    ...(toolInvocations !== undefined && { toolInvocations }),
    ...(parts !== undefined && { parts }),
  }));
}

async function send(messages, { path = "/api/chat/v4", streamProtocol = "data" } = {}) {
  let latest = null;
  let finish = null;
  const controller = new AbortController();
  await callChatApi({
    api: `${options.url}${path}`,
    body: { id: options.chatId, messages: payload(messages), ...(options.model && { model: options.model }) },
    streamProtocol,
    headers: { Authorization: `Bearer ${options.token}` },
    abortController: () => controller,
    restoreMessagesOnFailure: () => {},
    onResponse: undefined,
    onUpdate: ({ message }) => {
      latest = structuredClone(message);
    },
    onFinish: (message, details) => {
      finish = { message: structuredClone(message), ...details };
    },
    onToolCall: undefined,
    generateId,
    fetch: undefined,
    lastMessage: messages[messages.length - 1],
    requestType: "generate",
  });
  return { latest, finish };
}

function user(text) {
  return { id: generateId(), role: "user", content: text, parts: [{ type: "text", text }] };
}

async function conversation() {
  const history = [user(options.first ?? "Hello")];
  const first = await send(history);
  history.push(first.finish.message);
  history.push(user(options.second ?? "Tell me more"));
  const second = await send(history);
  return { first, second };
}

async function error() {
  try {
    await send([user(options.first ?? "Hello")]);
    return { error: null };
  } catch (err) {
    return { error: err.message };
  }
}

async function text() {
  return send([user(options.first ?? "Hello")], { path: "/api/chat/text", streamProtocol: "text" });
}

const scenarios = { conversation, error, text };
process.stdout.write(JSON.stringify(await scenarios[options.scenario]()));
