/* The operator console's dashboard: reads /api, acts through the same API with the console token.
 *
 * Money arrives as exact decimal strings and is shown from those strings (rounded to the cent
 * with integer arithmetic on the digits, never through a float). Charts plot Number()s, which
 * only place points on a canvas; their labels and tooltips show the exact strings.
 *
 * The token: typed into the login field, kept in this tab's sessionStorage (gone when the tab
 * closes), sent as "Authorization: Bearer ..." with every request. The server never writes it
 * into the page (see docs/console.md, "The dashboard").
 */
"use strict";

(() => {
  const TOKEN_KEY = "trading-monitor-console-token";
  const DASH = "—";
  const state = {
    orders: { offset: 0, limit: 25, filter: {} },
    rendered: {},           // section -> the JSON text last rendered (unchanged answers are not redrawn)
    timer: null,
    refreshSeconds: 15,
    marketOpen: null,
    charts: {},
    positions: [],
    pending: [],
    loads: 0,
    running: null,
    again: false,
  };
  const overrideRefresh = Number(new URLSearchParams(location.search).get("refresh"));

  const $ = (selector) => document.querySelector(selector);

  // ------------------------------------------------------------------ exact decimals

  const DECIMAL = /^(-)?(\d+)(?:\.(\d+))?$/;

  /** "1234.565" rounded half away from zero to `places` decimals, as a string; null if not a number. */
  function round(text, places) {
    const match = DECIMAL.exec(String(text).trim());
    if (!match) return null;
    const [, minus, whole, fraction = ""] = match;
    let digits;
    if (fraction.length <= places) {
      digits = BigInt(whole + fraction.padEnd(places, "0"));
    } else {
      digits = BigInt(whole + fraction.slice(0, places)) + (fraction[places] >= "5" ? 1n : 0n);
    }
    const padded = digits.toString().padStart(places + 1, "0");
    const integer = padded.slice(0, padded.length - places);
    const cents = places ? "." + padded.slice(padded.length - places) : "";
    return (minus && digits !== 0n ? "-" : "") + integer + cents;
  }

  function group(integer) {
    return integer.replace(/\B(?=(\d{3})+(?!\d))/g, ",");
  }

  /** "$1,234.50"; signed: "+$52.50" / "−$9.50". */
  function money(text, signed = false) {
    if (text === null || text === undefined) return DASH;
    const rounded = round(text, 2);
    if (rounded === null) return String(text);
    const negative = rounded.startsWith("-");
    const [integer, cents] = rounded.replace("-", "").split(".");
    const body = "$" + group(integer) + "." + cents;
    if (negative) return "−" + body;
    return signed && rounded !== "0.00" ? "+" + body : body;
  }

  /** A price: to the cent, or to 4 decimals when it has sub-cent digits (stocks under $1). */
  function price(text) {
    if (text === null || text === undefined) return DASH;
    const four = round(text, 4);
    if (four === null) return String(text);
    const [integer, fraction] = four.replace("-", "").split(".");
    if (fraction.endsWith("00")) return money(four);
    return (four.startsWith("-") ? "−" : "") + "$" + group(integer) + "." + fraction;
  }

  function percent(text) {
    if (text === null || text === undefined) return DASH;
    const rounded = round(text, 2);
    if (rounded === null) return String(text);
    if (rounded.startsWith("-")) return "−" + rounded.slice(1) + " %";
    return (rounded === "0.00" ? "" : "+") + rounded + " %";
  }

  function quantity(text) {
    if (text === null || text === undefined) return DASH;
    const match = DECIMAL.exec(String(text).trim());
    if (!match) return String(text);
    const fraction = (match[3] || "").replace(/0+$/, "");
    return (match[1] || "") + group(match[2]) + (fraction ? "." + fraction : "");
  }

  function tone(text) {
    if (text === null || text === undefined) return "";
    const rounded = round(text, 2);
    if (rounded === null || /^-?0\.00$/.test(rounded)) return "";
    return rounded.startsWith("-") ? "loss" : "gain";
  }

  const EASTERN = new Intl.DateTimeFormat("en-US", {
    timeZone: "America/New_York", year: "numeric", month: "2-digit", day: "2-digit",
    hour: "2-digit", minute: "2-digit", hour12: false,
  });

  /** An ISO time shown in US/Eastern, the market's zone: "2026-11-20 10:15 ET". */
  function when(iso) {
    if (!iso) return DASH;
    const parts = Object.fromEntries(EASTERN.formatToParts(new Date(iso)).map((p) => [p.type, p.value]));
    return `${parts.year}-${parts.month}-${parts.day} ${parts.hour === "24" ? "00" : parts.hour}:${parts.minute} ET`;
  }

  // ------------------------------------------------------------------ DOM helpers

  function el(tag, attributes = {}, ...children) {
    const node = document.createElement(tag);
    for (const [key, value] of Object.entries(attributes)) {
      if (value === null || value === undefined || value === false) continue;
      if (key === "class") node.className = value;
      else if (key === "text") node.textContent = value;
      else if (key.startsWith("on")) node.addEventListener(key.slice(2), value);
      else if (key.startsWith("data-")) node.setAttribute(key, value);
      else node.setAttribute(key, value === true ? "" : value);
    }
    for (const child of children) {
      if (child === null || child === undefined) continue;
      node.append(child instanceof Node ? child : document.createTextNode(String(child)));
    }
    return node;
  }

  function cell(text, cls = "", attributes = {}) {
    return el("td", { class: cls, ...attributes }, text);
  }

  /** Replace a table body's rows (or a list's items) with `rows`, or one line saying there is none. */
  function fill(container, rows, columns, empty) {
    const none = container.tagName === "UL"
      ? el("li", { class: "muted empty", text: empty })
      : el("tr", {}, el("td", { colspan: columns, class: "muted empty", text: empty }));
    container.replaceChildren(...(rows.length ? rows : [none]));
  }

  function flash(message, isError = false) {
    const note = el("p", { class: isError ? "error" : "", text: message });
    $("#flash").replaceChildren(note);
    if (!isError) setTimeout(() => { if (note.isConnected) note.remove(); }, 20000);
  }

  /** Render `body` into a section unless it is what the section already shows (no flicker, no stale clicks). */
  function changed(section, body) {
    const text = JSON.stringify(body);
    if (state.rendered[section] === text) return false;
    state.rendered[section] = text;
    return true;
  }

  // ------------------------------------------------------------------ the API

  function token() {
    return sessionStorage.getItem(TOKEN_KEY) || "";
  }

  class ApiError extends Error {
    constructor(status, message) { super(message); this.status = status; }
  }

  async function api(path, options = {}) {
    const headers = { Accept: "application/json", ...(options.headers || {}) };
    if (token()) headers.Authorization = "Bearer " + token();
    if (options.json !== undefined) headers["Content-Type"] = "application/json";
    const response = await fetch(path, {
      method: options.method || "GET", headers, cache: "no-store",
      body: options.json === undefined ? undefined : JSON.stringify(options.json),
    });
    let body = {};
    try { body = await response.json(); } catch (_) { /* an empty or non-JSON answer */ }
    if (!response.ok) {
      let message = body.error || `${response.status} ${response.statusText}`;
      if (response.status === 401) message += " (enter the console token at the top right)";
      throw new ApiError(response.status, message);
    }
    return body;
  }

  // ------------------------------------------------------------------ sections

  async function loadPortfolio() {
    const body = await api("/api/portfolio");
    if (!changed("portfolio", body)) return;
    $("#equity").textContent = money(body.equity);
    const pnl = $("#today-pnl");
    pnl.textContent = money(body.today_pnl, true);
    pnl.className = tone(body.today_pnl);
    const pct = $("#today-pnl-pct");
    pct.textContent = body.today_pnl_pct === null ? "" : "(" + percent(body.today_pnl_pct) + ")";
    pct.className = "pct " + tone(body.today_pnl_pct);
    $("#cash").textContent = money(body.cash);
    $("#positions-value").textContent = money(body.positions_value);
    $("#unrealized").textContent = money(body.unrealized_pnl, true);
    $("#unrealized").className = tone(body.unrealized_pnl);
    $("#realized-today").textContent = money(body.realized_pnl_today, true);
    $("#realized-today").className = tone(body.realized_pnl_today);
    const base = body.today_base;
    $("#overview-note").textContent = body.note || (body.as_of
      ? `as of ${when(body.as_of)}; today's P&L against ${base && base.kind === "previous_close" ? "the previous close" : "the day's first snapshot"}` +
        (base ? ` (${money(base.equity)} at ${when(base.taken_at)})` : "")
      : "");
    fill($("#allocation-table tbody"), body.allocation.map((item) => el("tr", { "data-symbol": item.symbol },
      cell(item.symbol), cell(money(item.market_value), "num"), cell(percent(item.weight_pct).replace("+", ""), "num"))),
      3, "nothing allocated");
    drawAllocation(body.allocation);
  }

  function drawAllocation(allocation) {
    if (!window.Chart) return;
    const palette = ["#3366cc", "#dc3912", "#ff9900", "#109618", "#990099", "#0099c6", "#dd4477", "#66aa00", "#b82e2e", "#316395"];
    const labels = allocation.map((item) => item.symbol);
    const exact = allocation.map((item) => money(item.market_value));
    const data = allocation.map((item) => Number(item.market_value));  // slice sizes only
    const colors = allocation.map((item, i) => (item.symbol === "CASH" ? "#c9d1d9" : palette[i % palette.length]));
    if (state.charts.allocation) state.charts.allocation.destroy();
    state.charts.allocation = new Chart($("#allocation-chart"), {
      type: "pie",
      data: { labels, datasets: [{ data, backgroundColor: colors }] },
      options: {
        animation: false, responsive: false, plugins: {
          legend: { display: false },
          tooltip: { callbacks: { label: (ctx) => `${labels[ctx.dataIndex]}: ${exact[ctx.dataIndex]}` } },
        },
      },
    });
  }

  async function loadPositions() {
    const [positions, triggers] = await Promise.all([api("/api/positions"), api("/api/triggers")]);
    state.positions = positions.positions;
    state.pending = triggers.pending;
    if (changed("positions", [positions, triggers.pending])) renderPositions(positions, triggers.pending);
    if (changed("triggers", triggers)) renderTriggers(triggers);
    renderUnprotected(positions.positions);
  }

  function level(planned, held) {
    if (planned === null || planned === undefined) return held ? price(held) : DASH;
    if (held === null || held === undefined) return price(planned) + " (not held)";
    return round(planned, 4) === round(held, 4) ? price(planned) : `${price(planned)} (held ${price(held)})`;
  }

  function renderPositions(body, pending) {
    const closing = new Set(pending.filter((p) => p.action === "CLOSE").map((p) => p.trade_id));
    $("#positions-count").textContent = `(${body.count})`;
    fill($("#positions-table tbody"), body.positions.map((p) => {
      const requested = closing.has(p.trade_id);
      const button = el("button", {
        type: "button", class: "danger close", "data-symbol": p.symbol, "data-trade": p.trade_id,
        disabled: requested, text: requested ? "Close requested" : "Close",
        onclick: () => askClose(p),
      });
      return el("tr", { "data-symbol": p.symbol, "data-trade": p.trade_id },
        cell(p.symbol, "symbol"),
        cell(quantity(p.qty), "num qty"),
        cell(price(p.entry_price), "num entry"),
        cell(price(p.current_price), "num current"),
        cell(money(p.unrealized_pnl, true), "num pnl " + tone(p.unrealized_pnl)),
        cell(percent(p.unrealized_pnl_pct), "num pnl-pct " + tone(p.unrealized_pnl_pct)),
        cell(level(p.stop && p.stop.planned, p.stop && p.stop.held), "num stop"),
        cell(level(p.target && p.target.planned, p.target && p.target.held), "num target"),
        el("td", {}, el("span", { class: "badge protection " + p.protection, text: p.protection })),
        el("td", {}, button));
    }), 10, "no open position");
  }

  function renderUnprotected(positions) {
    const exposed = positions.filter((p) => p.protection === "unprotected" || p.protection === "partial");
    fill($("#unprotected-list"), exposed.map((p) => el("li", { "data-symbol": p.symbol },
      el("span", { class: "badge " + p.protection, text: p.protection }),
      ` ${p.symbol} (trade ${p.trade_id}): ${quantity(p.qty)} shares, a stop held for ${quantity(p.stop ? p.stop.held_qty : "0")}` +
      " — the order monitor repairs it at its next run")), 1, "every open position has a stop for every share");
  }

  function renderTriggers(body) {
    const tbody = $("#triggers-table tbody");
    fill(tbody, body.triggers.map((t) => {
      const shown = t.kind === "trailing" ? percent(t.level).replace("+", "") + " below the high" : price(t.level);
      const row = el("tr", { "data-trigger": t.id },
        cell(t.symbol), cell(`#${t.trade_id}`), cell(t.kind), cell(shown, "num level"),
        cell(t.held ? price(t.held) : DASH, "num"),
        cell(t.order_id ? `#${t.order_id} ${t.order_status || ""}` : DASH),
        el("td", {},
          el("button", { type: "button", class: "edit", text: "Edit", onclick: () => editTrigger(row, t) }), " ",
          el("button", {
            type: "button", class: "remove danger", text: "Cancel", disabled: t.kind === "stop",
            title: t.kind === "stop" ? "a position always keeps its stop; move it instead" : "remove this level",
            onclick: () => removeTrigger(t),
          })));
      return row;
    }), 7, "no open trade has a level");
    fill($("#pending-list"), body.pending.map((p) => el("li", {},
      `${p.action} of ${p.symbol || ""} trade #${p.trade_id}` + (p.change ? " " + JSON.stringify(p.change) : "") +
      ` — decision #${p.decision_id}, by ${p.operator || p.source || "?"}`)), 1, "nothing waiting");
    const select = $("#trigger-trade");
    const trades = [...new Map(body.triggers.map((t) => [t.trade_id, t.symbol])).entries()];
    const chosen = select.value;
    select.replaceChildren(...trades.map(([id, sym]) => el("option", { value: id, text: `${sym} #${id}` })));
    if (chosen) select.value = chosen;
  }

  function editTrigger(row, trigger) {
    const input = el("input", { size: 9, inputmode: "decimal", value: trigger.level || "" });
    const save = el("button", { type: "button", text: "Save", onclick: () => setLevel(trigger.trade_id, trigger.kind, input.value) });
    const cancel = el("button", { type: "button", text: "Back", onclick: () => { state.editing = false; state.rendered.triggers = null; refresh(); } });
    row.querySelector(".level").replaceChildren(input, " ", save, " ", cancel);
    state.editing = true;
    input.focus();
  }

  async function setLevel(tradeId, kind, value) {
    const text = String(value).trim();
    if (!DECIMAL.test(text)) { flash(`level: ${JSON.stringify(text)} is not a number`, true); return; }
    try {
      const answer = await api("/api/triggers", { method: "POST", json: { trade_id: Number(tradeId), kind, level: text } });
      state.editing = false;
      state.rendered.triggers = null;
      await refresh();  // the message once the page shows the change (nothing is redrawn after it)
      flash(`${kind} of ${answer.symbol} #${answer.trade_id} set to ${answer.level} (was ${answer.previous ?? DASH}): ` +
            `decision #${answer.decision_id}; the order monitor moves it at the broker at its next run`);
    } catch (error) { flash(error.message, true); }
  }

  async function removeTrigger(trigger) {
    const confirmed = await confirmDialog({
      title: `Remove the ${trigger.kind} of ${trigger.symbol}?`,
      text: `Trade #${trigger.trade_id}: the ${trigger.kind} is removed at the order monitor's next run; the stop stays.`,
      action: "Remove",
    });
    if (!confirmed) return;
    try {
      const reason = encodeURIComponent(confirmed.reason || "removed from the operator console");
      const answer = await api(`/api/triggers/${encodeURIComponent(trigger.id)}?reason=${reason}`, { method: "DELETE" });
      await refresh();
      flash(`${trigger.kind} of ${answer.symbol} #${answer.trade_id} removal recorded as decision #${answer.decision_id}: ` +
            "the order monitor carries it out at its next run");
    } catch (error) { flash(error.message, true); }
  }

  async function askClose(position) {
    const confirmed = await confirmDialog({
      title: `Close ${position.symbol}?`,
      text: `Sell all ${quantity(position.qty)} ${position.symbol} of trade #${position.trade_id} at the market ` +
            `(now ${price(position.current_price)}, P&L ${money(position.unrealized_pnl, true)}). ` +
            "It is recorded as an approved CLOSE decision; the order monitor sells at its next run.",
      action: "Close position", reason: "closed from the operator console",
    });
    if (!confirmed) return;
    try {
      const answer = await api(`/api/positions/${encodeURIComponent(position.symbol)}/close`, {
        method: "POST", json: { confirm: true, reason: confirmed.reason || "closed from the operator console", trade_id: position.trade_id },
      });
      const ids = answer.closes.map((c) => `#${c.decision_id}${c.already_requested ? " (already requested)" : ""}`).join(", ");
      await refresh();
      flash(`Close of ${answer.symbol} recorded as decision ${ids}: the order monitor carries it out at its next run`);
    } catch (error) { flash(error.message, true); }
  }

  /** The confirmation every write asks for: resolves {reason} or null. */
  function confirmDialog({ title, text, action, reason = "" }) {
    const dialog = $("#confirm-dialog");
    $("#confirm-title").textContent = title;
    $("#confirm-text").textContent = text;
    $("#confirm-reason").value = reason;
    $("#confirm-yes").textContent = action;
    $("#confirm-error").textContent = token() ? "" : "No console token is set: this will be refused (401). Enter it at the top right first.";
    return new Promise((resolve) => {
      const done = (value) => {
        $("#confirm-yes").onclick = null;
        $("#confirm-no").onclick = null;
        dialog.close();
        resolve(value);
      };
      $("#confirm-yes").onclick = (event) => { event.preventDefault(); done({ reason: $("#confirm-reason").value.trim() }); };
      $("#confirm-no").onclick = () => done(null);
      dialog.oncancel = () => done(null);
      dialog.showModal();
    });
  }

  async function loadHistory() {
    const body = await api("/api/portfolio/history");
    if (!changed("history", body)) return;
    const points = body.points;
    const first = points[0];
    const last = points[points.length - 1];
    $("#equity-note").textContent = points.length
      ? `${points.length} snapshots, ${money(first.equity)} at ${when(first.at)} → ${money(last.equity)} at ${when(last.at)}` +
        (last.benchmark ? `; SPY scaled: ${money(last.benchmark)}` : "") + (body.benchmark_note ? `. ${body.benchmark_note}` : "")
      : "no snapshot yet: the position monitor writes one at each run";
    if (!window.Chart) return;
    const labels = points.map((p) => when(p.at));
    const series = (key) => points.map((p) => (p[key] === null ? null : Number(p[key])));  // positions on the canvas only
    if (state.charts.equity) state.charts.equity.destroy();
    state.charts.equity = new Chart($("#equity-chart"), {
      type: "line",
      data: {
        labels,
        datasets: [
          { label: "equity", data: series("equity"), borderColor: "#3366cc", backgroundColor: "#3366cc", pointRadius: 2, tension: 0.1 },
          { label: `${body.benchmark_symbol || "SPY"} (scaled)`, data: series("benchmark"), borderColor: "#999", backgroundColor: "#999",
            borderDash: [4, 4], pointRadius: 0, spanGaps: true },
        ],
      },
      options: {
        animation: false, maintainAspectRatio: false, interaction: { mode: "index", intersect: false },
        scales: {
          x: { ticks: { maxTicksLimit: 8, maxRotation: 0 } },
          y: { ticks: { callback: (value) => "$" + group(String(Math.round(value))) } },
        },
        plugins: {
          tooltip: {
            callbacks: {
              label: (ctx) => {
                const point = points[ctx.dataIndex];
                return `${ctx.dataset.label}: ${money(ctx.datasetIndex === 0 ? point.equity : point.benchmark)}`;
              },
            },
          },
        },
      },
    });
  }

  async function loadTrades() {
    const [trades, pnl] = await Promise.all([api("/api/trades?status=CLOSED&limit=50"), api("/api/portfolio/pnl")]);
    if (!changed("trades", [trades, pnl])) return;
    $("#pnl-summary").textContent = `realised ${money(pnl.realized, true)}, unrealised ${money(pnl.unrealized, true)}, ` +
      `total ${money(pnl.total, true)}; ${pnl.closed_trades} closed (${pnl.winners} won, ${pnl.losers} lost)`;
    fill($("#trades-table tbody"), trades.trades.map((t) => el("tr", { "data-trade": t.id, "data-symbol": t.symbol },
      el("td", {}, el("a", { href: `#trade/${t.id}`, text: `#${t.id}` })),
      cell(t.symbol, "symbol"), cell(quantity(t.exited_qty || t.actual_qty), "num"), cell(price(t.actual_entry), "num"),
      cell(price(t.exit_price), "num"), cell(t.exit_reason || DASH, "exit-reason"), cell(when(t.exit_date)),
      cell(money(t.pnl.realized, true), "num pnl " + tone(t.pnl.realized)))), 8, "no closed trade yet");
    fill($("#exit-reasons-table tbody"), pnl.by_exit_reason.map((r) => el("tr", {},
      cell(r.exit_reason || DASH), cell(r.trades, "num"), cell(`${r.winners} / ${r.losers}`, "num"),
      cell(money(r.pnl, true), "num " + tone(r.pnl)))), 4, "");
  }

  function orderQuery() {
    const params = new URLSearchParams({ limit: state.orders.limit, offset: state.orders.offset });
    for (const [key, value] of Object.entries(state.orders.filter)) if (value) params.set(key, value);
    return params.toString();
  }

  async function loadOrders() {
    const body = await api("/api/orders?" + orderQuery());
    if (!changed("orders", body)) return;
    fill($("#orders-table tbody"), body.orders.map((o) => el("tr", { "data-order": o.id },
      cell(`#${o.id}`), cell(when(o.submitted_at)), cell(o.symbol), cell(o.type), cell(o.side),
      cell(o.status, "status"), cell(quantity(o.qty), "num"), cell(quantity(o.filled_qty), "num"),
      cell(o.limit_price || o.stop_price ? [o.limit_price && "L " + price(o.limit_price), o.stop_price && "S " + price(o.stop_price)].filter(Boolean).join(" ") : DASH, "num"),
      cell(price(o.filled_avg_price), "num"),
      el("td", {}, o.trade_id ? el("a", { href: `#trade/${o.trade_id}`, class: "trade-link", text: `trade #${o.trade_id}` }) : DASH),
      el("td", {}, o.decision_id && o.trade_id
        ? el("a", { href: `#trade/${o.trade_id}/decision/${o.decision_id}`, class: "decision-link", text: `decision #${o.decision_id}` })
        : (o.decision_id ? `#${o.decision_id}` : DASH)))), 12, "no order matches");
    const page = body.page;
    $("#orders-page").textContent = page.total
      ? `${page.offset + 1}–${page.offset + body.orders.length} of ${page.total}` : "0 orders";
    $("#orders-prev").disabled = page.offset === 0;
    $("#orders-next").disabled = page.next_offset === null;
  }

  async function loadRefused() {
    const body = await api("/api/decisions?outcome=refused&limit=50");
    if (!changed("refused", body)) return;
    fill($("#refused-table tbody"), body.decisions.map((d) => el("tr", { "data-decision": d.id },
      cell(`#${d.id}`), cell(when(d.outcome_at || d.created_at)), cell(d.ticker || DASH), cell(d.primary_action || DASH),
      cell(d.code || DASH), cell(d.reason || DASH, "reason"))), 6, "no refused decision");
  }

  async function loadHealth() {
    const [runs, mode] = await Promise.all([api("/api/runs?limit=20"), api("/api/trading/mode")]);
    const modeBadge = $("#mode");
    modeBadge.textContent = "mode " + mode.summary + (mode.broker ? ` · ${mode.broker.paper ? "paper" : "LIVE"}` : "");
    modeBadge.className = "badge " + mode.mode;
    if (changed("runs", runs)) {
      fill($("#runs-table tbody"), runs.last_by_program.map((r) => el("tr", { "data-program": r.program },
        cell(r.program), cell(when(r.finished_at || r.started_at)),
        el("td", {}, el("span", { class: "badge " + (r.outcome === "success" ? "ok" : r.outcome === "warning" ? "warning" : "critical"), text: r.outcome || "running" })),
        cell(r.error || "", "reason"))), 4, "no program has run yet");
    }
  }

  async function loadChecks() {
    const body = await api("/api/health");
    if (!changed("health", body)) return;
    const badge = $("#health-status");
    badge.textContent = body.status;
    badge.className = "badge " + body.status;
    fill($("#checks-list"), body.checks.map((c) => el("li", { "data-check": c.name },
      el("span", { class: "badge " + c.status, text: c.status }), ` ${c.name}: ${c.message}`)), 1, "no checks");
  }

  async function loadMarket() {
    const body = await api("/api/market");
    state.marketOpen = body.is_open;
    state.refreshSeconds = overrideRefresh > 0 ? overrideRefresh : body.refresh_seconds;
    const badge = $("#market");
    badge.textContent = `market ${body.is_open ? "open" : "closed"}` + (body.timestamp ? ` · ${when(body.timestamp)}` : "");
    badge.className = "badge " + (body.is_open ? "open" : "closed");
    badge.title = body.note || `the broker's clock; next open ${when(body.next_open)}, next close ${when(body.next_close)}`;
  }

  // ------------------------------------------------------------------ the trade story (linked from orders and trades)

  async function showDetail() {
    const match = /^#trade\/(\d+)(?:\/decision\/(\d+))?$/.exec(location.hash);
    const section = $("#detail");
    if (!match) { section.hidden = true; return; }
    const [, tradeId, decisionId] = match;
    section.hidden = false;
    try {
      const t = await api(`/api/trades/${tradeId}`);
      $("#detail-title").textContent = `Trade #${t.id} ${t.symbol}: ${t.status}` + (t.exit_reason ? ` (${t.exit_reason})` : "") +
        ` — P&L ${money(t.pnl.total, true)}`;
      const table = (head, rows) => el("table", { class: "small" },
        el("thead", {}, el("tr", {}, ...head.map((h) => el("th", { text: h })))), el("tbody", {}, ...rows));
      const body = [
        el("h3", { text: "Decisions" }),
        table(["Decision", "Created", "Action", "Outcome", "Reason"], t.decisions.map((d) => el("tr", {
          id: `decision-${d.id}`, class: String(d.id) === decisionId ? "highlight" : "" },
          cell(`#${d.id}`), cell(when(d.created_at)), cell(d.primary_action), cell(d.outcome || DASH), cell(d.reason || DASH, "reason")))),
        el("h3", { text: "Orders" }),
        table(["Order", "Type", "Side", "Status", "Qty", "Filled", "Avg fill"], t.orders.map((o) => el("tr", {},
          cell(`#${o.id}`), cell(o.type), cell(o.side), cell(o.status), cell(quantity(o.qty), "num"),
          cell(quantity(o.filled_qty), "num"), cell(price(o.filled_avg_price), "num")))),
        el("h3", { text: "Fills" }),
        table(["When", "Side", "Qty", "Price", "Realised"], t.fills.map((f) => el("tr", {},
          cell(when(f.filled_at)), cell(f.side), cell(quantity(f.qty), "num"), cell(price(f.price), "num"),
          cell(f.realized_pnl === null ? DASH : money(f.realized_pnl, true), "num " + tone(f.realized_pnl))))),
        el("h3", { text: "Audit trail" }),
        table(["When", "Program", "Event", "Change", "Reason"], t.audit.map((a) => el("tr", {},
          cell(when(a.occurred_at)), cell(a.program), cell(a.event),
          cell([a.old_value, a.new_value].filter((v) => v !== null && v !== undefined).join(" → ")), cell(a.reason || "", "reason")))),
      ];
      $("#detail-body").replaceChildren(...body);
      const target = decisionId ? document.getElementById(`decision-${decisionId}`) : section;
      (target || section).scrollIntoView({ block: "center" });
    } catch (error) {
      $("#detail-title").textContent = `Trade #${tradeId}`;
      $("#detail-body").replaceChildren(el("p", { class: "error", text: error.message }));
    }
  }

  // ------------------------------------------------------------------ refresh

  /** Reload every section. Called while a refresh runs, it runs once more after it (so a write's
   *  effect is shown) and resolves when that one is done. */
  function refresh() {
    if (state.running) { state.again = true; return state.running; }
    state.running = (async () => {
      do { state.again = false; await refreshOnce(); } while (state.again);
    })().finally(() => { state.running = null; });
    return state.running;
  }

  async function refreshOnce() {
    $("#refresh-state").textContent = "refreshing…";
    const loads = [loadMarket, loadPortfolio, loadPositions, loadHistory, loadTrades, loadOrders, loadRefused, loadHealth, loadChecks];
    const results = await Promise.allSettled(loads.map((load) => load()));
    const failed = results.filter((r) => r.status === "rejected").map((r) => r.reason.message);
    state.loads += 1;
    document.body.dataset.loads = String(state.loads);
    const stamp = new Date().toLocaleTimeString();
    const auto = state.marketOpen ? `refreshing every ${state.refreshSeconds} s while the market is open`
      : "auto-refresh paused: the market is closed";
    $("#refresh-state").textContent = `updated ${stamp} · ${auto}`;
    if (failed.length) flash("could not load: " + [...new Set(failed)].join("; "), true);
    schedule();
  }

  function schedule() {
    clearTimeout(state.timer);
    // Open: refresh everything every few seconds. Closed: look at the market clock each minute
    // (a refresh follows as soon as it opens). Never while a confirmation or an edit is open.
    const seconds = state.marketOpen ? state.refreshSeconds : 60;
    state.timer = setTimeout(async () => {
      if ($("#confirm-dialog").open || state.editing) { schedule(); return; }
      if (state.marketOpen) { await refresh(); return; }
      try { await loadMarket(); } catch (_) { /* shown at the next refresh */ }
      if (state.marketOpen) await refresh(); else schedule();
    }, seconds * 1000);
  }

  function showToken() {
    $("#token-state").textContent = token() ? "set for this tab" : "not set: read-only";
    $("#token-input").value = "";
  }

  function start() {
    $("#refresh").addEventListener("click", () => { state.rendered = {}; refresh(); });
    $("#token-form").addEventListener("submit", (event) => {
      event.preventDefault();
      const value = $("#token-input").value.trim();
      if (value) sessionStorage.setItem(TOKEN_KEY, value);
      showToken();
      refresh();
    });
    $("#token-forget").addEventListener("click", () => { sessionStorage.removeItem(TOKEN_KEY); showToken(); });
    $("#trigger-form").addEventListener("submit", (event) => {
      event.preventDefault();
      setLevel($("#trigger-trade").value, $("#trigger-kind").value, $("#trigger-level").value);
    });
    $("#orders-filter").addEventListener("submit", (event) => {
      event.preventDefault();
      state.orders.offset = 0;
      state.orders.filter = {
        status: $("#filter-status").value, type: $("#filter-type").value, symbol: $("#filter-symbol").value.trim(),
        trade: $("#filter-trade").value.trim(), from: $("#filter-from").value, to: $("#filter-to").value,
      };
      loadOrders().catch((error) => flash(error.message, true));
    });
    $("#orders-filter").addEventListener("reset", () => {
      state.orders = { ...state.orders, offset: 0, filter: {} };
      setTimeout(() => loadOrders().catch((error) => flash(error.message, true)));
    });
    $("#orders-prev").addEventListener("click", () => {
      state.orders.offset = Math.max(0, state.orders.offset - state.orders.limit);
      loadOrders().catch((error) => flash(error.message, true));
    });
    $("#orders-next").addEventListener("click", () => {
      state.orders.offset += state.orders.limit;
      loadOrders().catch((error) => flash(error.message, true));
    });
    $("#detail-close").addEventListener("click", () => { history.replaceState(null, "", location.pathname + location.search); showDetail(); });
    window.addEventListener("hashchange", showDetail);
    showToken();
    refresh();
    showDetail();
  }

  // Exposed for the browser test and the curious: the exact formatting, nothing else.
  window.consoleFormat = { round, money, price, percent, quantity };
  document.addEventListener("DOMContentLoaded", start);
})();
