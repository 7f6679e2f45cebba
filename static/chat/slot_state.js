// Keeps slot state live wherever it is shown: `.slot-state[data-slot]` badges (the admin's slot
// list, the chat header), the chat's slot picker options and the admin front page's table of
// slots (#slots-now), from GET /chat/slots/: every second while a slot is not ready (warming
// is worth watching), else every 5 s.
// A classic script, so the Django admin can load it through ModelAdmin.Media.
(() => {
  const url = "/chat/slots/";
  const settledMs = 5000;
  const changingMs = 1000;
  const picker = () => document.getElementById("slot");

  function paint(badge, slot) {
    badge.dataset.state = slot.state;
    badge.textContent = slot.state;
    badge.title = slot.last_error || "";
  }

  function paintPickerBadge(states) {
    const badge = document.getElementById("slot-state");
    const select = picker();
    if (!badge || !select) return;
    const slot = states.get(select.value);
    if (slot) {
      badge.dataset.slot = slot.name;
      paint(badge, slot);
    }
  }

  // "primary · ready · 2 queued · first token 350 ms": what a user weighs when picking a model.
  function optionText(slot) {
    const parts = [slot.label, slot.state];
    if (slot.queued) parts.push(`${slot.queued} queued`);
    if (slot.ttft_p50_ms != null) {
      const ms = slot.ttft_p50_ms;
      parts.push(`first token ${duration(ms)}`);
    }
    return parts.join(" · ");
  }

  function duration(ms) {
    if (ms == null) return "–";
    return ms < 1000 ? `${Math.round(ms)} ms` : `${(ms / 1000).toFixed(1)} s`;
  }

  // The admin's front page (templates/admin/index.html): one row per slot.
  function paintSlotsNow(slots) {
    const body = document.querySelector("#slots-now tbody");
    if (!body) return;
    body.replaceChildren(...slots.map((slot) => {
      const row = document.createElement("tr");
      row.dataset.slot = slot.name;
      const name = document.createElement("th");
      name.scope = "row";
      name.textContent = slot.label;
      const state = document.createElement("td");
      const badge = document.createElement("span");
      badge.className = "slot-state";
      badge.dataset.slot = slot.name;
      paint(badge, slot);
      state.append(badge);
      const cells = [
        slot.in_flight, slot.queued, slot.requests_today, slot.errors_today,
        duration(slot.ttft_p50_ms),
        slot.tokens_per_s_p50 == null ? "–" : Math.round(slot.tokens_per_s_p50),
      ].map((value) => Object.assign(document.createElement("td"), { textContent: String(value) }));
      row.append(name, state, ...cells);
      return row;
    }));
  }

  let states = new Map();

  async function refresh() {
    let data;
    try {
      const response = await fetch(url, { credentials: "same-origin", headers: { Accept: "application/json" } });
      if (!response.ok) return settledMs;
      data = await response.json();
    } catch {
      return settledMs; // offline for a moment: the next tick tries again
    }
    states = new Map(data.slots.map((slot) => [slot.name, slot]));
    paintSlotsNow(data.slots);
    for (const badge of document.querySelectorAll(".slot-state[data-slot]")) {
      const slot = states.get(badge.dataset.slot);
      if (slot) paint(badge, slot);
    }
    for (const option of picker()?.options || []) {
      const slot = states.get(option.value);
      if (slot) {
        option.dataset.state = slot.state;
        option.textContent = optionText(slot);
      }
    }
    paintPickerBadge(states);
    return data.slots.every((slot) => slot.state === "ready") ? settledMs : changingMs;
  }

  async function tick() {
    setTimeout(tick, await refresh());
  }

  document.addEventListener("change", (event) => {
    if (event.target === picker()) paintPickerBadge(states);
  });
  tick();
})();
