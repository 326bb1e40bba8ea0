// llmstream's /v1 through the official OpenAI JavaScript SDK (`openai` on npm, pinned in
// package-lock.json beside this file): a background answer streamed, dropped after a few
// events and resumed after the last sequence number seen, then checked against the stored
// response; and a streamed chat completion with its usage.
//
//   BASE_URL=<stream function URL>/v1 API_KEY=<lls_... key or access token> MODEL=<model> \
//     node v1_flow.mjs
//
// MARK (optional) is appended to the inputs, so a test can find what the model was sent.
// Prints one line of JSON (the summary); exits 0 if every check passed, 1 if one failed,
// 2 if the flow did not end within HANG_SECONDS (default 150).
import OpenAI from "openai";
import { VERSION } from "openai/version";

const { BASE_URL, API_KEY, MODEL } = process.env;
const MARK = process.env.MARK ?? "";
const HANG_SECONDS = Number(process.env.HANG_SECONDS ?? 150);
const summary = { ok: false, sdk: VERSION, failures: [] };

function check(ok, what, detail) {
  if (!ok) summary.failures.push(detail === undefined ? what : `${what}: ${JSON.stringify(detail)}`);
}

function finish(failureCode) {
  summary.ok = summary.failures.length === 0;
  console.log(JSON.stringify(summary));
  process.exit(summary.ok ? 0 : failureCode);
}

const deltaText = (events) =>
  events
    .filter((e) => e.type === "response.output_text.delta")
    .map((e) => e.delta)
    .join("");

async function responsesFlow(client) {
  const stream = await client.responses.create({
    model: MODEL,
    input: `resumed in JavaScript ${MARK} [[fake tokens=120 tps=40]]`,
    background: true,
    stream: true,
  });
  const first = [];
  let deltas = 0;
  for await (const event of stream) {
    first.push(event);
    if (event.type === "response.output_text.delta" && ++deltas >= 5) break; // drops the connection
  }
  check(first[0]?.type === "response.created", "the first event is response.created", first[0]);
  const id = first[0].response.id;
  const n = first.at(-1).sequence_number;
  const rest = [];
  for await (const event of await client.responses.retrieve(id, { stream: true, starting_after: n })) {
    rest.push(event);
  }
  const events = [...first, ...rest];
  const numbers = events.map((e) => e.sequence_number);
  const text = deltaText(events);
  const stored = await client.responses.retrieve(id);
  check(rest[0]?.sequence_number === n + 1, "the resumed stream starts after n", { n, rest: rest[0] });
  check(numbers.every((s, i) => s === i), "sequence numbers contiguous from 0", numbers);
  check(events.at(-1).type === "response.completed", "the stream ends completed", events.at(-1).type);
  check(stored.status === "completed", "the stored response is completed", stored.status);
  check(text === stored.output_text, "the text equals output_text", { text, output_text: stored.output_text });
  summary.responses = {
    id,
    events: events.length,
    read_before_dropping: first.length,
    starting_after: n,
    last: events.at(-1).type,
    status: stored.status,
    output_text: stored.output_text,
    text_matches: text === stored.output_text,
  };
}

async function chatFlow(client) {
  const stream = await client.chat.completions.create({
    model: MODEL,
    messages: [{ role: "user", content: `chat in JavaScript ${MARK}` }],
    stream: true,
    stream_options: { include_usage: true },
  });
  const chunks = [];
  for await (const chunk of stream) chunks.push(chunk);
  const last = chunks.at(-1);
  const answer = chunks.slice(0, -1);
  check(last?.choices?.length === 0 && Boolean(last?.usage), "the last chunk has the usage alone", last);
  check(answer.every((c) => !c.usage && c.choices.length === 1), "the other chunks carry the answer");
  check(answer.at(-1)?.choices[0]?.finish_reason === "stop", "the answer ends with stop", answer.at(-1));
  summary.chat = {
    chunks: chunks.length,
    text: answer.map((c) => c.choices[0]?.delta?.content ?? "").join(""),
    usage: last?.usage ?? null,
  };
}

setTimeout(() => {
  summary.failures.push(`not done after ${HANG_SECONDS} s`);
  finish(2);
}, HANG_SECONDS * 1000).unref();

try {
  check(BASE_URL && API_KEY && MODEL, "BASE_URL, API_KEY and MODEL are set");
  const client = new OpenAI({ baseURL: BASE_URL, apiKey: API_KEY, maxRetries: 0, timeout: 60_000 });
  await responsesFlow(client);
  await chatFlow(client);
} catch (e) {
  summary.failures.push(`${e?.constructor?.name ?? "Error"} (${e?.status ?? "no status"}): ${e?.message}`);
}
finish(1);
