// The IoT page: per-site and per-device temperature and humidity (mean per 1-minute window),
// readings per second, late readings, and the dead-letter / late topics of the IoT pipeline.
// Extra URL parameters: ?site=site-1 (devices of one site), ?devices=20 (most device lines).
(function () {
  "use strict";
  const site = dp.params.get("site") || "";
  const maxDevices = Math.max(1, Number(dp.params.get("devices") || "20"));

  const charts = {
    siteTemperature: dp.timeChart("site-temperature", "°C (mean)"),
    siteHumidity: dp.timeChart("site-humidity", "% (mean)"),
    deviceTemperature: dp.timeChart("device-temperature", "°C (mean)"),
    deviceHumidity: dp.timeChart("device-humidity", "% (mean)"),
    readingsPerSecond: dp.timeChart("readings-per-second", "readings/s"),
    lateReadings: dp.timeChart("late-readings", "late readings per window"),
    sideTopics: dp.barChart("side-topics", "records", true),
  };

  const temperature = (row) => (row.temperature_celsius_count > 0 ? row.temperature_celsius_mean : null);
  const humidity = (row) => (row.humidity_percent_count > 0 ? row.humidity_percent_mean : null);
  const windowSeconds = (row) => (Date.parse(row.window_end) - Date.parse(row.window_start)) / 1000;

  async function refresh(range) {
    const [sites, devices, sideTopics] = await Promise.all([
      dp.api("/api/v1/iot/series", { scope: "site", window_kind: "tumbling", from: range.from, to: range.to,
                                     site_id: site, limit: 10000 }),
      dp.api("/api/v1/iot/series", { scope: "device", window_kind: "tumbling", from: range.from, to: range.to,
                                     site_id: site, limit: 10000 }),
      dp.api("/api/v1/pipeline/dead-letters"),
    ]);
    dp.setSeries(charts.siteTemperature, dp.groupSeries(sites.rows, "key_id", temperature));
    dp.setSeries(charts.siteHumidity, dp.groupSeries(sites.rows, "key_id", humidity));

    const deviceIds = Array.from(new Set(devices.rows.map((row) => row.key_id)));
    const shown = new Set(deviceIds.slice(0, maxDevices));
    const deviceRows = devices.rows.filter((row) => shown.has(row.key_id));
    dp.setSeries(charts.deviceTemperature, dp.groupSeries(deviceRows, "key_id", temperature));
    dp.setSeries(charts.deviceHumidity, dp.groupSeries(deviceRows, "key_id", humidity));
    dp.setText("devices-shown", deviceIds.length > shown.size
      ? "first " + shown.size + " of " + deviceIds.length + " devices (?site= or ?devices= to change)"
      : deviceIds.length + " devices");

    const perSecond = dp.sumByWindow(sites.rows, (row) => row.reading_count / windowSeconds(row));
    dp.setSeries(charts.readingsPerSecond, new Map([["all sites", perSecond]]));
    dp.setSeries(charts.lateReadings, dp.groupSeries(sites.rows, "key_id", (row) => row.late_reading_count));

    const iotTopics = sideTopics.topics.filter((row) => row.topic.startsWith("iot."));
    dp.setBars(charts.sideTopics, iotTopics.map((row) => row.topic), iotTopics.map((row) => row.records), "records");

    const last = perSecond.length ? perSecond[perSecond.length - 1].y : null;
    const sum = (rows, pick) => rows.reduce((total, row) => total + pick(row), 0);
    dp.setText("tile-sites", dp.number(new Set(sites.rows.map((row) => row.key_id)).size));
    dp.setText("tile-devices", dp.number(deviceIds.length));
    dp.setText("tile-readings-per-second", dp.number(last, 1));
    dp.setText("tile-late", dp.number(sum(sites.rows, (row) => row.late_reading_count)));
    // "+" while the service is still counting a large topic for the first time.
    dp.setText("tile-dead-letters", dp.number(sum(iotTopics.filter((row) => row.kind === "dead-letters"),
                                                  (row) => row.records)) + (sideTopics.caught_up ? "" : "+"));
  }

  dp.start(refresh);
})();
