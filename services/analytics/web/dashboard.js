// Shared by the dashboard pages: the time range from the URL, JSON polling, Chart.js helpers.
//
// URL parameters (every page):
//   ?window=1h            rolling range ending now (s, m, h or d; default 1h)
//   ?from=...&to=...      a fixed range instead (ISO 8601, UTC when no zone is given)
//   ?refresh=5            seconds between refreshes (default 5, at least 1)
//
// State for people and tests: window.dpDashboard = {charts, refreshes, errors, lastError}.
(function () {
  "use strict";

  const params = new URLSearchParams(window.location.search);
  const PALETTE = ["#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2",
                   "#7f7f7f", "#bcbd22", "#17becf"];
  const UNITS = { s: 1, m: 60, h: 3600, d: 86400 };
  const state = { charts: {}, refreshes: 0, errors: 0, lastError: null, lastRefresh: null };
  window.dpDashboard = state;

  function durationSeconds(text) {
    const match = /^([1-9][0-9]*)([smhd])$/.exec(text || "");
    if (!match) {
      throw new Error("window must look like 15m, 1h or 7d, got " + JSON.stringify(text));
    }
    return Number(match[1]) * UNITS[match[2]];
  }

  // {from, to} as the API takes them; a fixed range when the URL gives one.
  function range() {
    if (params.get("from") || params.get("to")) {
      const fixed = {};
      if (params.get("from")) fixed.from = params.get("from");
      if (params.get("to")) fixed.to = params.get("to");
      return fixed;
    }
    const to = new Date();
    const from = new Date(to.getTime() - 1000 * durationSeconds(params.get("window") || "1h"));
    return { from: from.toISOString(), to: to.toISOString() };
  }

  async function api(path, query) {
    const clean = {};
    for (const [key, value] of Object.entries(query || {})) {
      if (value !== undefined && value !== null && value !== "") clean[key] = value;
    }
    const qs = new URLSearchParams(clean).toString();
    const response = await fetch(path + (qs ? "?" + qs : ""), { cache: "no-store" });
    const body = await response.json();
    if (!response.ok) {
      const detail = body.problems ? body.problems.join("; ") : (body.detail || body.error);
      throw new Error(path + ": HTTP " + response.status + ": " + detail);
    }
    return body;
  }

  function color(index) {
    return PALETTE[index % PALETTE.length];
  }

  const MINUTE = 60000;
  const DAY = 1440 * MINUTE;

  function clock(ms) {
    return new Date(ms).toISOString().slice(11, 16);
  }

  // A tick's label: UTC hh:mm; the date too when the axis spans more than a day (else the same
  // hh:mm would repeat on each day), only the date when the ticks are whole days apart.
  function tickLabel(axis, ms) {
    if (axis.max - axis.min <= DAY) return clock(ms);
    const iso = new Date(ms).toISOString();
    return (axis.ticks.length > 1 && axis.ticks[1].value - axis.ticks[0].value >= DAY)
      ? iso.slice(5, 10) : iso.slice(5, 10) + " " + iso.slice(11, 16);
  }

  // Data closer together than two minutes (one window: a single x value) gives Chart.js a range
  // of a few milliseconds or years around it; show two minutes around the data instead.
  function widenToMinutes(axis) {
    const data = axis.getMinMax(false);
    if (!Number.isFinite(data.min) || !Number.isFinite(data.max) || data.max - data.min >= 2 * MINUTE) return;
    const middle = (data.min + data.max) / 2;
    axis.min = Math.min(data.min, middle - MINUTE);
    axis.max = Math.max(data.max, middle + MINUTE);
  }

  // Ticks on whole minutes (1, 2, 5, 10, 15, 30, 60, ... apart, whole days beyond), at most about
  // eight, always at least one: Chart.js's own ticks (milliseconds apart) are never kept.
  function minuteTicks(axis) {
    const steps = [1, 2, 5, 10, 15, 30, 60, 120, 360, 720, 1440].map((m) => m * MINUTE);
    const span = axis.max - axis.min;
    let step = steps.find((s) => span / s <= 8);
    if (step === undefined) step = Math.ceil(span / 8 / DAY) * DAY;
    const ticks = [];
    if (span > 0) {
      for (let value = Math.ceil(axis.min / step) * step; value <= axis.max; value += step) ticks.push({ value: value });
    }
    if (!ticks.length) ticks.push({ value: axis.min });
    axis.ticks = ticks;
  }

  // A line chart over time: x = epoch milliseconds (shown as UTC hh:mm), one dataset per series.
  function timeChart(id, yTitle) {
    const chart = new Chart(document.getElementById(id), {
      type: "line",
      data: { datasets: [] },
      options: {
        animation: false,
        parsing: false,
        normalized: true,
        maintainAspectRatio: false,
        interaction: { mode: "nearest", intersect: false },
        elements: { point: { radius: 2 }, line: { borderWidth: 1.5 } },
        scales: {
          x: { type: "linear", afterDataLimits: widenToMinutes, afterBuildTicks: minuteTicks,
               ticks: { callback: function (value) { return tickLabel(this, value); } },
               title: { display: true, text: "window start (UTC)" } },
          y: { title: { display: true, text: yTitle } },
        },
        plugins: {
          legend: { position: "bottom", labels: { boxWidth: 12 } },
          tooltip: { callbacks: { title: (items) => items.length ? new Date(items[0].parsed.x).toISOString() : "" } },
        },
      },
    });
    state.charts[id] = chart;
    return chart;
  }

  // A bar chart of categories (horizontal with `horizontal`).
  function barChart(id, xTitle, horizontal) {
    const chart = new Chart(document.getElementById(id), {
      type: "bar",
      data: { labels: [], datasets: [] },
      options: {
        animation: false,
        maintainAspectRatio: false,
        indexAxis: horizontal ? "y" : "x",
        scales: { [horizontal ? "x" : "y"]: { beginAtZero: true, title: { display: true, text: xTitle } } },
        plugins: { legend: { display: false } },
      },
    });
    state.charts[id] = chart;
    return chart;
  }

  // series: Map(name -> [{x, y}]) in display order. Datasets keep their colour per name.
  function setSeries(chart, series) {
    const byLabel = new Map(chart.data.datasets.map((dataset) => [dataset.label, dataset]));
    chart.data.datasets = Array.from(series.entries()).map(([name, points], index) => {
      const dataset = byLabel.get(name) || { label: name, borderColor: color(index), backgroundColor: color(index) };
      dataset.data = points;
      return dataset;
    });
    chart.update("none");
  }

  function setBars(chart, labels, values, label) {
    chart.data.labels = labels;
    chart.data.datasets = [{ label: label, data: values, backgroundColor: labels.map((_, i) => color(i)) }];
    chart.update("none");
  }

  // rows -> Map(key -> [{x: window start ms, y}]), skipping rows where value() is null.
  function groupSeries(rows, key, value) {
    const out = new Map();
    for (const row of rows) {
      const y = value(row);
      if (y === null || y === undefined || Number.isNaN(y)) continue;
      const name = typeof key === "function" ? key(row) : row[key];
      if (!out.has(name)) out.set(name, []);
      out.get(name).push({ x: Date.parse(row.window_start), y: y });
    }
    for (const points of out.values()) points.sort((a, b) => a.x - b.x);
    return out;
  }

  // rows -> [{x, y}] with y summed per window start.
  function sumByWindow(rows, value) {
    const totals = new Map();
    for (const row of rows) {
      const x = Date.parse(row.window_start);
      totals.set(x, (totals.get(x) || 0) + value(row));
    }
    return Array.from(totals.entries()).sort((a, b) => a[0] - b[0]).map(([x, y]) => ({ x: x, y: y }));
  }

  function setText(id, text) {
    const element = document.getElementById(id);
    if (element) element.textContent = text;
  }

  function number(value, digits) {
    if (value === null || value === undefined) return "–";
    return Number(value).toLocaleString("en", { maximumFractionDigits: digits === undefined ? 0 : digits });
  }

  function describeRange() {
    const r = range();
    if (params.get("from") || params.get("to")) {
      return "fixed range " + (r.from || "(to - 1h)") + " … " + (r.to || "now");
    }
    return "last " + (params.get("window") || "1h");
  }

  // Calls refresh() now and then every ?refresh= seconds; never reloads the page.
  function start(refresh) {
    let seconds = Number(params.get("refresh") || "5");
    if (!(seconds >= 1)) seconds = 5;
    setText("range", describeRange() + ", refreshed every " + seconds + " s");
    async function tick() {
      try {
        await refresh(range());
        state.refreshes += 1;
        state.lastRefresh = new Date().toISOString();
        setText("status", "updated " + state.lastRefresh.slice(11, 19) + " UTC");
        document.body.classList.remove("stale");
      } catch (err) {
        state.errors += 1;
        state.lastError = String(err && err.message ? err.message : err);
        setText("status", "refresh failed: " + state.lastError);
        document.body.classList.add("stale");
      }
      window.setTimeout(tick, seconds * 1000);
    }
    tick();
  }

  window.dp = { params, range, api, timeChart, barChart, setSeries, setBars, groupSeries, sumByWindow, setText,
                number, start };
})();
