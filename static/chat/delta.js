// Deltas → answer parts: content, reasoning and tool calls. No DOM; node's tests import it.
//
// The rules match chat/relay/accumulate.py, so what streams is what is stored: reasoning is
// `delta.reasoning_content`, else `delta.reasoning` (vLLM has sent both in one delta with the
// same text, vllm-project/vllm#29408); tool-call fragments are keyed by `index`, the first one
// carrying `id` and `function.name`, later ones `function.arguments` pieces. On top of that,
// `<think>…</think>` at the start of the content (DeepSeek-R1 and Qwen3 served without a
// reasoning parser) is reasoning too; the tags may be cut anywhere between two deltas.

const OPEN = "<think>";
const CLOSE = "</think>";

/** Length of the longest end of `text` that is a proper start of `tag` (a tag cut short). */
function heldBack(text, tag) {
  for (let k = Math.min(tag.length - 1, text.length); k > 0; k--) {
    if (text.endsWith(tag.slice(0, k))) return k;
  }
  return 0;
}

/** Splits streamed content into reasoning (inside a leading `<think>` element) and answer. */
export class ThinkSplitter {
  constructor() {
    this.state = "start"; // start → (think → after →) content
    this.held = ""; // text that could still turn out to be (part of) a tag
  }

  /** Feed one content piece; returns `{ reasoning, content }` that can be shown now. */
  feed(text) {
    const out = { reasoning: "", content: "" };
    let rest = this.held + text;
    this.held = "";
    while (rest) {
      if (this.state === "start") {
        const trimmed = rest.trimStart();
        if (trimmed.startsWith(OPEN)) {
          this.state = "think";
          rest = trimmed.slice(OPEN.length);
        } else if (OPEN.startsWith(trimmed)) {
          this.held = rest; // only blanks, or "<thi" so far: wait for more
          rest = "";
        } else {
          this.state = "content";
        }
      } else if (this.state === "think") {
        const end = rest.indexOf(CLOSE);
        if (end >= 0) {
          out.reasoning += rest.slice(0, end);
          rest = rest.slice(end + CLOSE.length);
          this.state = "after";
        } else {
          const keep = heldBack(rest, CLOSE);
          out.reasoning += rest.slice(0, rest.length - keep);
          this.held = rest.slice(rest.length - keep);
          rest = "";
        }
      } else if (this.state === "after") {
        // The blank lines between </think> and the answer are not part of the answer.
        rest = rest.trimStart();
        if (rest) this.state = "content";
      } else {
        out.content += rest;
        rest = "";
      }
    }
    return out;
  }

  /** The content has ended: release what was held back. */
  end() {
    const held = this.held;
    this.held = "";
    if (this.state === "think") return { reasoning: held, content: "" };
    if (this.state === "start") {
      this.state = "content";
      return { reasoning: "", content: held };
    }
    return { reasoning: "", content: "" };
  }
}

/**
 * One choice's answer as it streams. `apply(delta)` folds a `choices[0].delta` in and returns
 * what it added: `{ content, reasoning, tools }` (text to append, and the indices of the tool
 * calls that changed). `end()` releases text held back while a `<think>` tag might be forming.
 */
export class AnswerAccumulator {
  constructor() {
    this.content = "";
    this.reasoning = "";
    this.toolCalls = new Map(); // index → { id, type, name, arguments }
    this.think = new ThinkSplitter();
  }

  apply(delta) {
    const added = { content: "", reasoning: "", tools: [] };
    if (!delta || typeof delta !== "object") return added;
    const reasoning = delta.reasoning_content || delta.reasoning;
    if (typeof reasoning === "string") added.reasoning += reasoning;
    if (typeof delta.content === "string" && delta.content) {
      const split = this.think.feed(delta.content);
      added.reasoning += split.reasoning;
      added.content += split.content;
    }
    if (Array.isArray(delta.tool_calls)) {
      for (const fragment of delta.tool_calls) {
        const index = this.addToolFragment(fragment);
        if (index !== null && !added.tools.includes(index)) added.tools.push(index);
      }
    }
    return this.keep(added);
  }

  end() {
    const split = this.think.end();
    return this.keep({ ...split, tools: [] });
  }

  keep(added) {
    // Leading blanks of the reasoning ("<think>\n") would show as an empty first line.
    if (!this.reasoning) added.reasoning = added.reasoning.trimStart();
    this.reasoning += added.reasoning;
    this.content += added.content;
    return added;
  }

  addToolFragment(fragment) {
    if (!fragment || typeof fragment !== "object") return null;
    const index = Number.isInteger(fragment.index) ? fragment.index : this.toolCalls.size;
    let call = this.toolCalls.get(index);
    if (!call) {
      call = { id: fragment.id || "", type: fragment.type || "function", name: "", arguments: "" };
      this.toolCalls.set(index, call);
    } else if (fragment.id && !call.id) {
      call.id = fragment.id;
    }
    const fn = fragment.function || {};
    // The name comes whole in the first fragment; OpenRouter repeats it in later ones.
    if (typeof fn.name === "string" && fn.name && !call.name) call.name = fn.name;
    if (typeof fn.arguments === "string") call.arguments += fn.arguments;
    return index;
  }

  /** The tool calls in index order. */
  tools() {
    return [...this.toolCalls.entries()].sort((a, b) => a[0] - b[0]).map(([, call]) => call);
  }
}

/** Arguments as shown: pretty-printed once they parse as JSON, the raw text until then. */
export function formatArguments(text) {
  if (!text.trim()) return "";
  try {
    return JSON.stringify(JSON.parse(text), null, 2);
  } catch {
    return text;
  }
}
