// Copy buttons outside answers: <button type="button" data-copy="#some-id">Copy</button>
// copies the value (an input, a textarea) or the text of the element its selector names. Used
// on the API keys page and in the admin (a new key, a widget's embed snippet).
document.addEventListener("click", async (event) => {
  const button = event.target instanceof Element && event.target.closest("button[data-copy]");
  if (!button) return;
  const source = document.querySelector(button.dataset.copy);
  if (!source) return;
  const text = "value" in source ? source.value : source.textContent;
  const label = button.textContent;
  try {
    await navigator.clipboard.writeText(text.trim());
    button.textContent = "Copied";
    button.dataset.copied = "true";
  } catch {
    button.textContent = "Copy failed";
  }
  clearTimeout(button.copyTimer);
  button.copyTimer = setTimeout(() => {
    button.textContent = label;
    delete button.dataset.copied;
  }, 2000);
});
