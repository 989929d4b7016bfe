// The Today page's charts, drawn by the vendored Chart.js from the JSON the page holds
// (#chart-data). Every figure a chart shows is also in the table under it: the charts
// add a picture, never a number of their own.
(function () {
  "use strict";
  var holder = document.getElementById("chart-data");
  if (!holder || typeof Chart === "undefined") {
    return;
  }
  var data = JSON.parse(holder.textContent);
  var green = "#2e7d4f";
  var red = "#b3261e";
  Chart.defaults.font.family = getComputedStyle(document.body).fontFamily;
  Chart.defaults.animation = false; // the figures are read, not watched
  Chart.defaults.maintainAspectRatio = false;

  function bars(id, labels, datasets, horizontal) {
    var canvas = document.getElementById(id);
    if (!canvas || labels.length === 0) {
      return;
    }
    new Chart(canvas, {
      type: "bar",
      data: { labels: labels, datasets: datasets },
      options: {
        indexAxis: horizontal ? "y" : "x",
        responsive: true,
        scales: {
          x: { stacked: true, beginAtZero: true },
          y: { stacked: true, beginAtZero: true },
        },
        plugins: { legend: { display: datasets.length > 1, position: "bottom" } },
      },
    });
  }

  bars(
    "chart-reason",
    data.reason.labels,
    [
      {
        label: "",
        data: data.reason.values,
        backgroundColor: data.reason.results.map(function (result) {
          return result === "ALLOW" ? green : red;
        }),
      },
    ],
    true
  );
  bars(
    "chart-campaign",
    data.campaign.labels,
    [
      { label: data.labels.allowed, data: data.campaign.allowed, backgroundColor: green },
      { label: data.labels.denied, data: data.campaign.denied, backgroundColor: red },
    ],
    true
  );
  bars(
    "chart-hour",
    data.hour.labels,
    [
      { label: data.labels.allowed, data: data.hour.allowed, backgroundColor: green },
      { label: data.labels.denied, data: data.hour.denied, backgroundColor: red },
    ],
    false
  );
})();
