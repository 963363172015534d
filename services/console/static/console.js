// The Essaim console's page: plain JavaScript, no build step, no library.
//
// It logs in with a session at the gateway (POST /-/session: an HttpOnly
// cookie the script never sees, and a CSRF token it sends with every change),
// then follows the console's Server-Sent Events (api/stream): each event is one
// section of the state, {now, doc}, and redraws that section's view. Actions
// are confirmed in a <dialog>, then POSTed with the CSRF token.
"use strict";

const SESSION = "/-/session";
const VIEWS = ["services", "gateway", "config", "events", "audit"];

const state = {
  session: null,    // {user, roles, expires_at, csrf}
  me: null,         // the console's view of the token: {user, roles, admin, actions}
  sections: {},     // name -> doc
  skew: 0,          // server seconds - browser seconds
  instance: null,   // the console's own instance id (never offered out of service)
  source: null,     // the EventSource
  config: { doc: null, from: null, to: null, diff: null, content: null },
};

const $ = (id) => document.getElementById(id);

// ---------------------------------------------------------------- formatting

function esc(value) {
  return String(value ?? "").replace(/[&<>"']/g, (c) => (
    { "&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;", "'": "&#39;" }[c]));
}

function plural(n, one, many) {
  return `${n} ${n === 1 ? one : (many || one + "s")}`;
}

function seconds(total) {
  // A duration with its units: "45 s", "3 min 12 s", "2 h 5 min", "3 d 4 h".
  if (total == null || !isFinite(total)) return "—";
  const s = Math.max(0, Math.floor(total));
  if (s < 60) return `${s} s`;
  if (s < 3600) return `${Math.floor(s / 60)} min ${s % 60} s`;
  if (s < 86400) return `${Math.floor(s / 3600)} h ${Math.floor((s % 3600) / 60)} min`;
  return `${Math.floor(s / 86400)} d ${Math.floor((s % 86400) / 3600)} h`;
}

function now() {
  return Date.now() / 1000 + state.skew;
}

function age(iso) {
  if (!iso) return null;
  return now() - Date.parse(iso) / 1000;
}

function when(iso) {
  if (!iso) return "—";
  const d = new Date(iso);
  return `<time datetime="${esc(iso)}" title="${esc(d.toISOString())}">${esc(d.toLocaleString())}</time>`;
}

function number(value, digits, unit) {
  if (value == null) return `<span class="none" title="no requests in the window">— ${unit}</span>`;
  return `${Number(value).toFixed(digits)} ${unit}`;
}

function badge(text, kind) {
  return `<span class="badge ${esc(kind)}">${esc(text)}</span>`;
}

function statusBadge(status) {
  const kind = { UP: "ok", OUT_OF_SERVICE: "warn", STARTING: "info", DOWN: "bad" }[status] || "info";
  return badge(status, kind);
}

function breakerBadge(state) {
  return badge(state, { CLOSED: "ok", HALF_OPEN: "warn", OPEN: "bad" }[state] || "info");
}

function table(caption, headers, rows, empty) {
  if (!rows.length) return `<p class="empty">${esc(empty)}</p>`;
  const head = headers.map((h) => `<th scope="col">${h}</th>`).join("");
  const body = rows.map((cells) => "<tr>" + cells.map((c, i) =>
    `<td data-label="${esc(stripTags(headers[i]))}"><div>${c}</div></td>`).join("") + "</tr>").join("");
  return `<div class="scroll"><table><caption>${caption}</caption><thead><tr>${head}</tr></thead><tbody>${body}</tbody></table></div>`;
}

function stripTags(html) {
  return String(html).replace(/<[^>]*>/g, "");
}

function unreachable(doc, what) {
  if (!doc) return `<p class="note">Reading ${esc(what)}…</p>`;
  if (doc.reachable === false) return `<p class="problem" role="alert">${esc(doc.error)}</p>`;
  return "";
}

function actionButton(label, data, kind) {
  if (!state.me || !state.me.actions) return "";
  const attrs = Object.entries(data).map(([k, v]) => `data-${k}="${esc(v)}"`).join(" ");
  const key = Object.values(data).join(":");
  return `<button type="button" class="${kind || ""}" ${attrs} data-key="${esc(key)}">${esc(label)}</button>`;
}

// ---------------------------------------------------------------- the views

const render = {
  services(doc) {
    let html = unreachable(doc, "the registry");
    if (!doc || !doc.services) return html;
    const total = doc.services.reduce((n, s) => n + s.instances.length, 0);
    html += `<p class="summary">${plural(doc.services.length, "service")}, ${plural(total, "instance")}, registry revision ${esc(doc.rev)}${doc.watching ? "" : ` ${badge("not watching: reconnecting", "warn")}`}</p>`;
    for (const service of doc.services) {
      const rows = service.instances.map((i) => {
        const meta = Object.entries(i.metadata || {}).map(([k, v]) =>
          `<span class="meta">${esc(k)}=${esc(v)}</span>`).join(" ");
        const next = i.status === "OUT_OF_SERVICE" ? "UP" : "OUT_OF_SERVICE";
        const label = next === "UP" ? "Put back in service" : "Take out of service";
        return [
          `<strong>${esc(i.id)}</strong>`,
          statusBadge(i.status),
          `<code>${esc(i.address)}</code>`,
          meta || "—",
          seconds(age(i.registered_at)),
          i.last_heartbeat ? `${seconds(age(i.last_heartbeat))} ago` : "—",
          i.ttl != null ? `${i.ttl} s` : "—",
          service.name === "console" && i.id === state.instance && next !== "UP"
            ? `<span class="meta">this console</span>`
            : actionButton(label, { action: "status", service: service.name, id: i.id, status: next },
              next === "UP" ? "" : "danger"),
        ];
      });
      html += `<article class="card" aria-labelledby="svc-${esc(service.name)}">
        <h2 id="svc-${esc(service.name)}">${esc(service.name)} <span class="count">${service.up} of ${plural(service.instances.length, "instance")} up</span></h2>
        ${table(`Instances of ${esc(service.name)}`,
          ["Instance", "Status", "Address", "Metadata", "Uptime", "Last heartbeat", "TTL", state.me && state.me.actions ? "Action" : ""],
          rows, "No instance: the service is known, none is registered now.")}
      </article>`;
    }
    return html;
  },

  gateway(doc) {
    let html = unreachable(doc, "the gateway's admin API");
    if (!doc || !doc.routes) return html;
    const r = doc.routes;
    html += `<p class="summary">Route table <code>${esc(r.version || "—")}</code> from ${esc(r.source || "—")}, ${plural(r.routes.length, "static route")}, ${plural(doc.workers, "worker")}; rates over the last ${doc.window == null ? "— s" : `${doc.window} s`}.</p>`;
    if (r.last_rejected) {
      html += `<p class="problem">The last table offered was rejected: ${esc(r.last_rejected.reason || JSON.stringify(r.last_rejected))}</p>`;
    }
    const rows = doc.services.map((s) => [
      s.own ? `<code>/-/session</code> <span class="meta">the gateway's logins</span>` : `<strong>${esc(s.name)}</strong>`,
      number(s.rate, 1, "req/s"),
      s.error_rate == null ? number(null, 1, "%") : number(s.error_rate * 100, 1, "%"),
      number(s.p50, 1, "ms"),
      number(s.p99, 1, "ms"),
      s.own ? "—" : breakerBadge(s.breaker) + (s.breakers.length > 1
        ? ` <span class="meta">${s.breakers.map((b) => `${esc(b.upstream)}: ${esc(b.state)}`).join(", ")}</span>` : ""),
      s.own ? "—" : s.ejected.length
        ? s.ejected.map((e) => `${badge(e.instance, "bad")} <span class="meta">for ${seconds(e.for)}</span>`).join(" ")
        : `0 of ${plural(s.endpoints, "instance")}`,
      plural(s.total_requests, "request"),
    ]);
    html += `<h2>Per service</h2>` + table("Traffic through the gateway, per service",
      ["Service", "Rate", "Errors (5xx)", "Latency p50", "Latency p99", "Breaker", "Ejected", "Answered since start"],
      rows, "No traffic yet and no upstream.");
    const routes = r.routes.map((route) => [
      `<code>${esc(route.id)}</code>`,
      `<code>${esc(route.path)}</code>`,
      route.methods.length ? esc(route.methods.join(", ")) : "any",
      Array.isArray(route.target) ? esc(route.target.join(", ")) : esc(route.target),
      `<code>${esc(route.auth)}</code>`,
      route.auth_via ? esc(route.auth_via) : "token",
      route.rate_limit ? `${esc(route.rate_limit.replenish_rate)} req/s, bursts of ${plural(route.rate_limit.burst_capacity, "request")}` : "—",
    ]);
    html += `<h2>Routes in force</h2>` + table("Static routes, most specific first when several match",
      ["Id", "Path", "Methods", "Target", "Policy", "Credential", "Rate limit"],
      routes, "No static route: only the discovery routes.");
    const d = r.discovery || {};
    html += `<p class="note">Discovery routes: <code>${esc(d.pattern || "/{service}/**")}</code> for ${plural((d.services || []).length, "service")} (${esc((d.services || []).join(", ") || "none")}).</p>`;
    return html;
  },

  config(doc) {
    let html = unreachable(doc, "configsvc");
    if (!doc || !doc.documents) return html;
    const sel = state.config;
    html += `<p class="summary">${plural(doc.documents.length, "document")}, config revision ${esc(doc.rev)}${doc.watching ? "" : ` ${badge("not watching: reconnecting", "warn")}`}</p>`;
    const rows = doc.documents.map((d) => [
      `<button type="button" class="link" data-action="pick" data-doc="${esc(d.name)}" data-key="pick:${esc(d.name)}" aria-pressed="${sel.doc === d.name}">${esc(d.name)}</button>`,
      `v${esc(d.version)}`,
      when(d.time),
      esc(d.origin),
      plural(d.versions.length, "version"),
    ]);
    html += table("Documents", ["Document", "Current", "Written", "Origin", "Retained"], rows,
      "No document.");
    const picked = doc.documents.find((d) => d.name === sel.doc);
    if (!picked) return html + `<p class="note">Pick a document to see its versions, compare two of them, or roll one back.</p>`;
    const versions = picked.versions.map((v) => [
      `v${esc(v.version)}${v.version === picked.version ? ` ${badge("current", "ok")}` : ""}`,
      when(v.time),
      esc(v.origin),
      `<code title="${esc(v.hash)}">${esc((v.hash || "").slice(0, 12))}</code>`,
      `<button type="button" data-action="show" data-doc="${esc(picked.name)}" data-version="${esc(v.version)}" data-key="show:${esc(picked.name)}:${esc(v.version)}">Show</button> ` +
        (v.version === picked.version || v.deleted ? "" :
          actionButton(`Roll back to v${v.version}`, { action: "rollback", doc: picked.name, version: v.version }, "danger")),
    ]);
    html += `<h2>${esc(picked.name)}: versions</h2>` + table(`Retained versions of ${esc(picked.name)}, newest first`,
      ["Version", "Written", "Origin", "Hash", "Actions"], versions, "No version.");
    const options = (chosen) => picked.versions.map((v) =>
      `<option value="${esc(v.version)}"${v.version === chosen ? " selected" : ""}>v${esc(v.version)}</option>`).join("");
    const older = picked.versions.length > 1 ? picked.versions[1].version : picked.version;
    const from = sel.from ?? older;
    const to = sel.to ?? picked.version;
    html += `<form class="diff-form" data-doc="${esc(picked.name)}">
      <h2>Compare two versions</h2>
      <label for="diff-from">From</label>
      <select id="diff-from" name="from" data-key="diff-from">${options(from)}</select>
      <label for="diff-to">To</label>
      <select id="diff-to" name="to" data-key="diff-to">${options(to)}</select>
      <button type="submit" data-key="diff-go">Show the diff</button>
    </form>`;
    if (sel.diff && sel.diff.name === picked.name) {
      const lines = sel.diff.diff.map((line) => {
        const kind = line.startsWith("+") ? "add" : line.startsWith("-") ? "del" : line.startsWith("@@") ? "hunk" : "";
        return `<span class="${kind}">${esc(line) || " "}</span>`;
      }).join("");
      html += `<h3>v${esc(sel.diff.from)} → v${esc(sel.diff.to)}</h3>` +
        (sel.diff.diff.length ? `<pre class="diff" aria-label="unified diff">${lines}</pre>`
          : `<p class="empty">The two versions hold the same content.</p>`);
    }
    if (sel.content && sel.content.name === picked.name) {
      html += `<h3>${esc(picked.name)} v${esc(sel.content.version)} (TOML)</h3><pre class="toml">${esc(sel.content.toml)}</pre>`;
    }
    return html;
  },

  events(doc) {
    let html = unreachable(doc, "the event bus");
    if (!doc || !doc.streams) return html;
    const dead = doc.dead || [];
    const letters = dead.reduce((n, d) => n + d.count, 0);
    html += `<p class="summary">${plural(doc.streams.length, "stream")}, ${plural(letters, "dead letter")}.</p>`;
    const rows = [];
    for (const s of [...doc.streams, ...(doc.retries || []).map((r) => ({ ...r, stream: `${r.stream} (replays)` }))]) {
      const groups = s.groups.length ? s.groups : [null];
      groups.forEach((g, i) => rows.push([
        i === 0 ? `<code>${esc(s.stream)}</code>` : "",
        i === 0 ? plural(s.length, "event") : "",
        g ? esc(g.name) : "—",
        g ? plural(g.consumers, "consumer") : "—",
        g ? plural(g.pending, "message") : "—",
        g ? (g.lag == null ? "— events" : plural(g.lag, "event")) : "—",
      ]));
    }
    html += `<h2>Streams and consumer groups</h2>` + table(
      "Each stream's consumer groups: pending is delivered but not yet acknowledged, lag is not yet delivered",
      ["Stream", "Length", "Group", "Consumers", "Pending", "Lag"], rows, "No stream yet: no event was published.");
    html += `<h2>Dead letters</h2>`;
    if (!dead.length) html += `<p class="empty">No dead letter: every event was handled.</p>`;
    for (const group of dead) {
      const rows = group.letters.map((l) => [
        `<code>${esc(l.id)}</code>`,
        `<code>${esc(l.type || "—")}</code>`,
        `<span class="error-text">${esc(l.error)}</span>`,
        plural(l.deliveries, "delivery", "deliveries"),
        when(l.failed_at),
        actionButton("Replay", { action: "replay", group: group.group, id: l.id }) + " " +
          actionButton("Discard", { action: "discard", group: group.group, id: l.id }, "danger"),
      ]);
      html += `<article class="card" aria-labelledby="dead-${esc(group.group)}">
        <h3 id="dead-${esc(group.group)}">${esc(group.group)} <span class="count">${plural(group.count, "dead letter")}</span></h3>
        ${table(`Dead letters of the group ${esc(group.group)}, oldest first`,
          ["Id", "Event type", "Error", "Tried", "Failed at", state.me && state.me.actions ? "Actions" : ""],
          rows, "None left.")}
      </article>`;
    }
    return html;
  },

  audit(doc) {
    if (!doc) return `<p class="note">Reading the audit trail…</p>`;
    const rows = doc.entries.map((e) => [
      when(e.at),
      `<strong>${esc(e.user)}</strong> <span class="meta">${esc(e.roles.join(", "))}</span>`,
      `<code>${esc(e.action)}</code>`,
      esc(e.target),
      esc(e.detail),
      e.outcome === "done" ? badge("done", "ok") : `${badge("refused", "bad")} ${esc(e.outcome)}`,
    ]);
    return table("Actions taken from the console, newest first",
      ["When", "Who", "Action", "Target", "Detail", "Outcome"], rows, "No action yet.");
  },
};

function draw(name) {
  const body = $(`${name}-body`);
  if (!body) return;
  // Redrawing replaces the view's HTML: keep the keyboard focus where it was.
  const active = document.activeElement;
  const key = active && body.contains(active) ? active.dataset.key : null;
  body.innerHTML = render[name](state.sections[name]);
  if (key) {
    const again = body.querySelector(`[data-key="${CSS.escape(key)}"]`);
    if (again) again.focus({ preventScroll: true });
  }
}

function show(view) {
  if (!VIEWS.includes(view)) view = "services";
  for (const name of VIEWS) $(name).hidden = name !== view;
  for (const a of document.querySelectorAll("#nav a")) {
    if (a.getAttribute("href") === `#${view}`) a.setAttribute("aria-current", "page");
    else a.removeAttribute("aria-current");
  }
  document.title = `${view[0].toUpperCase()}${view.slice(1)} · Essaim console`;
  draw(view);
  window.scrollTo(0, 0);
}

function currentView() {
  const view = location.hash.slice(1);
  return VIEWS.includes(view) ? view : "services";
}

// ---------------------------------------------------------------- talking to the gateway

function toast(text, kind) {
  const el = $("toast");
  el.textContent = text;
  el.className = `toast show ${kind || ""}`;
  clearTimeout(toast.timer);
  toast.timer = setTimeout(() => { el.className = "toast"; }, 6000);
}

async function problemText(resp) {
  try {
    const doc = await resp.json();
    return doc.detail || doc.title || `${resp.status}`;
  } catch (e) {
    return `${resp.status} ${resp.statusText}`;
  }
}

async function send(method, url, body) {
  const headers = { "Accept": "application/json" };
  if (body !== undefined) headers["Content-Type"] = "application/json";
  if (state.session && state.session.csrf) headers["X-CSRF-Token"] = state.session.csrf;
  const resp = await fetch(url, {
    method, headers, credentials: "same-origin",
    body: body === undefined ? undefined : JSON.stringify(body),
  });
  if (resp.status === 401) {
    loggedOut("Your session has ended: log in again.");
    throw new Error("not logged in");
  }
  return resp;
}

async function login(event) {
  event.preventDefault();
  const error = $("login-error");
  error.textContent = "";
  const username = $("username").value.trim();
  const password = $("password").value;
  if (!username || !password) {
    error.textContent = "Give a user name and a password.";
    return;
  }
  const resp = await fetch(SESSION, {
    method: "POST", credentials: "same-origin",
    headers: { "Content-Type": "application/json", "Accept": "application/json" },
    body: JSON.stringify({ username, password }),
  });
  if (!resp.ok) {
    error.textContent = resp.status === 401 || resp.status === 400
      ? "Wrong user name or password." : await problemText(resp);
    $("password").select();
    return;
  }
  $("password").value = "";
  state.session = await resp.json();
  await start();
}

async function logout() {
  try {
    await fetch(SESSION, {
      method: "DELETE", credentials: "same-origin",
      headers: { "X-CSRF-Token": (state.session && state.session.csrf) || "" },
    });
  } finally {
    loggedOut("You are logged out.");
  }
}

function loggedOut(note) {
  if (state.source) state.source.close();
  state.source = null;
  state.session = null;
  state.me = null;
  state.sections = {};
  $("nav").hidden = true;
  $("who").hidden = true;
  for (const name of VIEWS) $(name).hidden = true;
  $("login-view").hidden = false;
  $("login-note").textContent = note || "";
  $("username").focus();
}

async function start() {
  const me = await send("GET", "api/me");
  state.me = me.ok ? await me.json() : null;
  $("login-view").hidden = true;
  $("nav").hidden = false;
  $("who").hidden = false;
  const roles = state.session.roles || (state.me && state.me.roles) || [];
  $("user").textContent = `${state.session.user} (${roles.join(", ") || "no role"})`;
  if (state.me && !state.me.actions) {
    toast("You can look around; actions need the admin role.");
  }
  show(currentView());
  $("main").focus({ preventScroll: true });
  follow();
}

function follow() {
  if (state.source) state.source.close();
  const source = new EventSource("api/stream");
  state.source = source;
  const live = $("live");
  source.onopen = () => { live.textContent = "live"; live.className = "live on"; };
  source.onerror = async () => {
    live.textContent = "reconnecting";
    live.className = "live off";
    // A closed stream after a 401 is the session gone; otherwise the
    // EventSource reconnects by itself (the stream ends with each relayed token).
    let status = 0;
    try {
      status = (await fetch(SESSION, { credentials: "same-origin" })).status;
    } catch (e) {
      status = 0;  // the gateway is away: try again
    }
    if (status === 401) loggedOut("Your session has ended: log in again.");
    else if (source.readyState === EventSource.CLOSED && state.source === source) setTimeout(follow, 2000);
  };
  for (const name of ["hello", ...VIEWS]) {
    source.addEventListener(name, (event) => {
      const message = JSON.parse(event.data);
      state.skew = message.now - Date.now() / 1000;
      if (name === "hello") { state.instance = message.doc.instance; return; }
      state.sections[name] = message.doc;
      if (currentView() === name) draw(name);
    });
  }
}

// ---------------------------------------------------------------- actions

function confirmDialog(title, text, okLabel) {
  const dialog = $("confirm");
  $("confirm-title").textContent = title;
  $("confirm-text").textContent = text;
  $("confirm-ok").textContent = okLabel;
  return new Promise((resolve) => {
    dialog.addEventListener("close", () => resolve(dialog.returnValue === "ok"), { once: true });
    dialog.returnValue = "";
    dialog.showModal();
    $("confirm-ok").focus();
  });
}

async function act(button) {
  const d = button.dataset;
  let title, text, ok, url, body, done;
  if (d.action === "status") {
    const out = d.status === "OUT_OF_SERVICE";
    title = out ? `Take ${d.id} out of service?` : `Put ${d.id} back in service?`;
    text = out
      ? `The gateway and the services' calls stop sending ${d.service}'s instance ${d.id} requests; those in flight finish.`
      : `${d.service}'s instance ${d.id} takes requests again.`;
    ok = out ? "Take out of service" : "Put back in service";
    url = `api/services/${encodeURIComponent(d.service)}/instances/${encodeURIComponent(d.id)}/status`;
    body = { status: d.status };
    done = () => `${d.id} is ${d.status}.`;
  } else if (d.action === "rollback") {
    title = `Roll ${d.doc} back to v${d.version}?`;
    text = `configsvc writes version ${d.version}'s content as a new version of ${d.doc}; every component that reads it applies it at once.`;
    ok = `Roll back to v${d.version}`;
    url = `api/config/${encodeURIComponent(d.doc)}/rollback`;
    body = { version: Number(d.version) };
    done = (r) => `${d.doc} is at v${r.version} (the content of v${d.version}).`;
  } else if (d.action === "replay" || d.action === "discard") {
    const replay = d.action === "replay";
    title = replay ? `Replay dead letter ${d.id}?` : `Discard dead letter ${d.id}?`;
    text = replay
      ? `${d.group} gets the event again, with a fresh count of deliveries.`
      : `The event is deleted for good: ${d.group} will never handle it.`;
    ok = replay ? "Replay" : "Discard";
    url = `api/events/${encodeURIComponent(d.group)}/dead/${d.action}`;
    body = { ids: [d.id] };
    done = (r) => replay ? `${plural(r.replayed, "dead letter")} replayed to ${d.group}.`
      : `${plural(r.discarded, "dead letter")} discarded.`;
  } else {
    return;
  }
  // The view may be redrawn meanwhile (it is live): find the button again by its key.
  const again = () => document.querySelector(`[data-key="${CSS.escape(d.key)}"]`) || button;
  if (!(await confirmDialog(title, text, ok))) {
    again().focus();
    return;
  }
  try {
    const resp = await send("POST", url, body);
    if (resp.ok) toast(done(await resp.json()), "ok");
    else toast(`Not done: ${await problemText(resp)}`, "bad");
  } catch (e) {
    if (state.session) toast(`Not done: ${e.message}`, "bad");
  }
  const focus = again();
  if (document.body.contains(focus)) focus.focus();
}

async function configAction(button) {
  const d = button.dataset;
  const sel = state.config;
  if (d.action === "pick") {
    if (sel.doc !== d.doc) Object.assign(sel, { doc: d.doc, from: null, to: null, diff: null, content: null });
    draw("config");
    return;
  }
  if (d.action === "show") {
    const resp = await send("GET", `api/config/${encodeURIComponent(d.doc)}/versions/${d.version}`);
    if (!resp.ok) { toast(await problemText(resp), "bad"); return; }
    sel.content = await resp.json();
    draw("config");
  }
}

async function diff(form) {
  const sel = state.config;
  sel.from = Number(form.elements.from.value);
  sel.to = Number(form.elements.to.value);
  const doc = form.dataset.doc;
  const resp = await send("GET", `api/config/${encodeURIComponent(doc)}/diff?from=${sel.from}&to=${sel.to}`);
  if (!resp.ok) { toast(await problemText(resp), "bad"); return; }
  sel.diff = await resp.json();
  draw("config");
}

// ---------------------------------------------------------------- start

document.addEventListener("DOMContentLoaded", async () => {
  $("login").addEventListener("submit", login);
  $("logout").addEventListener("click", logout);
  window.addEventListener("hashchange", () => {
    if (state.session) {
      show(currentView());
      $("main").focus({ preventScroll: true });
    }
  });
  $("main").addEventListener("click", (event) => {
    const button = event.target.closest("button[data-action]");
    if (!button) return;
    if (["pick", "show"].includes(button.dataset.action)) configAction(button);
    else act(button);
  });
  $("main").addEventListener("submit", (event) => {
    if (event.target.classList.contains("diff-form")) {
      event.preventDefault();
      diff(event.target);
    }
  });
  $("main").addEventListener("change", (event) => {
    if (event.target.id === "diff-from") state.config.from = Number(event.target.value);
    if (event.target.id === "diff-to") state.config.to = Number(event.target.value);
  });
  // Ages (uptime, last heartbeat) tick every second without a new event.
  setInterval(() => { if (state.session && currentView() === "services") draw("services"); }, 1000);
  const resp = await fetch(SESSION, { credentials: "same-origin", headers: { "Accept": "application/json" } });
  if (resp.ok) {
    state.session = await resp.json();
    await start();
  } else {
    loggedOut("");
  }
});
