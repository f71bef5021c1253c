// The live review queue (templates/approvals/queue.html).
//
// Data reaches this script only through the page's JSON (`json_script`, id "queue-config") and data-* attributes,
// so it runs under a strict Content-Security-Policy (script-src 'self') and nothing from the URL is ever code.
// The websocket carries only "ticket N changed"; the row itself is re-read through the access-checked
// /tickets/N/row view, which says which table it belongs in for this reviewer (X-Ticket-Table).
(function () {
  "use strict";

  const config = JSON.parse(document.getElementById("queue-config").textContent);
  const filters = config.filters || {};
  const sort = config.sort || "risk";
  const state = document.getElementById("live-state");
  const banner = document.getElementById("live-banner");
  const PENDING_TABLES = ["needs-my-review", "waiting-on-others"];
  const ALL_TABLES = [...PENDING_TABLES, "recent-tickets"];
  const baseTitle = document.title;

  // Tickets this page has already shown as pending: a row that arrives for any other ticket is new.
  const known = new Set(pendingIds());
  let unseen = 0;
  let connectedOnce = false;
  let leaving = false;

  function pendingIds() {
    const ids = [];
    for (const id of PENDING_TABLES) {
      const table = document.getElementById(id);
      if (table) table.querySelectorAll("tr[data-ticket]").forEach((row) => ids.push(row.dataset.ticket));
    }
    return ids;
  }

  function matches(row) {
    if (filters.datasource && row.dataset.datasource !== filters.datasource) return false;
    if (filters.risk && row.dataset.risk !== filters.risk) return false;
    if (filters.age && Date.now() / 1000 - Number(row.dataset.created) > Number(filters.age) * 60) return false;
    return true;
  }

  // The server's orders (approvals.triage.SORTS), so a live row lands where a reload would put it.
  function sortKey(row) {
    const rank = Number(row.dataset.riskRank), expires = Number(row.dataset.expires);
    const created = Number(row.dataset.created), id = Number(row.dataset.ticket);
    switch (sort) {
      case "expiry": return [expires, rank, id];
      case "newest": return [-created, -id];
      case "oldest": return [created, id];
      case "datasource": return [row.dataset.datasource || "", rank, expires, id];
      default: return [rank, expires, id];
    }
  }

  function before(a, b) {
    const left = sortKey(a), right = sortKey(b);
    for (let i = 0; i < left.length; i += 1) {
      if (left[i] < right[i]) return true;
      if (left[i] > right[i]) return false;
    }
    return false;
  }

  function insertSorted(body, row) {
    const next = [...body.querySelectorAll("tr[data-ticket]")].find((other) => before(row, other));
    body.insertBefore(row, next || null);
  }

  // ---- new rows: highlighted and counted in the tab title until the reviewer is back on the page ----------
  function markNew(row, tableId) {
    row.classList.add("is-new");
    if (tableId === "needs-my-review") {
      unseen += 1;
      document.title = `(${unseen}) ${baseTitle}`;
    }
  }

  function markSeen() {
    if (document.visibilityState !== "visible") return;
    unseen = 0;
    document.title = baseTitle;
    document.querySelectorAll("tr.is-new").forEach((row) => row.classList.remove("is-new"));
  }

  window.addEventListener("focus", markSeen);
  document.addEventListener("visibilitychange", () => { if (document.hasFocus()) markSeen(); });
  document.addEventListener("pointerdown", markSeen);
  document.addEventListener("keydown", markSeen);

  // ---- counts, placeholders and countdowns -----------------------------------------------------------------
  function tidy() {
    for (const id of ALL_TABLES) {
      const table = document.getElementById(id);
      if (!table) continue;
      const body = table.tBodies[0];
      const rows = body.querySelectorAll("tr[data-ticket]").length;
      body.querySelectorAll("tr.placeholder").forEach((placeholder) => { if (rows) placeholder.remove(); });
      if (!rows && !body.querySelector("tr.placeholder")) {
        const placeholder = document.createElement("tr");
        const cell = document.createElement("td");
        placeholder.className = "placeholder";
        cell.colSpan = table.tHead ? table.tHead.rows[0].cells.length : 1;
        cell.className = "muted";
        cell.textContent = table.dataset.empty || "";
        placeholder.appendChild(cell);
        body.appendChild(placeholder);
      }
      const count = document.querySelector(`[data-count-of="${id}"]`);
      if (count) count.textContent = String(rows);
    }
  }

  // The same words as approvals.triage.countdown.
  function countdown(seconds) {
    if (seconds <= 0) return "expired";
    const minutes = Math.max(1, Math.floor(seconds / 60));
    if (minutes < 60) return `${minutes} min`;
    if (minutes < 48 * 60) return minutes % 60 ? `${Math.floor(minutes / 60)} h ${minutes % 60} min` : `${minutes / 60} h`;
    return `${Math.floor(minutes / (24 * 60))} days`;
  }

  function tick() {
    const now = Date.now() / 1000;
    document.querySelectorAll("time.countdown[data-expires]").forEach((element) => {
      const left = Number(element.dataset.expires) - now;
      element.textContent = countdown(left);
      element.classList.toggle("expiring", left > 0 && left < 15 * 60);
      element.classList.toggle("expired", left <= 0);
    });
  }

  // ---- live rows ---------------------------------------------------------------------------------------------
  // Per ticket, one fetch at a time and one more if a change arrived meanwhile (answers never arrive stale).
  const busy = new Set(), again = new Set();
  async function refresh(ticketId) {
    if (busy.has(ticketId)) { again.add(ticketId); return; }
    busy.add(ticketId);
    try {
      do { again.delete(ticketId); await place(ticketId); } while (again.has(ticketId));
    } finally { busy.delete(ticketId); }
  }

  async function place(ticketId) {
    const response = await fetch(`/tickets/${encodeURIComponent(ticketId)}/row`, {credentials: "same-origin"});
    const fragment = response.ok ? (await response.text()).trim() : "";  // our own server's escaped fragment
    // The old row goes only now, with the new one at hand: a row never blinks out while its fragment loads.
    document.querySelectorAll(`tr[data-ticket="${CSS.escape(String(ticketId))}"]`).forEach((row) => row.remove());
    try {
      if (!response.ok) return;
      const tableId = response.headers.get("X-Ticket-Table");
      const table = ALL_TABLES.includes(tableId) ? document.getElementById(tableId) : null;
      if (!table) return;
      const holder = document.createElement("tbody");
      holder.innerHTML = fragment;
      const row = holder.querySelector("tr[data-ticket]");
      if (!row || !matches(row)) return;
      const body = table.tBodies[0];
      if (tableId === "recent-tickets") {
        body.insertBefore(row, body.firstChild);
        return;
      }
      insertSorted(body, row);
      if (!known.has(row.dataset.ticket)) markNew(row, tableId);
      known.add(row.dataset.ticket);
    } finally {
      tidy();
      tick();
    }
  }

  // Catch up on whatever changed between rendering (or the last connection) and now.
  async function reloadTables() {
    const response = await fetch(location.href, {credentials: "same-origin"});
    if (!response.ok) return;
    const fresh = new DOMParser().parseFromString(await response.text(), "text/html");
    for (const id of ALL_TABLES) {
      const mine = document.getElementById(id), theirs = fresh.getElementById(id);
      if (!mine || !theirs) continue;
      const highlighted = new Set([...mine.querySelectorAll("tr.is-new")].map((row) => row.dataset.ticket));
      mine.tBodies[0].replaceWith(document.adoptNode(theirs.tBodies[0]));
      mine.querySelectorAll("tr[data-ticket]").forEach((row) => {
        if (highlighted.has(row.dataset.ticket)) row.classList.add("is-new");
      });
    }
    for (const id of PENDING_TABLES) {
      const table = document.getElementById(id);
      if (!table) continue;
      table.querySelectorAll("tr[data-ticket]").forEach((row) => {
        if (!known.has(row.dataset.ticket)) {
          if (connectedOnce) markNew(row, id);  // arrived while the connection was down
          known.add(row.dataset.ticket);
        }
      });
    }
    tidy();
    tick();
  }

  function setConnected(connected) {
    state.textContent = connected ? "live" : "reconnecting…";
    state.dataset.state = connected ? "live" : "closed";
    banner.hidden = connected;
  }

  function connect() {
    const socket = new WebSocket(`${location.protocol === "https:" ? "wss" : "ws"}://${location.host}/ws/tickets/`);
    socket.addEventListener("open", async () => {
      try { await reloadTables(); } catch (error) { /* the rows already shown stay; the next change re-reads */ }
      connectedOnce = true;
      setConnected(true);
    });
    socket.addEventListener("message", (event) => {
      const ticket = JSON.parse(event.data).ticket;
      if (ticket !== undefined) refresh(String(ticket));
    });
    socket.addEventListener("close", () => {
      if (leaving) return;
      setConnected(false);
      setTimeout(connect, 2000);
    });
  }

  window.addEventListener("pagehide", () => { leaving = true; });
  tidy();
  tick();
  setInterval(tick, 30000);
  connect();
})();
