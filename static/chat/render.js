// Render stage: DOM only. Tokens are buffered and appended to a Text node at most once per
// animation frame, so a long answer costs O(length) DOM work, not O(length²).

const frame = typeof requestAnimationFrame === "function" ? requestAnimationFrame : (f) => setTimeout(f, 16);

function el(tag, className, text) {
  const node = document.createElement(tag);
  if (className) node.className = className;
  if (text !== undefined) node.textContent = text;
  return node;
}

/** A user's message, as the server renders it in _message.html. */
export function userMessage(text) {
  const article = el("article", "message user");
  article.dataset.status = "complete";
  article.append(el("div", "role", "You"), el("div", "content", text));
  return article;
}

/** One streaming assistant answer: content and reasoning text, a typing cursor, then meta. */
export class AnswerView {
  constructor(slotName) {
    this.article = el("article", "message assistant");
    this.article.dataset.status = "streaming";
    this.article.setAttribute("aria-busy", "true");
    this.reasoningBox = null;
    this.reasoningText = null;
    this.content = el("div", "content");
    this.contentText = document.createTextNode("");
    this.cursor = el("span", "typing-cursor");
    this.cursor.setAttribute("aria-hidden", "true");
    this.content.append(this.contentText, this.cursor);
    this.meta = el("div", "meta");
    this.article.append(el("div", "role", slotName || "Assistant"), this.content, this.meta);
    this.pendingContent = "";
    this.pendingReasoning = "";
    this.scheduled = false;
    this.onFlush = null;
  }

  appendContent(text) {
    this.pendingContent += text;
    this.schedule();
  }

  appendReasoning(text) {
    this.pendingReasoning += text;
    this.schedule();
  }

  schedule() {
    if (this.scheduled) return;
    this.scheduled = true;
    frame(() => this.flush());
  }

  flush() {
    this.scheduled = false;
    if (this.pendingReasoning) {
      if (!this.reasoningBox) {
        this.reasoningBox = el("details", "reasoning");
        this.reasoningBox.open = true;
        this.reasoningBox.append(el("summary", "", "Thinking"));
        this.reasoningText = el("div", "reasoning-text");
        this.reasoningBox.append(this.reasoningText);
        this.article.insertBefore(this.reasoningBox, this.content);
      }
      this.reasoningText.append(this.pendingReasoning);
      this.pendingReasoning = "";
    }
    if (this.pendingContent) {
      if (this.reasoningBox && this.reasoningBox.open && !this.contentText.length) {
        this.reasoningBox.open = false; // the answer has begun
      }
      this.contentText.appendData(this.pendingContent);
      this.pendingContent = "";
    }
    if (this.onFlush) this.onFlush();
  }

  /** End the answer: flush, drop the cursor, show status and timing. */
  finish({ status, ttft_ms, tokens_per_s, error } = {}) {
    this.flush();
    this.cursor.remove();
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
  }
}
