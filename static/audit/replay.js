// Session replay player (templates/audit/replay.html): play, pause, step and speed over a session's steps.
// Playing shows the steps up to the current one, highlights it and keeps it in view. Timing comes from each
// step's data-offset (milliseconds since the first step); no inline script, so the page's CSP holds.
(function () {
  "use strict";
  const timeline = document.getElementById("timeline");
  if (!timeline) return;
  const steps = Array.from(timeline.querySelectorAll(".step"));
  const play = document.getElementById("replay-play");
  const next = document.getElementById("replay-step");
  const speed = document.getElementById("replay-speed");
  const all = document.getElementById("replay-all");
  const position = document.getElementById("replay-position");
  const LONGEST_WAIT_MS = 3000; // an idle minute is not replayed as a minute
  const SHORTEST_WAIT_MS = 120;
  const smooth = !window.matchMedia("(prefers-reduced-motion: reduce)").matches;
  let current = -1; // index of the current step; -1: not started (every step shown)
  let timer = null;

  function timeOf(step) {
    const at = step.querySelector("time.at");
    return at ? at.textContent.trim() : "";
  }

  function render(follow) {
    const started = current >= 0;
    timeline.classList.toggle("playing", started);
    steps.forEach((step, index) => {
      step.classList.toggle("hidden", started && index > current);
      step.classList.toggle("current", index === current);
      if (index === current) step.setAttribute("aria-current", "step");
      else step.removeAttribute("aria-current");
    });
    if (!started) {
      position.textContent = `${steps.length} step${steps.length === 1 ? "" : "s"}`;
    } else {
      position.textContent = `step ${current + 1} of ${steps.length} · ${timeOf(steps[current])}`;
      if (follow) steps[current].scrollIntoView({ block: "center", behavior: smooth && speed.value !== "instant" ? "smooth" : "auto" });
    }
    const playing = timer !== null;
    play.textContent = playing ? "Pause" : (current >= steps.length - 1 && current >= 0 ? "Play again" : "Play");
    play.setAttribute("aria-pressed", String(playing));
    timeline.dataset.state = playing ? "playing" : (current < 0 ? "idle" : "paused");
  }

  function wait(from, to) {
    if (speed.value === "instant") return 0;
    const gap = Number(steps[to].dataset.offset) - Number(steps[from].dataset.offset);
    return Math.min(Math.max(gap / Number(speed.value), SHORTEST_WAIT_MS), LONGEST_WAIT_MS / Number(speed.value));
  }

  function schedule() {
    clearTimeout(timer);
    if (current >= steps.length - 1) { timer = null; render(false); return; }
    timer = setTimeout(() => {
      current += 1;
      timer = current >= steps.length - 1 ? null : timer;
      render(true);
      if (timer !== null) schedule();
    }, current < 0 ? 0 : wait(current, current + 1));
    render(false);
  }

  function pause() {
    clearTimeout(timer);
    timer = null;
    render(false);
  }

  play.addEventListener("click", () => {
    if (timer !== null) { pause(); return; }
    if (current >= steps.length - 1) current = -1; // at the end: from the start again
    if (current < 0) { current = 0; render(true); }
    schedule();
  });
  next.addEventListener("click", () => {
    pause();
    current = Math.min(current + 1, steps.length - 1);
    render(true);
  });
  speed.addEventListener("change", () => { if (timer !== null) schedule(); });
  all.addEventListener("click", () => { pause(); current = -1; render(false); });

  render(false);
  const target = timeline.querySelector(".step.target");
  if (target) target.scrollIntoView({ block: "center" });
})();
