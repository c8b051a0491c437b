// The tenant's Alertmanager page: alert groups, silences and the silence form, drawn from the
// tenant's API v2. Every element is built with createElement/textContent: label values, comments
// and error messages are never parsed as HTML.
"use strict";

(function () {
  const API = document.body.dataset.api;
  const REFRESH_MS = 15000;
  let silenceState = "active";
  let silences = [];

  function el(tag, attrs, ...children) {
    const e = document.createElement(tag);
    for (const [k, v] of Object.entries(attrs || {})) {
      if (k === "class") e.className = v;
      else if (k.startsWith("data-")) e.setAttribute(k, v);
      else e[k] = v;
    }
    for (const c of children) {
      if (c === null || c === undefined) continue;
      e.append(c instanceof Node ? c : String(c));
    }
    return e;
  }

  // The API's errors: a JSON string (Alertmanager), {"message": ...} (spec checks) or plain text
  // (Mimir's own refusals).
  async function call(method, path, body) {
    const opts = {method: method, headers: {"Accept": "application/json"}};
    if (body !== undefined) {
      opts.body = JSON.stringify(body);
      opts.headers["Content-Type"] = "application/json";
    }
    const resp = await fetch(API + path, opts);
    const text = await resp.text();
    let data = text;
    try { data = text ? JSON.parse(text) : null; } catch (e) { /* plain text */ }
    if (!resp.ok) {
      const msg = typeof data === "string" ? data : (data && data.message) || text;
      throw new Error(resp.status + ": " + String(msg).trim());
    }
    return data;
  }

  function labelChip(name, value, cls) {
    return el("span", {class: "label " + (cls || "")}, name + "=" + JSON.stringify(value));
  }

  function time(s) {
    if (!s) return "";
    const d = new Date(s);
    return isNaN(d) ? s : d.toISOString().replace(/\.000Z$/, "Z");
  }

  function sortedEntries(obj) {
    return Object.entries(obj || {}).sort((a, b) => (a[0] < b[0] ? -1 : a[0] > b[0] ? 1 : 0));
  }

  // ---- alerts -----------------------------------------------------------------------------

  function renderAlert(a, groupLabels) {
    const state = (a.status && a.status.state) || "unprocessed";
    const labels = el("div", {class: "labels"});
    for (const [k, v] of sortedEntries(a.labels)) {
      labels.append(labelChip(k, v, k in groupLabels ? "group" : ""), " ");
    }
    const head = el("div", {class: "alert-head"},
      el("span", {class: "state state-" + state}, state),
      " since ", el("time", {}, time(a.startsAt)));
    const li = el("li", {class: "alert", "data-fingerprint": a.fingerprint || "",
                         "data-state": state}, head, labels);
    const st = a.status || {};
    if (st.silencedBy && st.silencedBy.length) {
      li.append(el("div", {class: "muted-by"}, "silenced by " + st.silencedBy.join(", ")));
    }
    if (st.inhibitedBy && st.inhibitedBy.length) {
      li.append(el("div", {class: "muted-by"}, "inhibited by " + st.inhibitedBy.join(", ")));
    }
    const ann = sortedEntries(a.annotations);
    if (ann.length) {
      const dl = el("dl", {class: "annotations"});
      for (const [k, v] of ann) dl.append(el("dt", {}, k), el("dd", {}, v));
      li.append(dl);
    }
    if (a.generatorURL) {
      let url = null;
      try { url = new URL(a.generatorURL); } catch (e) { /* not a URL: not a link */ }
      if (url && (url.protocol === "http:" || url.protocol === "https:")) {
        li.append(el("a", {class: "source", href: url.href, rel: "noopener noreferrer"}, "source"));
      }
    }
    const silence = el("button", {type: "button", class: "silence-alert"}, "Silence");
    silence.addEventListener("click", () => prefillFromAlert(a.labels || {}));
    li.append(silence);
    return li;
  }

  async function loadAlerts() {
    const box = document.getElementById("groups");
    const err = document.getElementById("alert-error");
    const all = document.getElementById("show-silenced").checked;
    const q = all ? "" : "?silenced=false&inhibited=false";
    let groups;
    try {
      groups = await call("GET", "/alerts/groups" + q);
      err.textContent = "";
    } catch (e) {
      err.textContent = "Loading alerts failed: " + e.message;
      return;
    }
    const out = [];
    for (const g of groups || []) {
      const gl = g.labels || {};
      const title = el("div", {class: "group-head"},
        el("span", {class: "receiver"}, "receiver: " + ((g.receiver && g.receiver.name) || "")));
      const keys = sortedEntries(gl);
      if (keys.length) {
        for (const [k, v] of keys) title.append(" ", labelChip(k, v, "group"));
      } else {
        title.append(" ", el("span", {class: "nogroup"}, "(no grouping labels)"));
      }
      title.append(" ", el("span", {class: "count"}, (g.alerts || []).length + " alert(s)"));
      const list = el("ul", {class: "alerts"});
      for (const a of g.alerts || []) list.append(renderAlert(a, gl));
      out.push(el("article", {class: "group"}, title, list));
    }
    box.replaceChildren(...(out.length ? out : [el("p", {class: "empty"}, "No alerts.")]));
  }

  // ---- silences ---------------------------------------------------------------------------

  function matcherText(m) {
    const op = (m.isEqual === false ? "!" : "=") + (m.isRegex ? "~" : "");
    return m.name + (op === "=" ? "=" : op === "!" ? "!=" : op) + JSON.stringify(m.value);
  }

  function renderSilence(s) {
    const matchers = el("div", {class: "labels"});
    for (const m of s.matchers || []) matchers.append(el("span", {class: "label matcher"}, matcherText(m)), " ");
    const li = el("li", {class: "silence", "data-id": s.id, "data-state": s.status.state},
      el("div", {class: "silence-head"}, el("code", {class: "id"}, s.id), " ",
        el("span", {class: "state state-" + s.status.state}, s.status.state)),
      matchers,
      el("div", {class: "times"}, time(s.startsAt) + " \u2192 " + time(s.endsAt)),
      el("div", {class: "who"}, "by ", el("b", {}, s.createdBy), ": ", el("span", {class: "comment"}, s.comment)));
    if (s.status.state !== "expired") {
      const b = el("button", {type: "button", class: "expire"}, "Expire");
      b.addEventListener("click", () => expire(s.id, b));
      li.append(b);
    }
    return li;
  }

  function renderSilences() {
    const counts = {active: 0, pending: 0, expired: 0};
    for (const s of silences) counts[s.status.state] = (counts[s.status.state] || 0) + 1;
    for (const b of document.querySelectorAll("#silence-tabs button")) {
      b.classList.toggle("selected", b.dataset.state === silenceState);
      b.querySelector(".count").textContent = "(" + (counts[b.dataset.state] || 0) + ")";
    }
    const shown = silences.filter((s) => s.status.state === silenceState);
    const box = document.getElementById("silences");
    box.replaceChildren(shown.length ? el("ul", {class: "silences"}, ...shown.map(renderSilence))
                                     : el("p", {class: "empty"}, "No " + silenceState + " silences."));
  }

  async function loadSilences() {
    const err = document.getElementById("silence-error");
    try {
      silences = (await call("GET", "/silences")) || [];
      err.textContent = "";
    } catch (e) {
      err.textContent = "Loading silences failed: " + e.message;
      return;
    }
    renderSilences();
  }

  async function expire(id, button) {
    button.disabled = true;
    const err = document.getElementById("silence-error");
    try {
      await call("DELETE", "/silence/" + encodeURIComponent(id));
      err.textContent = "";
    } catch (e) {
      err.textContent = "Expiring " + id + " failed: " + e.message;
      button.disabled = false;
      return;
    }
    await refresh();
  }

  // ---- the silence form -------------------------------------------------------------------

  const OPS = ["=", "!=", "=~", "!~"];

  function addMatcher(name, op, value) {
    const sel = el("select", {class: "m-op"});
    for (const o of OPS) sel.append(el("option", {value: o, selected: o === (op || "=")}, o));
    const del = el("button", {type: "button", class: "m-remove", title: "remove"}, "\u00d7");
    const row = el("div", {class: "matcher-row"},
      el("input", {class: "m-name", placeholder: "name", value: name || ""}), sel,
      el("input", {class: "m-value", placeholder: "value", value: value || ""}), del);
    del.addEventListener("click", () => {
      row.remove();
      if (!document.querySelector("#matchers .matcher-row")) addMatcher();
    });
    document.getElementById("matchers").append(row);
    return row;
  }

  // Prometheus' duration units, as Alertmanager's UI takes them ("1h30m", "2d", "1w").
  const UNITS = {ms: 1, s: 1000, m: 60000, h: 3600000, d: 86400000, w: 604800000, y: 31536000000};

  function parseDuration(text) {
    const t = text.trim();
    if (!/^(\d+(ms|s|m|h|d|w|y))+$/.test(t)) return null;
    let ms = 0;
    for (const [, n, u] of t.matchAll(/(\d+)(ms|s|m|h|d|w|y)/g)) ms += Number(n) * UNITS[u];
    return ms;
  }

  function formatDuration(ms) {
    if (ms <= 0 || ms % 1000) return "";
    let s = ms / 1000, out = "";
    for (const [u, n] of [["d", 86400], ["h", 3600], ["m", 60], ["s", 1]]) {
      if (s >= n) { out += Math.floor(s / n) + u; s %= n; }
    }
    return out;
  }

  function parseTime(text) {
    const d = new Date(text.trim());
    return text.trim() && !isNaN(d) ? d : null;
  }

  function iso(d) { return d.toISOString().replace(/\.\d{3}Z$/, "Z"); }

  function endFromDuration() {
    const start = parseTime(document.getElementById("startsAt").value);
    const ms = parseDuration(document.getElementById("duration").value);
    if (start && ms) document.getElementById("endsAt").value = iso(new Date(start.getTime() + ms));
  }

  function durationFromEnd() {
    const start = parseTime(document.getElementById("startsAt").value);
    const end = parseTime(document.getElementById("endsAt").value);
    if (start && end) document.getElementById("duration").value = formatDuration(end - start);
  }

  function resetTimes() {
    document.getElementById("startsAt").value = iso(new Date());
    endFromDuration();
  }

  function prefillFromAlert(labels) {
    document.getElementById("matchers").replaceChildren();
    const entries = sortedEntries(labels);
    for (const [k, v] of entries) addMatcher(k, "=", v);
    if (!entries.length) addMatcher();
    resetTimes();
    document.getElementById("new-silence").scrollIntoView();
    document.getElementById("createdBy").focus();
  }

  function formSilence() {
    const matchers = [];
    for (const row of document.querySelectorAll("#matchers .matcher-row")) {
      const name = row.querySelector(".m-name").value.trim();
      const op = row.querySelector(".m-op").value;
      const value = row.querySelector(".m-value").value;
      if (!name && !value) continue;
      if (!name) throw new Error("a matcher needs a label name");
      matchers.push({name: name, value: value, isRegex: op.endsWith("~"), isEqual: !op.startsWith("!")});
    }
    if (!matchers.length) throw new Error("at least one matcher is needed");
    const start = parseTime(document.getElementById("startsAt").value);
    if (!start) throw new Error("the start is not a time (RFC 3339, e.g. 2006-01-02T15:04:05Z)");
    let end = parseTime(document.getElementById("endsAt").value);
    const dur = document.getElementById("duration").value;
    if (!end && dur.trim()) {
      const ms = parseDuration(dur);
      if (!ms) throw new Error("the duration is not a duration (e.g. 1h30m)");
      end = new Date(start.getTime() + ms);
    }
    if (!end) throw new Error("an end or a duration is needed");
    const createdBy = document.getElementById("createdBy").value.trim();
    const comment = document.getElementById("comment").value.trim();
    if (!createdBy) throw new Error("created by is required");
    if (!comment) throw new Error("a comment is required");
    return {matchers: matchers, startsAt: start.toISOString(), endsAt: end.toISOString(),
            createdBy: createdBy, comment: comment};
  }

  async function submit(ev) {
    ev.preventDefault();
    const result = document.getElementById("form-result");
    result.className = "";
    let body;
    try {
      body = formSilence();
    } catch (e) {
      result.className = "error";
      result.textContent = e.message;
      return;
    }
    const button = document.getElementById("create-silence");
    button.disabled = true;
    try {
      const got = await call("POST", "/silences", body);
      result.className = "ok";
      result.textContent = "Created silence " + got.silenceID;
      result.dataset.silenceId = got.silenceID;
      silenceState = new Date(body.startsAt) > new Date() ? "pending" : "active";
      await refresh();
    } catch (e) {
      result.className = "error";
      result.textContent = "Creating the silence failed: " + e.message;
    } finally {
      button.disabled = false;
    }
  }

  // ---- wiring -----------------------------------------------------------------------------

  async function refresh() {
    await Promise.all([loadAlerts(), loadSilences()]);
    document.getElementById("updated").textContent = "updated " + iso(new Date());
    document.body.dataset.loaded = String(Number(document.body.dataset.loaded || 0) + 1);
  }

  document.getElementById("refresh").addEventListener("click", refresh);
  document.getElementById("show-silenced").addEventListener("change", loadAlerts);
  document.getElementById("add-matcher").addEventListener("click", () => addMatcher());
  document.getElementById("duration").addEventListener("input", endFromDuration);
  document.getElementById("endsAt").addEventListener("input", durationFromEnd);
  document.getElementById("startsAt").addEventListener("input", endFromDuration);
  document.getElementById("silence-form").addEventListener("submit", submit);
  for (const b of document.querySelectorAll("#silence-tabs button")) {
    b.addEventListener("click", () => { silenceState = b.dataset.state; renderSilences(); });
  }
  addMatcher();
  resetTimes();
  refresh();
  setInterval(refresh, REFRESH_MS);
})();
