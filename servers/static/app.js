// The try-it page. Two ways in, one result view:
//  - file: upload through the job API's presigned media (POST /v1/media/input, PUT), POST /v1/diarize with
//    confidence, poll GET /v1/jobs/{id}, then draw the output;
//  - live: microphone -> AudioWorklet (s16le, 200 ms frames) -> WS /diarize/stream -> redraw every snapshot.
// Speakers are shown as "Speaker 1", "Speaker 2"… in order of first appearance in both modes (the job API's
// SPEAKER_00 and the live endpoint's speaker_id 0 are both "Speaker 1"); downloads keep the API's labels.
"use strict";

const FRAME_SAMPLES = 3200;  // 200 ms at 16 kHz, the recommended frame
const POLL_MS = 500;
const COLOURS = ["#2b6cb0", "#dd6b20", "#2f855a", "#b83280", "#6b46c1", "#b7791f", "#2c7a7b", "#9b2c2c",
                 "#4a5568", "#c05621"];
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
const ui = {
  tabFile: el("tab-file"), tabLive: el("tab-live"), filePanel: el("file-panel"), livePanel: el("live-panel"),
  drop: el("drop"), file: el("file"), fileSpeakers: el("file-speakers"), fileStatus: el("file-status"),
  fileProgress: el("file-progress"), fileProgressBar: el("file-progress-bar"), fileError: el("file-error"),
  mic: el("mic"), state: el("state"), timer: el("timer"), error: el("error"),
  summary: el("summary"), timeline: el("timeline"), axisMid: el("axis-mid"), axisEnd: el("axis-end"),
  confidenceWrap: el("confidence-wrap"), confidence: el("confidence"), downloads: el("downloads"),
  rttm: el("download-rttm"), json: el("download-json"), segments: el("segments"), confHead: el("conf-head"),
  empty: el("empty"), segmentsWrap: el("segments-wrap"),
};

// ---------------------------------------------------------------- shared result view

const colour = (speaker) => COLOURS[speaker % COLOURS.length];
// live speakers matched to an enrolled voice show its name (speakerLabels is filled by the live mode)
const speakerName = (speaker) => (document.body.dataset.mode === "live" && speakerLabels[speaker]) || `Speaker ${speaker + 1}`;
const apiLabel = (speaker) => `SPEAKER_${String(speaker).padStart(2, "0")}`;

function clock(seconds) {
  const s = Math.max(0, seconds);
  const m = Math.floor(s / 60);
  return `${m}:${(s - 60 * m).toFixed(1).padStart(4, "0")}`;
}

function plural(count, noun) { return `${count} ${noun}${count === 1 ? "" : "s"}`; }

let downloadUrls = [];

/**
 * Replace the whole result view (both modes send full results, never deltas).
 * result: {uri, segments: [{start, end, speaker (0-based, by first appearance), confidence?}],
 *          durationS, confidence: {score, resolution} | null, final, note}
 */
function renderResult(result) {
  const segments = result.segments.slice().sort((a, b) => a.start - b.start || a.end - b.end);
  const total = Math.max(result.durationS || 0, ...segments.map((s) => s.end), 1);
  const speakers = [...new Set(segments.map((s) => s.speaker))].sort((a, b) => a - b);

  ui.timeline.replaceChildren(...speakers.map((speaker) => {
    const lane = document.createElement("div");
    lane.className = "lane";
    const name = document.createElement("span");
    name.className = "lane-name";
    name.textContent = speakerName(speaker);
    name.style.setProperty("--c", colour(speaker));
    const track = document.createElement("div");
    track.className = "track";
    for (const s of segments.filter((x) => x.speaker === speaker)) {
      const div = document.createElement("div");
      div.className = "seg";
      div.dataset.speaker = String(s.speaker);
      div.style.left = `${(100 * s.start) / total}%`;
      div.style.width = `${(100 * (s.end - s.start)) / total}%`;
      div.style.background = colour(s.speaker);
      div.title = `${speakerName(s.speaker)}: ${clock(s.start)} – ${clock(s.end)}`;
      track.append(div);
    }
    lane.append(name, track);
    return lane;
  }));
  ui.axisMid.textContent = clock(total / 2);
  ui.axisEnd.textContent = clock(total);

  const withConfidence = segments.some((s) => s.confidence !== undefined);
  ui.confHead.hidden = !withConfidence;
  ui.segments.replaceChildren(...segments.map((s) => {
    const tr = document.createElement("tr");
    const who = document.createElement("td");
    const chip = document.createElement("span");
    chip.className = "chip";
    chip.style.background = colour(s.speaker);
    who.append(chip, speakerName(s.speaker));
    const cells = [clock(s.start), clock(s.end), `${(s.end - s.start).toFixed(1)} s`];
    if (withConfidence) cells.push(s.confidence === undefined ? "" : `${s.confidence}%`);
    tr.append(who, ...cells.map((text) => { const td = document.createElement("td"); td.textContent = text; return td; }));
    return tr;
  }));

  ui.empty.hidden = true;
  ui.segmentsWrap.hidden = !segments.length;
  drawConfidence(result.confidence, total);
  offerDownloads(result, segments);
  const talk = segments.reduce((sum, s) => sum + (s.end - s.start), 0);
  ui.summary.textContent = `${result.final ? "Final result" : "So far"}: ${plural(speakers.length, "speaker")}, `
    + `${plural(segments.length, "turn")}, ${clock(talk)} of speech in ${clock(total)}`
    + (result.note ? ` · ${result.note}` : "");
}

function drawConfidence(confidence, totalS) {
  if (!confidence || !confidence.score || !confidence.score.length) {
    ui.confidenceWrap.hidden = true;
    ui.confidence.dataset.frames = "0";
    return;
  }
  ui.confidenceWrap.hidden = false;
  const canvas = ui.confidence;
  const width = Math.max(200, Math.round(canvas.clientWidth || 600));
  canvas.width = width;
  const g = canvas.getContext("2d");
  const { score, resolution } = confidence;
  const perPixel = totalS / width / resolution;  // frames per pixel
  for (let x = 0; x < width; x++) {
    const lo = Math.floor(x * perPixel);
    const hi = Math.max(lo + 1, Math.floor((x + 1) * perPixel));
    let low = 100;
    for (let i = lo; i < Math.min(hi, score.length); i++) low = Math.min(low, score[i]);  // the least sure frame
    const shade = Math.round(40 + (215 * low) / 100);  // 0 -> dark, 100 -> light
    g.fillStyle = `rgb(${shade}, ${shade}, ${Math.min(255, shade + 12)})`;
    g.fillRect(x, 0, 1, canvas.height);
  }
  canvas.dataset.frames = String(score.length);
}

function offerDownloads(result, segments) {
  downloadUrls.forEach((url) => URL.revokeObjectURL(url));
  downloadUrls = [];
  if (!segments.length) { ui.downloads.hidden = true; return; }
  const uri = result.uri || "recording";
  const rttm = segments.map((s) => `SPEAKER ${uri} 1 ${s.start.toFixed(3)} ${(s.end - s.start).toFixed(3)} `
    + `<NA> <NA> ${apiLabel(s.speaker)} <NA> <NA>`).join("\n") + "\n";
  const json = result.raw || { diarization: segments.map((s) => ({ speaker: apiLabel(s.speaker), start: s.start, end: s.end })) };
  for (const [link, text, type, ext] of [[ui.rttm, rttm, "text/plain", "rttm"],
                                         [ui.json, JSON.stringify(json, null, 1), "application/json", "json"]]) {
    const url = URL.createObjectURL(new Blob([text], { type }));
    downloadUrls.push(url);
    link.href = url;
    link.download = `${uri}.${ext}`;
  }
  ui.downloads.hidden = false;
}

function clearResult(message) {
  renderResult({ segments: [], durationS: 0, confidence: null, final: false });
  ui.downloads.hidden = true;
  ui.summary.textContent = message;
}

// ---------------------------------------------------------------- tabs

function showMode(mode) {
  const file = mode === "file";
  ui.tabFile.setAttribute("aria-selected", String(file));
  ui.tabLive.setAttribute("aria-selected", String(!file));
  ui.filePanel.hidden = !file;
  ui.livePanel.hidden = file;
  document.body.dataset.mode = mode;
}

ui.tabFile.addEventListener("click", () => { if (!live) showMode("file"); });
ui.tabLive.addEventListener("click", () => { if (!fileBusy) showMode("live"); });

// ---------------------------------------------------------------- file mode (job API)

let fileBusy = false;

function token() { return new URLSearchParams(location.search).get("token"); }

function apiHeaders() {
  const headers = { "Content-Type": "application/json" };
  if (token()) headers.Authorization = `Bearer ${token()}`;
  return headers;
}

async function api(method, path, body) {
  const response = await fetch(path, { method, headers: apiHeaders(), body: body ? JSON.stringify(body) : undefined });
  const text = await response.text();
  let parsed = null;
  try { parsed = text ? JSON.parse(text) : null; } catch (_) { parsed = null; }
  if (!response.ok) {
    const detail = parsed && (parsed.errors && parsed.errors.length ? parsed.errors[0].message : parsed.message);
    throw new Error(response.status === 401 ? "This server needs an API key: add ?token=<your key> to the address."
                    : `The server said ${response.status}${detail ? `: ${detail}` : ""}`);
  }
  return parsed;
}

function putWithProgress(url, blob, onProgress) {
  // XMLHttpRequest, not fetch: it reports upload progress. The presigned URL authorises itself.
  return new Promise((resolve, reject) => {
    const xhr = new XMLHttpRequest();
    xhr.open("PUT", url);
    xhr.upload.onprogress = (e) => { if (e.lengthComputable) onProgress(e.loaded / e.total); };
    xhr.onload = () => (xhr.status >= 200 && xhr.status < 300 ? resolve()
      : reject(new Error(xhr.status === 413 ? "The file is too large for this server." : `Upload failed (${xhr.status}).`)));
    xhr.onerror = () => reject(new Error("Upload failed: the connection dropped."));
    xhr.send(blob);
  });
}

function setFileState(state, label, fraction) {
  ui.fileStatus.dataset.state = state;
  ui.fileStatus.textContent = label;
  ui.fileProgress.style.width = `${Math.round(100 * Math.min(Math.max(fraction || 0, 0), 1))}%`;
  ui.fileProgressBar.hidden = state === "idle" || state === "error";
}

const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));

function stemOf(name) {
  const stem = name.replace(/\.[^.]*$/, "").replace(/[^a-zA-Z0-9\-_.]+/g, "_").slice(0, 80);
  return stem || "recording";
}

function fromJobOutput(output, uri) {
  const number = (label) => {
    const m = /(\d+)$/.exec(label);
    return m ? Number(m[1]) : 0;
  };
  return {
    uri,
    segments: output.diarization.map((s) => ({
      start: s.start, end: s.end, speaker: number(s.speaker),
      confidence: s.confidence ? s.confidence[s.speaker] : undefined,
    })),
    durationS: output.confidence ? output.confidence.score.length * output.confidence.resolution : 0,
    confidence: output.confidence || null,
    final: true,
    note: output.warning || "",
    raw: output,
  };
}

async function diarizeFile(file) {
  if (fileBusy || !file) return;
  fileBusy = true;
  ui.fileError.textContent = "";
  ui.drop.classList.add("busy");
  const uri = stemOf(file.name);
  clearResult(`Working on ${file.name}…`);
  try {
    setFileState("uploading", `Uploading ${file.name}…`, 0);
    const key = `media://try-it/${Date.now()}-${uri}`;
    const { url } = await api("POST", "/v1/media/input", { url: key });
    // a Blob without a type: the PUT carries no Content-Type, as the contract's clients do
    await putWithProgress(url, file.slice(0, file.size), (f) => setFileState("uploading", `Uploading ${file.name}… ${Math.round(100 * f)}%`, 0.3 * f));
    const count = ui.fileSpeakers.value ? Number(ui.fileSpeakers.value) : null;
    let job = await api("POST", "/v1/diarize", { url: key, numSpeakers: count, confidence: true,
                                                 turnLevelConfidence: true, exclusive: false });
    setFileState("running", "Finding the speakers…", 0.3);
    while (!["succeeded", "failed", "canceled"].includes(job.status)) {
      await sleep(POLL_MS);
      job = await api("GET", `/v1/jobs/${job.jobId}`);
      const progress = typeof job.progress === "number" ? job.progress : 0;
      if (job.status === "running") setFileState("running", `Finding the speakers… ${Math.round(100 * progress)}%`, 0.3 + 0.7 * progress);
    }
    if (job.status !== "succeeded") {
      throw new Error(job.output && job.output.error ? job.output.error : `The job ended ${job.status}.`);
    }
    renderResult(fromJobOutput(job.output, uri));
    setFileState("done", `Done: ${file.name}`, 1);
  } catch (err) {
    setFileState("error", "Something went wrong", 0);
    ui.fileError.textContent = err && err.message ? err.message : String(err);
    ui.summary.textContent = "No result.";
  } finally {
    fileBusy = false;
    ui.drop.classList.remove("busy");
    ui.file.value = "";
  }
}

ui.file.addEventListener("change", () => diarizeFile(ui.file.files[0]));
ui.drop.addEventListener("keydown", (e) => { if (e.key === "Enter" || e.key === " ") { e.preventDefault(); ui.file.click(); } });
for (const type of ["dragenter", "dragover"]) {
  ui.drop.addEventListener(type, (e) => { e.preventDefault(); ui.drop.classList.add("over"); });
}
for (const type of ["dragleave", "drop"]) {
  ui.drop.addEventListener(type, (e) => { e.preventDefault(); ui.drop.classList.remove("over"); });
}
ui.drop.addEventListener("drop", (e) => { if (e.dataTransfer.files.length) diarizeFile(e.dataTransfer.files[0]); });

// ---------------------------------------------------------------- live mode (WebSocket)
// A dropped connection (1006, or 1001 from a server going down) is resumed with the session's resume_token:
// the microphone keeps running, its frames wait in a backlog, and once the server says how much audio it
// holds (audio_received_s) the page sends the rest from there. The timeline stays as it was meanwhile.

const START = { type: "start", sample_rate: 16000, channels: 1, sample_width: 2, format: "pcm_s16le" };
const BACKLOG_SAMPLES = 120 * 16000;  // audio kept for a resume (the server's window is 60 s by default)
const RESUME_WINDOW_MS = 60000;
let ws = null, ctx = null, stream = null, node = null, source = null;
let startedAt = 0, stoppedAt = 0, tick = null, live = false;
let resumeToken = null, sessionReady = false, finishing = false, droppedAt = 0, reconnectAttempts = 0;
let backlog = [], capturedSamples = 0;
let knownSpeakers = [];  // [{label, voiceprint}] sent with start
let speakerLabels = {};  // speaker_id -> label, from the latest snapshot

function setState(state, label) {
  ui.state.dataset.state = state;
  ui.state.textContent = label;
}

function showError(text) { ui.error.textContent = text || ""; if (text) setState("error", "Stopped"); }

function elapsedSeconds() {
  if (!startedAt) return 0;
  return ((stoppedAt || performance.now()) - startedAt) / 1000;
}

function renderTimer() {
  const s = Math.floor(elapsedSeconds());
  ui.timer.textContent = `${String(Math.floor(s / 60)).padStart(2, "0")}:${String(s % 60).padStart(2, "0")}`;
}

function renderSnapshot(message) {
  speakerLabels = {};
  for (const s of message.data.speakers || []) if (s.label) speakerLabels[s.speaker_id] = s.label;
  renderResult({
    uri: `live-${message.session_id.slice(0, 8)}`,
    segments: message.data.segments.map((s) => ({ start: s.start_time, end: s.end_time, speaker: s.speaker_id,
                                                  confidence: s.confidence })),
    durationS: elapsedSeconds(),
    confidence: null,
    final: message.type === "final_result",
    note: `${plural(message.stats.utterances, "sentence")} heard`,
  });
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
  const scheme = location.protocol === "https:" ? "wss:" : "ws:";
  return `${scheme}//${location.host}/diarize/stream${token() ? `?token=${encodeURIComponent(token())}` : ""}`;
}

function onFrame(buffer) {
  backlog.push({ start: capturedSamples, data: buffer });
  capturedSamples += buffer.byteLength / 2;
  while (backlog.length && backlog[0].start + backlog[0].data.byteLength / 2 < capturedSamples - BACKLOG_SAMPLES) backlog.shift();
  if (ws && sessionReady && ws.readyState === WebSocket.OPEN) ws.send(buffer);
}

function sendFrom(audioReceivedS) {
  const from = Math.round(audioReceivedS * 16000);
  for (const frame of backlog) {
    const end = frame.start + frame.data.byteLength / 2;
    if (end > from) ws.send(frame.data.slice(2 * Math.max(0, from - frame.start)));
  }
}

function startAudio() {
  source = ctx.createMediaStreamSource(stream);
  node = new AudioWorkletNode(ctx, "pcm-framer", { processorOptions: { frameSamples: FRAME_SAMPLES } });
  node.port.onmessage = (e) => onFrame(e.data);
  source.connect(node);
  startedAt = performance.now();
  stoppedAt = 0;
  tick = setInterval(renderTimer, 250);
  live = true;
  ui.mic.disabled = false;
  ui.mic.classList.add("live");
  ui.mic.textContent = "Stop";
  setState("live", "Listening");
}

function reconnectLater() {
  const now = performance.now();
  droppedAt = droppedAt || now;
  if (now - droppedAt > RESUME_WINDOW_MS) return false;
  setState("reconnecting", "Reconnecting…");
  const delay = Math.min(100 * 2 ** reconnectAttempts, 2000);
  reconnectAttempts += 1;
  setTimeout(connect, delay);
  return true;
}

function connect() {
  let errorDetail = null;
  const socket = new WebSocket(socketUrl());
  ws = socket;
  sessionReady = false;
  socket.binaryType = "arraybuffer";
  socket.onopen = () => {
    const body = { ...START, ...(knownSpeakers.length ? { speakers: knownSpeakers } : {}) };
    if (resumeToken) body.resume_token = resumeToken;
    socket.send(JSON.stringify(body));
  };
  socket.onmessage = (event) => {
    const message = JSON.parse(event.data);
    if (message.type === "ready") {
      resumeToken = message.resume_token || resumeToken;
      droppedAt = 0;
      reconnectAttempts = 0;
      sessionReady = true;
      if (message.resumed) {
        sendFrom(message.audio_received_s);
        if (finishing) { socket.send(JSON.stringify({ type: "close" })); setState("finalising", "Finishing…"); }
        else setState("live", "Listening");
      } else {
        startAudio();
      }
    } else if (message.type === "partial_result") {
      renderSnapshot(message);
    } else if (message.type === "final_result") {
      renderSnapshot(message);
      setState("done", "Done");
    } else if (message.type === "error") {
      errorDetail = message.detail;
    }
  };
  socket.onclose = (event) => {
    if (ws === socket) ws = null;
    sessionReady = false;
    if ((event.code === 1006 || event.code === 1001) && resumeToken && (live || finishing) && reconnectLater()) return;
    stopAudio();
    resumeToken = null;
    finishing = false;
    ui.mic.disabled = false;
    if (event.code === 1000) {
      if (ui.state.dataset.state !== "done") setState("done", `Done (${event.reason || "finished"})`);
      return;
    }
    const reason = CLOSE_REASONS[event.code] || `Connection closed (code ${event.code}).`;
    showError(errorDetail ? `${reason} The server said: ${errorDetail}` : reason);
  };
}

async function openMicrophone() {
  stream = await navigator.mediaDevices.getUserMedia({ audio: { channelCount: 1, echoCancellation: false,
                                                               noiseSuppression: false, autoGainControl: false } });
  ctx = new AudioContext({ sampleRate: 16000 });  // the browser resamples the microphone to 16 kHz
  await ctx.audioWorklet.addModule("/static/pcm-worklet.js");
  await ctx.resume();
}

async function start() {
  showError("");
  ui.mic.disabled = true;
  setState("connecting", "Asking for the microphone…");
  try {
    await openMicrophone();
  } catch (err) {
    stopAudio();
    ui.mic.disabled = false;
    showError(err && err.name === "NotAllowedError" ? "The browser was not allowed to use the microphone."
              : `Cannot capture audio: ${err && err.message ? err.message : err}`);
    return;
  }
  setState("connecting", "Connecting…");
  clearResult("Listening… speakers appear each time someone finishes a sentence.");
  resumeToken = null;
  finishing = false;
  backlog = [];
  capturedSamples = 0;
  droppedAt = 0;
  reconnectAttempts = 0;
  connect();
}

function finish() {
  stopAudio();  // no more audio; the server finalises what is pending
  renderTimer();
  finishing = true;
  ui.mic.disabled = true;
  setState("finalising", "Finishing…");
  if (ws && sessionReady && ws.readyState === WebSocket.OPEN) ws.send(JSON.stringify({ type: "close" }));
}

// ---------------------------------------------------------------- enrolment (job API voiceprint)
// Record ~10 s of one person, upload it as a WAV through the presigned media, POST /v1/voiceprint, and keep
// {label, voiceprint}: the next live session sends them in start.speakers and the server names that voice.

const ENROL_SECONDS = 10;
const enrolUi = { name: el("enrol-name"), button: el("enrol-btn"), status: el("enrol-status"), list: el("known") };

function wavBlob(samples) {
  const header = new DataView(new ArrayBuffer(44));
  const text = (offset, value) => { for (let i = 0; i < value.length; i++) header.setUint8(offset + i, value.charCodeAt(i)); };
  text(0, "RIFF"); header.setUint32(4, 36 + 2 * samples.length, true); text(8, "WAVE"); text(12, "fmt ");
  header.setUint32(16, 16, true); header.setUint16(20, 1, true); header.setUint16(22, 1, true);
  header.setUint32(24, 16000, true); header.setUint32(28, 32000, true); header.setUint16(32, 2, true);
  header.setUint16(34, 16, true); text(36, "data"); header.setUint32(40, 2 * samples.length, true);
  return new Blob([header.buffer, samples.buffer]);
}

async function recordSamples(seconds) {
  await openMicrophone();
  const frames = [];
  let filled = 0;
  await new Promise((resolve) => {
    source = ctx.createMediaStreamSource(stream);
    node = new AudioWorkletNode(ctx, "pcm-framer", { processorOptions: { frameSamples: FRAME_SAMPLES } });
    node.port.onmessage = (e) => {
      frames.push(new Int16Array(e.data));
      filled += e.data.byteLength / 2;
      if (filled >= seconds * 16000) resolve();
    };
    source.connect(node);
  });
  stopAudio();
  const out = new Int16Array(filled);
  let offset = 0;
  for (const f of frames) { out.set(f, offset); offset += f.length; }
  return out;
}

function renderKnown() {
  enrolUi.list.replaceChildren(...knownSpeakers.map((k, i) => {
    const li = document.createElement("li");
    const remove = document.createElement("button");
    remove.type = "button";
    remove.textContent = "×";
    remove.title = `Forget ${k.label}`;
    remove.addEventListener("click", () => { knownSpeakers.splice(i, 1); renderKnown(); });
    li.append(k.label, remove);
    return li;
  }));
}

async function enrol() {
  const label = enrolUi.name.value.trim();
  if (!label || knownSpeakers.some((k) => k.label === label)) {
    enrolUi.status.textContent = label ? `${label} is already enrolled.` : "Type a name first.";
    return;
  }
  enrolUi.button.disabled = ui.mic.disabled = true;
  try {
    enrolUi.status.textContent = `Recording ${ENROL_SECONDS} s: ${label}, please talk alone…`;
    const samples = await recordSamples(ENROL_SECONDS);
    enrolUi.status.textContent = "Making the voiceprint…";
    const key = `media://try-it/${Date.now()}-voice`;
    const { url } = await api("POST", "/v1/media/input", { url: key });
    await putWithProgress(url, wavBlob(samples), () => {});
    let job = await api("POST", "/v1/voiceprint", { url: key });
    while (!["succeeded", "failed", "canceled"].includes(job.status)) {
      await sleep(POLL_MS);
      job = await api("GET", `/v1/jobs/${job.jobId}`);
    }
    if (job.status !== "succeeded") throw new Error(job.output && job.output.error ? job.output.error : `The job ended ${job.status}.`);
    knownSpeakers.push({ label, voiceprint: job.output.voiceprint });
    renderKnown();
    enrolUi.name.value = "";
    enrolUi.status.textContent = `${label} enrolled: start a live session to see the name on the timeline.`;
  } catch (err) {
    stopAudio();
    enrolUi.status.textContent = `Enrolment failed: ${err && err.message ? err.message : err}`;
  } finally {
    enrolUi.button.disabled = ui.mic.disabled = false;
  }
}

enrolUi.button.addEventListener("click", () => { if (!live) enrol(); });
ui.mic.addEventListener("click", () => (live ? finish() : start()));
showMode(location.hash === "#live" ? "live" : "file");
