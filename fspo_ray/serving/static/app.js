// The fspo-ray page: elicitation -> persona -> personalized chat, over the server's JSON API.
// No framework and no network beyond this server: it is served from the Python package.
"use strict";

const COOKIE = "fspo_uid";
const KEY_STORE = "fspo_api_key"; // session storage: the key lives as long as the tab
const $ = (id) => document.getElementById(id);

class ApiError extends Error {
  constructor(status, message, code) { super(message); this.status = status; this.code = code; }
}
class NetworkError extends Error {}

const state = { userId: null, info: null, pair: null, skipped: [], more: false, retry: null };

// ---------------------------------------------------------------- identity

function newUserId() {
  const bytes = new Uint8Array(12);
  crypto.getRandomValues(bytes);
  return "web-" + Array.from(bytes, (b) => b.toString(16).padStart(2, "0")).join("");
}

function readCookie(name) {
  const hit = document.cookie.split("; ").find((c) => c.startsWith(name + "="));
  return hit ? decodeURIComponent(hit.slice(name.length + 1)) : null;
}

function userId() {
  let id = readCookie(COOKIE);
  if (!id || !/^[A-Za-z0-9][A-Za-z0-9._:@-]{0,127}$/.test(id)) {
    id = newUserId();
    document.cookie = `${COOKIE}=${id}; path=/; max-age=31536000; SameSite=Strict`;
  }
  return id;
}

function skippedKey() { return "fspo_skipped_" + state.userId; }

// ---------------------------------------------------------------- HTTP

function headers() {
  const h = { "Content-Type": "application/json" };
  const key = sessionStorage.getItem(KEY_STORE);
  if (key) h.Authorization = "Bearer " + key;
  return h;
}

async function errorOf(r) {
  // OpenAI-style JSON errors carry the message; a proxy's 503 may be plain text.
  const body = await r.text();
  try { const e = JSON.parse(body).error; return new ApiError(r.status, e.message, e.code); }
  catch (_) { return new ApiError(r.status, body.trim() || `${r.status} ${r.statusText}`, null); }
}

async function send(method, path, body) {
  let r;
  try {
    r = await fetch(path, { method, headers: headers(), body: body === undefined ? undefined : JSON.stringify(body) });
  } catch (_) {
    throw new NetworkError("The connection to the server dropped.");
  }
  if (!r.ok) throw await errorOf(r);
  return r.json();
}

const api = {
  get: (p) => send("GET", p),
  post: (p, b) => send("POST", p, b),
  del: (p) => send("DELETE", p),
};

// Run an action; errors land next to the control that caused them, a dropped connection shows
// the retry banner, a 401 brings back the key form with the server's message.
async function guarded(action, errorEl) {
  if (errorEl) errorEl.textContent = "";
  try {
    await action();
    if (state.retry === action) hideBanner();
  } catch (e) {
    if (e instanceof NetworkError) {
      state.retry = action;
      $("banner-text").textContent = e.message;
      $("banner").hidden = false;
    } else if (e instanceof ApiError && e.status === 401) {
      askForKey(e.message);
    } else if (e instanceof ApiError) {
      if (errorEl) errorEl.textContent = `${e.message} (${e.status})`;
    } else {
      if (errorEl) errorEl.textContent = String(e.message || e);
      console.warn(e);
    }
  }
}

function hideBanner() { $("banner").hidden = true; state.retry = null; }

// ---------------------------------------------------------------- auth

function askForKey(message) {
  $("app").hidden = true;
  $("auth").hidden = false;
  $("auth-error").textContent = message || "";
  $("api-key").focus();
}

async function start() {
  state.info = await api.get("/v1/page/info");
  $("auth").hidden = true;
  $("app").hidden = false;
  renderInfo();
  await Promise.all([loadNext(), refreshPersona()]);
}

// ---------------------------------------------------------------- elicitation

function renderInfo() {
  const info = state.info;
  $("domain-note").textContent = info.world
    ? `This demo's tiny model knows only its simulated world (${info.domains.join(", ")}): ask one of the ` +
      "suggested questions, or one like them. Answers are shown as sentences."
    : "";
  $("compare-label").textContent = `Also show the unpersonalized answer (${info.unpersonalized})`;
  const box = $("suggestions");
  box.replaceChildren();
  for (const s of info.suggestions) {
    const b = document.createElement("button");
    b.type = "button";
    b.className = "suggestion";
    b.textContent = s.text;
    b.addEventListener("click", () => { $("question").value = s.text; $("question").focus(); });
    box.appendChild(b);
  }
}

async function loadNext() {
  const skipped = encodeURIComponent(state.skipped.join(","));
  const next = await api.get(`/v1/page/next/${state.userId}?skipped=${skipped}`);
  state.pair = next.done && !state.more ? null : next.pair;
  const shown = Math.min(next.answered + 1, next.target);
  $("elicit-progress").textContent = next.done
    ? `You answered ${next.answered} pairs.`
    : `Pair ${shown} of ${next.target} (${next.answered} answered)`;
  $("elicit-progress").dataset.answered = next.answered;
  if (state.pair) {
    $("pair-question").textContent = state.pair.question.text;
    $("answer-a-text").textContent = state.pair.answers[0].text;
    $("answer-b-text").textContent = state.pair.answers[1].text;
    $("pair").hidden = false;
    $("elicit-done").hidden = true;
  } else {
    $("pair").hidden = true;
    $("elicit-done-text").textContent = next.pair
      ? "Thanks! The chat below now answers the way you like. You can answer more pairs to sharpen it."
      : "You have seen every pair there is.";
    $("more").hidden = !next.pair;
    $("elicit-done").hidden = false;
  }
}

async function choose(side) {
  const pair = state.pair;
  if (!pair) return;
  const chosen = pair.answers[side], rejected = pair.answers[1 - side];
  setBusy(true);
  try {
    await api.post(`/v1/users/${state.userId}/preferences`, {
      preferences: [{ question: pair.question.model, chosen: chosen.model, rejected: rejected.model }],
    });
    await loadNext();
  } finally { setBusy(false); }
  focusElicitation();
  await guarded(refreshPersona, $("persona-error"));
}

async function skip() {
  if (!state.pair) return;
  state.skipped.push(state.pair.id);
  sessionStorage.setItem(skippedKey(), JSON.stringify(state.skipped));
  await loadNext();
  focusElicitation();
}

function focusElicitation() {
  // Keyboard users continue where they were: the new question, or the "done" note.
  (state.pair ? $("pair-question") : $("elicit-done-text")).focus();
}

function setBusy(busy) {
  for (const id of ["choose-a", "choose-b", "skip"]) $(id).disabled = busy;
  $("elicit").setAttribute("aria-busy", String(busy));
}

// ---------------------------------------------------------------- persona

async function refreshPersona() {
  const profile = await api.get(`/v1/page/profile/${state.userId}`);
  renderPrefs(profile.preferences);
  const el = $("persona-text");
  el.dataset.count = profile.count;
  if (profile.count === 0) {
    el.textContent = "No preferences yet: pick an answer above.";
    return;
  }
  el.setAttribute("aria-busy", "true");
  el.textContent = "Inferring your preferences…";
  try {
    const p = await api.get(`/v1/users/${state.userId}/persona`);
    // Sentences for the visitor; the model's own words (what the answer stage reads) on hover.
    el.textContent = p.persona_display || p.persona || "(the model wrote an empty description)";
    el.title = p.persona && p.persona_display !== p.persona ? `The model's words: ${p.persona}` : "";
  } finally { el.setAttribute("aria-busy", "false"); }
}

function renderPrefs(prefs) {
  const list = $("prefs");
  list.replaceChildren();
  for (const p of prefs) {
    const li = document.createElement("li");
    const q = document.createElement("p");
    q.className = "pref-question";
    q.textContent = p.question;
    const c = document.createElement("p");
    c.innerHTML = "<strong>Preferred:</strong> ";
    c.append(p.chosen);
    const r = document.createElement("p");
    r.innerHTML = "<strong>Over:</strong> ";
    r.append(p.rejected);
    const del = document.createElement("button");
    del.type = "button";
    del.className = "secondary delete";
    del.textContent = "Delete";
    del.setAttribute("aria-label", `Delete preference ${p.index + 1}: ${p.question}`);
    del.addEventListener("click", () => guarded(async () => {
      await api.del(`/v1/users/${state.userId}/preferences/${p.index}`);
      await Promise.all([refreshPersona(), loadNext()]);
      $("persona-h").focus();
    }, $("persona-error")));
    li.append(q, c, r, del);
    list.appendChild(li);
  }
}

// ---------------------------------------------------------------- chat

async function ask(event) {
  event.preventDefault();
  const typed = $("question").value;
  if (!typed.trim()) return;
  $("ask").disabled = true;
  try {
    const q = await api.post("/v1/page/question", { question: typed });
    $("chat-note").textContent = state.info.world && !q.known
      ? "This question is not from the simulated world; the tiny model may answer it poorly." : "";
    const runs = [stream(q.model, "user", $("out-personal"))];
    $("out-base").hidden = !$("compare").checked;
    if ($("compare").checked) runs.push(stream(q.model, "none", $("out-base")));
    const results = await Promise.allSettled(runs);
    const failed = results.find((r) => r.status === "rejected");
    if (failed) throw failed.reason;
  } finally { $("ask").disabled = false; }
}

// Stream one answer over the SSE endpoint (fetch, so the API key header can go with it).
async function stream(question, context, out) {
  const text = out.querySelector(".text"), raw = out.querySelector(".raw");
  out.hidden = false;
  out.dataset.state = "streaming";
  out.dataset.chunks = "0";
  text.textContent = "";
  raw.textContent = "";
  const body = {
    model: state.info.model_id, stream: true,
    messages: [{ role: "user", content: question }],
    fspo: { user_id: state.userId, context },
  };
  let r;
  try {
    r = await fetch("/v1/chat/completions", { method: "POST", headers: headers(), body: JSON.stringify(body) });
  } catch (_) {
    out.dataset.state = "failed";
    throw new NetworkError("The connection to the server dropped.");
  }
  if (!r.ok) { out.dataset.state = "failed"; out.hidden = true; throw await errorOf(r); }
  const reader = r.body.getReader();
  const decoder = new TextDecoder();
  let buffer = "", answer = "", chunks = 0, done = false;
  while (!done) {
    let part;
    try { part = await reader.read(); } catch (_) { part = { done: true, dropped: true }; }
    if (part.done) break;
    buffer += decoder.decode(part.value, { stream: true });
    let cut;
    while ((cut = buffer.indexOf("\n\n")) >= 0) {
      const event = buffer.slice(0, cut);
      buffer = buffer.slice(cut + 2);
      if (!event.startsWith("data: ")) continue;
      const data = event.slice(6);
      if (data === "[DONE]") { done = true; break; }
      const msg = JSON.parse(data);
      if (msg.error) { out.dataset.state = "failed"; throw new ApiError(500, msg.error.message, msg.error.code); }
      const piece = msg.choices && msg.choices[0] && msg.choices[0].delta.content;
      if (piece) {
        answer += piece;
        chunks += 1;
        text.textContent = answer;
        out.dataset.chunks = String(chunks);
      }
    }
  }
  if (!done) {
    out.dataset.state = "failed";
    throw new NetworkError("The connection dropped before the answer finished.");
  }
  raw.textContent = answer;
  const shown = await api.post("/v1/page/display", { question, text: answer || " " });
  text.textContent = answer ? shown.text : "(the model wrote nothing)";
  out.dataset.state = "done";
}

// ---------------------------------------------------------------- forget me

async function forget() {
  await api.del(`/v1/users/${state.userId}`);
  sessionStorage.removeItem(skippedKey());
  document.cookie = `${COOKIE}=; path=/; max-age=0; SameSite=Strict`;
  state.userId = userId();
  state.skipped = [];
  state.more = false;
  for (const id of ["out-personal", "out-base"]) $(id).hidden = true;
  $("question").value = "";
  await Promise.all([loadNext(), refreshPersona()]);
  $("elicit-progress").focus();
}

// ---------------------------------------------------------------- wiring

document.addEventListener("DOMContentLoaded", () => {
  state.userId = userId();
  try { state.skipped = JSON.parse(sessionStorage.getItem(skippedKey()) || "[]"); } catch (_) { state.skipped = []; }
  $("choose-a").addEventListener("click", () => guarded(() => choose(0), $("elicit-error")));
  $("choose-b").addEventListener("click", () => guarded(() => choose(1), $("elicit-error")));
  $("skip").addEventListener("click", () => guarded(skip, $("elicit-error")));
  $("more").addEventListener("click", () => { state.more = true; guarded(async () => { await loadNext(); focusElicitation(); }, $("elicit-error")); });
  $("chat-form").addEventListener("submit", (e) => guarded(() => ask(e), $("chat-error")));
  $("forget").addEventListener("click", () => guarded(forget, $("elicit-error")));
  $("retry").addEventListener("click", () => { const again = state.retry; hideBanner(); if (again) guarded(again, null); });
  $("auth-form").addEventListener("submit", (e) => {
    e.preventDefault();
    sessionStorage.setItem(KEY_STORE, $("api-key").value.trim());
    guarded(start, $("auth-error"));
  });
  $("elicit-progress").tabIndex = -1;
  $("persona-h").tabIndex = -1;
  guarded(start, $("elicit-error"));
});
