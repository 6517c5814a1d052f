// jetpilot console: live pages. Every page whose <main> names a live
// stream (data-live) listens to it with EventSource: "changed" fetches the
// page's main part again (rendered and escaped by the server), and on a
// job's page "ev" appends one event, written with textContent only.
"use strict";
(function () {
  const main = document.getElementById("main");
  if (!main || !main.dataset.live) return;

  let busy = false, again = false;
  async function refresh() {
    if (busy) { again = true; return; }
    busy = true;
    try {
      const u = new URL(location.href);
      u.searchParams.set("fragment", "1");
      const r = await fetch(u, { credentials: "same-origin", headers: { Accept: "text/html" } });
      if (!r.ok) return;
      const doc = new DOMParser().parseFromString(await r.text(), "text/html");
      // Keep what the person is typing or has chosen.
      const kept = new Map();
      main.querySelectorAll("input[id], select[id], textarea[id]").forEach((el) => kept.set(el.id, el.value));
      const focused = document.activeElement && document.activeElement.id;
      main.replaceChildren(...doc.body.childNodes);
      kept.forEach((value, id) => {
        const el = document.getElementById(id);
        if (el && main.contains(el) && el.value !== value && Array.from(el.options || [{ value }]).some((o) => o.value === value)) el.value = value;
      });
      if (focused) { const el = document.getElementById(focused); if (el) el.focus(); }
      document.dispatchEvent(new CustomEvent("jetpilot:refreshed"));
    } finally {
      busy = false;
      if (again) { again = false; refresh(); }
    }
  }

  const events = document.getElementById("events");
  const maxEvents = 2000;
  function describe(ev) {
    const parts = [ev.type];
    if (ev.tool) parts.push(ev.tool.name + (ev.tool.verdict ? " (" + ev.tool.verdict + ")" : "") + (ev.tool.reason ? ": " + ev.tool.reason : ""));
    if (ev.status) parts.push(ev.status);
    if (ev.turn) parts.push("turn " + ev.turn);
    if (ev.approval_id) parts.push(ev.approval_id);
    if (ev.error) parts.push(ev.error.code + ": " + ev.error.message);
    return parts.join(" · ");
  }
  function addEvent(ev) {
    const li = document.createElement("li");
    li.className = "event ev-" + String(ev.type).replace(/[^a-z_]/g, "");
    const at = document.createElement("time");
    at.textContent = (ev.at || "").replace("T", " ").replace(/\.\d+/, "");
    const what = document.createElement("span");
    what.className = "what";
    what.textContent = describe(ev);
    li.append(at, " ", what);
    if (ev.text) {
      const text = document.createElement("pre");
      text.textContent = ev.text;
      li.append(text);
    }
    events.append(li);
    while (events.childElementCount > maxEvents) events.firstElementChild.remove();
  }

  const es = new EventSource(main.dataset.live);
  es.addEventListener("changed", refresh);
  if (events) es.addEventListener("ev", (e) => { try { addEvent(JSON.parse(e.data)); } catch (_) { /* not an event */ } });
})();
