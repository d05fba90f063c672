// The behaviour page: events per minute by type, active users and sessions per minute, sessions
// started and converted, the funnel, top pages, and the behaviour pipeline's dead-letter / late topics.
(function () {
  "use strict";
  const charts = {
    eventsByType: dp.timeChart("events-by-type", "events per window"),
    activeUsers: dp.timeChart("active-users", "distinct per window"),
    sessionsStarted: dp.timeChart("sessions-started", "sessions per minute"),
    funnel: dp.barChart("funnel", "sessions", false),
    topPages: dp.barChart("top-pages", "events", true),
    sideTopics: dp.barChart("side-topics", "records", true),
  };

  const minute = (iso) => Math.floor(Date.parse(iso) / 60000) * 60000;

  function sessionsPerMinute(rows) {
    const started = new Map();
    const converted = new Map();
    for (const row of rows) {
      const x = minute(row.session_start);
      started.set(x, (started.get(x) || 0) + 1);
      converted.set(x, (converted.get(x) || 0) + (row.converted ? 1 : 0));
    }
    const points = (counts) => Array.from(counts.entries()).sort((a, b) => a[0] - b[0])
      .map(([x, y]) => ({ x: x, y: y }));
    return new Map([["started", points(started)], ["converted", points(converted)]]);
  }

  async function refresh(range) {
    const span = { from: range.from, to: range.to };
    const [byType, all, sessions, summary, funnel, pages, sideTopics] = await Promise.all([
      dp.api("/api/v1/behaviour/metrics", Object.assign({ dimension: "event_type", window_kind: "tumbling",
                                                          limit: 10000 }, span)),
      dp.api("/api/v1/behaviour/metrics", Object.assign({ dimension: "all", window_kind: "tumbling",
                                                          limit: 10000 }, span)),
      dp.api("/api/v1/behaviour/sessions", Object.assign({ limit: 10000 }, span)),
      dp.api("/api/v1/behaviour/sessions/summary", span),
      dp.api("/api/v1/behaviour/funnel", span),
      dp.api("/api/v1/behaviour/top-pages", Object.assign({ order_by: "events", window_kind: "tumbling",
                                                           limit: 10 }, span)),
      dp.api("/api/v1/pipeline/dead-letters"),
    ]);
    const typeName = (row) => row.dimension_value.replace(/^USER_EVENT_TYPE_/, "").toLowerCase();
    dp.setSeries(charts.eventsByType, dp.groupSeries(byType.rows, typeName, (row) => row.event_count));
    dp.setSeries(charts.activeUsers, new Map([
      ["users", dp.groupSeries(all.rows, () => "users", (row) => row.unique_user_count).get("users") || []],
      ["sessions", dp.groupSeries(all.rows, () => "sessions", (row) => row.unique_session_count).get("sessions") || []],
    ]));
    dp.setSeries(charts.sessionsStarted, sessionsPerMinute(sessions.rows));
    dp.setBars(charts.funnel, funnel.rows.map((row) => row.stage.replace("_", " ")),
               funnel.rows.map((row) => row.sessions), "sessions");
    dp.setBars(charts.topPages, pages.rows.map((row) => row.page_path), pages.rows.map((row) => row.events), "events");
    const behaviourTopics = sideTopics.topics.filter((row) => row.topic.startsWith("behaviour."));
    dp.setBars(charts.sideTopics, behaviourTopics.map((row) => row.topic), behaviourTopics.map((row) => row.records),
               "records");

    const s = summary.rows[0] || {};
    const latest = all.rows.length ? all.rows[all.rows.length - 1] : null;
    dp.setText("tile-active-users", dp.number(latest ? latest.unique_user_count : null));
    dp.setText("tile-sessions", dp.number(s.sessions));
    dp.setText("tile-conversion", s.conversion_rate === null || s.conversion_rate === undefined
      ? "–" : dp.number(100 * s.conversion_rate, 1) + " %");
    dp.setText("tile-duration", s.mean_duration_seconds === null || s.mean_duration_seconds === undefined
      ? "–" : dp.number(s.mean_duration_seconds / 60, 1) + " min");
    dp.setText("tile-dead-letters", dp.number(behaviourTopics.filter((row) => row.kind === "dead-letters")
      .reduce((total, row) => total + row.records, 0)) + (sideTopics.caught_up ? "" : "+"));
  }

  dp.start(refresh);
})();
