// Session replay: step through a session's events, or play them on the session's own clock
// (templates/audit/replay.html). Offsets come from each step's data-offset attribute.
(function () {
  "use strict";
  const timeline = document.getElementById("timeline");
  if (!timeline) return;
  const steps = Array.from(timeline.querySelectorAll(".step"));
  const position = document.getElementById("replay-position");
  let shown = steps.length, timer = null;
  function render() {
    steps.forEach((step, index) => step.classList.toggle("hidden", index >= shown));
    position.textContent = `step ${shown} of ${steps.length}`;
  }
  function start(speed) {
    clearTimeout(timer);
    timeline.classList.add("playing");
    shown = Math.min(1, steps.length);
    render();
    const next = () => {
      if (shown >= steps.length) return;
      const gap = Number(steps[shown].dataset.offset) - Number(steps[shown - 1].dataset.offset);
      timer = setTimeout(() => { shown += 1; render(); next(); }, Math.min(Math.max(gap / speed, 150), 5000));
    };
    next();
  }
  document.getElementById("replay-step").addEventListener("click", () => {
    clearTimeout(timer);
    if (!timeline.classList.contains("playing")) { timeline.classList.add("playing"); shown = 0; }
    shown = Math.min(shown + 1, steps.length); render();
  });
  document.getElementById("replay-play").addEventListener("click", () => start(1));
  document.getElementById("replay-fast").addEventListener("click", () => start(20));
  document.getElementById("replay-all").addEventListener("click", () => { clearTimeout(timer); shown = steps.length; render(); });
  render();
})();
