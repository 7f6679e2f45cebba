// Render stage: DOM only. Deltas are buffered and drawn at most once per animation frame. The
// answer's markdown is split into top-level blocks (blocks.js): a finished block is rendered
// once and left alone, only the last one is re-rendered, so a long answer costs O(length) work,
// not O(length²). Stored answers (history) go through the same code.
import { BlockSplitter } from "./blocks.js";
import { AnswerAccumulator, formatArguments } from "./delta.js";
import { renderMarkdown } from "./markdown.js";

const frame = typeof requestAnimationFrame === "function" ? requestAnimationFrame : (f) => setTimeout(f, 16);

/** A new element with an optional class and text (never HTML). */
export function el(tag, className, text) {
  const node = document.createElement(tag);
  if (className) node.className = className;
  if (text !== undefined) node.textContent = text;
  return node;
}

/** `bytes` as Django's `filesizeformat` writes it: "512 bytes", "1.5 KB", "30.0 MB". */
export function humanSize(bytes) {
  if (bytes < 1024) return bytes === 1 ? "1 byte" : `${bytes} bytes`;
  const units = ["KB", "MB", "GB", "TB"];
  let value = bytes / 1024;
  let unit = 0;
  while (value >= 1024 && unit < units.length - 1) {
    value /= 1024;
    unit += 1;
  }
  return `${value.toFixed(1)} ${units[unit]}`;
}

/** A document's badge: its extension ("PDF", "MD"), as _message.html's `file_type` filter
 * writes it; no emoji, which a system without an emoji font shows as a box. */
export function typeBadge(name) {
  const dot = name.lastIndexOf(".");
  const ext = dot > 0 ? name.slice(dot + 1).toUpperCase() : "";
  const badge = el("span", "attachment-type", ext && ext.length <= 4 ? ext : "FILE");
  badge.setAttribute("aria-hidden", "true");
  return badge;
}

/** A message's files, as _message.html renders them: `attachments` are the upload's JSON
 * ({id, name, kind, url, size, tokens, truncated}). `local`: images from their `preview` (the
 * tray's data: URL), not linked: the widget's visitors cannot open the owner-only `url`. */
export function attachmentList(attachments, { local = false } = {}) {
  const list = el("div", "attachments");
  for (const file of attachments) {
    const kind = `attachment ${file.kind === "image" ? "image" : "document"}`;
    const link = el(local ? "span" : "a", kind);
    if (!local) {
      link.href = file.url;
      link.target = "_blank";
      link.rel = "noopener";
    }
    if (file.kind === "image" && local && !file.preview) {
      link.classList.add("no-preview");
      link.textContent = file.name; // not read yet: its name stands in
    } else if (file.kind === "image") {
      const image = el("img");
      image.src = local ? file.preview : file.url;
      image.alt = file.name;
      link.append(image);
    } else {
      link.append(typeBadge(file.name), el("span", "attachment-name", file.name), " ", el("span", "attachment-size", humanSize(file.size)));
      if (file.truncated) link.append(el("span", "attachment-note", `Only the first ${file.tokens} tokens are sent`));
    }
    list.append(link);
  }
  return list;
}

/** A user's message, as the server renders it in _message.html: plain text, never HTML,
 * then its attachments (the uploads' JSON and `options`, see `attachmentList`). */
export function userMessage(text, attachments = [], options = {}) {
  const article = el("article", "message user");
  article.dataset.status = "complete";
  article.append(el("div", "role", "You"), el("div", "content", text));
  if (attachments.length) {
    article.dataset.attachmentIds = attachments.map((file) => file.id).join(",");
    article.append(attachmentList(attachments, options));
  }
  return article;
}

const views = new WeakMap(); // article → its AnswerView

/** The AnswerView drawing `article` (streamed or stored), e.g. for its markdown source:
 * `viewOf(article).answer.content`. */
export function viewOf(article) {
  return views.get(article);
}

/** The last text node under `root` that shows something, for the typing cursor to follow. */
function lastText(root) {
  const walker = document.createTreeWalker(root, NodeFilter.SHOW_TEXT);
  let last = null;
  for (let node = walker.nextNode(); node; node = walker.nextNode()) {
    if (node.data.trim()) last = node;
  }
  return last;
}

/**
 * One assistant answer: reasoning (a "Thinking" disclosure), markdown content, tool calls, meta.
 * Streaming: `applyDelta(delta)` per `choices[0].delta`, then `finish({...})`.
 * Stored: `AnswerView.hydrate(article)` renders a server-rendered `_message.html` article.
 */
export class AnswerView {
  constructor(slotName, { article = null } = {}) {
    this.answer = new AnswerAccumulator();
    this.blocks = new BlockSplitter();
    this.reasoningBox = null;
    this.reasoningText = null;
    this.toolBox = null;
    this.toolViews = new Map(); // tool-call index → { box, name, args } elements
    this.content = el("div", "content markdown");
    this.tail = el("div", "md-block");
    this.content.append(this.tail);
    this.cursor = el("span", "typing-cursor");
    this.cursor.setAttribute("aria-hidden", "true");
    this.answerBegun = false;
    this.pendingContent = "";
    this.pendingReasoning = "";
    this.pendingTools = new Set();
    this.renderedTail = null;
    this.scheduled = false;
    this.ended = false;
    this.onFlush = null;
    if (article) {
      this.article = article;
      this.meta = article.querySelector(":scope > .meta");
      article.insertBefore(this.content, this.meta);
    } else {
      this.article = el("article", "message assistant");
      this.article.dataset.status = "streaming";
      this.article.setAttribute("aria-busy", "true");
      this.tail.append(this.cursor);
      this.meta = el("div", "meta");
      this.article.append(el("div", "role", slotName || "Assistant"), this.content, this.meta);
    }
    views.set(this.article, this);
  }

  /** Render a stored answer in place: its content, reasoning and tool calls as written by
   * _message.html (plain text, and the tool calls as JSON), exactly as a streamed one. */
  static hydrate(article) {
    if (views.has(article)) return views.get(article);
    const content = article.querySelector(":scope > .content");
    const reasoning = article.querySelector(":scope > .reasoning");
    const data = article.querySelector(':scope > script[type="application/json"]');
    const delta = {
      content: content?.textContent || "",
      reasoning_content: reasoning?.querySelector(".reasoning-text")?.textContent || "",
      tool_calls: [],
    };
    if (data) {
      try {
        const calls = JSON.parse(data.textContent);
        if (Array.isArray(calls)) {
          delta.tool_calls = calls.map((call, index) => ({ ...call, index }));
        }
      } catch {
        // A broken record shows no tool calls rather than no answer.
      }
    }
    for (const node of [content, reasoning, data]) node?.remove();
    const view = new AnswerView(null, { article });
    view.applyDelta(delta);
    view.end();
    return view;
  }

  /** Forget what a streaming answer showed (its text is about to be replaced whole, e.g. by
   * the stored message after a resume came too late). */
  reset() {
    this.answer = new AnswerAccumulator();
    this.blocks = new BlockSplitter();
    this.reasoningBox?.remove();
    this.reasoningBox = this.reasoningText = null;
    this.toolBox?.remove();
    this.toolBox = null;
    this.toolViews.clear();
    this.tail = el("div", "md-block");
    this.tail.append(this.cursor);
    this.content.replaceChildren(this.tail);
    this.answerBegun = false;
    this.pendingContent = this.pendingReasoning = "";
    this.pendingTools.clear();
    this.renderedTail = null;
  }

  /** Fold in one `choices[0].delta`: content, reasoning (any field), tool-call fragments. */
  applyDelta(delta) {
    const added = this.answer.apply(delta);
    this.take(added);
  }

  // Kept for callers that split the delta themselves.
  appendContent(text) {
    this.applyDelta({ content: text });
  }

  appendReasoning(text) {
    this.applyDelta({ reasoning_content: text });
  }

  take({ content, reasoning, tools }) {
    if (!content && !reasoning && !tools.length) return;
    this.pendingContent += content;
    this.pendingReasoning += reasoning;
    for (const index of tools) this.pendingTools.add(index);
    this.schedule();
  }

  schedule() {
    if (this.scheduled) return;
    this.scheduled = true;
    frame(() => this.flush());
  }

  flush({ final = false } = {}) {
    this.scheduled = false;
    if (this.ended) return; // a frame requested before end() ran
    if (this.pendingReasoning) {
      this.showReasoning(this.pendingReasoning);
      this.pendingReasoning = "";
    }
    if (this.pendingContent) {
      for (const block of this.blocks.push(this.pendingContent)) this.finishBlock(block);
      if (!this.answerBegun && this.pendingContent.trim()) this.beginAnswer();
      this.pendingContent = "";
    }
    if (this.pendingTools.size) {
      for (const index of this.pendingTools) this.showToolCall(index);
      this.pendingTools.clear();
      this.beginAnswer();
    }
    if (!final) this.renderTail(); // end() renders the last block itself
    if (this.onFlush) this.onFlush();
  }

  showReasoning(text) {
    if (!this.reasoningBox) {
      this.reasoningBox = el("details", "reasoning");
      this.reasoningBox.open = !this.answerBegun;
      this.reasoningBox.append(el("summary", "", "Thinking"));
      this.reasoningText = el("div", "reasoning-text");
      this.reasoningText.append(document.createTextNode(""));
      this.reasoningBox.append(this.reasoningText);
      this.article.insertBefore(this.reasoningBox, this.content);
    }
    this.reasoningText.firstChild.appendData(text);
  }

  beginAnswer() {
    if (this.answerBegun) return;
    this.answerBegun = true;
    if (this.reasoningBox) this.reasoningBox.open = false; // thinking is over: fold it away
  }

  /** A block is complete: render it for good in the tail's place; a new tail follows it. */
  finishBlock(source) {
    const done = el("div", "md-block");
    done.append(renderMarkdown(source));
    this.tail.replaceWith(done);
    done.after(this.tail);
    this.renderedTail = null;
  }

  renderTail() {
    const source = this.blocks.tail;
    if (source !== this.renderedTail) {
      this.renderedTail = source;
      const fragment = source ? renderMarkdown(source, { openFence: this.blocks.inFence }) : "";
      this.tail.replaceChildren(fragment);
    }
    if (!this.ended) {
      // The cursor follows the last character shown, inside its paragraph, item or code.
      const text = lastText(this.tail);
      if (text) text.after(this.cursor);
      else this.tail.append(this.cursor);
    }
  }

  showToolCall(index) {
    const call = this.answer.toolCalls.get(index);
    if (!call) return;
    if (!this.toolBox) {
      this.toolBox = el("div", "tool-calls");
      this.article.insertBefore(this.toolBox, this.meta);
    }
    let view = this.toolViews.get(index);
    if (!view) {
      const box = el("div", "tool-call");
      box.dataset.index = String(index);
      const head = el("div", "tool-call-head", "Tool call ");
      view = { name: el("code", "tool-call-name"), args: el("code") };
      head.append(view.name);
      const pre = el("pre", "tool-call-arguments");
      pre.append(view.args);
      box.append(head, pre);
      // In index order, whatever order the calls arrived in.
      const next = [...this.toolViews.keys()].filter((i) => i > index).sort((a, b) => a - b)[0];
      this.toolBox.insertBefore(box, next === undefined ? null : this.toolViews.get(next).box);
      view.box = box;
      this.toolViews.set(index, view);
    }
    view.name.textContent = call.name || "(unnamed)";
    view.args.textContent = formatArguments(call.arguments);
  }

  /** The answer has ended: render what was held back and finish the last block. */
  end() {
    if (this.ended) return;
    const rest = this.answer.end();
    this.pendingContent += rest.content;
    this.pendingReasoning += rest.reasoning;
    this.flush({ final: true });
    this.ended = true;
    this.cursor.remove();
    for (const block of this.blocks.end()) this.finishBlock(block);
    this.tail.remove();
    this.article.classList.add("rendered");
    if (this.onFlush) this.onFlush();
  }

  /** End the answer: flush, drop the cursor, show status and timing. */
  finish({ status, ttft_ms, tokens_per_s, usage, error } = {}) {
    this.end();
    this.article.dataset.status = status || "complete";
    this.article.removeAttribute("aria-busy");
    this.meta.replaceChildren();
    if (status === "stopped") this.meta.append(el("span", "badge", "Stopped"));
    if (error) {
      const banner = el("span", "badge error", error);
      banner.setAttribute("role", "alert");
      this.meta.append(banner);
    }
    if (ttft_ms != null) {
      const ttft = el("span", "", `TTFT ${Math.round(ttft_ms)} ms`);
      ttft.title = "Time to first token";
      this.meta.append(ttft);
    }
    if (tokens_per_s) this.meta.append(el("span", "", `${tokens_per_s.toFixed(1)} tok/s`));
    if (usage?.completion_tokens) {
      const tokens = el("span", "", `${usage.prompt_tokens ?? "?"} → ${usage.completion_tokens} tokens`);
      tokens.title = "Prompt / completion tokens";
      this.meta.append(tokens);
    }
  }
}

/**
 * Render every stored assistant answer under `root` (the chat page's history), the last (the
 * one in view) first. Past `budgetMs` the rest wait for the next task, so a long history does
 * not block the page; scroll anchoring keeps the view still as answers above it change height.
 */
export function hydrateAnswers(root = document, { budgetMs = 30 } = {}) {
  // An article that has a view already (an answer streaming now) is not a stored one.
  const stored = (article) => article.isConnected && !views.has(article);
  const pending = [...root.querySelectorAll("article.message.assistant")].filter(stored);
  const slice = () => {
    const start = performance.now();
    while (pending.length) {
      const article = pending.pop();
      if (stored(article)) AnswerView.hydrate(article);
      if (pending.length && performance.now() - start > budgetMs) {
        setTimeout(slice, 0);
        return;
      }
    }
  };
  slice();
}
