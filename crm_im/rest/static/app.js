/*
 * crm_im back office: a single page on the admin API (/admin/api/).
 * No build step, no library, nothing fetched from elsewhere. Every value
 * from the server reaches the page through textContent (never innerHTML).
 * Live: the dashboard and the users list poll the API every 2 seconds.
 */
"use strict";
(function () {
  const API = "api/";
  const POLL_MS = 2000;
  const CHART_POINTS = 150; // 5 minutes at 2 s
  const I18N = window.CRM_IM_I18N;
  const $ = (sel) => document.querySelector(sel);
  const $$ = (sel) => Array.from(document.querySelectorAll(sel));

  const state = {
    token: sessionStorage.getItem("crm_im.admin.token") || "",
    lang: localStorage.getItem("crm_im.admin.lang") || ((navigator.language || "").toLowerCase().startsWith("zh") ? "zh" : "en"),
    view: "dashboard",
    timer: null,
    last: null, // previous stats sample, for the rate
    rate: [], sessions: [], online: [],
    users: { online: "true", q: "", cursor: null, items: [] },
    groups: { q: "", cursor: null },
    rooms: { cursor: null },
    export: { params: null, cursor: null, items: [] },
    audit: { cursor: null },
  };

  // ---- i18n

  function t(key, vars) {
    let text = (I18N[state.lang] && I18N[state.lang][key]) || I18N.en[key] || key;
    if (vars) for (const [k, v] of Object.entries(vars)) text = text.split("{" + k + "}").join(String(v));
    return text;
  }

  function applyLanguage() {
    document.documentElement.lang = state.lang === "zh" ? "zh-CN" : "en";
    $$("[data-i18n]").forEach((node) => { node.textContent = t(node.dataset.i18n); });
    $$("[data-i18n-placeholder]").forEach((node) => { node.placeholder = t(node.dataset.i18nPlaceholder); });
    $$(".lang-toggle").forEach((node) => { node.textContent = state.lang === "zh" ? "English" : "中文"; });
    $("#view-title").textContent = t("nav." + state.view);
    drawCharts();
  }

  // ---- DOM helpers

  function el(tag, props, ...children) {
    const node = document.createElement(tag);
    for (const [key, value] of Object.entries(props || {})) {
      if (value === undefined || value === null || value === false) continue;
      if (key === "class") node.className = value;
      else if (key === "style") node.style.cssText = value; // CSSOM: allowed by the page's CSP
      else if (key === "text") node.textContent = value;
      else if (key.startsWith("on")) node.addEventListener(key.slice(2), value);
      else if (key === "dataset") Object.assign(node.dataset, value);
      else node.setAttribute(key, value === true ? "" : value);
    }
    for (const child of children) {
      if (child === null || child === undefined || child === false) continue;
      node.append(child instanceof Node ? child : document.createTextNode(String(child)));
    }
    return node;
  }

  function toast(message, kind) {
    const node = el("div", { class: "toast " + (kind || "ok"), role: "status", text: message });
    $("#toasts").append(node);
    setTimeout(() => node.classList.add("gone"), 3500);
    setTimeout(() => node.remove(), 4000);
  }

  function fmtTime(ms) {
    if (ms === null || ms === undefined) return t("users.never");
    const d = new Date(ms);
    return d.toLocaleString(state.lang === "zh" ? "zh-CN" : "en-GB", { hour12: false });
  }

  function fmtAgo(ms) {
    if (ms === null || ms === undefined) return t("users.never");
    const s = Math.max(0, Math.round((Date.now() - ms) / 1000));
    if (s < 5) return t("users.now");
    const zh = state.lang === "zh";
    if (s < 60) return zh ? `${s} 秒前` : `${s}s ago`;
    if (s < 3600) return zh ? `${Math.floor(s / 60)} 分钟前` : `${Math.floor(s / 60)} min ago`;
    if (s < 86400) return zh ? `${Math.floor(s / 3600)} 小时前` : `${Math.floor(s / 3600)} h ago`;
    return fmtTime(ms);
  }

  function fmtDuration(ms) {
    let s = Math.floor(ms / 1000);
    const d = Math.floor(s / 86400); s -= d * 86400;
    const h = Math.floor(s / 3600); s -= h * 3600;
    const m = Math.floor(s / 60); s -= m * 60;
    return (d ? d + "d " : "") + (d || h ? h + "h " : "") + m + "m " + s + "s";
  }

  function fmtBytes(n) {
    if (n === null || n === undefined) return t("server.none");
    const units = ["B", "KB", "MB", "GB", "TB"];
    let i = 0;
    while (n >= 1024 && i < units.length - 1) { n /= 1024; i++; }
    return n.toFixed(i ? 1 : 0) + " " + units[i];
  }

  const fmtNum = (n) => (n === null || n === undefined ? "–" : Number(n).toLocaleString(state.lang === "zh" ? "zh-CN" : "en-US"));

  // ---- the API

  class ApiError extends Error {
    constructor(status, code, message) { super(message); this.status = status; this.code = code; }
  }

  async function api(method, path, body) {
    const options = { method, headers: { Authorization: "Bearer " + state.token }, cache: "no-store" };
    if (body !== undefined) {
      options.headers["Content-Type"] = "application/json";
      options.body = JSON.stringify(body);
    }
    let response;
    try {
      response = await fetch(API + path, options);
    } catch (e) {
      setLive(false);
      throw new ApiError(0, "NETWORK", e.message);
    }
    setLive(true);
    let data = null;
    try { data = await response.json(); } catch (e) { data = null; }
    if (!response.ok) {
      const error = (data && data.error) || {};
      if (response.status === 401 && state.token) signOut(t("signin.wrong"));
      throw new ApiError(response.status, error.code || "HTTP_" + response.status, error.message || response.statusText);
    }
    return data;
  }

  function failed(error) {
    if (error.status === 401) return;
    toast(t("error", { m: error.message }), "bad");
  }

  function setLive(ok) {
    const live = $("#live");
    live.classList.toggle("down", !ok);
    live.lastChild.textContent = ok ? t("live") : t("offline");
  }

  // ---- sign in and out

  async function signIn(token) {
    state.token = token;
    try {
      await api("GET", "stats");
    } catch (error) {
      state.token = "";
      const message = error.status === 429 ? t("signin.limited") : error.status === 403 ? t("signin.forbidden")
        : error.status === 401 ? t("signin.wrong") : t("error", { m: error.message });
      showSignIn(message);
      return;
    }
    sessionStorage.setItem("crm_im.admin.token", token);
    $("#signin").hidden = true;
    $("#app").hidden = false;
    route();
  }

  function showSignIn(message) {
    $("#app").hidden = true;
    $("#signin").hidden = false;
    const error = $("#signin-error");
    error.hidden = !message;
    error.textContent = message || "";
    $("#token").focus();
  }

  function signOut(message) {
    sessionStorage.removeItem("crm_im.admin.token");
    state.token = "";
    stopPolling();
    showSignIn(message);
  }

  // ---- navigation

  function route() {
    const view = (location.hash || "#dashboard").slice(1);
    state.view = $("#view-" + view) ? view : "dashboard";
    $$(".view").forEach((node) => { node.hidden = node.id !== "view-" + state.view; });
    $$("nav a").forEach((a) => a.classList.toggle("active", a.dataset.view === state.view));
    applyLanguage();
    stopPolling();
    if (!state.token) return;
    const loaders = { dashboard: pollStats, users: () => loadUsers(true), groups: () => loadGroups(true),
      rooms: () => loadRooms(true), audit: () => loadAudit(true), broadcast: () => {}, messages: () => {} };
    loaders[state.view]();
    if (state.view === "dashboard" || state.view === "users") {
      state.timer = setInterval(state.view === "dashboard" ? pollStats : () => loadUsers(true, true), POLL_MS);
    } else {
      // Keep the stats history going for the charts.
      state.timer = setInterval(() => pollStats(true), POLL_MS * 2);
    }
  }

  function stopPolling() {
    if (state.timer) clearInterval(state.timer);
    state.timer = null;
  }

  // ---- dashboard

  async function pollStats(quiet) {
    let stats;
    try { stats = await api("GET", "stats"); } catch (e) { if (!quiet) failed(e); return; }
    const now = stats.timestamp;
    let rate = 0;
    if (state.last && now > state.last.timestamp) {
      rate = Math.max(0, (stats.messages.accepted - state.last.messages.accepted) * 1000 / (now - state.last.timestamp));
    }
    if (state.last) push(state.rate, [now, rate]);
    state.last = stats;
    push(state.sessions, [now, stats.sessions.total]);
    push(state.online, [now, stats.usersOnline]);
    $("#node").textContent = stats.node + " · v" + stats.version;
    if (state.view !== "dashboard") return;
    const by = stats.sessions.byTransport || {};
    $("#stat-users").textContent = fmtNum(stats.usersOnline);
    $("#stat-users-sub").textContent = t("stat.loggedIn", { n: fmtNum(stats.usersLoggedIn), d: fmtNum(stats.devicesLoggedIn) });
    $("#stat-sessions").textContent = fmtNum(stats.sessions.total);
    $("#stat-sessions-sub").textContent = t("stat.transports", { ws: fmtNum(by.websocket || 0), poll: fmtNum(by.polling || 0) });
    $("#stat-rate").textContent = rate.toFixed(rate < 10 ? 1 : 0);
    $("#stat-rate-sub").textContent = t("stat.accepted", { n: fmtNum(stats.messages.accepted) });
    $("#stat-stored").textContent = fmtNum(stats.messages.stored);
    $("#stat-stored-sub").textContent = t("stat.seen", { n: fmtNum(stats.usersSeen) });
    const facts = [
      ["server.version", stats.version], ["server.node", stats.node], ["server.uptime", fmtDuration(stats.uptime)],
      ["server.groups", fmtNum(stats.groups)], ["server.rooms", fmtNum(stats.rooms)], ["server.bans", fmtNum(stats.bans)],
      ["server.storeSize", fmtBytes(stats.storeSize)],
      ["server.outbox", stats.pushOutbox === null ? t("server.none") : fmtNum(stats.pushOutbox)],
    ];
    $("#server-facts").replaceChildren(...facts.flatMap(([k, v]) => [el("dt", { text: t(k) }), el("dd", { text: v })]));
    state.minutes = stats.messages.perMinute || [];
    drawCharts();
  }

  function push(series, point) {
    series.push(point);
    if (series.length > CHART_POINTS) series.splice(0, series.length - CHART_POINTS);
  }

  // A small SVG line chart: series of [time, value], drawn to fit.
  function lineChart(container, seriesList, options) {
    if (!container) return;
    const width = container.clientWidth || 480, height = 180;
    const pad = { l: 40, r: 12, t: 12, b: 24 };
    const svgNS = "http://www.w3.org/2000/svg";
    const svg = document.createElementNS(svgNS, "svg");
    svg.setAttribute("viewBox", `0 0 ${width} ${height}`);
    svg.setAttribute("width", "100%");
    svg.setAttribute("height", height);
    const all = seriesList.flatMap((s) => s.points);
    if (all.length < (options && options.bars ? 1 : 2)) {
      container.replaceChildren(el("div", { class: "chart-empty", text: t("chart.waiting") }));
      return;
    }
    const x0 = Math.min(...all.map((p) => p[0])), x1 = Math.max(...all.map((p) => p[0]));
    let ymax = Math.max(1, ...all.map((p) => p[1]));
    const step = niceStep(ymax / 4);
    ymax = Math.ceil(ymax / step) * step;
    const sx = (x) => pad.l + (x1 === x0 ? 0 : (x - x0) / (x1 - x0)) * (width - pad.l - pad.r);
    const sy = (y) => height - pad.b - (y / ymax) * (height - pad.t - pad.b);
    const add = (tag, attrs) => {
      const node = document.createElementNS(svgNS, tag);
      for (const [k, v] of Object.entries(attrs)) node.setAttribute(k, v);
      svg.append(node);
      return node;
    };
    for (let y = 0; y <= ymax + 1e-9; y += step) {
      add("line", { x1: pad.l, x2: width - pad.r, y1: sy(y), y2: sy(y), class: "grid" });
      add("text", { x: pad.l - 6, y: sy(y) + 4, class: "axis", "text-anchor": "end" }).textContent =
        step < 1 ? String(+y.toFixed(2)) : String(Math.round(y));
    }
    const timeLabel = (ms) => new Date(ms).toLocaleTimeString(state.lang === "zh" ? "zh-CN" : "en-GB",
      { hour12: false, hour: "2-digit", minute: "2-digit", second: options && options.minutes ? undefined : "2-digit" });
    if (options && options.bars) {
      // One bar per minute in a fixed hour-wide frame, newest (partial) on
      // the right: a young server shows a few thin bars, not one wide one.
      const series = seriesList[0];
      const slots = Math.max(series.points.length, options.slots || 1);
      const slot = (width - pad.l - pad.r) / slots;
      const first = slots - series.points.length;
      series.points.forEach((p, i) => {
        const h = sy(0) - sy(p[1]);
        add("rect", { x: (pad.l + (first + i) * slot + slot * 0.15).toFixed(1), y: sy(p[1]).toFixed(1), width: Math.max(1, slot * 0.7).toFixed(1),
          height: Math.max(0, h).toFixed(1), rx: Math.min(3, slot * 0.3).toFixed(1),
          class: "bar " + series.class + (i === series.points.length - 1 ? " partial" : "") });
      });
      add("text", { x: pad.l, y: height - 6, class: "axis" }).textContent = t("chart.hourAgo");
      add("text", { x: width - pad.r, y: height - 6, class: "axis", "text-anchor": "end" }).textContent = t("chart.now");
      container.replaceChildren(svg);
      return;
    }
    add("text", { x: pad.l, y: height - 6, class: "axis" }).textContent = timeLabel(x0);
    add("text", { x: width - pad.r, y: height - 6, class: "axis", "text-anchor": "end" }).textContent = timeLabel(x1);
    for (const series of seriesList) {
      if (series.points.length < 1) continue;
      const d = series.points.map((p, i) => (i ? "L" : "M") + sx(p[0]).toFixed(1) + "," + sy(p[1]).toFixed(1)).join(" ");
      if (series.fill) {
        add("path", { d: d + ` L${sx(series.points[series.points.length - 1][0]).toFixed(1)},${sy(0)} L${sx(series.points[0][0]).toFixed(1)},${sy(0)} Z`,
          class: "area " + series.class });
      }
      add("path", { d, class: "line " + series.class });
    }
    const children = [svg];
    if (seriesList.length > 1) {
      children.push(el("div", { class: "legend" },
        ...seriesList.map((s) => el("span", { class: "legend-item " + s.class }, el("i"), s.label))));
    }
    container.replaceChildren(...children);
  }

  function niceStep(raw) {
    if (raw <= 0) return 1;
    const power = Math.pow(10, Math.floor(Math.log10(raw)));
    for (const m of [1, 2, 2.5, 5, 10]) if (raw <= m * power) return m * power;
    return 10 * power;
  }

  function drawCharts() {
    if (state.view !== "dashboard" || $("#app").hidden) return;
    lineChart($("#chart-rate"), [{ points: state.rate, class: "s1", fill: true }]);
    lineChart($("#chart-sessions"), [
      { points: state.sessions, class: "s2", label: t("legend.sessions") },
      { points: state.online, class: "s1", label: t("legend.users") },
    ]);
    lineChart($("#chart-minutes"), [{ points: (state.minutes || []).map((m) => [m.at, m.count]), class: "s3" }], { minutes: true, bars: true, slots: 60 });
  }

  // ---- users

  async function loadUsers(reset, quiet) {
    const u = state.users;
    const params = new URLSearchParams();
    if (u.online) params.set("online", u.online);
    if (u.q) params.set("q", u.q);
    if (!reset && u.cursor) params.set("cursor", u.cursor);
    let page;
    try { page = await api("GET", "users?" + params); } catch (e) { if (!quiet) failed(e); return; }
    if (reset) {
      // A live refresh keeps the rows already paged in beyond the first page.
      u.items = page.items.concat(quiet ? u.items.filter((x) => page.nextCursor && x.id > page.nextCursor) : []);
    } else {
      u.items = u.items.concat(page.items);
    }
    if (!quiet || reset) u.cursor = page.nextCursor;
    renderUsers();
  }

  function renderUsers() {
    if (state.view !== "users") return;
    const items = state.users.items;
    const rows = items.map((user) => {
      const devices = user.devices.map((d) =>
        el("div", { class: "device", title: [d.address, d.userAgent].filter(Boolean).join(" · ") },
          el("span", { class: "pill " + (d.transport === "websocket" ? "ws" : "poll"), text: d.transport || "?" }),
          el("span", { class: "muted small", text: (d.address || "") + (d.connectedAt ? " · " + fmtAgo(d.connectedAt) : "") })));
      const status = user.ban
        ? el("span", { class: "badge bad", text: user.ban.until ? t("users.bannedUntil", { t: fmtTime(user.ban.until) }) : t("users.banned") })
        : el("span", { class: "badge " + (user.online ? "st-" + user.status : "st-offline") }, el("i"), t("status." + (user.online ? user.status : "offline")));
      const actions = el("div", { class: "row-actions" },
        user.online ? el("button", { class: "button small", type: "button", dataset: { action: "kick", user: user.id }, text: t("users.kick"), onclick: () => kick(user) }) : null,
        user.ban
          ? el("button", { class: "button small", type: "button", dataset: { action: "unban", user: user.id }, text: t("users.unban"), onclick: () => unban(user) })
          : el("button", { class: "button small danger-outline", type: "button", dataset: { action: "ban", user: user.id }, text: t("users.ban"), onclick: () => ban(user) }));
      return el("tr", { dataset: { userId: user.id } },
        el("td", {}, el("div", { class: "who" }, avatar(user), el("div", {}, el("div", { class: "name", text: user.name }), el("div", { class: "muted small mono", text: user.id })))),
        el("td", {}, status),
        el("td", {}, ...(devices.length ? devices : [el("span", { class: "muted", text: "—" })])),
        el("td", { text: user.online ? t("users.now") : fmtAgo(user.lastSeen) }),
        el("td", {}, actions));
    });
    $("#users-table tbody").replaceChildren(...rows);
    const empty = $("#users-empty");
    empty.hidden = items.length > 0;
    empty.textContent = state.users.online === "true" && !state.users.q ? t("users.emptyOnline") : t("users.empty");
    $("#users-more").hidden = !state.users.cursor;
  }

  function avatar(user) {
    const letter = (user.name || user.id || "?").trim().charAt(0).toUpperCase() || "?";
    let hue = 0;
    for (const c of user.id) hue = (hue * 31 + c.charCodeAt(0)) % 360;
    return el("div", { class: "avatar", style: `background: hsl(${hue} 55% 52%)`, text: letter });
  }

  function ask(options) {
    // A small modal instead of window.confirm: styled, and scriptable.
    return new Promise((resolve) => {
      $("#modal-title").textContent = options.title;
      $("#modal-text").textContent = options.text;
      const fields = (options.fields || []).map((f) =>
        el("label", {}, el("span", { text: f.label }), el("input", { id: "modal-" + f.name, type: f.type || "text", min: f.min })));
      $("#modal-fields").replaceChildren(...fields);
      const confirm = $("#modal-confirm");
      confirm.textContent = options.confirm;
      confirm.className = "button " + (options.danger === false ? "primary" : "danger");
      const modal = $("#modal");
      modal.hidden = false;
      const first = modal.querySelector("input") || confirm;
      first.focus();
      const done = (ok) => {
        modal.hidden = true;
        $("#modal-form").onsubmit = null;
        $("#modal-cancel").onclick = null;
        const values = {};
        for (const f of options.fields || []) values[f.name] = $("#modal-" + f.name).value;
        resolve(ok ? values : null);
      };
      $("#modal-form").onsubmit = (event) => { event.preventDefault(); done(true); };
      $("#modal-cancel").onclick = () => done(false);
    });
  }

  async function kick(user) {
    const values = await ask({ title: t("kick.title", { name: user.name }), text: t("kick.text"), confirm: t("kick.confirm"),
      fields: [{ name: "reason", label: t("kick.reason") }] });
    if (!values) return;
    try {
      const result = await api("POST", `users/${encodeURIComponent(user.id)}/disconnect`, values.reason ? { reason: values.reason } : {});
      toast(t("kick.done", { name: user.name, n: result.devices }));
      loadUsers(true, true);
    } catch (e) { failed(e); }
  }

  async function ban(user) {
    const values = await ask({ title: t("ban.title", { name: user.name }), text: t("ban.text"), confirm: t("ban.confirm"),
      fields: [{ name: "reason", label: t("ban.reason") }, { name: "hours", label: t("ban.hours"), type: "number", min: "0" }] });
    if (!values) return;
    const body = {};
    if (values.reason) body.reason = values.reason;
    if (values.hours && Number(values.hours) > 0) body.until = Date.now() + Math.round(Number(values.hours) * 3600000);
    try {
      await api("POST", `users/${encodeURIComponent(user.id)}/ban`, body);
      toast(t("ban.done", { name: user.name }));
      loadUsers(true, true);
    } catch (e) { failed(e); }
  }

  async function unban(user) {
    try {
      await api("DELETE", `users/${encodeURIComponent(user.id)}/ban`);
      toast(t("unban.done", { name: user.name }));
      loadUsers(true, true);
    } catch (e) { failed(e); }
  }

  // ---- broadcast

  async function broadcast(event) {
    event.preventDefault();
    const message = $("#broadcast-message").value.trim();
    if (!message) return;
    const ids = $("#broadcast-users").value.split(/[,\s，]+/).map((s) => s.trim()).filter(Boolean);
    const button = $("#broadcast-send");
    button.disabled = true;
    try {
      const result = await api("POST", "broadcast", ids.length ? { message, userIds: ids } : { message });
      const line = $("#broadcast-result");
      line.hidden = false;
      line.textContent = t("broadcast.done", { n: result.delivered });
      toast(t("broadcast.done", { n: result.delivered }));
      $("#broadcast-message").value = "";
    } catch (e) { failed(e); } finally { button.disabled = false; }
  }

  // ---- groups

  async function loadGroups(reset) {
    const g = state.groups;
    const params = new URLSearchParams();
    if (g.q) params.set("q", g.q);
    if (!reset && g.cursor) params.set("cursor", g.cursor);
    let page;
    try { page = await api("GET", "groups?" + params); } catch (e) { failed(e); return; }
    g.cursor = page.nextCursor;
    const rows = page.items.map((group) => el("tr", { class: "clickable", dataset: { groupId: group.id }, onclick: () => showGroup(group.id) },
      el("td", {}, el("div", { class: "name", text: group.name }), el("div", { class: "muted small mono", text: group.id })),
      el("td", { class: "mono", text: group.ownerId }),
      el("td", { text: fmtNum(group.memberCount) }),
      el("td", { text: fmtTime(group.createdAt) })));
    const body = $("#groups-table tbody");
    if (reset) body.replaceChildren(...rows); else body.append(...rows);
    $("#groups-empty").hidden = body.children.length > 0;
    $("#groups-empty").textContent = t("groups.empty");
    $("#groups-more").hidden = !g.cursor;
  }

  async function showGroup(groupId) {
    const panel = $("#group-detail");
    let group;
    try { group = await api("GET", "groups/" + encodeURIComponent(groupId)); } catch (e) { failed(e); return; }
    const members = group.members.map((m) => el("tr", {},
      el("td", {}, el("span", { class: "badge " + (m.online ? "st-online" : "st-offline") }, el("i"), m.userId)),
      el("td", { text: m.role }), el("td", { text: fmtTime(m.joinedAt) })));
    panel.replaceChildren(
      el("div", { class: "card-head" }, el("h3", { text: group.name }),
        el("button", { class: "button small danger-outline", type: "button", text: t("groups.dissolve"), onclick: () => dissolve(group) })),
      el("p", { class: "muted small mono", text: group.id }),
      el("table", { class: "table compact" },
        el("thead", {}, el("tr", {}, el("th", { text: t("groups.members") }), el("th", { text: t("groups.role") }), el("th", { text: t("groups.joined") }))),
        el("tbody", {}, ...members)));
  }

  async function dissolve(group) {
    const ok = await ask({ title: t("dissolve.title", { name: group.name }), text: t("dissolve.text"), confirm: t("dissolve.confirm") });
    if (!ok) return;
    try {
      await api("DELETE", "groups/" + encodeURIComponent(group.id));
      toast(t("dissolve.done", { name: group.name }));
      $("#group-detail").replaceChildren(el("div", { class: "empty", text: t("groups.pick") }));
      loadGroups(true);
    } catch (e) { failed(e); }
  }

  // ---- rooms

  async function loadRooms(reset) {
    const r = state.rooms;
    const params = new URLSearchParams();
    if (!reset && r.cursor) params.set("cursor", r.cursor);
    let page;
    try { page = await api("GET", "rooms?" + params); } catch (e) { failed(e); return; }
    r.cursor = page.nextCursor;
    const rows = page.items.map((room) => el("tr", { dataset: { roomId: room.id } },
      el("td", {}, el("div", { class: "name", text: room.name }), el("div", { class: "muted small", text: room.topic || room.id })),
      el("td", {}, el("span", { class: "pill " + (room.public ? "ws" : "poll"), text: room.public ? t("rooms.publicShort") : t("rooms.private") })),
      el("td", { title: room.members.map((m) => m.name).join(", "), text: fmtNum(room.onlineCount) }),
      el("td", { text: fmtTime(room.createdAt) }),
      el("td", {}, el("button", { class: "button small danger-outline", type: "button", text: t("rooms.close"), onclick: () => closeRoom(room) }))));
    const body = $("#rooms-table tbody");
    if (reset) body.replaceChildren(...rows); else body.append(...rows);
    $("#rooms-empty").hidden = body.children.length > 0;
    $("#rooms-empty").textContent = t("rooms.empty");
    $("#rooms-more").hidden = !r.cursor;
  }

  async function createRoom(event) {
    event.preventDefault();
    const body = { name: $("#room-name").value.trim(), public: $("#room-public").checked };
    const topic = $("#room-topic").value.trim();
    if (topic) body.topic = topic;
    try {
      const room = await api("POST", "rooms", body);
      toast(t("rooms.created.done", { name: room.name }));
      $("#room-form").reset();
      loadRooms(true);
    } catch (e) { failed(e); }
  }

  async function closeRoom(room) {
    const ok = await ask({ title: t("close.title", { name: room.name }), text: t("close.text"), confirm: t("close.confirm") });
    if (!ok) return;
    try {
      await api("DELETE", "rooms/" + encodeURIComponent(room.id));
      toast(t("close.done", { name: room.name }));
      loadRooms(true);
    } catch (e) { failed(e); }
  }

  // ---- export

  async function runExport(event, more) {
    if (event) event.preventDefault();
    const x = state.export;
    if (!more) {
      const params = new URLSearchParams();
      for (const [name, id] of [["userId", "#export-user"], ["peerId", "#export-peer"], ["groupId", "#export-group"], ["roomId", "#export-room"]]) {
        const value = $(id).value.trim();
        if (value) params.set(name, value);
      }
      params.set("limit", "200");
      x.params = params;
      x.items = [];
      x.cursor = null;
    }
    const params = new URLSearchParams(x.params);
    if (more && x.cursor) params.set("cursor", x.cursor);
    let page;
    try { page = await api("GET", "messages?" + params); } catch (e) { failed(e); return; }
    x.items = x.items.concat(page.items);
    x.cursor = page.nextCursor;
    renderMessages();
  }

  function renderMessages() {
    const x = state.export;
    const rows = x.items.map((m) => el("tr", { dataset: { seq: m.seq } },
      el("td", { class: "mono", text: m.seq }),
      el("td", { text: fmtTime(m.serverTimestamp) }),
      el("td", { class: "mono", text: m.fromId }),
      el("td", { class: "mono", text: m.toId || (m.groupId ? "group:" + m.groupId : m.roomId ? "room:" + m.roomId : "") }),
      el("td", { class: "content" }, m.recalled || m.recalledBy ? el("span", { class: "muted", text: "(" + t("export.recalled") + ")" }) : (m.content || m.fileName || "")),
      el("td", {}, m.recalled || m.recalledBy || m.type === "system" ? null
        : el("button", { class: "button small", type: "button", text: t("export.recall"), onclick: () => recall(m) }))));
    $("#messages-table tbody").replaceChildren(...rows);
    const empty = $("#messages-empty");
    empty.hidden = x.items.length > 0;
    empty.textContent = x.params ? t("export.empty") : t("export.pick");
    $("#messages-more").hidden = !x.cursor;
    $("#export-json").disabled = $("#export-csv").disabled = x.items.length === 0;
  }

  async function recall(message) {
    const ok = await ask({ title: t("recall.title"), text: t("recall.text"), confirm: t("recall.confirm") });
    if (!ok) return;
    try {
      // The row's seq (and sender): its id alone may be another user's too.
      await api("POST", `messages/${encodeURIComponent(message.id)}/recall`, { seq: message.seq, fromId: message.fromId });
      toast(t("recall.done"));
      runExport();
    } catch (e) { failed(e); }
  }

  function download(name, type, text) {
    const url = URL.createObjectURL(new Blob([text], { type }));
    const a = el("a", { href: url, download: name });
    document.body.append(a);
    a.click();
    a.remove();
    setTimeout(() => URL.revokeObjectURL(url), 1000);
  }

  function exportName(ext) {
    const p = state.export.params;
    const what = ["userId", "peerId", "groupId", "roomId"].map((k) => p.get(k)).filter(Boolean).join("_");
    return `crm_im-export-${what || "all"}.${ext}`;
  }

  // Users write what they like: a cell a spreadsheet would take for a
  // formula (=, +, -, @, or a tab or carriage return first) gets a leading '
  // so that opening the export runs nothing (CSV injection: =HYPERLINK
  // sending other cells away, DDE commands); numbers stay numbers. The JSON
  // export keeps every text exactly.
  const FORMULA = /^[=+\-@\t\r]/;
  const NUMBER = /^[+-]?\d+(\.\d+)?$/;

  function csvCell(value) {
    let text = value === null || value === undefined ? "" : typeof value === "object" ? JSON.stringify(value) : String(value);
    if (FORMULA.test(text) && !NUMBER.test(text)) text = "'" + text;
    return /[",\r\n]/.test(text) ? '"' + text.replace(/"/g, '""') + '"' : text;
  }

  const CSV_COLUMNS = ["seq", "id", "serverTimestamp", "fromId", "fromName", "toId", "groupId", "roomId", "topic", "type", "content", "fileName", "fileUrl", "recalledBy"];

  // ---- audit

  async function loadAudit(reset) {
    const a = state.audit;
    const params = new URLSearchParams();
    if (!reset && a.cursor) params.set("cursor", a.cursor);
    let page;
    try { page = await api("GET", "audit?" + params); } catch (e) { failed(e); return; }
    a.cursor = page.nextCursor;
    const rows = page.items.map((entry) => el("tr", {},
      el("td", { text: fmtTime(entry.at) }),
      el("td", {}, el("div", { text: entry.actor }), el("div", { class: "muted small mono", text: entry.address })),
      el("td", {}, el("span", { class: "pill action", text: entry.action })),
      el("td", { class: "mono", text: entry.target || "—" }),
      el("td", { class: "mono small detail", text: entry.detail ? JSON.stringify(entry.detail) : "" })));
    const body = $("#audit-table tbody");
    if (reset) body.replaceChildren(...rows); else body.append(...rows);
    $("#audit-empty").hidden = body.children.length > 0;
    $("#audit-empty").textContent = t("audit.empty");
    $("#audit-more").hidden = !a.cursor;
  }

  // ---- wiring

  function debounce(fn, ms) {
    let timer = null;
    return (...args) => { clearTimeout(timer); timer = setTimeout(() => fn(...args), ms); };
  }

  document.addEventListener("DOMContentLoaded", () => {
    $("#signin-form").addEventListener("submit", (event) => { event.preventDefault(); signIn($("#token").value.trim()); });
    $("#signout").addEventListener("click", () => signOut());
    $$(".lang-toggle").forEach((b) => b.addEventListener("click", () => {
      state.lang = state.lang === "zh" ? "en" : "zh";
      localStorage.setItem("crm_im.admin.lang", state.lang);
      applyLanguage();
      if (state.view === "users") renderUsers();
      if (state.view === "messages") renderMessages();
    }));
    window.addEventListener("hashchange", route);
    window.addEventListener("resize", debounce(drawCharts, 150));
    $("#users-q").addEventListener("input", debounce((e) => { state.users.q = e.target.value.trim(); loadUsers(true); }, 250));
    $$("#users-filter button").forEach((b) => b.addEventListener("click", () => {
      $$("#users-filter button").forEach((x) => x.classList.toggle("active", x === b));
      state.users.online = b.dataset.online;
      loadUsers(true);
    }));
    $("#users-more").addEventListener("click", () => loadUsers(false));
    $("#broadcast-form").addEventListener("submit", broadcast);
    $("#groups-q").addEventListener("input", debounce((e) => { state.groups.q = e.target.value.trim(); loadGroups(true); }, 250));
    $("#groups-more").addEventListener("click", () => loadGroups(false));
    $("#room-form").addEventListener("submit", createRoom);
    $("#rooms-more").addEventListener("click", () => loadRooms(false));
    $("#export-form").addEventListener("submit", (e) => runExport(e, false));
    $("#messages-more").addEventListener("click", () => runExport(null, true));
    $("#export-json").addEventListener("click", () =>
      download(exportName("json"), "application/json", JSON.stringify(state.export.items, null, 2)));
    $("#export-csv").addEventListener("click", () =>
      download(exportName("csv"), "text/csv;charset=utf-8", "\ufeff" + [CSV_COLUMNS.join(",")]
        .concat(state.export.items.map((m) => CSV_COLUMNS.map((c) => csvCell(m[c])).join(","))).join("\r\n") + "\r\n"));
    $("#audit-more").addEventListener("click", () => loadAudit(false));
    document.addEventListener("keydown", (e) => { if (e.key === "Escape" && !$("#modal").hidden) $("#modal-cancel").click(); });
    applyLanguage();
    renderMessages();
    if (state.token) signIn(state.token); else showSignIn();
  });
})();
