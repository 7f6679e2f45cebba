// node --test tests/js/ — the DOM-free half of the answer renderer: deltas → reasoning, content
// and tool calls (static/chat/delta.js), and markdown → top-level blocks (static/chat/blocks.js).
import assert from "node:assert/strict";
import { test } from "node:test";

import { BlockSplitter, splitBlocks } from "../../static/chat/blocks.js";
import { AnswerAccumulator, ThinkSplitter, formatArguments } from "../../static/chat/delta.js";

function accumulate(deltas) {
  const answer = new AnswerAccumulator();
  for (const delta of deltas) answer.apply(delta);
  answer.end();
  return answer;
}

function think(pieces) {
  const splitter = new ThinkSplitter();
  const out = { reasoning: "", content: "" };
  for (const piece of [...pieces.map((p) => splitter.feed(p)), splitter.end()]) {
    out.reasoning += piece.reasoning;
    out.content += piece.content;
  }
  return out;
}

test("reasoning comes from reasoning_content or reasoning, once per delta", () => {
  const answer = accumulate([
    { reasoning_content: "a" },
    { reasoning: "b" },
    { reasoning: "c", reasoning_content: "c" }, // vLLM #29408: the same text in both fields
    { reasoning: null, reasoning_content: "d" },
    { content: "x", reasoning_content: null },
  ]);
  assert.equal(answer.reasoning, "abcd");
  assert.equal(answer.content, "x");
});

test("<think> at the start of the content is reasoning, cut at every position", () => {
  const text = "<think>\nStep one.\nStep two.</think>\n\nThe answer is <think>not this</think>.";
  const expected = { reasoning: "\nStep one.\nStep two.", content: "The answer is <think>not this</think>." };
  assert.deepEqual(think([text]), expected);
  assert.deepEqual(think([...text]), expected);
  for (let i = 0; i <= text.length; i++) {
    for (const j of [i, i + 1, i + 3, i + 7, i + 9]) {
      const pieces = [text.slice(0, i), text.slice(i, j), text.slice(j)];
      assert.deepEqual(think(pieces), expected, JSON.stringify(pieces));
    }
  }
});

test("the answer view's reasoning drops leading blanks", () => {
  const answer = accumulate([{ content: "<th" }, { content: "ink>\n\n  " }, { content: "Hm</think>Yes" }]);
  assert.equal(answer.reasoning, "Hm");
  assert.equal(answer.content, "Yes");
});

test("leading blanks before <think> are allowed", () => {
  assert.deepEqual(think(["\n ", " <thi", "nk>r</th", "ink>a"]), { reasoning: "r", content: "a" });
});

test("content that does not start with <think> passes through at once", () => {
  const splitter = new ThinkSplitter();
  assert.deepEqual(splitter.feed("<"), { reasoning: "", content: "" });
  assert.deepEqual(splitter.feed("b>bold"), { reasoning: "", content: "<b>bold" });
  assert.deepEqual(splitter.feed(" <think>x</think>"), { reasoning: "", content: " <think>x</think>" });
  assert.deepEqual(think(["Hello <think>"]), { reasoning: "", content: "Hello <think>" });
  assert.deepEqual(think(["  Hello"]), { reasoning: "", content: "  Hello" });
});

test("an answer cut short keeps what was held back", () => {
  assert.deepEqual(think(["<think>still thinking</thi"]), { reasoning: "still thinking</thi", content: "" });
  assert.deepEqual(think(["<thi"]), { reasoning: "", content: "<thi" });
  assert.deepEqual(think(["   "]), { reasoning: "", content: "   " });
  assert.deepEqual(think(["<think>x</think>  \n"]), { reasoning: "x", content: "" });
});

test("tool calls accumulate by index; the name is taken once", () => {
  const call = (index, fn, extra = {}) => ({ tool_calls: [{ index, ...extra, function: fn }] });
  const answer = accumulate([
    call(0, { name: "get_weather", arguments: "" }, { id: "call_a", type: "function" }),
    call(1, { name: "get_time", arguments: '{"tz"' }, { id: "call_b" }),
    call(0, { arguments: '{"city":' }),
    call(0, { name: "get_weather", arguments: '"Paris"}' }), // OpenRouter repeats the name
    call(1, { arguments: ':"UTC"}' }),
  ]);
  assert.deepEqual(answer.tools(), [
    { id: "call_a", type: "function", name: "get_weather", arguments: '{"city":"Paris"}' },
    { id: "call_b", type: "function", name: "get_time", arguments: '{"tz":"UTC"}' },
  ]);
});

test("apply reports what each delta added", () => {
  const answer = new AnswerAccumulator();
  const nothing = { content: "", reasoning: "", tools: [] };
  assert.deepEqual(answer.apply({ role: "assistant", content: "" }), nothing);
  const added = answer.apply({ content: "Hi", reasoning_content: "r" });
  assert.deepEqual(added, { ...nothing, content: "Hi", reasoning: "r" });
  assert.deepEqual(answer.apply({ tool_calls: [{ index: 2, function: { arguments: "{" } }] }).tools, [2]);
  assert.deepEqual(answer.apply(null), nothing);
});

test("arguments are pretty-printed once they parse", () => {
  const pretty = '{\n  "city": "Paris",\n  "days": [\n    1,\n    2\n  ]\n}';
  assert.equal(formatArguments('{"city":"Paris","days":[1,2]}'), pretty);
  assert.equal(formatArguments('{"city":"Pa'), '{"city":"Pa');
  assert.equal(formatArguments(""), "");
});

const DOC = [
  "# Title\n\n",
  "Para one\nline two\n\n\n",
  "- a\n- b\n\n- c\n\n  more of c\n\n    - nested\n\n",
  "Text with `code`\n\n",
  "```python\nx = 1\n\n\ny = 2\n```\n\n",
  "~~~\n```\nstill code\n\n~~~\n\n",
  "1. one\n\n   continued\n2. two\n\n",
  "> quote\n\n",
  "| a | b |\n|---|---|\n| 1 | 2 |\n\n",
  "    indented code\n\n    more\n",
  "End",
];

test("blocks end at a blank line followed by column 0, not inside fences or lists", () => {
  // An indented line never starts a block (it may continue a list item), so the indented code
  // stays with the table before it; "End" follows it without a blank line.
  assert.deepEqual(splitBlocks(DOC.join("")), [...DOC.slice(0, -3), DOC.slice(-3).join("")]);
});

test("streamed in any pieces, the blocks are the same", () => {
  const source = DOC.join("");
  const whole = splitBlocks(source);
  for (const size of [1, 2, 3, 5, 8, 13, 64]) {
    const splitter = new BlockSplitter();
    const blocks = [];
    for (let i = 0; i < source.length; i += size) blocks.push(...splitter.push(source.slice(i, i + size)));
    blocks.push(...splitter.end());
    assert.deepEqual(blocks, whole, `pieces of ${size}`);
  }
});

test("the tail knows whether it is inside an open fence", () => {
  const splitter = new BlockSplitter();
  splitter.push("Intro\n\n");
  assert.equal(splitter.inFence, false);
  assert.deepEqual(splitter.push("``"), ["Intro\n\n"]); // "`" starts a new block
  assert.equal(splitter.inFence, false);
  splitter.push("`py");
  assert.equal(splitter.inFence, true);
  assert.deepEqual(splitter.push("\nx = 1\n\n"), []);
  assert.equal(splitter.inFence, true);
  splitter.push("``\n"); // shorter than the opening fence: code
  assert.equal(splitter.inFence, true);
  splitter.push("````\n"); // at least as long: closes it
  assert.equal(splitter.inFence, false);
});

test("a block ends as soon as the next one visibly begins", () => {
  const splitter = new BlockSplitter();
  assert.deepEqual(splitter.push("One.\n\nT"), ["One.\n\n"]);
  assert.equal(splitter.tail, "T");
  // "-", "+", "*" or a digit may start a list item that continues a list: wait for the line.
  assert.deepEqual(splitter.push("wo:\n- a\n\n-"), []);
  assert.deepEqual(splitter.push(" b\n\n  c\n\n1"), []);
  assert.deepEqual(splitter.push(". d\n"), []);
  assert.deepEqual(splitter.push("\nEnd"), ["Two:\n- a\n\n- b\n\n  c\n\n1. d\n\n"]);
  assert.deepEqual(splitter.end(), ["End"]);
});
