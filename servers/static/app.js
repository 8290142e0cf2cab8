// The "try it" page: microphone -> AudioWorklet (s16le, 200 ms frames) -> WS /diarize/stream -> timeline.
"use strict";

const FRAME_SAMPLES = 3200;  // 200 ms at 16 kHz, the recommended frame
const COLOURS = ["#2b6cb0", "#dd6b20", "#2f855a", "#9b2c2c", "#6b46c1", "#b7791f", "#2c7a7b", "#97266d"];
const CLOSE_REASONS = {
  1000: null,
  1001: "The server is shutting down. Try again in a moment.",
  1003: "The server rejected the audio (invalid PCM frame).",
  1006: "The connection dropped. Check your network and start again.",
  1008: "The server rejected a message from this page.",
  1009: "An audio frame was too large for the server.",
  1011: "The server failed to process the audio. Please retry.",
  4401: "Not authorised: add ?token=<your API key> to this page's address.",
};

const el = (id) => document.getElementById(id);
const ui = { mic: el("mic"), state: el("state"), timer: el("timer"), error: el("error"), summary: el("summary"),
             timeline: el("timeline"), axisEnd: el("axis-end"), legend: el("legend"), segments: el("segments") };

let ws = null, ctx = null, stream = null, node = null, source = null;
let startedAt = 0, stoppedAt = 0, tick = null, live = false, segments = [];

function colour(speaker) { return COLOURS[speaker % COLOURS.length]; }

function setState(state, label) {
  ui.state.dataset.state = state;
  ui.state.textContent = label;
}

function showError(text) { ui.error.textContent = text || ""; if (text) setState("error", "Error"); }

function elapsedSeconds() {
  if (!startedAt) return 0;
  return ((stoppedAt || performance.now()) - startedAt) / 1000;
}

function renderTimer() {
  const s = Math.floor(elapsedSeconds());
  ui.timer.textContent = `${String(Math.floor(s / 60)).padStart(2, "0")}:${String(s % 60).padStart(2, "0")}`;
}

// Every message carries the full snapshot: replace the whole view, never append.
function render(message) {
  segments = message.data.segments;
  const total = Math.max(elapsedSeconds(), ...segments.map((s) => s.end_time), 1);
  ui.timeline.replaceChildren(...segments.map((s) => {
    const div = document.createElement("div");
    div.className = "seg";
    div.dataset.speaker = String(s.speaker_id);
    div.style.left = `${(100 * s.start_time) / total}%`;
    div.style.width = `${(100 * (s.end_time - s.start_time)) / total}%`;
    div.style.background = colour(s.speaker_id);
    div.title = `speaker ${s.speaker_id}: ${s.start_time.toFixed(2)}–${s.end_time.toFixed(2)} s`;
    return div;
  }));
  ui.axisEnd.textContent = `${total.toFixed(1)} s`;
  const speakers = [...new Set(segments.map((s) => s.speaker_id))].sort((a, b) => a - b);
  ui.legend.replaceChildren(...speakers.map((k) => {
    const span = document.createElement("span");
    span.style.setProperty("--c", colour(k));
    span.textContent = `Speaker ${k}`;
    return span;
  }));
  ui.segments.replaceChildren(...segments.slice().reverse().map((s) => {
    const tr = document.createElement("tr");
    tr.innerHTML = `<td><span class="chip" style="background:${colour(s.speaker_id)}"></span>Speaker ${s.speaker_id}</td>`
      + `<td>${s.start_time.toFixed(2)}</td><td>${s.end_time.toFixed(2)}</td>`;
    return tr;
  }));
  const st = message.stats;
  const label = message.type === "final_result" ? "Final result" : "Live snapshot";
  ui.summary.textContent = `${label}: ${segments.length} segments, ${speakers.length} speaker(s), `
    + `${st.utterances} utterances, ${st.chunks} frames, ${st.pipeline_ms} ms compute`;
}

function stopAudio() {
  if (node) { node.port.onmessage = null; node.disconnect(); node = null; }
  if (source) { source.disconnect(); source = null; }
  if (stream) { stream.getTracks().forEach((t) => t.stop()); stream = null; }
  if (ctx) { ctx.close(); ctx = null; }
  if (tick) { clearInterval(tick); tick = null; }
  if (startedAt && !stoppedAt) stoppedAt = performance.now();
  live = false;
  ui.mic.classList.remove("live");
  ui.mic.textContent = "Start";
}

function socketUrl() {
  const token = new URLSearchParams(location.search).get("token");
  const scheme = location.protocol === "https:" ? "wss:" : "ws:";
  return `${scheme}//${location.host}/diarize/stream${token ? `?token=${encodeURIComponent(token)}` : ""}`;
}

async function start() {
  showError("");
  segments = [];
  ui.mic.disabled = true;
  setState("connecting", "Requesting microphone…");
  try {
    stream = await navigator.mediaDevices.getUserMedia({ audio: { channelCount: 1, echoCancellation: false,
                                                                 noiseSuppression: false, autoGainControl: false } });
    ctx = new AudioContext({ sampleRate: 16000 });  // the browser resamples the microphone to 16 kHz
    await ctx.audioWorklet.addModule("/static/pcm-worklet.js");
    await ctx.resume();
  } catch (err) {
    stopAudio();
    ui.mic.disabled = false;
    showError(err && err.name === "NotAllowedError" ? "Microphone permission was denied."
              : `Cannot capture audio: ${err && err.message ? err.message : err}`);
    return;
  }
  setState("connecting", "Connecting…");
  let errorDetail = null;
  ws = new WebSocket(socketUrl());
  ws.binaryType = "arraybuffer";
  ws.onopen = () => ws.send(JSON.stringify({ type: "start", sample_rate: 16000, channels: 1,
                                             sample_width: 2, format: "pcm_s16le" }));
  ws.onmessage = (event) => {
    const message = JSON.parse(event.data);
    if (message.type === "ready") {
      source = ctx.createMediaStreamSource(stream);
      node = new AudioWorkletNode(ctx, "pcm-framer", { processorOptions: { frameSamples: FRAME_SAMPLES } });
      node.port.onmessage = (e) => { if (ws && ws.readyState === WebSocket.OPEN) ws.send(e.data); };
      source.connect(node);
      startedAt = performance.now();
      stoppedAt = 0;
      tick = setInterval(renderTimer, 250);
      live = true;
      ui.mic.disabled = false;
      ui.mic.classList.add("live");
      ui.mic.textContent = "Stop";
      setState("live", `Live · session ${message.session_id.slice(0, 8)}`);
    } else if (message.type === "partial_result") {
      render(message);
    } else if (message.type === "final_result") {
      render(message);
      setState("done", "Done · final result");
    } else if (message.type === "error") {
      errorDetail = message.detail;
    }
  };
  ws.onclose = (event) => {
    stopAudio();
    ws = null;
    ui.mic.disabled = false;
    if (event.code === 1000) {
      if (ui.state.dataset.state !== "done") setState("done", `Closed: ${event.reason || "finished"}`);
      return;
    }
    const reason = CLOSE_REASONS[event.code] || `Connection closed (code ${event.code}).`;
    showError(errorDetail ? `${reason} Server said: ${errorDetail}` : reason);
  };
}

function finish() {
  stopAudio();  // no more audio; the server finalises what is pending
  renderTimer();
  if (ws && ws.readyState === WebSocket.OPEN) {
    ws.send(JSON.stringify({ type: "close" }));
    setState("finalising", "Finalising…");
    ui.mic.disabled = true;
  }
}

ui.mic.addEventListener("click", () => (live ? finish() : start()));
