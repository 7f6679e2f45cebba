// The sidebar's htmx forms (rename a folder, move a conversation). htmx swaps only 2xx
// responses, so a refusal (400, OpenAI's error envelope: {"error": {"message", "param"}})
// would leave the form saying nothing: its message goes in the form's [data-form-error]
// alert, and the focus back to the field to fix. A folder renamed is announced, since the
// re-rendered sidebar replaces the form that had the focus.
(() => {
  const announcer = document.getElementById("announcer");

  // The form that sent the request (a swap's events name the target as `elt`).
  const sender = (event) => event.detail.requestConfig?.elt ?? event.detail.elt;

  document.body.addEventListener("htmx:responseError", (event) => {
    const form = sender(event);
    const alert = form instanceof HTMLFormElement ? form.querySelector("[data-form-error]") : null;
    if (!alert) return;
    let message = `Not saved (HTTP ${event.detail.xhr.status}). Try again.`;
    let param = null;
    try {
      const { error } = JSON.parse(event.detail.xhr.responseText);
      message = error.message || message;
      param = error.param;
    } catch {
      // not an envelope (a proxy's page): the generic message
    }
    alert.textContent = message;
    alert.hidden = false;
    const field = (param && form.querySelector(`[name="${CSS.escape(param)}"]`)) || form.querySelector("input:not([type=hidden])");
    field?.setAttribute("aria-invalid", "true");
    field?.focus();
  });

  // Before the swap, while the form and what was typed in it are still in the page.
  document.body.addEventListener("htmx:beforeSwap", (event) => {
    const form = sender(event);
    if (event.detail.isError || !(form instanceof HTMLFormElement) || !form.classList.contains("folder-rename")) return;
    if (announcer) announcer.textContent = `Folder renamed to “${form.elements.name.value.trim()}”.`;
  });
})();
