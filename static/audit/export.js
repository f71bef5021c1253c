// Evidence export page: polls the export's progress until it is done or failed (templates/audit/export.html).
// The progress URL comes from the page's data-progress-url attribute; nothing here is built from page text.
(function () {
  "use strict";
  const panel = document.getElementById("export-panel");
  if (!panel) return;
  const url = panel.dataset.progressUrl;
  async function poll() {
    const response = await fetch(url, {credentials: "same-origin"});
    if (!response.ok) return;
    const state = await response.json();
    document.getElementById("export-progress").value = state.progress;
    document.getElementById("export-status").textContent = state.status;
    document.getElementById("export-message").textContent = state.message;
    if (state.download) document.getElementById("export-download").hidden = false;
    if (state.status === "queued" || state.status === "running") setTimeout(poll, 700);
  }
  poll();
})();
