// The Vercel AI SDK (ai + @ai-sdk/openai, whose provider speaks the Responses API) as a
// /v1/responses client: streamText with one function tool, run to its answer in several steps
// (the tool's result goes back to the model), while OpenAI's hosted web search tool is declared
// beside it. Prints what happened as JSON. Run by tests/integration/test_vercel_ai_sdk.py.
// Usage: SLIPSTREAM_BASE_URL=http://127.0.0.1:8000/v1 SLIPSTREAM_API_KEY=sk-slip-… node vercel_ai.mjs
import { createOpenAI } from "@ai-sdk/openai";
import { jsonSchema, stepCountIs, streamText, tool } from "ai";

const openai = createOpenAI({
  baseURL: process.env.SLIPSTREAM_BASE_URL,
  apiKey: process.env.SLIPSTREAM_API_KEY,
});

const result = { toolCalls: [], executions: [], steps: [], text: null, errors: [] };
// zod is only a transitive dependency here (not in package.json): the schema is plain JSON.
const getWeather = tool({
  description: "The weather in a city.",
  inputSchema: jsonSchema({
    type: "object",
    properties: { city: { type: "string" } },
    required: ["city"],
    additionalProperties: false,
  }),
  execute: async (input, { toolCallId }) => {
    result.executions.push({ toolCallId, input });
    return "sunny";
  },
});

try {
  const stream = streamText({
    model: openai.responses(process.env.SLIPSTREAM_MODEL ?? "primary"),
    prompt: "Weather in Oslo?",
    // The function tool first: a translating backend that keeps only it still calls it.
    tools: { get_weather: getWeather, web_search: openai.tools.webSearch({}) },
    stopWhen: stepCountIs(3),
    maxRetries: 0,
    // streamText reports errors here and as "error" parts, never by throwing.
    onError: () => {},
  });
  for await (const part of stream.fullStream) {
    if (part.type === "tool-call") {
      result.toolCalls.push({
        toolCallId: part.toolCallId,
        toolName: part.toolName,
        input: part.input,
        providerExecuted: part.providerExecuted ?? false,
      });
    } else if (part.type === "error") {
      const err = part.error;
      result.errors.push({
        name: err?.constructor?.name ?? typeof err,
        status: err?.statusCode ?? null,
        message: err?.message ?? String(err),
        responseBody: err?.responseBody ?? null,
      });
    }
  }
  for (const step of await stream.steps) {
    result.steps.push({
      finishReason: step.finishReason,
      text: step.text,
      toolCalls: step.toolCalls.length,
      toolResults: step.toolResults.map((r) => r.output),
      omittedTools: step.response.headers?.["slipstream-omitted-tools"] ?? null,
      warnings: step.warnings ?? [],
    });
  }
  result.text = await stream.text;
} catch (err) {
  result.errors.push({ name: err.constructor.name, status: null, message: err.message });
}
console.log(JSON.stringify(result));
