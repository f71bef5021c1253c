// The ticket page (templates/approvals/ticket.html). No inline script: the page's data comes in data-* attributes
// on #ticket, and everything here is attached with addEventListener, so it runs under a strict CSP.
(function () {
  "use strict";
  const page = document.getElementById("ticket");
  const live = document.getElementById("ticket-live");
  if (!page || !live) return;
  const ticketId = page.dataset.ticket;

  // One fetch at a time, and one more after it if a change arrived meanwhile: the last fetch always starts after
  // the last change, so an older answer can never overwrite a newer one.
  let busy = false;
  let again = false;
  async function refresh() {
    if (busy) { again = true; return; }
    busy = true;
    try {
      do {
        again = false;
        const response = await fetch(page.dataset.liveUrl, { credentials: "same-origin" });
        if (response.ok) live.innerHTML = await response.text();
      } while (again);
    } finally {
      busy = false;
    }
    const status = document.getElementById("ticket-status");
    const form = document.getElementById("review-form");
    if (form && status && status.textContent.trim() !== "pending") form.hidden = true;
    askForLookups();
  }

  function connect() {
    const scheme = location.protocol === "https:" ? "wss" : "ws";
    const socket = new WebSocket(`${scheme}://${location.host}${page.dataset.socketPath}`);
    // Catch up on whatever changed between rendering this page and the socket opening.
    socket.addEventListener("open", () => { refresh().then(() => { live.dataset.live = "on"; }); });
    socket.addEventListener("message", (event) => {
      if (String(JSON.parse(event.data).ticket) === ticketId) refresh();
    });
    socket.addEventListener("close", () => { live.dataset.live = "off"; setTimeout(connect, 2000); });
  }

  // The estimate and the preview are computed once per ticket by the gateway; the page asks after it renders
  // (a slow gateway never delays the page), and again while another view's computation is under way.
  let asking = false;
  let attempts = 0;
  async function askForLookups() {
    const section = document.getElementById("ticket-lookups");
    if (asking || !section || !["ask", "computing"].includes(section.dataset.state)) return;
    asking = true;
    attempts += 1;
    let state = "unavailable";
    try {
      const response = await fetch(page.dataset.lookupsUrl, { credentials: "same-origin" });
      const answer = await response.json();
      state = answer.state;
      const current = document.getElementById("ticket-lookups");
      if (current && answer.html) current.outerHTML = answer.html;
    } catch (error) {
      const rows = document.getElementById("estimate-rows");
      if (rows) {
        rows.textContent = "no estimate: phigate did not answer";
        rows.classList.remove("muted");
        rows.classList.add("unavailable");
      }
    } finally {
      asking = false;
    }
    if (state === "computing" && attempts < 30) setTimeout(askForLookups, 3000);
  }

  // A rejection needs a comment (the server refuses one without, too): say so before sending.
  const form = document.getElementById("review-form");
  if (form) {
    const comment = document.getElementById("comment");
    const error = document.getElementById("review-error");
    form.addEventListener("submit", (event) => {
      const button = event.submitter;
      if (button && button.value === "reject" && !comment.value.trim()) {
        event.preventDefault();
        error.hidden = false;
        comment.setAttribute("aria-invalid", "true");
        comment.focus();
      }
    });
    comment.addEventListener("input", () => {
      if (comment.value.trim()) { error.hidden = true; comment.removeAttribute("aria-invalid"); }
    });
  }

  connect();
  askForLookups();
})();
