// Slipstream chat widget: a launcher button that opens and closes the chat in an iframe panel.
// Closing the panel removes the iframe, which cancels an answer in progress; opening it again
// shows the conversation so far. The visitor's token is kept here, in the host page's storage
// (a cross-site iframe often may not keep any), and handed to the iframe in its URL fragment.
(function () {
  "use strict";
  var config = {{ config|safe }};
  if (window.__slipstreamWidget && window.__slipstreamWidget[config.src]) return;
  (window.__slipstreamWidget = window.__slipstreamWidget || {})[config.src] = true;

  var panel = null;
  var storageKey = "slipstream.widget:" + config.src;
  var widgetOrigin = new URL(config.src).origin;

  function token() {
    try { return localStorage.getItem(storageKey); } catch (e) { return null; }
  }

  window.addEventListener("message", function (event) {
    var data = event.data;
    if (event.origin !== widgetOrigin || !data || data.type !== "slipstream-widget") return;
    if (!panel || event.source !== panel.contentWindow) return;
    try { localStorage.setItem(storageKey, String(data.token)); } catch (e) { /* private mode */ }
  });
  var button = document.createElement("button");
  button.type = "button";
  button.textContent = config.title;
  button.setAttribute("aria-expanded", "false");
  button.setAttribute("data-slipstream-launcher", "");
  button.style.cssText = "position:fixed;right:20px;bottom:20px;z-index:2147483000;border:0;" +
    "border-radius:999px;padding:12px 18px;font:600 15px system-ui,sans-serif;color:#fff;" +
    "cursor:pointer;box-shadow:0 4px 14px rgba(0,0,0,.25);background:" + config.accent;

  function open() {
    panel = document.createElement("iframe");
    var kept = token();
    panel.src = config.src + (kept ? "#v=" + encodeURIComponent(kept) : "");
    panel.title = config.title;
    panel.setAttribute("data-slipstream-panel", "");
    panel.style.cssText = "position:fixed;right:20px;bottom:76px;z-index:2147483000;" +
      "width:min(380px,calc(100vw - 40px));height:min(560px,calc(100vh - 100px));border:0;" +
      "border-radius:12px;box-shadow:0 8px 30px rgba(0,0,0,.3);background:#fff";
    document.body.appendChild(panel);
    button.setAttribute("aria-expanded", "true");
  }

  function close() {
    panel.remove();
    panel = null;
    button.setAttribute("aria-expanded", "false");
  }

  button.addEventListener("click", function () { panel ? close() : open(); });
  function mount() { document.body.appendChild(button); }
  if (document.body) mount(); else document.addEventListener("DOMContentLoaded", mount);
})();
