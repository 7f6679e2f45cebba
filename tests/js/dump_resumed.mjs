// What the browser makes of one answer read whole, and read on after a reload: seeded with the
// checkpoint's delta (chat.services.resume_delta) and fed the chunks after its sequence number,
// as static/chat/chat.js resume() does. For tests/unit/test_resume_point.py:
//   node tests/js/dump_resumed.mjs < {"chunks": [chunk, …], "cuts": [[after, delta], …]}
// prints {"whole": answer, "resumed": [answer, …]} (one per cut, in order).
import { readFileSync } from "node:fs";

import { AnswerAccumulator } from "../../static/chat/delta.js";

const { chunks, cuts } = JSON.parse(readFileSync(0, "utf8"));

function fold(answer, from) {
  for (const chunk of chunks.slice(from)) {
    for (const choice of chunk.choices || []) {
      if ((choice.index ?? 0) === 0 && choice.delta) answer.apply(choice.delta);
    }
  }
  answer.end();
  return {
    content: answer.content,
    reasoning: answer.reasoning,
    tool_calls: answer.tools().map(({ id, type, name, arguments: args }) => ({
      id,
      type,
      function: { name, arguments: args },
    })),
  };
}

const resumed = cuts.map(([after, delta]) => {
  const answer = new AnswerAccumulator();
  answer.apply(delta);
  return fold(answer, after);
});
process.stdout.write(JSON.stringify({ whole: fold(new AnswerAccumulator(), 0), resumed }));
