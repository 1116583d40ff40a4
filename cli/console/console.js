// The meshhook_keys console: a page over the admin API (/api/...), no framework, no third party.
// The token lives in this closure only (never in localStorage, a cookie or the URL). Every value
// from the server is put in the page as text (textContent), never as HTML.
"use strict";
(() => {
  let token = null;       // "" when a proxy in front sends it (the server's --jwt-header)
  let me = null;          // {role, operator, admin}
  let stream = null;      // the AbortController of the running progress stream
  const $ = (id) => document.getElementById(id);

  function el(tag, attrs, ...children) {
    const e = document.createElement(tag);
    for (const [k, v] of Object.entries(attrs || {})) {
      if (k === "class") e.className = v;
      else if (k === "text") e.textContent = v;
      else if (k.startsWith("on")) e.addEventListener(k.slice(2), v);
      else if (v === true) e.setAttribute(k, "");
      else if (v !== false && v !== null && v !== undefined) e.setAttribute(k, v);
    }
    for (const c of children) if (c !== null && c !== undefined) e.append(c);
    return e;
  }

  class ApiError extends Error {
    constructor(status, body) {
      super(body && body.error ? body.error : `HTTP ${status}`);
      this.status = status;
      this.sqlstate = body && body.sqlstate;
    }
  }

  const auth = () => (token ? { Authorization: `Bearer ${token}` } : {});

  async function api(method, path, body) {
    const init = { method, headers: auth() };
    if (body !== undefined) {
      init.headers["Content-Type"] = "application/json";
      init.body = JSON.stringify(body);
    }
    const r = await fetch(path, init);
    const text = await r.text();
    let data = null;
    try { data = text ? JSON.parse(text) : null; } catch (_) { data = { error: text }; }
    if (!r.ok) throw new ApiError(r.status, data);
    return data;
  }

  function errorText(e) {
    return e.sqlstate ? `${e.message} (SQLSTATE ${e.sqlstate})` : e.message;
  }

  // A write control: disabled, with the reason, unless the token's role may use it.
  function writeButton(label, cls, onclick) {
    const can = me && me.operator;
    const b = el("button", { class: cls || "", "data-write": true, onclick, disabled: !can, text: label });
    if (!can) b.title = `requires meshhook_keys_operator (your role: ${me ? me.role : "?"})`;
    return b;
  }

  function human(seconds) {
    if (seconds === null || seconds === undefined || isNaN(seconds)) return "";
    const s = Math.abs(seconds), sign = seconds < 0 ? "-" : "";
    if (s < 90) return `${sign}${Math.round(s)} s`;
    if (s < 5400) return `${sign}${Math.round(s / 60)} min`;
    if (s < 172800) return `${sign}${Math.round(s / 3600)} h`;
    return `${sign}${Math.round(s / 86400)} d`;
  }
  const seconds = (iso) => (iso ? (Date.parse(iso) - Date.now()) / 1000 : null);
  // a PostgreSQL interval as JSON ("90 days", "1 day 02:00:00", "02:00:00") in days
  function intervalDays(v) {
    if (!v) return null;
    let days = 0;
    const d = /(-?\d+) days?/.exec(v); if (d) days += +d[1];
    const m = /(-?\d+) mons?/.exec(v); if (m) days += 30 * +m[1];
    const y = /(-?\d+) years?/.exec(v); if (y) days += 365 * +y[1];
    const t = /(\d+):(\d+):(\d+)/.exec(v); if (t) days += (+t[1] * 3600 + +t[2] * 60 + +t[3]) / 86400;
    return days;
  }

  function table(columns, rows, opts) {
    opts = opts || {};
    const thead = el("tr");
    const tbody = el("tbody");
    let sortKey = opts.sortKey, dir = 1;
    function render() {
      const sorted = [...rows];
      if (sortKey) {
        const col = columns.find((c) => c.key === sortKey);
        const val = col.sort || ((r) => r[col.key]);
        sorted.sort((a, b) => {
          const x = val(a), y = val(b);
          if (x === y) return 0;
          if (x === null || x === undefined) return 1;
          if (y === null || y === undefined) return -1;
          return (x < y ? -1 : 1) * dir;
        });
      }
      tbody.replaceChildren(...sorted.map((r) => el("tr", { "data-row": opts.rowId ? opts.rowId(r) : null },
        ...columns.map((c) => el("td", {}, c.render ? c.render(r) : String(r[c.key] ?? ""))))));
      thead.querySelectorAll("th").forEach((th) => {
        th.classList.remove("sorted-asc", "sorted-desc");
        if (th.dataset.key === sortKey) th.classList.add(dir > 0 ? "sorted-asc" : "sorted-desc");
      });
    }
    for (const c of columns) {
      const th = el("th", { text: c.label, "data-key": c.key, class: opts.sortable ? "sortable" : "" });
      if (opts.sortable) th.addEventListener("click", () => {
        dir = sortKey === c.key ? -dir : 1; sortKey = c.key; render();
      });
      thead.append(th);
    }
    render();
    return el("table", { id: opts.id || null }, el("thead", {}, thead), tbody);
  }

  function view(title, ...children) {
    const v = $("view");
    v.hidden = false;
    v.replaceChildren(el("h2", { text: title }), ...children);
    return v;
  }
  const failure = (e) => el("p", { class: "error", role: "alert", text: errorText(e) });

  // ---- pages -------------------------------------------------------------------------------
  async function keyrings() {
    let rows;
    try { rows = await api("GET", "/api/keyrings"); } catch (e) { return view("Keyrings", failure(e)); }
    const usage = (r) => (r.max_encryptions ? r.encryptions / r.max_encryptions : 0);
    view("Keyrings", table([
      { key: "keyring", label: "Keyring", render: (r) => el("a", { href: `#/keyring/${encodeURIComponent(r.keyring)}`, text: r.keyring }) },
      { key: "active_version", label: "Active version" },
      { key: "activated_at", label: "Key age", sort: (r) => -Date.parse(r.activated_at || 0),
        render: (r) => (r.activated_at ? human(-seconds(r.activated_at)) : "") },
      { key: "rotation_interval", label: "Policy", sort: (r) => intervalDays(r.rotation_interval),
        render: (r) => (r.rotation_interval ? `every ${r.rotation_interval}` : "no schedule") },
      { key: "next_rotation_at", label: "Next rotation", sort: (r) => Date.parse(r.next_rotation_at || 0) || null,
        render: (r) => {
          if (!r.next_rotation_at) return "";
          const s = seconds(r.next_rotation_at);
          return el("span", {}, s < 0 ? el("span", { class: "badge bad", text: "overdue" }) : "", ` ${human(s)}`);
        } },
      { key: "encryptions", label: "Encryptions / limit", sort: usage,
        render: (r) => el("span", {}, `${r.encryptions} / ${r.max_encryptions} `,
          usage(r) >= 0.8 ? el("span", { class: "badge warn", "data-badge": "limit", text: `${Math.floor(usage(r) * 100)}% of limit` }) : "") },
      { key: "tenant", label: "Tenant" },
      { key: "user_held", label: "User-held", render: (r) => (r.user_held ? "yes" : "") },
    ], rows, { sortable: true, sortKey: "keyring", id: "keyrings", rowId: (r) => r.keyring }));
  }

  async function keyring(name, notice) {
    let k;
    try { k = await api("GET", `/api/keyrings/${encodeURIComponent(name)}`); } catch (e) { return view(`Keyring ${name}`, failure(e)); }
    const msg = el("p", { class: "error", role: "alert", id: "keyring-error" });
    const ok = el("p", { class: "muted", id: "keyring-ok", text: notice || "" });
    // (the page is drawn again after a change, with its notice)
    const done = (text) => keyring(name, text);
    const act = async (f) => { try { await f(); } catch (e) { ok.textContent = ""; msg.textContent = errorText(e); } };

    // policy: rotate every [N] days and after [M] encryptions
    const days = el("input", { id: "policy-days", type: "number", min: "1", step: "1", size: "5",
      value: k.rotation_interval ? String(Math.round(intervalDays(k.rotation_interval))) : "" });
    const maxEnc = el("input", { id: "policy-max", type: "number", min: "1", step: "1", size: "12",
      value: k.max_encryptions_set ? String(k.max_encryptions) : "" });
    const policy = el("div", { class: "row" }, "Rotate every", days, "days and after", maxEnc, "encryptions",
      writeButton("Save policy", "", () => act(async () => {
        await api("PUT", `/api/keyrings/${encodeURIComponent(name)}/policy`, {
          rotation_interval: days.value ? `${days.value} days` : null,
          max_encryptions: maxEnc.value ? Number(maxEnc.value) : null,
        });
        await done("Policy saved.");
      })), el("span", { class: "muted", text: "(empty: no scheduled rotation / the server's default limit)" }));

    // rotate, with a confirmation
    const reason = el("input", { id: "rotate-reason", placeholder: "reason (recorded in the audit log)", size: "40" });
    const confirmPanel = el("div", { class: "panel", id: "rotate-confirm", hidden: true },
      el("p", { text: `Make a new version of ${name} active now? Old versions keep decrypting; re-encryption moves every registered row to it.` }),
      el("div", { class: "row" }, reason,
        writeButton("Rotate now", "", () => act(async () => {
          const r = await api("POST", `/api/keyrings/${encodeURIComponent(name)}/rotate`, reason.value ? { reason: reason.value } : {});
          await done(`Version ${r.version} is active.`);
        })),
        el("button", { class: "secondary", onclick: () => { confirmPanel.hidden = true; }, text: "Cancel" })));
    const rotate = writeButton("Rotate…", "", () => { confirmPanel.hidden = false; reason.focus(); });

    // versions, with retire and destroy
    const destroyPanel = el("div", { class: "panel", id: "destroy-confirm", hidden: true });
    function askDestroy(v) {
      const typed = el("input", { id: "destroy-name", placeholder: name, size: "30" });
      const go = writeButton(`Destroy version ${v}`, "danger", () => act(async () => {
        await api("POST", `/api/keyrings/${encodeURIComponent(name)}/versions/${v}/destroy`, { confirm: typed.value });
        await done(`Version ${v} destroyed.`);
      }));
      go.id = "destroy-go";
      go.disabled = true;
      typed.addEventListener("input", () => { go.disabled = !(me.operator && typed.value === name); });
      destroyPanel.replaceChildren(
        el("p", { text: `Destroying version ${v} erases its key: whatever it still encrypts is lost for good. Type the keyring's name to confirm.` }),
        el("div", { class: "row" }, typed, go, el("button", { class: "secondary", onclick: () => { destroyPanel.hidden = true; }, text: "Cancel" })));
      destroyPanel.hidden = false;
      typed.focus();
    }
    const versions = table([
      { key: "version", label: "Version" },
      { key: "state", label: "State", render: (r) => el("span", { class: `badge ${r.state === "active" ? "ok" : r.state === "destroyed" ? "bad" : ""}`, text: r.state }) },
      { key: "created_at", label: "Created" },
      { key: "activated_at", label: "Activated" },
      { key: "retired_at", label: "Retired" },
      { key: "destroy_at", label: "Destroy at" },
      { key: "actions", label: "", render: (r) => el("span", {},
          r.state === "decrypt_only" ? writeButton("Retire", "secondary", () => act(async () => {
            await api("POST", `/api/keyrings/${encodeURIComponent(name)}/versions/${r.version}/retire`, {});
            await done(`Version ${r.version} retired.`);
          })) : "",
          r.state === "retired" ? writeButton("Destroy…", "danger", () => askDestroy(r.version)) : "") },
    ], k.versions, { id: "versions", rowId: (r) => `v${r.version}` });

    // re-encryption progress, and pausing the scheduler's re-encryption
    const bar = el("div", { id: "progress-bar" });
    const progressText = el("span", { id: "progress-text", class: "muted", text: "" });
    const progress = el("div", { id: "progress" }, el("div", { class: "progress" }, bar), progressText);
    const base = `/api/keyrings/${encodeURIComponent(name)}/reencrypt`;
    const pause = k.reencrypt_paused
      ? writeButton("Resume re-encryption", "secondary", () => act(async () => {
          await api("POST", `${base}/resume`, {});
          await done("Re-encryption resumed.");
        }))
      : writeButton("Pause re-encryption", "secondary", () => act(async () => {
          await api("POST", `${base}/pause`, {});
          await done("Re-encryption paused: the scheduler skips this keyring until it is resumed.");
        }));
    pause.id = "pause-toggle";
    const pauseRow = el("div", { class: "row" }, pause,
      k.reencrypt_paused ? el("span", { class: "badge warn", id: "paused-badge", text: "paused" }) : "");

    view(`Keyring ${name}`,
      el("p", { class: "muted", text: `Active version ${k.active_version ?? "none"}${k.tenant ? `, tenant ${k.tenant}` : ""}${k.user_held ? ", user-held" : ""}; ${k.encryptions} encryptions of ${k.max_encryptions}.` }),
      msg, ok,
      el("h3", { text: "Rotation policy" }), policy,
      el("h3", { text: "Rotate" }), el("div", { class: "row" }, rotate), confirmPanel,
      el("h3", { text: "Re-encryption" }), pauseRow, progress,
      el("h3", { text: "Versions" }), versions, destroyPanel);
    watch(name);
  }

  // Follow the keyring's re-encryption from the server's events (fetch, so the token goes in a
  // header: EventSource cannot send one).
  async function watch(name) {
    if (stream) stream.abort();
    const ctl = new AbortController();
    stream = ctl;
    const show = (p) => {
      const bar = $("progress-bar"), text = $("progress-text");
      if (!bar || !p) return;
      if (p.job_id === null) { text.textContent = "No re-encryption job yet."; return; }
      const pct = p.rows_total > 0 ? Math.floor((100 * p.rows_done) / p.rows_total) : 100;
      bar.style.width = `${pct}%`;
      bar.parentElement.setAttribute("aria-valuenow", String(pct));
      const rate = p.rate ? `, ${Math.round(p.rate)} rows/s` : "";
      const eta = p.eta_seconds !== null && p.state === "running" ? `, ${human(p.eta_seconds)} left` : "";
      text.textContent = `${pct}% — ${p.rows_done} of ${p.rows_total} rows to version ${p.target_version} (${p.state})${rate}${eta}${p.rows_failed ? `, ${p.rows_failed} failed` : ""}`;
      text.dataset.percent = String(pct);
      text.dataset.state = p.state || "";
    };
    try {
      const r = await fetch(`/api/keyrings/${encodeURIComponent(name)}/reencrypt/events`, {
        headers: auth(), signal: ctl.signal });
      if (!r.ok) { const t = $("progress-text"); if (t) t.textContent = `Progress unavailable (HTTP ${r.status})`; return; }
      const reader = r.body.getReader();
      const dec = new TextDecoder();
      let buf = "";
      for (;;) {
        const { value, done } = await reader.read();
        if (done) break;
        buf += dec.decode(value, { stream: true });
        let i;
        while ((i = buf.indexOf("\n\n")) >= 0) {
          const block = buf.slice(0, i); buf = buf.slice(i + 2);
          let ev = "message", data = "";
          for (const line of block.split("\n")) {
            if (line.startsWith("event:")) ev = line.slice(6).trim();
            else if (line.startsWith("data:")) data += line.slice(5).trim();
          }
          if (data && ev === "progress") show(JSON.parse(data));
        }
      }
    } catch (e) {
      if (e.name !== "AbortError") { const t = $("progress-text"); if (t) t.textContent = `Progress stream ended: ${e.message}`; }
    }
  }

  async function audit(filters, before) {
    const q = new URLSearchParams({ limit: "50" });
    for (const [k, v] of Object.entries(filters)) if (v) q.set(k, v);
    if (before) q.set("before", before);
    const form = el("div", { class: "row" });
    const inputs = {};
    for (const [k, label] of [["keyring", "Keyring"], ["action", "Action"]]) {
      inputs[k] = el("input", { id: `audit-${k}`, placeholder: label, value: filters[k] || "", size: "16" });
      form.append(inputs[k]);
    }
    inputs.outcome = el("select", { id: "audit-outcome" }, ...["", "ok", "refused", "failed"].map((o) =>
      el("option", { value: o, text: o || "any outcome", selected: (filters.outcome || "") === o })));
    form.append(inputs.outcome, el("button", { id: "audit-apply", text: "Filter", onclick: () => audit(
      { keyring: inputs.keyring.value, action: inputs.action.value, outcome: inputs.outcome.value }) }));
    let page;
    try { page = await api("GET", `/api/audit?${q}`); } catch (e) { return view("Audit log", form, failure(e)); }
    const more = page.next_before
      ? el("button", { class: "secondary", id: "audit-older", text: "Older", onclick: () => audit(filters, page.next_before) }) : null;
    view("Audit log", form, table([
      { key: "id", label: "#" }, { key: "at", label: "At" }, { key: "action", label: "Action" },
      { key: "outcome", label: "Outcome", render: (r) => el("span", { class: `badge ${r.outcome === "ok" ? "ok" : "bad"}`, text: r.outcome }) },
      { key: "keyring", label: "Keyring" }, { key: "version", label: "Version" },
      { key: "role_name", label: "Role" }, { key: "actor", label: "Session user" },
      { key: "sub", label: "Subject", render: (r) => (r.detail && r.detail.jwt && r.detail.jwt.sub) || "" },
      { key: "reason", label: "Reason" },
    ], page.rows, { id: "audit", rowId: (r) => String(r.id) }), el("div", { class: "row" }, more));
  }

  async function health() {
    let rows;
    try { rows = await api("GET", "/api/health"); } catch (e) { return view("Health", failure(e)); }
    view("Health", table([
      { key: "item", label: "Item" },
      { key: "status", label: "Status", render: (r) => el("span", { class: `badge ${r.status === "ok" ? "ok" : r.status === "warning" ? "warn" : "bad"}`, text: r.status }) },
      { key: "detail", label: "Detail" },
    ], rows, { id: "health" }));
  }

  // ---- routing and sign-in -------------------------------------------------------------------
  function route() {
    if (token === null) return;
    if (stream) { stream.abort(); stream = null; }
    const h = location.hash || "#/keyrings";
    document.querySelectorAll("nav a").forEach((a) => a.classList.toggle("current", h.startsWith(a.getAttribute("href"))));
    let m;
    if ((m = /^#\/keyring\/(.+)$/.exec(h))) return keyring(decodeURIComponent(m[1]));
    if (h.startsWith("#/audit")) return audit({});
    if (h.startsWith("#/health")) return health();
    return keyrings();
  }

  function signedIn(viaProxy) {
    $("token").value = "";
    $("signin").hidden = true;
    $("nav").hidden = false;
    // (behind a proxy that sends the token, signing out is the proxy's business)
    $("signout").hidden = viaProxy;
    $("who").textContent = `${me.role}${me.operator ? "" : " (read-only)"}${viaProxy ? " (signed in by the proxy)" : ""}`;
    route();
  }

  async function signIn(ev) {
    ev.preventDefault();
    const t = $("token").value.trim();
    $("signin-error").textContent = "";
    if (!t) { $("signin-error").textContent = "Paste a token first."; return; }
    token = t;
    try {
      me = await api("GET", "/api/whoami");
    } catch (e) {
      token = null;
      $("signin-error").textContent = `Sign-in refused: ${errorText(e)}`;
      return;
    }
    signedIn(false);
  }

  // Behind a proxy that sends the token in a header the server was told to read (--jwt-header),
  // the page is signed in without a token of its own.
  async function proxySignIn() {
    token = "";
    try {
      me = await api("GET", "/api/whoami");
    } catch (_) {
      token = null;
      return;
    }
    signedIn(true);
  }

  function signOut() {
    token = null; me = null;
    if (stream) { stream.abort(); stream = null; }
    $("view").replaceChildren(); $("view").hidden = true;
    $("nav").hidden = true; $("signout").hidden = true; $("who").textContent = "";
    $("signin").hidden = false;
    location.hash = "";
  }

  document.addEventListener("DOMContentLoaded", () => {
    $("signin-form").addEventListener("submit", signIn);
    $("signout").addEventListener("click", signOut);
    window.addEventListener("hashchange", route);
    proxySignIn();
  });
})();
