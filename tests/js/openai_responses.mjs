// The official openai Node SDK as a /v1/responses client: stream one response (the SDK's
// responses.stream helper) and print what arrived as JSON. Run by
// tests/integration/test_api_node.py.
// Usage: SLIPSTREAM_BASE_URL=http://127.0.0.1:8000/v1 SLIPSTREAM_API_KEY=sk-slip-… node openai_responses.mjs
import OpenAI from "openai";

const client = new OpenAI({
  baseURL: process.env.SLIPSTREAM_BASE_URL,
  apiKey: process.env.SLIPSTREAM_API_KEY,
  maxRetries: 0,
});

const result = { types: [], sequenceNumbers: [], deltas: "", final: null };
try {
  const stream = client.responses.stream({
    model: process.env.SLIPSTREAM_MODEL ?? "primary",
    input: "Hello from Node",
  });
  for await (const event of stream) {
    result.types.push(event.type);
    result.sequenceNumbers.push(event.sequence_number);
    if (event.type === "response.output_text.delta") result.deltas += event.delta;
  }
  const final = await stream.finalResponse();
  result.final = {
    id: final.id,
    model: final.model,
    status: final.status,
    outputText: final.output_text,
    usage: final.usage,
  };
  const again = await client.responses.retrieve(final.id);
  result.retrievedText = again.output_text;
} catch (err) {
  result.error = { name: err.constructor.name, status: err.status ?? null, message: err.message };
}
console.log(JSON.stringify(result));
