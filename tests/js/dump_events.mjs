// Print the browser parser's events for a file as JSON, for tests/unit/test_sse_js.py to compare
// with the Python decoder:  node tests/js/dump_events.mjs <file> [chunk-size]
// The file is fed whole, or in pieces of chunk-size bytes, then flushed.
import { readFileSync } from "node:fs";

import { SSEDecoder } from "../../static/chat/sse.js";

const [path, chunkArg] = process.argv.slice(2);
if (!path) {
  console.error("usage: node tests/js/dump_events.mjs <file> [chunk-size]");
  process.exit(2);
}
const raw = new Uint8Array(readFileSync(path));
const size = chunkArg ? Number.parseInt(chunkArg, 10) : raw.length || 1;
const decoder = new SSEDecoder();
const events = [];
for (let i = 0; i < raw.length; i += size) events.push(...decoder.feed(raw.subarray(i, i + size)));
events.push(...decoder.flush());
process.stdout.write(JSON.stringify(events));
