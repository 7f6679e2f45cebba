// The prompt library in the message box: "/" at its start opens a list of saved prompts
// (GET chat:prompt-choices, fetched once) filtered by what follows, by title; Up/Down choose,
// Enter or Tab puts the prompt's text in the box, Esc closes. Enter never sends while the list
// is open or still loading: this listens on the form in the capture phase, before answer.js's
// Enter-to-send.
(() => {
  const chat = document.getElementById("chat");
  const form = document.getElementById("composer");
  const box = document.getElementById("message");
  const announcer = document.getElementById("announcer");
  if (!chat || !form || !box || !chat.dataset.promptsUrl) return;

  const menu = document.createElement("ul");
  menu.id = "prompt-menu";
  menu.className = "prompt-menu";
  menu.setAttribute("role", "listbox");
  menu.setAttribute("aria-label", "Saved prompts");
  menu.hidden = true;
  form.prepend(menu);
  box.setAttribute("aria-controls", menu.id);

  let prompts = null; // loaded on the first "/"
  let loading = null; // the one request for them, shared by every keystroke while it runs
  let shown = [];
  let active = 0;

  function load() {
    loading ??= fetch(chat.dataset.promptsUrl, { credentials: "same-origin" })
      .then((response) => (response.ok ? response.json() : { prompts: [] }))
      .then((data) => data.prompts, () => [])
      .then((list) => (prompts = list));
    return loading;
  }

  function query() {
    const value = box.value;
    return value.startsWith("/") && !value.includes("\n") ? value.slice(1).trim().toLowerCase() : null;
  }

  function close() {
    menu.hidden = true;
    shown = [];
    box.removeAttribute("aria-activedescendant");
  }

  function render() {
    menu.replaceChildren();
    if (!shown.length) {
      const none = document.createElement("li");
      none.className = "none";
      none.textContent = prompts.length ? "No saved prompt has that title." : "No saved prompts yet: add them under Prompts.";
      menu.append(none);
      box.removeAttribute("aria-activedescendant");
      return;
    }
    shown.forEach((prompt, i) => {
      const option = document.createElement("li");
      option.id = `prompt-option-${prompt.id}`;
      option.setAttribute("role", "option");
      option.setAttribute("aria-selected", String(i === active));
      option.textContent = prompt.title;
      if (prompt.shared_by) {
        const by = document.createElement("span");
        by.className = "shared-by";
        by.textContent = `from ${prompt.shared_by}`;
        option.append(by);
      }
      option.addEventListener("mousedown", (event) => {
        event.preventDefault(); // keep the focus in the box
        pick(prompt);
      });
      menu.append(option);
    });
    const current = shown[active];
    box.setAttribute("aria-activedescendant", `prompt-option-${current.id}`);
    document.getElementById(`prompt-option-${current.id}`)?.scrollIntoView({ block: "nearest" });
  }

  // Variables a prompt may hold, filled as it is picked: {{date}} and {{time}} (the browser's
  // locale), {{clipboard}} (the clipboard's text, when the browser lets us read it: else it
  // stays as written, for the user to replace).
  async function fill(text) {
    const now = new Date();
    let filled = text.replaceAll("{{date}}", now.toLocaleDateString()).replaceAll("{{time}}", now.toLocaleTimeString());
    if (filled.includes("{{clipboard}}")) {
      try {
        filled = filled.replaceAll("{{clipboard}}", await navigator.clipboard.readText());
      } catch {
        // no permission: leave the placeholder
      }
    }
    return filled;
  }

  async function pick(prompt) {
    close();
    box.value = await fill(prompt.text);
    box.focus();
    box.setSelectionRange(box.value.length, box.value.length);
    announcer.textContent = `Prompt “${prompt.title}” put in the message box.`;
  }

  box.addEventListener("input", async () => {
    const wanted = query();
    if (wanted === null) return close();
    const all = await load();
    if (query() !== wanted) return; // typed on meanwhile: that input event handles it
    shown = all.filter((prompt) => prompt.title.toLowerCase().includes(wanted));
    active = 0;
    menu.hidden = false;
    render();
    announcer.textContent = `${shown.length} saved prompts.`;
  });

  form.addEventListener(
    "keydown",
    (event) => {
      if (event.target !== box) return;
      if (menu.hidden && prompts === null && event.key === "Enter" && !event.shiftKey && query() !== null) {
        // "/fix" then Enter before the list has loaded: pick once it has, never send "/fix".
        event.preventDefault();
        event.stopPropagation();
        load().then((all) => {
          const wanted = query();
          const match = wanted === null ? null : all.find((prompt) => prompt.title.toLowerCase().includes(wanted));
          if (match) pick(match);
        });
        return;
      }
      if (menu.hidden) return;
      if (event.key === "ArrowDown" || event.key === "ArrowUp") {
        if (!shown.length) return;
        active = (active + (event.key === "ArrowDown" ? 1 : shown.length - 1)) % shown.length;
        render();
      } else if ((event.key === "Enter" || event.key === "Tab") && !event.shiftKey && shown.length) {
        pick(shown[active]);
      } else if (event.key === "Escape") {
        close();
      } else {
        return;
      }
      event.preventDefault();
      event.stopPropagation();
    },
    true,
  );
  box.addEventListener("blur", close);
})();
