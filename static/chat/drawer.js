// On narrow screens the conversation list is a drawer (chat.css, max-width: 700px): the menu
// button opens it over the chat; the backdrop, Escape or choosing a conversation closes it.
// On wide screens the button is hidden and none of this changes anything.
(() => {
  const layout = document.getElementById("layout");
  const toggle = document.getElementById("menu-toggle");
  const sidebar = document.getElementById("sidebar");
  const backdrop = document.getElementById("backdrop");
  if (!layout || !toggle || !sidebar || !backdrop) return;

  function setOpen(open) {
    layout.classList.toggle("drawer-open", open);
    toggle.setAttribute("aria-expanded", String(open));
    backdrop.hidden = !open;
    if (open) sidebar.querySelector("a, input, button")?.focus();
    else if (sidebar.contains(document.activeElement)) toggle.focus();
  }

  toggle.addEventListener("click", () => setOpen(!layout.classList.contains("drawer-open")));
  backdrop.addEventListener("click", () => setOpen(false));
  document.addEventListener("keydown", (event) => {
    if (event.key === "Escape" && layout.classList.contains("drawer-open")) setOpen(false);
  });
  sidebar.addEventListener("click", (event) => {
    if (event.target instanceof Element && event.target.closest("a[href]")) setOpen(false);
  });
})();
