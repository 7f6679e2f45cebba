// node --test tests/js/ — an answer's connection and its resumes (static/chat/stream.js and
// playAnswer in static/chat/answer.js) against a real HTTP server on loopback that cuts
// connections the way a network does: a socket destroyed mid-body, a body that ends early.
import assert from "node:assert/strict";
import { createServer } from "node:http";
import { test } from "node:test";

import { playAnswer } from "../../static/chat/answer.js";

const FAST = [1, 1, 1]; // resume pauses (ms) for tests

function meta(resumedAfter = 0) {
  const data = { generation_id: "g1", assistant_message_id: 7, resumed_after: resumedAfter };
  return `event: slipstream.message\ndata: ${JSON.stringify(data)}\n\n`;
}

function chunk(id, text) {
  return `id: ${id}\ndata: ${JSON.stringify({ choices: [{ delta: { content: text } }] })}\n\n`;
}

const END = 'event: slipstream.done\ndata: {"status":"complete"}\n\ndata: [DONE]\n\n';

/** Chunks `from`..`to` (1-based) of "abcdef…", one letter each. */
function chunks(from, to) {
  let out = "";
  for (let id = from; id <= to; id++) out += chunk(id, String.fromCharCode(96 + id));
  return out;
}

/** A loopback server; `handle(req, res, n)` answers request number n (0-based). */
async function serve(t, handle) {
  const requests = [];
  const server = createServer((req, res) => {
    requests.push(`${req.method} ${req.url}`);
    handle(req, res, requests.length - 1);
  });
  await new Promise((resolve) => server.listen(0, "127.0.0.1", resolve));
  t.after(() => {
    server.closeAllConnections();
    return new Promise((resolve) => server.close(resolve));
  });
  const base = `http://127.0.0.1:${server.address().port}`;
  return { base, requests, resumeUrl: (id, after) => `${base}/gen/${id}/?after=${after}` };
}

function sse(res, body) {
  res.writeHead(200, { "Content-Type": "text/event-stream" });
  if (body) res.write(body);
}

/** Drop the connection once everything written so far has left. */
function cut(res) {
  res.write("", () => res.socket.destroy());
}

/** What playAnswer draws on, without a DOM: the text, the status lines, the end. */
function fakeView() {
  const view = {
    text: "",
    statuses: [],
    finished: null,
    waiters: [],
    applyDelta(delta) {
      view.text += delta.content || "";
      view.waiters = view.waiters.filter(([text, resolve]) => !view.text.endsWith(text) || resolve());
    },
    reset() {
      view.text = "";
    },
    finish(end) {
      view.finished = end;
    },
    /** Resolves once the text shown ends with `text`. */
    shown(text) {
      return new Promise((resolve) => view.waiters.push([text, resolve]));
    },
  };
  const line = {
    set textContent(text) {
      view.statuses.push(text);
      view.onStatus?.(text);
    },
    remove() {},
  };
  view.article = { dataset: {}, querySelector: () => line };
  return view;
}

test("a connection that breaks mid-answer resumes after the last chunk rendered", async (t) => {
  const view = fakeView();
  const server = await serve(t, (req, res, n) => {
    if (n === 0) {
      sse(res, meta() + chunks(1, 3));
      view.shown("c").then(() => cut(res));
    } else {
      sse(res, meta(3) + chunks(4, 6));
      res.end(END);
    }
  });
  const status = await playAnswer(view, `${server.base}/stream/`, { content: "hi" }, {
    resumeUrl: server.resumeUrl, resumeDelaysMs: FAST,
  });
  assert.equal(status, "complete");
  assert.equal(view.text, "abcdef");
  assert.deepEqual(server.requests, ["POST /stream/", "GET /gen/g1/?after=3"]);
  assert.ok(view.statuses.includes("Reconnecting…"), view.statuses);
  assert.equal(view.article.dataset.messageId, 7);
});

test("a body that ends before the answer's end resumes too", async (t) => {
  const view = fakeView();
  const server = await serve(t, (req, res, n) => {
    if (n === 0) {
      sse(res);
      res.end(meta() + chunks(1, 2));
    } else {
      sse(res, meta(2) + chunks(3, 4));
      res.end(END);
    }
  });
  const status = await playAnswer(view, `${server.base}/stream/`, { content: "hi" }, {
    resumeUrl: server.resumeUrl, resumeDelaysMs: FAST,
  });
  assert.equal(status, "complete");
  assert.equal(view.text, "abcd");
  assert.deepEqual(server.requests, ["POST /stream/", "GET /gen/g1/?after=2"]);
});

test("each try that brings a chunk starts the count of tries again", async (t) => {
  const view = fakeView();
  // Every connection brings one chunk, then breaks: five breaks, two tries allowed in a row.
  const server = await serve(t, (req, res, n) => {
    sse(res, (n === 0 ? meta() : meta(n)) + chunk(n + 1, String.fromCharCode(97 + n)));
    if (n < 5) view.shown(String.fromCharCode(97 + n)).then(() => cut(res));
    else res.end(END);
  });
  const status = await playAnswer(view, `${server.base}/stream/`, { content: "hi" }, {
    resumeUrl: server.resumeUrl, resumeDelaysMs: [1, 1],
  });
  assert.equal(status, "complete");
  assert.equal(view.text, "abcdef");
  assert.deepEqual(server.requests.slice(1), [1, 2, 3, 4, 5].map((n) => `GET /gen/g1/?after=${n}`));
});

test("resuming gives up after its tries in a row and says why", async (t) => {
  const view = fakeView();
  const server = await serve(t, (req, res, n) => {
    if (n === 0) {
      sse(res, meta() + chunks(1, 1));
      view.shown("a").then(() => cut(res));
    } else {
      req.socket.destroy(); // no response at all: fetch rejects
    }
  });
  const status = await playAnswer(view, `${server.base}/stream/`, { content: "hi" }, {
    resumeUrl: server.resumeUrl, resumeDelaysMs: FAST,
  });
  assert.equal(status, "error");
  assert.equal(view.text, "a");
  assert.equal(server.requests.length, 1 + FAST.length);
  assert.ok(server.requests.slice(1).every((r) => r === "GET /gen/g1/?after=1"), server.requests);
  assert.match(view.finished.error, /^Network error: /);
});

test("without a resume URL (the widget) a broken connection is an error", async (t) => {
  const view = fakeView();
  const server = await serve(t, (req, res) => {
    sse(res, meta() + chunks(1, 2));
    view.shown("b").then(() => cut(res));
  });
  const status = await playAnswer(view, `${server.base}/stream/`, { content: "hi" }, {
    resumeDelaysMs: FAST,
  });
  assert.equal(status, "error");
  assert.equal(view.text, "ab");
  assert.deepEqual(server.requests, ["POST /stream/"]);
  assert.match(view.finished.error, /^The connection broke off: /);
});

test("a break before the server named the generation is an error", async (t) => {
  const view = fakeView();
  const server = await serve(t, (req, res) => {
    sse(res, ": keep-alive\n\n");
    cut(res);
  });
  const status = await playAnswer(view, `${server.base}/stream/`, { content: "hi" }, {
    resumeUrl: server.resumeUrl, resumeDelaysMs: FAST,
  });
  assert.equal(status, "error");
  assert.deepEqual(server.requests, ["POST /stream/"]);
});

test("an answer that ended while away is shown as stored, not appended", async (t) => {
  const view = fakeView();
  const server = await serve(t, (req, res, n) => {
    if (n === 0) {
      sse(res, meta() + chunks(1, 2));
      view.shown("b").then(() => cut(res));
    } else {
      res.writeHead(410, { "Content-Type": "application/json" });
      res.end(JSON.stringify({ status: "complete", content: "abcdef", reasoning: "" }));
    }
  });
  const status = await playAnswer(view, `${server.base}/stream/`, { content: "hi" }, {
    resumeUrl: server.resumeUrl, resumeDelaysMs: FAST,
  });
  assert.equal(status, "complete");
  assert.equal(view.text, "abcdef");
  assert.deepEqual(server.requests, ["POST /stream/", "GET /gen/g1/?after=2"]);
});

test("aborting while it waits to resume stops at once", async (t) => {
  const view = fakeView();
  const controller = new AbortController();
  view.onStatus = (text) => {
    if (text === "Reconnecting…") controller.abort();
  };
  const server = await serve(t, (req, res) => {
    sse(res, meta() + chunks(1, 1));
    view.shown("a").then(() => cut(res));
  });
  const status = await playAnswer(view, `${server.base}/stream/`, { content: "hi" }, {
    signal: controller.signal, resumeUrl: server.resumeUrl, resumeDelaysMs: [60_000],
  });
  assert.equal(status, "stopped");
  assert.deepEqual(server.requests, ["POST /stream/"]);
});

test("a chunk sent again is not rendered twice", async (t) => {
  const view = fakeView();
  const server = await serve(t, (req, res, n) => {
    if (n === 0) {
      sse(res, meta() + chunks(1, 3));
      view.shown("c").then(() => cut(res));
    } else {
      sse(res, meta(1) + chunks(2, 4)); // a server that resumed from too early
      res.end(END);
    }
  });
  const status = await playAnswer(view, `${server.base}/stream/`, { content: "hi" }, {
    resumeUrl: server.resumeUrl, resumeDelaysMs: FAST,
  });
  assert.equal(status, "complete");
  assert.equal(view.text, "abcd");
});
