// poolmap's dashboard: reads /api/v1/status every second and draws it. Every string that came from
// a peer (host names, task names) goes into text nodes only (textContent), never into markup, so a
// hostile worker cannot run script here. No library, nothing fetched but this broker's own API.
"use strict";

const HISTORY_MS = 10 * 60 * 1000;  // the charts' span
const REFRESH_MS = 1000;
const MAX_ROWS = 500;               // rows drawn per table; the rest are counted

const state = {
  token: sessionStorage.getItem("poolmap-token") || "",
  last: null,          // the previous snapshot (rates are per broker time: its uptime_ms)
  chunksPerSecond: 0,
  jobRates: new Map(), // job key -> {items, at, rate}
  history: [],         // {at, done, queued, workers}
};

function $(id) { return document.getElementById(id); }

function el(tag, text, className) {
  const node = document.createElement(tag);
  if (text !== undefined && text !== null) node.textContent = String(text);
  if (className) node.className = className;
  return node;
}

function duration(ms) {
  if (!isFinite(ms) || ms < 0) return "–";
  const s = Math.round(ms / 1000);
  if (s < 60) return s + " s";
  const m = Math.floor(s / 60);
  if (m < 60) return m + " min " + (s % 60) + " s";
  return Math.floor(m / 60) + " h " + (m % 60) + " min";
}

function number(n) { return Number(n).toLocaleString("en-US"); }

function rate(n) { return n >= 100 ? number(Math.round(n)) : n.toFixed(n >= 10 ? 1 : 2); }

function card(label, value) {
  const node = el("div", null, "card");
  node.appendChild(el("div", value, "value"));
  node.appendChild(el("div", label, "label"));
  return node;
}

// Why a job's work waits: the broker says (job.waiting), unless it is the passive one of a pair.
function waitingBecause(job, status) {
  if (status.role === "passive") return "this broker is passive: the other broker of the pair serves work";
  return job.waiting;
}

function drawCluster(status, chunksPerSecond) {
  const cluster = $("cluster");
  cluster.replaceChildren(
    card("worker processes", number(status.workers.length + status.workers_omitted)),
    card("clients", number(status.clients)),
    card("chunks/s", rate(chunksPerSecond)),
    card("queued", number(status.chunks_queued)),
    card("in flight", number(status.chunks_in_flight)),
    card("done", number(status.chunks_done)),
    card("failed", number(status.chunks_failed)),
    card("re-dispatched", number(status.chunks_redispatched)));
  if (status.peer !== null) {
    cluster.appendChild(card("peer broker", status.peer + (status.peer === "silent" ? " " + duration(status.peer_silent_ms) : "")));
  }
}

function drawJobs(status) {
  const now = status.uptime_ms;
  const body = $("jobs").tBodies[0];
  const rows = [];
  const seen = new Set();
  for (const job of status.jobs.slice(0, MAX_ROWS)) {
    const key = job.client_host + "/" + job.client_pid + "/" + job.job;
    seen.add(key);
    const previous = state.jobRates.get(key);
    let itemsPerSecond = previous ? previous.rate : 0;
    if (previous && now > previous.at) {
      const fresh = (job.items_done - previous.items) * 1000 / (now - previous.at);
      itemsPerSecond = previous.rate > 0 ? 0.7 * previous.rate + 0.3 * fresh : fresh;
    } else if (!previous && job.age_ms > 0) {
      itemsPerSecond = job.items_done * 1000 / job.age_ms;
    }
    if (!previous || now > previous.at) {
      state.jobRates.set(key, { items: job.items_done, at: now, rate: Math.max(0, itemsPerSecond) });
    }
    const row = el("tr");
    row.appendChild(el("td", job.stream ? job.task + " (imap)" : job.task, "text"));
    row.appendChild(el("td", job.client_host + " pid " + job.client_pid, "text"));
    row.appendChild(el("td", job.job));
    const bar = el("div", null, "bar");
    bar.setAttribute("role", "progressbar");
    const total = job.items_total;
    if (total > 0) {
      const done = Math.min(1, job.items_done / total);
      bar.setAttribute("aria-valuenow", String(Math.round(done * 100)));
      const doneSpan = el("span", null, "done");
      doneSpan.style.width = (done * 100).toFixed(2) + "%";
      bar.appendChild(doneSpan);
      const failed = Math.min(1 - done, job.items_failed / total);
      const chunks = job.chunks_in_flight + job.chunks_queued;
      if (chunks > 0) {
        const running = el("span", null, "running");
        running.style.width = ((1 - done - failed) * 100 * job.chunks_in_flight / chunks).toFixed(2) + "%";
        bar.appendChild(running);
      }
      if (failed > 0) {
        const failedSpan = el("span", null, "failed");
        failedSpan.style.width = (failed * 100).toFixed(2) + "%";
        failedSpan.style.marginLeft = "auto";  // at the bar's end, after the queued part
        bar.appendChild(failedSpan);
      }
    }
    const barCell = el("td");
    barCell.appendChild(bar);
    row.appendChild(barCell);
    row.appendChild(el("td", total > 0 ? number(job.items_done) + " / " + number(total) : number(job.items_done)));
    row.appendChild(el("td", rate(Math.max(0, itemsPerSecond))));
    row.appendChild(el("td", duration(job.age_ms)));
    const left = total - job.items_done;
    row.appendChild(el("td", total > 0 && left <= 0 ? "done" : total > 0 && itemsPerSecond > 0 ? duration(left * 1000 / itemsPerSecond) : "–"));
    row.appendChild(el("td", waitingBecause(job, status), "text"));
    rows.push(row);
  }
  for (const key of [...state.jobRates.keys()]) if (!seen.has(key)) state.jobRates.delete(key);
  body.replaceChildren(...rows);
  $("jobs-none").hidden = status.jobs.length > 0;
  const more = status.jobs.length - Math.min(status.jobs.length, MAX_ROWS) + status.jobs_omitted;
  $("jobs-more").textContent = more > 0 ? "and " + number(more) + " more" : "";
}

// A chunk that has run three times as long as the typical running one (and over a second) is a straggler.
function stragglerAfter(workers) {
  const times = workers.filter((w) => w.running_items > 0).map((w) => w.running_ms).sort((a, b) => a - b);
  if (times.length < 2) return Infinity;
  return Math.max(1000, 3 * times[Math.floor(times.length / 2)]);
}

function drawWorkers(status) {
  const body = $("workers").tBodies[0];
  const rows = [];
  const stale = 2 * status.heartbeat_ms;
  const straggling = stragglerAfter(status.workers);
  for (const worker of status.workers.slice(0, MAX_ROWS)) {
    const row = el("tr", null, worker.last_seen_ms > stale ? "stale" : worker.running_ms > straggling ? "straggler" : "");
    row.appendChild(el("td", worker.host, "text"));
    row.appendChild(el("td", worker.pid));
    row.appendChild(el("td", worker.id));
    row.appendChild(el("td", worker.supervisor));
    row.appendChild(el("td", worker.tasks.map((t) => t.name).join(", "), "text"));
    row.appendChild(el("td", worker.credit));
    row.appendChild(el("td", worker.chunks_in_flight));
    const last = worker.running_first_index + worker.running_items - 1;
    row.appendChild(el("td", worker.running_items === 0 ? "–" : worker.running_task + ", job " + worker.running_job +
      ", " + (worker.running_items === 1 ? "item " + worker.running_first_index : "items " + worker.running_first_index + "–" + last), "text"));
    row.appendChild(el("td", worker.running_items === 0 ? "" : duration(worker.running_ms)));
    row.appendChild(el("td", number(worker.chunks_done)));
    row.appendChild(el("td", number(worker.chunks_failed)));
    row.appendChild(el("td", duration(worker.last_seen_ms) + " ago"));
    rows.push(row);
  }
  body.replaceChildren(...rows);
  const more = status.workers.length - Math.min(status.workers.length, MAX_ROWS) + status.workers_omitted;
  $("workers-more").textContent = more > 0 ? "and " + number(more) + " more" : "";
}

function drawEvents(status) {
  const rows = status.events.map((event) => {
    const row = el("tr", null, event.kind === "failed" ? "failed" : "");
    row.appendChild(el("td", duration(event.age_ms) + " ago"));
    row.appendChild(el("td", event.kind === "failed" ? "failed" : "re-dispatched"));
    row.appendChild(el("td", event.task, "text"));
    row.appendChild(el("td", event.client_host + " pid " + event.client_pid, "text"));
    row.appendChild(el("td", event.job));
    row.appendChild(el("td", event.item));
    row.appendChild(el("td", event.attempt));
    row.appendChild(el("td", event.worker_host ? event.worker_host + " pid " + event.worker_pid : "–", "text"));
    row.appendChild(el("td", event.error, "text"));
    row.appendChild(el("td", event.message, "text"));
    return row;
  });
  $("events").tBodies[0].replaceChildren(...rows);
  $("events-none").hidden = rows.length > 0;
}

function drawChart(id, scaleId, points, value, format) {
  const svg = $(id);
  const now = points.length ? points[points.length - 1].at : 0;
  const values = points.map(value);
  const top = Math.max(1, ...values);
  const coordinates = points.map((p, i) =>
    (300 - (now - p.at) * 300 / HISTORY_MS).toFixed(1) + "," + (78 - values[i] * 74 / top).toFixed(1));
  const line = document.createElementNS("http://www.w3.org/2000/svg", "polyline");
  line.setAttribute("points", coordinates.join(" "));
  svg.replaceChildren(line);
  $(scaleId).textContent = "now " + format(values.length ? values[values.length - 1] : 0) + ", top " + format(top);
}

function draw(status) {
  const now = Date.now();
  $("broker").textContent = status.broker;
  const role = $("role");
  role.textContent = status.role + (status.epoch > 0 ? " (epoch " + status.epoch + ")" : "");
  role.className = "badge " + (status.role === "passive" ? "passive" : "active");
  $("updated").textContent = "updated " + new Date(now).toLocaleTimeString();
  if (state.last && status.uptime_ms < state.last.uptime_ms) {  // another broker (restarted): start over
    state.last = null;
    state.history = [];
    state.jobRates.clear();
  }
  const fresh = !state.last || status.uptime_ms > state.last.uptime_ms;  // else the same snapshot again
  if (state.last && fresh && status.uptime_ms > state.last.uptime_ms && status.chunks_done >= state.last.chunks_done) {
    state.chunksPerSecond = (status.chunks_done - state.last.chunks_done) * 1000 / (status.uptime_ms - state.last.uptime_ms);
  }
  if (fresh) {
    state.history.push({ at: status.uptime_ms, done: state.chunksPerSecond, queued: status.chunks_queued,
                         workers: status.workers.length + status.workers_omitted });
    while (state.history.length && state.history[0].at < status.uptime_ms - HISTORY_MS) state.history.shift();
    state.last = status;
  }
  drawCluster(status, state.chunksPerSecond);
  drawJobs(status);
  drawWorkers(status);
  drawEvents(status);
  drawChart("chart-throughput", "scale-throughput", state.history, (p) => p.done, rate);
  drawChart("chart-queue", "scale-queue", state.history, (p) => p.queued, number);
  drawChart("chart-workers", "scale-workers", state.history, (p) => p.workers, number);
}

function problem(text) {
  const node = $("problem");
  node.textContent = text;
  node.hidden = !text;
}

async function refresh() {
  try {
    const headers = state.token ? { Authorization: "Bearer " + state.token } : {};
    const response = await fetch("api/v1/status", { headers, cache: "no-store" });
    if (response.status === 401) {
      $("login").hidden = false;
      if (state.token) $("login-error").textContent = "That token was refused.";
      return;
    }
    if (!response.ok) {
      problem("The broker answered " + response.status + "; trying again.");
      return;
    }
    $("login").hidden = true;
    problem("");
    draw(await response.json());
  } catch (error) {
    problem("The broker does not answer (" + error.message + "); trying again every second.");
  } finally {
    setTimeout(refresh, REFRESH_MS);
  }
}

function logIn() {
  state.token = $("token").value.trim();
  sessionStorage.setItem("poolmap-token", state.token);
  $("login-error").textContent = "";
}

document.addEventListener("DOMContentLoaded", () => {
  $("token-go").addEventListener("click", logIn);
  $("token").addEventListener("keydown", (event) => { if (event.key === "Enter") logIn(); });
  refresh();
});
