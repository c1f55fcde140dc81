"use strict";
// Rookery web console. A client of the management API (POST /api) and nothing else: every
// request carries the app token the user typed (kept in sessionStorage, so it goes away
// with the tab). Pages are built with DOM calls; data only ever lands in text nodes and
// properties, never in innerHTML, so a group or user name cannot inject markup.

const TOKEN_KEY = "rookery.token";
const ACTIONS = ["send", "recv", "pub", "sub", "list"];
const ADMIN_FLAGS = ["owner", "admin", "modify", "remove", "adduser", "remuser",
  "addadmin", "remadmin", "remowner"];
// What each permission value means, per action (SPEC §4).
const LEVELS = {
  send: ["members", "selected members", "anyone (public room)"],
  recv: ["members", "selected members", "round-robin"],
  pub: ["members", "selected members", "anyone"],
  sub: ["members", "selected members", "anyone"],
  list: ["members", "selected members", "anyone"],
};
const FLAG_NOSTORE = 0x40;
const FLAG_LOOPBACK = 0x80;
const YEAR_SECS = 31536000;
const HISTORY_PAGE = 20;
const STATS_EVERY_MS = 2000;

// ---------------------------------------------------------------------------------------
// DOM and API helpers
// ---------------------------------------------------------------------------------------

const PROPERTIES = new Set(["value", "checked", "disabled", "readOnly", "required", "selected"]);

/** Builds an element. Strings among the children become text nodes. */
function el(tag, props, ...children) {
  const node = document.createElement(tag);
  node.append(...children.flat().filter((c) => c !== null && c !== undefined && c !== false)
    .map((c) => (c instanceof Node ? c : String(c))));
  // Properties after the children: a <select>'s value needs its options first.
  for (const [key, value] of Object.entries(props || {})) {
    if (value === undefined || value === null || value === false) continue;
    if (key.startsWith("on")) node.addEventListener(key.slice(2), value);
    else if (key === "class") node.className = value;
    else if (PROPERTIES.has(key)) node[key] = value;
    else node.setAttribute(key, value === true ? "" : String(value));
  }
  return node;
}

const field = (label, input, hint) =>
  el("label", { class: "field" }, el("span", {}, label), input, hint && el("small", {}, hint));
const checkbox = (name, checked) => el("input", { type: "checkbox", name, checked: !!checked });
const check = (label, input) => el("label", { class: "check" }, input, " ", label);
const number = (name, value) => el("input", { type: "number", name, min: 0, step: 1, value });

function levelSelect(action, value) {
  return el("select", { name: action, value: String(value ?? 0) },
    LEVELS[action].map((label, i) => el("option", { value: String(i) }, `${i} · ${label}`)));
}

function permissionSelects(permissions) {
  const selects = Object.fromEntries(ACTIONS.map((a) => [a, levelSelect(a, permissions?.[a])]));
  const box = el("fieldset", { class: "grid" }, el("legend", {}, "Permissions"),
    ACTIONS.map((a) => field(a, selects[a])));
  return { box, read: () => Object.fromEntries(ACTIONS.map((a) => [a, Number(selects[a].value)])) };
}

function fmtTime(secs) {
  return secs ? new Date(secs * 1000).toLocaleString() : "—";
}

function fmtUptime(secs) {
  const d = Math.floor(secs / 86400), h = Math.floor(secs / 3600) % 24;
  const m = Math.floor(secs / 60) % 60, s = secs % 60;
  return d ? `${d}d ${h}h` : h ? `${h}h ${m}m` : m ? `${m}m ${s}s` : `${s}s`;
}

class ApiError extends Error {
  constructor(code, message) {
    super(message);
    this.code = code;
  }
}

const token = () => sessionStorage.getItem(TOKEN_KEY);

/** One management API call; resolves to the answer, rejects with an ApiError. */
async function api(op, fields = {}) {
  let response;
  try {
    response = await fetch("/api", {
      method: "POST",
      headers: { "content-type": "application/json" },
      body: JSON.stringify({ ...fields, op, token: token() }),
      cache: "no-store",
    });
  } catch (e) {
    throw new ApiError("NETWORK", `the broker cannot be reached (${e.message})`);
  }
  let body;
  try {
    body = await response.json();
  } catch {
    throw new ApiError(`HTTP ${response.status}`, "the answer is not JSON");
  }
  if (!body.result) {
    throw new ApiError(body.error || `HTTP ${response.status}`, body.message || "refused");
  }
  return body;
}

/** Every item of a paged op (start/count/total), page by page. */
async function all(op, fields, key) {
  const items = [];
  for (let start = 0; ;) {
    const page = await api(op, { ...fields, start, count: 500 });
    items.push(...page[key]);
    start += page.count;
    if (page.count === 0 || start >= page.total) return items;
  }
}

function showError(error) {
  const code = error instanceof ApiError ? error.code : "ERROR";
  document.getElementById("notice").hidden = true;
  const box = document.getElementById("error");
  box.replaceChildren(el("strong", {}, code), " ", error.message,
    el("button", { type: "button", class: "link", onclick: () => { box.hidden = true; } }, "dismiss"));
  box.hidden = false;
}

let noticeTimer;
let noticeKept = false;
/** A success message; `keep`: it survives the next render (the caller navigates). */
function notice(text, keep = false) {
  noticeKept = keep;
  document.getElementById("error").hidden = true;
  const box = document.getElementById("notice");
  box.textContent = text;
  box.hidden = false;
  clearTimeout(noticeTimer);
  noticeTimer = setTimeout(() => { box.hidden = true; }, 5000);
}

/** Runs an action for a form or button: errors are shown, the button is off meanwhile. */
function guarded(action) {
  return async (event) => {
    event.preventDefault();
    const button = event.submitter || event.currentTarget;
    button.disabled = true;
    try {
      await action(event);
    } catch (e) {
      showError(e);
    } finally {
      button.disabled = false;
    }
  };
}

// ---------------------------------------------------------------------------------------
// Status bar
// ---------------------------------------------------------------------------------------

async function pollStats() {
  const bar = document.getElementById("status");
  if (!token() || document.hidden) return;
  try {
    const { stats } = await api("brokerstats");
    bar.replaceChildren(
      ...[["connections", stats.connections], ["messages in", stats.messages_received],
        ["messages out", stats.messages_sent], ["subscriptions", stats.subscriptions],
        ["uptime", fmtUptime(stats.uptime_secs)]]
        .map(([label, value]) => el("span", { "data-stat": label }, label, " ", el("b", {}, value))));
    bar.classList.remove("stale");
  } catch (e) {
    bar.classList.add("stale");
    bar.replaceChildren(`live counts unavailable: ${e.code} ${e.message}`);
  }
}

// ---------------------------------------------------------------------------------------
// Views
// ---------------------------------------------------------------------------------------

function loginView(main) {
  const input = el("input", { type: "password", name: "token", id: "token", required: true,
    autocomplete: "off", placeholder: "app token" });
  main.append(el("form", {
    class: "card narrow", id: "login",
    onsubmit: guarded(async () => {
      sessionStorage.setItem(TOKEN_KEY, input.value.trim());
      try {
        await api("brokerstats"); // any backend op checks the token
      } catch (e) {
        sessionStorage.removeItem(TOKEN_KEY);
        throw e;
      }
      go(location.hash.startsWith("#/login") || !location.hash ? "#/groups" : location.hash);
    }),
  }, el("h2", {}, "Log in"),
  el("p", { class: "hint" }, "The management API app token: [auth] admin_token, or the one "
    + "the broker printed at its first start."),
  field("App token", input), el("button", { type: "submit" }, "Log in")));
  input.focus();
}

async function groupsView(main) {
  const search = el("input", { type: "search", id: "group-search", placeholder: "Search by name or gid" });
  const tbody = el("tbody");
  const summary = el("p", { class: "hint" }, "Loading…");
  main.append(el("div", { class: "toolbar" }, el("h2", {}, "Groups"), search,
    el("a", { class: "button", href: "#/groups/new", id: "new-group" }, "New group")),
  el("table", { id: "groups" }, el("thead", {}, el("tr", {},
    ["gid", "name", "members", "active", "storage", "loopback", "expires"].map((h) => el("th", {}, h)))),
  tbody), summary);
  const groups = await all("groupsget", {}, "groups");
  const show = () => {
    const q = search.value.trim().toLowerCase();
    const shown = groups.filter((g) => !q || String(g.gid) === q.replace(/^#/, "")
      || g.name.toLowerCase().includes(q));
    tbody.replaceChildren(...shown.map((g) => el("tr", {},
      el("td", {}, g.gid),
      el("td", {}, el("a", { href: `#/group/${g.gid}` }, g.name || "(unnamed)")),
      el("td", {}, g.member_count), el("td", {}, g.active ? "yes" : "no"),
      el("td", {}, g.nostore ? "no-store" : "history"), el("td", {}, g.loopback ? "yes" : "no"),
      el("td", {}, fmtTime(g.validity.expires)))));
    summary.textContent = groups.length
      ? `${shown.length} of ${groups.length} groups`
      : "No groups yet: create one with New group.";
  };
  search.addEventListener("input", show);
  show();
  search.focus();
}

/** The settings form, for a new group (`group` null) or an existing one. */
function groupForm(group, submitLabel, onSave) {
  const name = el("input", { name: "name", maxlength: 256, value: group ? group.name : "" });
  const active = checkbox("active", group ? group.active : true);
  const nostore = checkbox("nostore", group?.nostore);
  const loopback = checkbox("loopback", group?.loopback);
  const perms = permissionSelects(group?.permissions);
  const start = number("start", 0);
  const restart = checkbox("restart", false);
  const duration = number("duration", group ? group.validity.duration : YEAR_SECS);
  const expiryext = number("expiryext", group ? group.validity.expiryext : 0);
  const form = el("form", {
    class: "card", id: "group-form",
    onsubmit: guarded(async () => {
      const known = (group?.flags ?? 0) & ~(FLAG_NOSTORE | FLAG_LOOPBACK);
      const settings = {
        name: name.value, active: active.checked,
        // Permission bits of the flags are rewritten by `permissions` (applied after).
        flags: known | (nostore.checked ? FLAG_NOSTORE : 0) | (loopback.checked ? FLAG_LOOPBACK : 0),
        permissions: perms.read(),
      };
      // Only what changed: resending the duration would undo expiry extensions.
      const validity = {};
      if (!group || restart.checked) validity.start = group ? 0 : Number(start.value);
      if (!group || Number(duration.value) !== group.validity.duration) validity.duration = Number(duration.value);
      if (!group || Number(expiryext.value) !== group.validity.expiryext) validity.expiryext = Number(expiryext.value);
      if (Object.keys(validity).length) settings.validity = validity;
      await onSave(settings);
    }),
  },
  el("div", { class: "grid" }, field("Name", name), check("active", active)),
  el("fieldset", { class: "grid" }, el("legend", {}, "Flags"),
    check("no-store (0x40): nothing reaches the disk, no history", nostore),
    check("loopback (0x80): senders get their own messages", loopback)),
  perms.box,
  el("fieldset", { class: "grid" }, el("legend", {}, "Validity (seconds)"),
    group ? check(`restart validity from now (expires ${fmtTime(group.validity.expires)})`, restart)
      : field("start, from now", start),
    field("duration", duration), field("expiryext", expiryext, "extends expiry on each message")),
  el("button", { type: "submit" }, submitLabel));
  return form;
}

function newGroupView(main) {
  main.append(el("h2", {}, "New group"), groupForm(null, "Create group", async (settings) => {
    const { group } = await api("groupadd", { group: settings });
    notice(`Group ${group.gid} created.`, true);
    location.hash = `#/group/${group.gid}/members`;
  }));
}

async function groupView(main, gid, tab) {
  const { group } = await api("groupget", { group: { gid } });
  const tabs = [["settings", "Settings"], ["members", "Members"], ["messages", "Messages"]];
  main.append(el("div", { class: "toolbar" },
    el("h2", {}, group.name || "(unnamed)", " ", el("span", { class: "badge" }, `gid ${gid}`)),
    el("nav", { class: "tabs" }, tabs.map(([id, label]) =>
      el("a", { href: `#/group/${gid}/${id}`, class: id === tab ? "current" : "" }, label)))));
  const body = el("div");
  main.append(body);
  if (tab === "members") await membersTab(body, group);
  else if (tab === "messages") await messagesTab(body, group);
  else settingsTab(body, group);
}

function settingsTab(body, group) {
  const gid = group.gid;
  const reload = () => render();
  body.append(groupForm(group, "Save settings", async (settings) => {
    await api("groupset", { group: { gid, ...settings } });
    notice("Settings saved.", true);
    reload();
  }));
  // Per-type rules: a message of type T follows T's rule, else the default one.
  const type = number("type", 1);
  let perms = permissionSelects(null);
  const form = el("form", {
    class: "card", id: "type-form",
    onsubmit: guarded(async () => {
      await api("groupset", { group: { gid, type: Number(type.value), permissions: perms.read() } });
      notice(`Rule for type ${type.value} saved.`, true);
      reload();
    }),
  }, el("h3", {}, "Add or edit a rule"), el("div", { class: "grid" }, field("Message type", type)),
  perms.box, el("button", { type: "submit" }, "Save rule"));
  const rows = group.types.map((rule) => el("tr", {}, el("td", {}, rule.type),
    ACTIONS.map((a) => el("td", { title: LEVELS[a][rule.permissions[a]] }, rule.permissions[a])),
    el("td", {}, el("button", { type: "button", class: "link", onclick: () => {
      type.value = rule.type;
      const fresh = permissionSelects(rule.permissions);
      perms.box.replaceWith(fresh.box);
      perms = fresh;
    } }, "edit"))));
  body.append(el("h3", {}, "Rules per message type"),
    rows.length ? el("table", { id: "types" }, el("thead", {}, el("tr", {},
      ["type", ...ACTIONS, ""].map((h) => el("th", {}, h)))), el("tbody", {}, rows))
      : el("p", { class: "hint" }, "No per-type rules: every type follows the permissions above."),
    form,
    el("h3", {}, "Danger zone"),
    el("button", { type: "button", class: "danger", id: "delete-group", onclick: guarded(async () => {
      if (!window.confirm(`Delete group ${gid} and its history?`)) return;
      await api("groupdel", { group: { gid } });
      notice(`Group ${gid} deleted.`, true);
      location.hash = "#/groups";
    }) }, "Delete group"));
}

async function membersTab(body, group) {
  const gid = group.gid;
  const addresses = el("input", { name: "m", id: "member-addresses", required: true,
    placeholder: "alice, bob" });
  const perm = Object.fromEntries(ACTIONS.map((a) => [a, checkbox(a, true)]));
  const admin = Object.fromEntries(ADMIN_FLAGS.map((f) => [f, checkbox(f, false)]));
  const tbody = el("tbody");
  const summary = el("p", { class: "hint" });
  const fill = (m) => {
    addresses.value = m.address;
    ACTIONS.forEach((a) => { perm[a].checked = m.permissions[a]; });
    ADMIN_FLAGS.forEach((f) => { admin[f].checked = m.admin[f]; });
    addresses.focus();
  };
  const load = async () => {
    const members = await all("groupgetmembers", { group: { gid } }, "members");
    tbody.replaceChildren(...members.map((m) => el("tr", { "data-address": m.address },
      el("td", {}, m.address),
      ACTIONS.map((a) => el("td", { class: m.permissions[a] ? "yes" : "no" }, m.permissions[a] ? "✓" : "✗")),
      el("td", {}, ADMIN_FLAGS.filter((f) => m.admin[f]).join(", ") || "—",
        m.types.length ? el("small", {}, ` · rules for types ${m.types.map((t) => t.type).join(", ")}`) : ""),
      el("td", {}, fmtTime(m.since)),
      el("td", {}, el("button", { type: "button", class: "link", onclick: () => fill(m) }, "edit"), " ",
        el("button", { type: "button", class: "link danger", onclick: guarded(async () => {
          if (!window.confirm(`Remove ${m.address} from group ${gid}?`)) return;
          await api("groupeditmembers", { group: { gid, members: { m: m.address, remove: true } } });
          notice(`${m.address} removed.`);
          await load();
        }) }, "remove")))));
    summary.textContent = members.length ? `${members.length} members`
      : "No members yet: add users below (they must exist: useradd).";
  };
  body.append(el("table", { id: "members" }, el("thead", {}, el("tr", {},
    ["address", ...ACTIONS, "admin flags", "since", ""].map((h) => el("th", {}, h)))), tbody),
  summary,
  el("form", {
    class: "card", id: "member-form",
    onsubmit: guarded(async () => {
      const m = addresses.value;
      await api("groupeditmembers", { group: { gid, members: { m,
        permissions: Object.fromEntries(ACTIONS.map((a) => [a, perm[a].checked])),
        admin: Object.fromEntries(ADMIN_FLAGS.map((f) => [f, admin[f].checked])) } } });
      notice(`Saved members: ${m}.`);
      addresses.value = "";
      await load();
    }),
  }, el("h3", {}, "Add or edit members"),
  field("Addresses (comma-separated)", addresses, "existing users; an existing member is updated"),
  el("fieldset", { class: "grid" }, el("legend", {}, "Member permissions (matter where the group value is 1)"),
    ACTIONS.map((a) => check(a, perm[a]))),
  el("fieldset", { class: "grid" }, el("legend", {}, "Admin flags"),
    ADMIN_FLAGS.map((f) => check(f, admin[f]))),
  el("button", { type: "submit" }, "Save members")));
  await load();
}

async function messagesTab(body, group) {
  const gid = group.gid;
  const members = await all("groupgetmembers", { group: { gid } }, "members");
  const from = el("input", { name: "from", id: "message-from", required: true, list: "member-list",
    value: members[0]?.address ?? "" });
  const type = number("type", 0);
  const text = el("textarea", { name: "message", id: "message-text", required: true, rows: 3 });
  const tbody = el("tbody");
  const pageInfo = el("span", { class: "hint", id: "history-info" });
  const older = el("button", { type: "button", id: "older" }, "Older");
  const newer = el("button", { type: "button", id: "newer" }, "Newer");
  let start = 0;
  const load = async () => {
    const page = await api("groupmessages", { group: { gid }, start, count: HISTORY_PAGE });
    tbody.replaceChildren(...page.messages.map((m) => el("tr", {},
      el("td", {}, m.id), el("td", {}, fmtTime(m.ts)), el("td", {}, m.from), el("td", {}, m.type),
      el("td", { class: "payload" }, m.encoding === "base64" ? el("small", {}, "base64 ") : "", m.payload))));
    pageInfo.textContent = page.total
      ? `${start + 1}–${start + page.count} of ${page.total}, newest first`
      : group.nostore ? "No history: this group is no-store." : "No messages yet.";
    newer.disabled = start === 0;
    older.disabled = start + page.count >= page.total;
  };
  // Not `guarded`: it would re-enable a button that `load` has just disabled.
  const step = (delta) => async () => {
    start = Math.max(0, start + delta);
    await load().catch(showError);
  };
  older.addEventListener("click", step(HISTORY_PAGE));
  newer.addEventListener("click", step(-HISTORY_PAGE));
  body.append(el("form", {
    class: "card", id: "message-form",
    onsubmit: guarded(async () => {
      const { message } = await api("message", { message: { from: from.value.trim(), gid,
        type: Number(type.value), message: text.value } });
      notice(`Sent on ${message.topic} (copies queued: ${message.queued}).`);
      text.value = "";
      start = 0;
      await load();
    }),
  }, el("h3", {}, "Send a message"),
  el("datalist", { id: "member-list" }, members.map((m) => el("option", { value: m.address }))),
  el("div", { class: "grid" }, field("From (a user allowed to send)", from), field("Type", type)),
  field("Text", text), el("button", { type: "submit" }, "Send")),
  el("div", { class: "toolbar" }, el("h3", {}, "History"), pageInfo, newer, older,
    el("button", { type: "button", id: "refresh-history", onclick: step(0) }, "Refresh")),
  el("table", { id: "history" }, el("thead", {}, el("tr", {},
    ["id", "time", "from", "type", "message"].map((h) => el("th", {}, h)))), tbody));
  await load();
}

// ---------------------------------------------------------------------------------------
// Routing: #/login, #/groups, #/groups/new, #/group/{gid}[/settings|members|messages]
// ---------------------------------------------------------------------------------------

async function render() {
  // A fresh container per render: a slower earlier render then fills a detached one.
  const main = el("div", { class: "view" });
  document.getElementById("main").replaceChildren(main);
  document.getElementById("error").hidden = true;
  if (!noticeKept) document.getElementById("notice").hidden = true;
  noticeKept = false;
  const loggedIn = !!token();
  document.getElementById("nav").hidden = !loggedIn;
  document.getElementById("status").hidden = !loggedIn;
  const path = location.hash.replace(/^#\/?/, "").split("/");
  try {
    if (!loggedIn || path[0] === "login") {
      loginView(main);
    } else if (path[0] === "group" && /^\d+$/.test(path[1])) {
      await groupView(main, Number(path[1]), path[2] || "settings");
    } else if (path[0] === "groups" && path[1] === "new") {
      newGroupView(main);
    } else {
      await groupsView(main);
    }
  } catch (e) {
    if (e.code === "AUTHFAIL") {
      // The token stopped working (changed, or the data directory was reset).
      sessionStorage.removeItem(TOKEN_KEY);
      history.replaceState(null, "", "#/login");
      await render();
    }
    showError(e);
  }
  if (loggedIn) pollStats();
}

/** Navigates to `hash`, rendering again if it is the current one. */
function go(hash) {
  if (location.hash === hash) render();
  else location.hash = hash;
}

function logout() {
  sessionStorage.removeItem(TOKEN_KEY);
  go("#/login");
}

document.addEventListener("DOMContentLoaded", () => {
  document.getElementById("logout").addEventListener("click", logout);
  window.addEventListener("hashchange", render);
  setInterval(pollStats, STATS_EVERY_MS);
  render();
});
