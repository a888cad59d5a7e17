// The console page: playground, live budget and admin, wired to the gateway's own endpoints.
// The admin token and the API key live only in their password fields (page memory): never in storage, cookies
// or URLs.

import { api } from "./api.js";
import { drawGauge, drawMetricBars, drawTimeLine, fmt } from "./charts.js";

const POLL_MS = 3000;
const HISTORY_S = 600; // the chart keeps ten minutes of what this page has seen ...
const MIN_WINDOW_S = 60; // ... and spans at least one, so a freshly opened page still shows a line
const $ = (id) => document.getElementById(id);

const REASONS = {
  model: (r) =>
    r.backend === "cloud"
      ? `The router predicted PRS ${fmt(r.prs)} < α ${fmt(r.alpha)}: the cloud model is expected to do better.`
      : `The router predicted PRS ${fmt(r.prs)} ≥ α ${fmt(r.alpha)}: the edge model is good enough for this prompt.`,
  budget: (r) =>
    `The router preferred the cloud (PRS ${fmt(r.prs)} < α ${fmt(r.alpha)}) but the cloud budget ` +
    `(ρ ${fmt(r.rho, 2)} or the cost cap) was spent, so the edge served it.`,
  forced: (r) => `The request forced the ${r.backend} route; the router was not asked.`,
  private: () => "Private request: the prompt never leaves the edge.",
  fallback: () => "The cloud was chosen but failed or is not configured; the edge served it as a fallback.",
  cache: (r) =>
    `The same seeded request was routed to the ${r.backend} before: its images came from the cache, ` +
    "no model was called and no budget was spent.",
};

// With N arms (route.lam is set) the rule is argmax predicted quality − λ·cost over the arms a request may use.
const ARM_REASONS = {
  model: (r) =>
    `Arm ${r.arm} has the best predicted quality − λ·cost (λ ${fmt(r.lam)}, cost ${fmt(r.cost, 2)}) ` +
    "among the arms.",
  budget: (r) =>
    `The best arm by quality − λ·cost (λ ${fmt(r.lam)}) was over the cost budget or a cap, so arm ${r.arm} ` +
    "served it.",
  forced: (r) => `The request forced the ${r.backend} route; arm ${r.arm} is the best of those arms.`,
  private: (r) => `Private request: the prompt never leaves the edge (arm ${r.arm}).`,
  fallback: (r) => `The chosen arm failed or is down; arm ${r.arm}, the next best that is up, served it.`,
  cache: (r) =>
    `The same seeded request was served by arm ${r.arm} before: its images came from the cache, ` +
    "no model was called and no budget was spent.",
};

export function explain(route) {
  const describe = (route.lam !== null && route.lam !== undefined ? ARM_REASONS : REASONS)[route.reason];
  return describe ? describe(route) : `reason: ${route.reason}`;
}

function show(node, text) {
  node.textContent = text;
  node.hidden = !text;
}

function seconds(ms) {
  return ms < 1000 ? `${Math.round(ms)} ms` : `${(ms / 1000).toFixed(2)} s`;
}

function optionalNumber(input) {
  const raw = input.value.trim();
  return raw === "" ? undefined : Number(raw);
}

// ------------------------------------------------------------------ playground

function generateBody() {
  const body = {
    prompt: $("prompt").value,
    size: $("size").value,
    route: $("route").value,
    private: $("private").checked,
  };
  const steps = optionalNumber($("steps"));
  const seed = optionalNumber($("seed"));
  if (steps !== undefined) body.num_inference_steps = steps;
  if (seed !== undefined) body.seed = seed;
  return body;
}

function renderImages(data) {
  const images = data.map((item, i) => {
    const img = document.createElement("img");
    img.src = `data:image/png;base64,${item.b64_json}`;
    img.alt = `generated image ${i + 1}`;
    return img;
  });
  $("images").replaceChildren(...images);
}

function renderRoute(result, latencyMs) {
  const r = result.route;
  const badge = $("backend");
  badge.textContent = r.backend;
  badge.dataset.backend = r.backend;
  $("latency").textContent = seconds(latencyMs);
  $("reason").textContent = explain(r);
  $("reason").dataset.reason = r.reason;
  $("seed-used").textContent = String(result.seed);
  $("route-rho").textContent = fmt(r.rho, 2);
  $("arm").textContent = r.arm ?? r.backend;
  $("route-cost").textContent = fmt(r.cost, 2);
  $("route-lam").textContent = fmt(r.lam);
  drawGauge($("prs-gauge"), r.prs, r.alpha);
}

function renderArmQuality(quality) {
  $("arm-quality-figure").hidden = !quality;
  if (quality) $("arm-quality").textContent = Object.entries(quality).map(([a, q]) => `${a} ${fmt(q)}`).join(" · ");
}

async function onGenerate(event) {
  event.preventDefault();
  const button = $("generate");
  const body = generateBody();
  button.disabled = true;
  button.textContent = "Generating…";
  show($("generate-error"), "");
  $("result").hidden = true; // never show the last prompt's result as if it were this one's
  const key = $("api-key").value.trim() || undefined;
  const scoring = api.route(body.prompt, body.private, key).then(
    (score) => ({ score }),
    (error) => ({ error }),
  );
  const started = performance.now();
  try {
    const result = await api.generate(body, key);
    const latency = performance.now() - started;
    renderImages(result.data);
    renderRoute(result, latency);
    $("result").hidden = false;
    const { score, error } = await scoring;
    if (score) {
      drawMetricBars($("per-metric"), score.per_metric);
      renderArmQuality(score.arm_quality);
      // Forced and private routes skip the router; show its score for the prompt anyway.
      if (result.route.prs === null) drawGauge($("prs-gauge"), score.prs, score.alpha);
    } else {
      const message = Object.assign(document.createElement("p"), { className: "error", textContent: error.message });
      $("per-metric").replaceChildren(message);
    }
  } catch (error) {
    await scoring;
    show($("generate-error"), error.message);
  } finally {
    button.disabled = false;
    button.textContent = "Generate";
    refreshStatus();
  }
}

// ------------------------------------------------------------------ live budget

const samples = []; // {t, y: cloud fraction, ref: ρ} as polled by this page

function renderBudget(status) {
  const b = status.budget;
  $("stat-rho").textContent = fmt(b.rho, 2);
  $("stat-alpha").textContent = fmt(b.alpha);
  $("stat-fraction").title = `cloud calls among the last ${b.decision_window} routed requests`;
  $("stat-fraction").textContent = b.cloud_fraction === null ? "–" : `${(b.cloud_fraction * 100).toFixed(1)}%`;
  $("stat-calls").textContent = String(b.cloud_calls_last_minute ?? "–");
  $("stat-cap").textContent =
    b.cost_cap ? `${b.cloud_calls_last_minute} / ${b.cost_cap} (${(b.cost_cap_use * 100).toFixed(0)}%)` : "no cap";
  $("stat-queue").textContent = status.edge_queue_depth === null ? "–" : String(status.edge_queue_depth);
  $("stat-cost-budget").textContent = fmt(b.cost_budget, 2);
  $("stat-mean-cost").textContent = fmt(b.mean_cost, 3);
  $("stat-lambda").textContent = fmt(b.lambda);
  renderArms(b);
  const arms = b.mode === "arms";
  $("chart-what").textContent = arms ? "Windowed mean cost (as ρ: cheapest arm 0, dearest 1)" : "Windowed cloud fraction";
  $("chart-line").textContent = arms ? "mean cost" : "cloud fraction";
  $("rho").placeholder = `now ${fmt(b.rho, 2)}`;
  $("cost-cap").placeholder = b.cost_cap ? `now ${b.cost_cap} (0 removes)` : "none (0 removes)";
  const pill = $("ready");
  pill.dataset.state = status.ready ? "ready" : "starting";
  pill.textContent = status.ready ? "ready" : "starting…";
  $("admin-off").hidden = status.admin_enabled;
  $("admin-form").hidden = !status.admin_enabled;
  $("api-key-label").hidden = !status.api_key_required;
}

/** Each arm's cost, share, spend and mean predicted quality over the window (N arms only). */
function renderArms(b) {
  const table = $("arms-table");
  table.hidden = b.mode !== "arms";
  if (table.hidden) return;
  const rows = b.arms.map((a) => {
    const share = a.share === null ? "–" : `${(a.share * 100).toFixed(1)}%`;
    const cells = [a.name, a.remote ? `${a.kind} (remote)` : a.kind, fmt(a.cost, 2), share, fmt(a.spent, 2),
      fmt(a.mean_quality), String(a.calls_last_minute)];
    const row = document.createElement("tr");
    for (const text of cells) row.append(Object.assign(document.createElement("td"), { textContent: text }));
    return row;
  });
  table.querySelector("tbody").replaceChildren(...rows);
}

/** The chart's line: the cloud fraction (two arms), or the mean cost as a ρ between the cheapest and dearest arm. */
function chartPoint(b) {
  if (b.mode !== "arms") return { y: b.cloud_fraction, ref: b.rho };
  const costs = b.arms.map((a) => a.cost);
  const lo = Math.min(...costs), span = Math.max(...costs) - lo;
  return { y: b.mean_cost === null || !span ? null : (b.mean_cost - lo) / span, ref: b.rho };
}

async function refreshStatus() {
  try {
    const status = await api.status();
    const t = status.time;
    samples.push({ t, ...chartPoint(status.budget) });
    while (samples.length && samples[0].t < t - HISTORY_S) samples.shift();
    renderBudget(status);
    const windowS = Math.min(HISTORY_S, Math.max(MIN_WINDOW_S, t - samples[0].t));
    $("history-span").textContent = windowS < 120 ? `${Math.round(windowS)} s` : `${Math.round(windowS / 60)} min`;
    drawTimeLine($("fraction-chart"), samples, t, windowS);
    $("updated").textContent = new Date(t * 1000).toLocaleTimeString();
    show($("budget-error"), "");
  } catch (error) {
    const pill = $("ready");
    pill.dataset.state = "down";
    pill.textContent = "unreachable";
    show($("budget-error"), error.message);
  }
}

// ------------------------------------------------------------------ admin

function budgetSummary(b) {
  const cap = b.cost_cap ? `${b.cost_cap} cloud calls/min` : "none";
  const rule = b.mode === "arms" ? `λ = ${fmt(b.lambda)}` : `α = ${fmt(b.alpha)}`;
  return `ρ = ${fmt(b.rho, 2)}, cost cap = ${cap}, ${rule}, cost budget = ${fmt(b.cost_budget, 2)}`;
}

function adminToken() {
  const token = $("token").value.trim();
  if (!token) throw new Error("type the admin token first");
  return token;
}

async function adminCall(action) {
  show($("admin-error"), "");
  show($("admin-result"), "");
  try {
    show($("admin-result"), await action(adminToken()));
  } catch (error) {
    show($("admin-error"), error.message);
  }
  refreshStatus();
}

async function onApply(event) {
  event.preventDefault();
  await adminCall(async (token) => {
    const update = {};
    const rho = optionalNumber($("rho"));
    const cap = optionalNumber($("cost-cap"));
    if (rho !== undefined) update.rho = rho;
    if (cap !== undefined) update.cost_cap_per_minute = cap;
    if (!Object.keys(update).length) throw new Error("enter a new ρ or cost cap");
    await api.putBudget(token, update);
    const served = await api.getBudget(token);
    return `Saved. The gateway now serves ${budgetSummary(served)}.`;
  });
}

async function onRead() {
  await adminCall(async (token) => `The gateway serves ${budgetSummary(await api.getBudget(token))}.`);
}

async function onListKeys() {
  await adminCall(async (token) => {
    const { keys } = await api.listKeys(token);
    const body = $("keys-table").querySelector("tbody");
    body.replaceChildren();
    const limit = (value) => (value === null || value === undefined ? "–" : String(value));
    for (const k of keys) {
      const u = k.usage;
      const share = u.window_decisions ? `${u.window_cloud} / ${u.window_decisions}` : "–";
      const cells = [k.name, limit(k.requests_per_minute), limit(k.images_per_day), limit(k.max_cloud_share),
        k.allowed_arms.join(", "), String(u.requests_this_minute), String(u.images_today), share];
      const row = document.createElement("tr");
      for (const text of cells) {
        const cell = document.createElement("td");
        cell.textContent = text; // names come from the admin API: text, never markup
        row.append(cell);
      }
      body.append(row);
    }
    $("keys-table").hidden = !keys.length;
    return keys.length ? `${keys.length} client key(s).` : "No client keys: the gateway is open to anyone who reaches it.";
  });
}

function onForget() {
  $("token").value = "";
  $("keys-table").hidden = true;
  $("keys-table").querySelector("tbody").replaceChildren();
  show($("admin-result"), "");
  show($("admin-error"), "");
}

// ------------------------------------------------------------------ start

function start() {
  $("generate-form").addEventListener("submit", onGenerate);
  $("admin-form").addEventListener("submit", onApply);
  $("read-budget").addEventListener("click", onRead);
  $("list-keys").addEventListener("click", onListKeys);
  $("forget-token").addEventListener("click", onForget);
  drawTimeLine($("fraction-chart"), [], Date.now() / 1000, MIN_WINDOW_S);
  refreshStatus();
  setInterval(() => {
    if (!document.hidden) refreshStatus();
  }, POLL_MS);
}

start();
