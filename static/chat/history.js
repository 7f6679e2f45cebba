// The chat page's stored answers, rendered by the same code as streamed ones (render.js).
// Loaded before chat.js, which scrolls to the bottom once the history has its final height;
// answers that htmx swaps into the history later (another branch of the conversation) are
// rendered too.
import { hydrateAnswers } from "./render.js";

const history = () => document.getElementById("messages");
if (history()) hydrateAnswers(history());
document.body.addEventListener("htmx:afterSwap", (event) => {
  const messages = history();
  const target = event.detail?.target;
  if (messages && target instanceof Node && (messages.contains(target) || target.contains(messages))) {
    hydrateAnswers(messages);
  }
});
