// The explorer's page script: one track player in track time, a playhead on the time-axis
// figures, click-to-seek, and segment playback. Figures built by m2e_explorer.views mark the
// ones on a time axis with layout.meta.view "timeline" or "emotion".
(() => {
  if (window.m2eExplorer) return;
  const TIME_PLOTS = ["m2e-chord-plot", "m2e-emotion-plot"];
  const CLICK_SLOP_PX = 5;
  const state = { audio: null, src: "", time: 0, playing: false, request: "", stopAt: null, press: null };

  const player = () => document.querySelector("#m2e-player .m2e-player");
  const plotOf = (id) => document.querySelector(`#${id} .js-plotly-plot`);

  function format(seconds) {
    const total = Math.max(0, Math.floor(seconds + 1e-6));
    return `${Math.floor(total / 60)}:${String(total % 60).padStart(2, "0")}`;
  }

  // A new <audio> element replaced the old one: keep the position when it is the same track
  // (results arriving while it plays re-render the player).
  function adopt(box, audio) {
    const sameTrack = audio.getAttribute("src") === state.src;
    const resume = sameTrack && box.dataset.start === undefined ? { time: state.time, playing: state.playing } : null;
    state.audio = audio;
    state.src = audio.getAttribute("src");
    audio.addEventListener("timeupdate", tick);
    audio.addEventListener("seeked", tick);
    audio.addEventListener("play", () => { state.playing = true; });
    audio.addEventListener("pause", () => { state.playing = false; });
    if (!resume) return;
    whenReady(audio, () => {
      audio.currentTime = resume.time;
      if (resume.playing) audio.play().catch(() => {});
    });
  }

  function whenReady(audio, action) {
    if (audio.readyState >= 1) action(); else audio.addEventListener("loadedmetadata", action, { once: true });
  }

  // The page asked for a span (a segment was chosen): play it from its start to its end.
  function follow(box, audio) {
    state.request = box.dataset.request || "";
    if (box.dataset.start === undefined) return;
    const start = parseFloat(box.dataset.start);
    const end = box.dataset.end === undefined ? null : parseFloat(box.dataset.end);
    whenReady(audio, () => {
      state.stopAt = end;
      audio.currentTime = start;
      audio.play().catch(() => {});
    });
  }

  function seek(seconds) {
    const audio = state.audio;
    if (!audio) return;
    state.stopAt = null;
    audio.currentTime = Math.max(0, seconds);
    audio.play().catch(() => {});
    tick();
  }

  function axes(gd) {
    const layout = gd && gd._fullLayout;
    if (!layout || !layout.xaxis || !layout.yaxis || !layout.xaxis.l2p) return null;
    return { x: layout.xaxis, y: layout.yaxis };
  }

  function hook(gd) {
    if (gd.dataset.m2eHooked) return;
    gd.dataset.m2eHooked = "1";
    gd.addEventListener("pointerdown", (event) => {
      const ax = axes(gd);
      if (!ax || event.button !== 0) return;
      const box = gd.getBoundingClientRect();
      const px = event.clientX - box.left - ax.x._offset;
      const py = event.clientY - box.top - ax.y._offset;
      if (px < 0 || px > ax.x._length || py < 0 || py > ax.y._length) return;
      state.press = { gd, x: event.clientX, y: event.clientY, time: ax.x.p2l(px) };
    }, true);
  }

  document.addEventListener("pointerup", (event) => {
    const press = state.press;
    state.press = null;
    if (!press) return;
    if (Math.hypot(event.clientX - press.x, event.clientY - press.y) > CLICK_SLOP_PX) return; // a zoom drag
    seek(press.time);
  }, true);

  function line(gd) {
    let mark = gd.querySelector(":scope > .m2e-playhead");
    if (!mark) {
      mark = document.createElement("div");
      mark.className = "m2e-playhead";
      mark.setAttribute("aria-hidden", "true");
      gd.appendChild(mark);
    }
    return mark;
  }

  // Bar labels plotly shrank to fit their bar: hidden when drawn under the figure's smallest
  // legible size (hover still names the bar), shown again when a zoom makes room.
  const SCALE = /scale\(([-\d.e]+)/;
  function declutter(gd) {
    const meta = gd._fullLayout && gd._fullLayout.meta;
    const smallest = meta && meta.min_text_px;
    if (!smallest) return;
    gd.querySelectorAll("text.bartext").forEach((text) => {
      const match = SCALE.exec(text.getAttribute("transform") || "");
      const size = parseFloat(text.style.fontSize || "0") * (match ? parseFloat(match[1]) : 1);
      text.style.visibility = size >= smallest - 0.01 ? "" : "hidden";
    });
  }

  function tick() {
    const box = player();
    const audio = box && box.querySelector("audio");
    if (audio && audio !== state.audio) adopt(box, audio);
    if (audio && (box.dataset.request || "") !== state.request) follow(box, audio);
    if (!audio) state.audio = null;
    const now = state.audio ? state.audio.currentTime : null;
    if (state.audio) {
      state.time = now;
      if (state.stopAt !== null && now >= state.stopAt) {
        state.stopAt = null;
        state.audio.pause();
      }
      const label = box.querySelector(".m2e-now");
      if (label) label.textContent = `${format(now)} / ${format(parseFloat(box.dataset.duration || "0"))}`;
    }
    for (const id of TIME_PLOTS) {
      const gd = plotOf(id);
      if (!gd) continue;
      hook(gd);
      declutter(gd);
      const ax = axes(gd);
      const mark = line(gd);
      const shown = ax && now !== null && (now > 0 || state.playing);
      const [low, high] = ax ? [Math.min(...ax.x.range), Math.max(...ax.x.range)] : [0, 0];
      if (!shown || now < low || now > high) {
        mark.style.display = "none";
        mark.dataset.time = "";
        continue;
      }
      mark.style.display = "block";
      mark.style.left = `${ax.x._offset + ax.x.l2p(now)}px`;
      mark.style.top = `${ax.y._offset}px`;
      mark.style.height = `${ax.y._length}px`;
      mark.dataset.time = now.toFixed(3);
    }
  }

  window.m2eExplorer = { seek, tick, state };
  setInterval(tick, 100);
})();
