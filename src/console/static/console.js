// warren console: live figures over server-sent events. Every element with a data-live
// attribute names an event stream; each message is the element's new inner HTML, rendered
// and escaped by the server. Without this script the pages work the same, only without
// updates until reloaded.
(function () {
  "use strict";
  if (!window.EventSource) {
    return;
  }
  document.querySelectorAll("[data-live]").forEach(function (el) {
    var source = new EventSource(el.getAttribute("data-live"));
    var badge = document.getElementById("live-state");
    source.onopen = function () {
      if (badge) {
        badge.textContent = "live";
        badge.className = "live on";
      }
    };
    source.onmessage = function (event) {
      el.innerHTML = event.data;
      el.setAttribute("data-updated", String(Date.now()));
    };
    source.addEventListener("end", function () {
      source.close();
    });
    source.onerror = function () {
      if (badge) {
        badge.textContent = "reconnecting";
        badge.className = "live off";
      }
    };
  });
})();
