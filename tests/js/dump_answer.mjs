// Print what the browser makes of a recorded stream (static/chat/delta.js over choice 0's
// deltas) as JSON, for tests/unit/test_render_js.py to compare with chat/relay/accumulate.py:
//   node tests/js/dump_answer.mjs <file>
import { readFileSync } from "node:fs";

import { AnswerAccumulator } from "../../static/chat/delta.js";
import { DONE, SSEDecoder } from "../../static/chat/sse.js";

const [path] = process.argv.slice(2);
if (!path) {
  console.error("usage: node tests/js/dump_answer.mjs <file>");
  process.exit(2);
}
const decoder = new SSEDecoder();
const events = decoder.feed(new Uint8Array(readFileSync(path))).concat(decoder.flush());
const answer = new AnswerAccumulator();
for (const event of events) {
  if (event.data === DONE || event.event !== "message") continue;
  let chunk;
  try {
    chunk = JSON.parse(event.data);
  } catch {
    continue;
  }
  for (const choice of chunk.choices || []) {
    if ((choice.index ?? 0) === 0 && choice.delta) answer.apply(choice.delta);
  }
}
answer.end();
const toolCalls = answer.tools().map(({ id, type, name, arguments: args }) => ({
  id,
  type,
  function: { name, arguments: args },
}));
process.stdout.write(
  JSON.stringify({ content: answer.content, reasoning: answer.reasoning, tool_calls: toolCalls }),
);
