// Hadron's dashboard: follows the server's event stream and replaces the
// page's <main> with a fresh rendering when something changed, without a
// reload. The filter applies at once. Reconnects after a server restart
// (the browser's EventSource retries by itself).
(function () {
  "use strict";
  var live = document.getElementById("live");
  var timer = null;
  var busy = false;

  function say(text, on) {
    if (!live) return;
    live.textContent = text;
    live.className = on ? "on" : "off";
  }

  function applyFilter() {
    var phase = document.getElementById("phase");
    var q = document.getElementById("q");
    if (!phase || !q) return;
    var want = phase.value;
    var text = q.value.trim().toLowerCase();
    var shown = 0;
    document.querySelectorAll("tbody tr[data-name]").forEach(function (row) {
      var ok = (!want || row.dataset.phase === want) && (!text || row.dataset.search.indexOf(text) !== -1);
      row.hidden = !ok;
      if (ok) shown += 1;
    });
    var count = document.getElementById("count");
    if (count) count.textContent = String(shown);
    var params = new URLSearchParams();
    if (want) params.set("phase", want);
    if (text) params.set("q", q.value.trim());
    var query = params.toString();
    var next = location.pathname + (query ? "?" + query : "");
    if (next !== location.pathname + location.search) {
      history.replaceState(null, "", next);
      // The server filters too (it shows at most the newest 500 rows).
      schedule();
    }
  }

  function refresh() {
    if (busy) { schedule(); return; }
    busy = true;
    // The page as the server renders it for the current filter.
    fetch(location.pathname + location.search, { headers: { Accept: "text/html" }, cache: "no-store" })
      .then(function (response) {
        if (!response.ok) throw new Error("HTTP " + response.status);
        return response.text();
      })
      .then(function (html) {
        var next = new DOMParser().parseFromString(html, "text/html").querySelector("main");
        var main = document.querySelector("main");
        if (next && main) {
          var open = Array.prototype.map.call(main.querySelectorAll("details[open] summary"), function (s) { return s.textContent; });
          main.replaceChildren.apply(main, Array.prototype.slice.call(next.childNodes));
          main.querySelectorAll("details summary").forEach(function (s) {
            if (open.indexOf(s.textContent) !== -1) s.parentElement.open = true;
          });
          applyFilter();
          document.dispatchEvent(new CustomEvent("hadron:refreshed"));
        }
      })
      .catch(function () { say("reconnecting…", false); })
      .finally(function () { busy = false; });
  }

  function schedule() {
    if (timer) return;
    timer = setTimeout(function () { timer = null; refresh(); }, 150);
  }

  var form = document.querySelector("form.filter");
  if (form) {
    form.addEventListener("submit", function (e) { e.preventDefault(); applyFilter(); });
    form.addEventListener("input", applyFilter);
    form.addEventListener("change", applyFilter);
  }

  if (!window.EventSource) return;
  var source = new EventSource("/api/v1/events");
  source.addEventListener("open", function () { say("live", true); schedule(); });
  source.addEventListener("phase", schedule);
  source.addEventListener("lagged", schedule);
  source.addEventListener("error", function () { say("reconnecting…", false); });
})();
