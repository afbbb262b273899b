// llmgate live view.  No framework, no CDN: this file is the whole client.
// Every text that comes from a trace is put in the page with textContent,
// never as HTML; the page's Content-Security-Policy forbids inline scripts.
"use strict";

const TOKEN_KEY = "llmgate-admin-token";
const $ = (id) => document.getElementById(id);

function el(tag, props, ...children) {
  const node = document.createElement(tag);
  for (const [key, value] of Object.entries(props || {})) {
    if (value === null || value === undefined || value === false) continue;
    if (key === "class") node.className = value;
    else if (key === "text") node.textContent = value;
    else if (key.startsWith("data-")) node.setAttribute(key, value);
    else node[key] = value;
  }
  for (const child of children) {
    if (child === null || child === undefined || child === false) continue;
    node.append(typeof child === "string" ? document.createTextNode(child) : child);
  }
  return node;
}

// -- access ------------------------------------------------------------------

class Unauthorized extends Error {}
class Forbidden extends Error {}

function authHeaders() {
  const token = sessionStorage.getItem(TOKEN_KEY);
  return token ? { Authorization: "Bearer " + token } : {};
}

async function api(path) {
  const response = await fetch(path, { headers: authHeaders(), cache: "no-store" });
  if (response.status === 401) throw new Unauthorized();
  if (response.status === 403) throw new Forbidden();
  if (!response.ok && response.status !== 404) throw new Error(path + ": " + response.status);
  return response.json();
}

function showLogin(message) {
  $("content").hidden = true;
  $("login").hidden = false;
  setStatus("locked", "token needed");
  const error = $("login-error");
  error.hidden = !message;
  error.textContent = message || "";
  $("token").focus();
}

function whenAuthorized(start) {
  $("login-form").addEventListener("submit", (event) => {
    event.preventDefault();
    sessionStorage.setItem(TOKEN_KEY, $("token").value.trim());
    $("token").value = "";
    run();
  });
  async function run() {
    try {
      await start();
      $("login").hidden = true;
      $("content").hidden = false;
    } catch (error) {
      if (error instanceof Forbidden) {
        showLogin("This gateway shows its live view to local clients only (client tokens are set, " +
                  "admin tokens are not): open it from the gateway's machine, or set auth.admin_tokens.");
        $("token").hidden = true;
        document.querySelector("#login-form button").hidden = true;
      } else if (error instanceof Unauthorized) {
        const hadToken = Boolean(sessionStorage.getItem(TOKEN_KEY));
        sessionStorage.removeItem(TOKEN_KEY);
        showLogin(hadToken ? "That token was refused." : "");
      } else {
        setStatus("down", "gateway unreachable");
        setTimeout(run, 3000);
      }
    }
  }
  run();
}

function setStatus(state, text) {
  const status = $("status");
  status.dataset.state = state;
  status.textContent = text;
}

// -- the event feed: fetch, so the admin token goes as a header ----------------

function follow(query, onEvent) {
  let stopped = false;
  async function connect() {
    try {
      const response = await fetch("/api/events" + query, { headers: authHeaders(), cache: "no-store" });
      if (response.status === 401) throw new Unauthorized();
      if (!response.ok || !response.body) throw new Error("feed " + response.status);
      setStatus("live", "live");
      const reader = response.body.pipeThrough(new TextDecoderStream()).getReader();
      let buffer = "";
      for (;;) {
        const { value, done } = await reader.read();
        if (done) break;
        buffer += value.replace(/\r\n?/g, "\n");
        let end;
        while ((end = buffer.indexOf("\n\n")) >= 0) {
          const block = buffer.slice(0, end);
          buffer = buffer.slice(end + 2);
          let kind = "message";
          const data = [];
          for (const line of block.split("\n")) {
            if (line.startsWith("event:")) kind = line.slice(6).trim();
            else if (line.startsWith("data:")) data.push(line.slice(5).replace(/^ /, ""));
          }
          if (data.length) onEvent(kind, JSON.parse(data.join("\n")));
        }
      }
    } catch (error) {
      if (error instanceof Forbidden) {
        showLogin("This gateway shows its live view to local clients only (client tokens are set, " +
                  "admin tokens are not): open it from the gateway's machine, or set auth.admin_tokens.");
        $("token").hidden = true;
        document.querySelector("#login-form button").hidden = true;
      } else if (error instanceof Unauthorized) { stopped = true; showLogin(""); return; }
    }
    if (!stopped) {
      setStatus("down", "reconnecting");
      onEvent("resync", {});
      setTimeout(connect, 2000);
    }
  }
  connect();
}

function debounce(fn, ms) {
  let timer = null;
  return (...args) => {
    if (timer) return;
    timer = setTimeout(() => { timer = null; fn(...args); }, ms);
  };
}

// -- formatting ----------------------------------------------------------------

const number = new Intl.NumberFormat();
function fmtNumber(n) { return n === null || n === undefined ? "–" : number.format(n); }
function fmtCompact(n) {
  if (n >= 1e6) return +(n / 1e6).toPrecision(3) + "M";
  if (n >= 1e4) return +(n / 1e3).toPrecision(3) + "k";
  return fmtNumber(+n.toPrecision(3));
}
function fmtMs(ms) {
  if (ms === null || ms === undefined) return "–";
  return ms >= 1000 ? (ms / 1000).toFixed(2) + " s" : Math.round(ms) + " ms";
}
function fmtTime(seconds, withDate) {
  if (!seconds) return "–";
  const date = new Date(seconds * 1000);
  const time = date.toLocaleTimeString([], { hour12: false });
  if (!withDate) return time;
  const today = new Date().toDateString() === date.toDateString();
  return today ? time : date.toLocaleDateString() + " " + time;
}
function fmtAgo(seconds) {
  const ago = Math.max(0, Date.now() / 1000 - seconds);
  if (ago < 60) return Math.round(ago) + " s ago";
  if (ago < 3600) return Math.round(ago / 60) + " min ago";
  if (ago < 86400) return Math.round(ago / 3600) + " h ago";
  return fmtTime(seconds, true);
}
function shortId(id) { return id.length > 24 ? id.slice(0, 24) + "…" : id; }

// -- charts: inline SVG ------------------------------------------------------------

const SVG = "http://www.w3.org/2000/svg";
function svg(tag, attrs) {
  const node = document.createElementNS(SVG, tag);
  for (const [key, value] of Object.entries(attrs || {})) node.setAttribute(key, value);
  return node;
}

function niceMax(value) {
  if (value <= 0) return 1;
  const power = Math.pow(10, Math.floor(Math.log10(value)));
  for (const step of [1, 2, 2.5, 5, 10]) if (step * power >= value) return step * power;
  return 10 * power;
}

function drawChart(figure, minutes, series, kind) {
  const W = 360, H = 120, L = 40, R = 6, T = 8, B = 18;
  const old = figure.querySelector("svg");
  if (old) old.remove();
  const chart = svg("svg", { viewBox: `0 0 ${W} ${H}`, role: "img", class: "plot" });
  let max = 0;
  for (const s of series) for (const v of s.values) if (v !== null && v > max) max = v;
  const top = niceMax(max * (kind === "stack" ? 1 : 1.05));
  const x = (i) => L + (i * (W - L - R)) / minutes.length;
  const y = (v) => H - B - (v / top) * (H - T - B);
  for (const frac of [0, 0.5, 1]) {
    const yy = y(top * frac);
    chart.append(svg("line", { x1: L, x2: W - R, y1: yy, y2: yy, class: "grid" }));
    const label = svg("text", { x: L - 5, y: yy + 3, class: "axis", "text-anchor": "end" });
    label.textContent = frac === 0 ? "0" : fmtCompact(top * frac);
    chart.append(label);
  }
  for (const at of [0, 30, 59]) {
    const label = svg("text", { x: at === 59 ? W - R : x(at) + 2, y: H - 4, class: "axis", "text-anchor": at === 59 ? "end" : "start" });
    label.textContent = at === 59 ? "now" : "-" + (60 - at) + " min";
    chart.append(label);
  }
  const barW = Math.max(1, (W - L - R) / minutes.length - 1);
  if (kind === "stack") {
    for (let i = 0; i < minutes.length; i++) {
      let base = 0;
      for (const s of series) {
        const v = s.values[i] || 0;
        if (!v) continue;
        const rect = svg("rect", { x: x(i), y: y(base + v), width: barW, height: y(base) - y(base + v), class: s.cls });
        const tip = svg("title");
        tip.textContent = `${fmtTime(minutes[i])}: ${fmtNumber(v)} ${s.name}`;
        rect.append(tip);
        chart.append(rect);
        base += v;
      }
    }
  } else {
    for (const s of series) {
      let d = "";
      s.values.forEach((v, i) => {
        if (v === null) return;
        d += (d && s.values[i - 1] !== null ? "L" : "M") + (x(i) + barW / 2).toFixed(1) + " " + y(v).toFixed(1);
      });
      if (d) chart.append(svg("path", { d, class: "line " + s.cls }));
      s.values.forEach((v, i) => {
        if (v === null) return;
        const dot = svg("circle", { cx: (x(i) + barW / 2).toFixed(1), cy: y(v).toFixed(1), r: 1.8, class: "pt " + s.cls });
        const tip = svg("title");
        tip.textContent = `${fmtTime(minutes[i])}: ${s.name} ${fmtMs(v)}`;
        dot.append(tip);
        chart.append(dot);
      });
    }
  }
  figure.append(chart);
}

function drawCharts(stats) {
  const ok = stats.calls.map((c, i) => c - stats.errors[i]);
  drawChart($("chart-calls"), stats.minutes, [
    { name: "ok", cls: "s-ok", values: ok },
    { name: "errors", cls: "s-err", values: stats.errors },
  ], "stack");
  drawChart($("chart-tokens"), stats.minutes, [
    { name: "in", cls: "s-in", values: stats.tokens_in },
    { name: "out", cls: "s-out", values: stats.tokens_out },
  ], "stack");
  drawChart($("chart-latency"), stats.minutes, [
    { name: "p99", cls: "s-p99", values: stats.p99 },
    { name: "p90", cls: "s-p90", values: stats.p90 },
    { name: "p50", cls: "s-p50", values: stats.p50 },
  ], "lines");
}

// -- the sessions page ---------------------------------------------------------------

function sessionsPage() {
  const PAGE = 50;
  let offset = 0;
  let live = new Set();

  function row(s) {
    const link = el("a", { href: "/ui/sessions/" + encodeURIComponent(s.id), text: s.sessionless ? "(no session) " + shortId(s.id.slice(5)) : s.id, class: "sid" });
    const preview = s.preview ? el("div", { class: "preview", text: s.preview }) : null;
    return el("tr", { class: live.has(s.id) ? "live" : null, "data-session": s.id },
      el("td", {}, el("span", { class: "dot", title: "call in progress" }), link, preview),
      el("td", {}, el("span", { class: "model", text: s.model || "–" }), el("div", { class: "muted small", text: s.provider || "" })),
      el("td", { class: "num", text: fmtNumber(s.calls) }),
      el("td", { class: "num", text: fmtNumber(s.tokens_in) }),
      el("td", { class: "num", text: fmtNumber(s.tokens_out) }),
      el("td", { text: fmtTime(s.first, true) }),
      el("td", { text: fmtAgo(s.last), title: new Date(s.last * 1000).toISOString() }),
      el("td", { class: "num" + (s.errors ? " bad" : ""), text: fmtNumber(s.errors) }),
    );
  }

  async function refresh() {
    const q = encodeURIComponent($("filter").value.trim());
    const data = await api(`/api/sessions?q=${q}&offset=${offset}&limit=${PAGE}`);
    live = new Set(data.in_flight.map((c) => c.session_id).filter(Boolean));
    $("sessions").replaceChildren(...data.sessions.map(row));
    $("empty").hidden = data.total > 0;
    const last = Math.min(offset + PAGE, data.total);
    $("count").textContent = data.total ? `${offset + 1}–${last} of ${fmtNumber(data.total)} sessions` : (data.ready ? "" : "indexing traces…");
    $("prev").disabled = offset === 0;
    $("next").disabled = last >= data.total;
  }

  async function refreshStats() { drawCharts(await api("/api/stats")); }

  const soon = debounce(() => refresh().catch(() => {}), 400);
  const statsSoon = debounce(() => refreshStats().catch(() => {}), 3000);
  $("filter").addEventListener("input", debounce(() => { offset = 0; soon(); }, 200));
  $("prev").addEventListener("click", () => { offset = Math.max(0, offset - PAGE); refresh(); });
  $("next").addEventListener("click", () => { offset += PAGE; refresh(); });

  let following = false;
  whenAuthorized(async () => {
    await refresh();
    await refreshStats();
    if (!following) {
      following = true;
      follow("", (kind, data) => {
        if (kind === "call_started" && data.session_id) {
          live.add(data.session_id);
          const tr = document.querySelector(`tr[data-session="${CSS.escape(data.session_id)}"]`);
          if (tr) tr.classList.add("live");
        }
        soon();
        if (kind === "call_indexed" || kind === "resync") statsSoon();
      });
      setInterval(() => refreshStats().catch(() => {}), 15000);
    }
  });
}

// -- a session's page ----------------------------------------------------------------

function sessionPage() {
  const id = decodeURIComponent(location.pathname.slice("/ui/sessions/".length));
  document.title = "llmgate · " + id;
  $("crumb-session").textContent = id;
  const cards = new Map();

  function badge(text, cls, title) { return el("span", { class: "badge " + (cls || ""), text, title }); }

  function statusBadge(call) {
    if (call.in_progress) return badge(call.streaming ? "streaming" : "waiting", "b-live");
    if (call.error) return badge(call.status ? String(call.status) : "failed", "b-err", call.error);
    if (call.status >= 400) return badge(String(call.status), "b-err");
    return badge(String(call.status || "–"), "b-ok");
  }

  function message(m) {
    const label = m.kind === "tool_call" ? "tool call" : m.kind === "tool_result" ? "tool result" : m.role;
    return el("li", { class: `msg role-${m.role} kind-${m.kind}` },
      el("div", { class: "who", text: label }),
      el("div", { class: "text", text: m.text }));
  }

  function card(call) {
    const facts = el("dl", { class: "facts" });
    const fact = (name, value) => { if (value !== null && value !== undefined && value !== "") facts.append(el("dt", { text: name }), el("dd", { text: String(value) })); };
    fact("latency", call.in_progress ? null : fmtMs(call.duration_ms));
    fact("first token", call.in_progress ? null : fmtMs(call.ttfb_ms));
    fact("tokens", call.in_progress ? null : `${fmtNumber(call.tokens_in)} in · ${fmtNumber(call.tokens_out)} out`);
    fact("model", call.model);
    fact("upstream", call.upstream);
    fact("attempts", call.attempts);
    const messages = el("ol", { class: "messages" }, ...(call.messages || []).map(message));
    let stream = null;
    if (call.in_progress) {
      stream = el("div", { class: "text stream", text: call.text || "" });
      messages.append(el("li", { class: "msg role-assistant kind-text" }, el("div", { class: "who", text: "assistant" }), stream));
    }
    const node = el("li", { class: "call" + (call.in_progress ? " in-progress" : "") + (call.error || call.status >= 400 ? " failed" : ""), "data-call": call.id },
      el("div", { class: "head" },
        el("time", { text: fmtTime(call.time, true) }),
        el("code", { class: "path", text: call.path || "" }),
        statusBadge(call),
        call.decision ? badge(call.decision, "b-decision d-" + call.decision, "session decision") : null,
        call.streaming ? badge("stream", "b-plain") : null,
        el("a", { class: "raw", href: "/api/calls/" + encodeURIComponent(call.id), text: "JSON", title: "the trace (needs the token in the header: open via curl)" }),
      ),
      facts,
      call.error ? el("p", { class: "error", text: call.error }) : null,
      messages);
    return { node, stream };
  }

  let known = null;
  function render(data) {
    const s = data.session;
    const summary = $("summary");
    summary.replaceChildren(
      el("h1", {}, el("span", { class: "muted", text: "Session " }), el("span", { text: id })),
      el("div", { class: "stats" },
        stat("Calls", fmtNumber(s.calls)), stat("Model", s.model || "–"), stat("Provider", s.provider || "–"),
        stat("Tokens in", fmtNumber(s.tokens_in)), stat("Tokens out", fmtNumber(s.tokens_out)),
        stat("First call", fmtTime(s.first, true)), stat("Last call", fmtTime(s.last, true)),
        stat("Errors", fmtNumber(s.errors || 0))));
    const timeline = $("timeline");
    cards.clear();
    const nodes = [];
    const indexed = new Set(data.calls.map((c) => c.id));
    for (const call of data.calls) nodes.push(card(call).node);
    for (const call of data.in_flight) {
      if (indexed.has(call.id)) continue;
      const made = card({ ...call, in_progress: true });
      cards.set(call.id, made);
      nodes.push(made.node);
    }
    timeline.replaceChildren(...nodes);
    $("empty").hidden = nodes.length > 0;
    known = indexed;
  }
  function stat(name, value) { return el("div", { class: "stat" }, el("span", { class: "k", text: name }), el("span", { class: "v", text: value })); }

  async function refresh() { render(await api("/api/sessions/" + encodeURIComponent(id))); }
  const soon = debounce(() => refresh().catch(() => {}), 300);

  let following = false;
  whenAuthorized(async () => {
    await refresh();
    if (following) return;
    following = true;
    follow("?session=" + encodeURIComponent(id), (kind, data) => {
      if (kind === "call_started") {
        if (cards.has(data.id) || (known && known.has(data.id))) return;
        const made = card({ ...data, in_progress: true, text: "" });
        cards.set(data.id, made);
        $("timeline").append(made.node);
        $("empty").hidden = true;
        made.node.scrollIntoView({ block: "nearest" });
      } else if (kind === "delta") {
        // offset: where this text starts in the call's; what the page got
        // already (from a fetch made meanwhile) is skipped.
        const made = cards.get(data.id);
        if (made && made.stream) {
          const have = made.stream.textContent.length;
          const end = data.offset + data.text.length;
          if (end > have) made.stream.textContent += data.text.slice(Math.max(0, have - data.offset));
        }
      } else if (kind === "call_ended") {
        const made = cards.get(data.id);
        if (made) {
          made.node.classList.remove("in-progress");
          const live = made.node.querySelector(".b-live");
          if (live) { live.textContent = data.error ? "failed" : "done"; live.className = "badge " + (data.error ? "b-err" : "b-ok"); }
        }
      } else {
        soon();  // call_indexed, resync
      }
    });
  });
}

if (document.body.dataset.page === "sessions") sessionsPage();
else if (document.body.dataset.page === "session") sessionPage();
