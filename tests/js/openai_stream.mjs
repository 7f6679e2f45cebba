// The official openai Node SDK as a Slipstream client: stream one chat completion and print
// what arrived as JSON. Run by tests/integration/test_api_node.py.
// Usage: SLIPSTREAM_BASE_URL=http://127.0.0.1:8000/v1 SLIPSTREAM_API_KEY=sk-slip-… node openai_stream.mjs
import OpenAI from "openai";

const client = new OpenAI({
  baseURL: process.env.SLIPSTREAM_BASE_URL,
  apiKey: process.env.SLIPSTREAM_API_KEY,
  maxRetries: 0,
});

const result = { ids: [], models: [], content: "", finishReasons: [], usage: null, roles: [] };
try {
  const stream = await client.chat.completions.create({
    model: process.env.SLIPSTREAM_MODEL ?? "primary",
    messages: [{ role: "user", content: "Hello from Node" }],
    stream: true,
    stream_options: { include_usage: true },
  });
  for await (const chunk of stream) {
    result.ids.push(chunk.id);
    result.models.push(chunk.model);
    if (chunk.usage) result.usage = chunk.usage;
    for (const choice of chunk.choices) {
      if (choice.delta.role) result.roles.push(choice.delta.role);
      result.content += choice.delta.content ?? "";
      if (choice.finish_reason) result.finishReasons.push(choice.finish_reason);
    }
  }
  const models = await client.models.list();
  result.modelIds = models.data.map((m) => m.id);
} catch (err) {
  result.error = { name: err.constructor.name, status: err.status ?? null, message: err.message };
}
console.log(JSON.stringify(result));
