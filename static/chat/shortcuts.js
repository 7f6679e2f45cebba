// Keyboard shortcuts of the chat page, and the sheet that lists them (? opens it). Ctrl on
// Linux and Windows is Cmd on a Mac. Esc (stop the answer) is answer.js's own.
(() => {
  const sheet = document.getElementById("shortcuts");
  const composer = document.getElementById("message");
  const search = document.getElementById("conversation-q");

  function typing(target) {
    return target instanceof HTMLElement && (target.isContentEditable || /^(INPUT|TEXTAREA|SELECT)$/.test(target.tagName));
  }

  function reveal(element) {
    // On a phone the search lives in the drawer: open it first.
    if (element && !element.checkVisibility()) document.getElementById("menu-toggle")?.click();
    element?.focus();
  }

  const actions = {
    newChat: () => document.querySelector(".new-chat")?.click(),
    search: () => reveal(search),
    composer: () => composer?.focus(),
    regenerate: () => {
      const buttons = document.querySelectorAll('#messages button[data-action="regenerate"]');
      buttons[buttons.length - 1]?.click();
    },
    help: () => sheet?.showModal(),
  };

  document.addEventListener("keydown", (event) => {
    if (event.defaultPrevented || event.isComposing) return;
    const mod = event.ctrlKey || event.metaKey;
    const key = event.key.toLowerCase();
    let action = null;
    if (mod && event.shiftKey && key === "o") action = "newChat";
    else if (mod && !event.shiftKey && key === "k") action = "search";
    else if (mod && event.shiftKey && key === "e") action = "regenerate";
    else if (event.shiftKey && event.key === "Escape") action = "composer";
    else if (event.key === "?" && !mod && !typing(event.target)) action = "help";
    if (!action) return;
    event.preventDefault();
    actions[action]();
  });
})();
