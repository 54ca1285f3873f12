// Haven dashboard: plans, executions, a live step timeline (server-sent
// events read through fetch, so the token stays in a header), approvals and
// cancellation. It follows the primary: on a follower node it moves to the
// primary's dashboard, carrying the token in the URL fragment.
"use strict";

const API = "/api/v1";
let token = localStorage.getItem("haven-token") || "";
let selected = null;
let follow = null;
// The mode chosen per plan, kept across the periodic refreshes.
const modes = {};

const $ = (sel) => document.querySelector(sel);

function banner(message) {
  const b = $("#banner");
  b.textContent = message || "";
  b.hidden = !message;
}

async function api(method, path, body) {
  const init = { method, headers: { Authorization: "Bearer " + token } };
  if (body !== undefined) {
    init.headers["Content-Type"] = "application/json";
    init.body = JSON.stringify(body);
  }
  const response = await fetch(API + path, init);
  if (!response.ok) {
    let message = response.status + " " + response.statusText;
    try {
      const e = (await response.json()).error;
      message = e.message + (e.field ? " (" + e.field + ")" : "");
    } catch (_) { /* not JSON */ }
    throw new Error(message);
  }
  return response.status === 204 ? null : response.json();
}

function el(tag, attrs, ...children) {
  const node = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (k === "class") node.className = v;
    else if (k.startsWith("on")) node.addEventListener(k.slice(2), v);
    else node.setAttribute(k, v);
  }
  for (const c of children) node.append(c);
  return node;
}

async function checkCluster() {
  try {
    const c = await (await fetch(API + "/cluster")).json();
    $("#node-role").textContent = c.role;
    if (c.role === "follower" && c.primary) {
      const target = new URL("/", c.primary);
      if (target.origin !== location.origin) {
        location.href = target.href + (token ? "#token=" + encodeURIComponent(token) : "");
        return false;
      }
    }
    if (c.role === "follower" && !c.primary) banner("No primary is known yet; writes are refused until one is elected.");
    return true;
  } catch (e) {
    banner("Cannot reach Haven: " + e.message);
    return false;
  }
}

async function loadPlans() {
  const plans = await api("GET", "/plans");
  const body = $("#plans tbody");
  body.replaceChildren();
  for (const p of plans) {
    const mode = el("select", { id: "mode-" + p.id, onchange: (e) => { modes[p.id] = e.target.value; } },
      ...["test", "failover", "migration", "failback", "undo"].map((m) => el("option", { value: m }, m)));
    mode.value = modes[p.id] || "test";
    body.append(el("tr", { "data-plan": p.id },
      el("td", {}, el("b", {}, p.name), " (" + p.id + ")"),
      el("td", {}, p.plan_set),
      el("td", {}, String(p.version)),
      el("td", {},
        el("span", { class: "badge " + (p.verified ? "verified" : "unverified") }, p.verified ? "verified" : "unverified"), " ",
        el("button", { type: "button", "data-check": p.id, onclick: () => checkReadiness(p.id) }, "Check")),
      el("td", {}, mode, " ",
        el("button", { type: "button", "data-start": p.id, onclick: () => start(p.id, mode.value) }, "Start"))));
  }
}

async function loadExecutions() {
  const executions = await api("GET", "/executions");
  const body = $("#executions tbody");
  body.replaceChildren();
  for (const x of executions) {
    body.append(el("tr", { class: "selectable", "data-execution": x.id, onclick: () => show(x.id) },
      el("td", {}, x.id), el("td", {}, x.plan), el("td", {}, x.mode),
      el("td", {}, el("span", { class: "status " + x.status }, x.status)),
      el("td", {}, x.started_by)));
  }
}

async function refresh() {
  if (!token) {
    banner("Enter an API token (the admin token is in <home>/admin-token).");
    return;
  }
  try {
    await loadPlans();
    await loadExecutions();
    banner("");
  } catch (e) {
    banner(e.message);
  }
}

async function checkReadiness(id) {
  try {
    const r = await api("POST", "/plans/" + encodeURIComponent(id) + "/readiness");
    if (!r.verified) {
      const first = (r.last.findings || []).find((f) => f.severity === "error");
      banner("Plan " + id + " is not ready" + (first ? ": " + first.path + ": " + first.message : ""));
    }
    await loadPlans();
  } catch (e) {
    banner(e.message);
  }
}

async function start(plan, mode) {
  try {
    const x = await api("POST", "/executions", { plan, mode });
    await loadExecutions();
    show(x.id);
  } catch (e) {
    banner(e.message);
  }
}

function renderExecution(x) {
  $("#exec-id").textContent = x.id;
  const status = $("#exec-status");
  status.textContent = x.status;
  status.className = "status " + x.status;
  $("#exec-cancel").hidden = ["succeeded", "failed", "cancelled"].includes(x.status);
  $("#exec-report").href = API + "/executions/" + encodeURIComponent(x.id) + "/report?format=html";
  const list = $("#timeline");
  list.replaceChildren();
  for (const s of x.steps) {
    const item = el("li", { "data-step": String(s.index), "data-state": s.state },
      el("span", { class: "status" }, s.state), " ", s.name, s.group ? " [" + s.group + "]" : "");
    if (s.state === "awaiting-approval") {
      item.append(" ", el("button", { type: "button", class: "approve", onclick: () => approve(x.id, s.index) }, "Approve"));
    }
    if (s.state === "failed" && s.error) item.append(" — " + s.error);
    list.append(item);
  }
}

async function approve(id, step) {
  try {
    renderExecution(await api("POST", "/executions/" + encodeURIComponent(id) + "/approve", { step }));
  } catch (e) {
    banner(e.message);
  }
}

async function cancelSelected() {
  if (!selected) return;
  try {
    renderExecution(await api("POST", "/executions/" + encodeURIComponent(selected) + "/cancel"));
  } catch (e) {
    banner(e.message);
  }
}

// Reads the execution's server-sent events through fetch and refreshes the
// view on each; reconnects after the last event seen if the stream breaks.
async function followEvents(id, controller) {
  let after = 0;
  while (!controller.signal.aborted) {
    try {
      const response = await fetch(API + "/executions/" + encodeURIComponent(id) + "/events?after=" + after, {
        headers: { Authorization: "Bearer " + token },
        signal: controller.signal,
      });
      if (!response.ok) throw new Error("events: " + response.status);
      const reader = response.body.pipeThrough(new TextDecoderStream()).getReader();
      let buffer = "";
      for (;;) {
        const { value, done } = await reader.read();
        if (done) return;
        buffer += value;
        let cut;
        while ((cut = buffer.indexOf("\n\n")) >= 0) {
          const frame = buffer.slice(0, cut);
          buffer = buffer.slice(cut + 2);
          const data = frame.split("\n").filter((l) => l.startsWith("data:")).map((l) => l.slice(5).trim()).join("\n");
          if (!data) continue;
          const event = JSON.parse(data);
          after = event.seq;
          $("#journal").append(el("li", {}, event.event + (event.step !== undefined ? " step " + event.step : "")));
          if (selected === id) renderExecution(await api("GET", "/executions/" + encodeURIComponent(id)));
        }
        loadExecutions().catch(() => {});
      }
    } catch (e) {
      if (controller.signal.aborted) return;
      await new Promise((r) => setTimeout(r, 1000));
    }
  }
}

async function show(id) {
  selected = id;
  if (follow) follow.abort();
  follow = new AbortController();
  $("#execution-detail").hidden = false;
  $("#journal").replaceChildren();
  try {
    renderExecution(await api("GET", "/executions/" + encodeURIComponent(id)));
  } catch (e) {
    banner(e.message);
  }
  followEvents(id, follow);
}

function init() {
  const fragment = new URLSearchParams(location.hash.slice(1));
  if (fragment.get("token")) {
    token = fragment.get("token");
    localStorage.setItem("haven-token", token);
    history.replaceState(null, "", location.pathname);
  }
  $("#token-input").value = token;
  $("#token-form").addEventListener("submit", (e) => {
    e.preventDefault();
    token = $("#token-input").value.trim();
    localStorage.setItem("haven-token", token);
    refresh();
  });
  $("#exec-cancel").addEventListener("click", cancelSelected);
  checkCluster().then((ok) => ok && refresh());
  setInterval(async () => {
    if (await checkCluster()) refresh();
  }, 5000);
}

init();
