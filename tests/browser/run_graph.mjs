// Drives the real ComfyUI frontend in headless Chromium:
//   node run_graph.mjs URL JOBS.json
// JOBS.json: a list of {prompt: PATH, shot: PNG, selector: CSS or ""}, run one after another in
// one page (the frontend loads once). For each: a UI-format workflow is loaded into the canvas;
// an API-format prompt is loaded and queued from the page, then WAIT_SELECTOR is awaited. A
// screenshot is saved, and one JSON line per job is printed on stdout: what was missing, the
// console errors and failed requests since the job began, the rendered layout.
import { chromium } from "playwright-core";
import { readFileSync } from "node:fs";

const [url, jobsPath] = process.argv.slice(2);
const jobs = JSON.parse(readFileSync(jobsPath, "utf8"));
const browser = await chromium.launch({
  executablePath: process.env.CHROMIUM || "/usr/bin/chromium",
  args: ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
         "--disable-component-update", "--disable-sync", "--no-first-run"],
});
let errors = [];
let failed = [];
let messages = [];  // the types of the websocket messages the page received since the job began
try {
  const page = await browser.newPage({ viewport: { width: 1600, height: 1000 } });
  page.on("console", (m) => { if (m.type() === "error") errors.push(`${m.text()} [${m.location().url}]`); });
  page.on("pageerror", (e) => errors.push(`${e} ${(e.stack || "").split("\n").slice(1, 3).join(" ").trim()}`));
  page.on("response", (r) => { if (r.status() >= 400) failed.push(`${r.status()} ${r.url()}`); });
  page.on("websocket", (ws) => ws.on("framereceived", (f) => {
    if (typeof f.payload !== "string") return;
    try { messages.push(JSON.parse(f.payload).type); } catch { messages.push("?"); }
  }));
  await page.goto(url, { waitUntil: "load" });
  // ready: the graph exists (newer frontends say so without touching it: reading app.graph
  // before then logs an error)
  await page.waitForFunction(() => window.LiteGraph && window.app &&
    ("isGraphReady" in window.app ? window.app.isGraphReady : !!window.app.graph), null, { timeout: 60000 });
  for (const job of jobs) {
    const result = await runJob(page, JSON.parse(readFileSync(job.prompt, "utf8")), job.shot, job.selector || "");
    result.errors = errors;
    result.failed = failed;
    console.log(JSON.stringify(result));
    errors = [];
    failed = [];
    messages = [];
  }
} finally {
  await browser.close();
}

async function runJob(page, prompt, shot, selector) {
  const ui = Array.isArray(prompt.nodes);  // a UI-format workflow: load it, do not queue it
  const missing = await page.evaluate((p) => {
    const types = Array.isArray(p.nodes) ? p.nodes.map((n) => n.type) : Object.values(p).map((n) => n.class_type);
    return types.filter((t) => !window.LiteGraph.registered_node_types[t]);
  }, prompt);
  if (ui) {
    await page.evaluate((p) => window.app.loadGraphData(p), prompt);
  } else {
    // the server names this page once its websocket is open; a prompt queued before that
    // carries no client id and its messages may reach no page (the likely cause of a table
    // that never appeared on a loaded machine: docs/testing.md)
    await page.waitForFunction(() => !!sessionStorage.getItem("clientId"), null, { timeout: 60000 });
    await page.evaluate((p) => window.app.loadApiJson(p, "persona-test.json"), prompt);
    await page.evaluate(() => window.app.queuePrompt(0, 1));
  }
  const loaded = await page.evaluate(() => window.app.graph._nodes.length);
  // the rendered layout: each node's box (title bar included, at least its computed size)
  // and each group's, after one draw; then the view is fitted to the whole graph
  await page.evaluate(() => window.app.canvas.setDirty(true, true));
  await page.waitForTimeout(300);
  const layout = await page.evaluate(() => {
    const T = window.LiteGraph.NODE_TITLE_HEIGHT || 30;
    const nodes = window.app.graph._nodes.map((n) => {
      const min = n.computeSize ? n.computeSize() : n.size;
      const w = Math.max(n.size[0], min[0]);
      const h = Math.max(n.size[1], min[1]);
      const values = n.serialize ? n.serialize().widgets_values : n.widgets_values;
      return { id: n.id, type: n.type, box: [n.pos[0], n.pos[1] - T, w, h + T], values: values || [] };
    });
    const raw = window.app.graph._groups || window.app.graph.groups || [];
    const groups = raw.map((g) => ({ title: g.title, box: Array.from(g._bounding || g.bounding || []) }));
    const boxes = nodes.map((n) => n.box).concat(groups.map((g) => g.box));
    if (boxes.length) {
      const minx = Math.min(...boxes.map((b) => b[0])), miny = Math.min(...boxes.map((b) => b[1]));
      const maxx = Math.max(...boxes.map((b) => b[0] + b[2])), maxy = Math.max(...boxes.map((b) => b[1] + b[3]));
      const el = window.app.canvas.canvas;
      const W = el.clientWidth || el.width, H = el.clientHeight || el.height;
      const ds = window.app.canvas.ds;
      const scale = Math.min(W / (maxx - minx), H / (maxy - miny)) * 0.96;
      ds.scale = scale;
      ds.offset[0] = -minx + (W / scale - (maxx - minx)) / 2;
      ds.offset[1] = -miny + (H / scale - (maxy - miny)) / 2;
    }
    return { nodes, groups };
  });
  let found = 0;
  if (selector) {
    try {
      // made when the node's output arrives; shown when the canvas next draws the node
      await page.waitForSelector(selector, { state: "attached", timeout: 180000 });
      await page.evaluate(() => window.app.canvas.draw(true, true));
      await page.waitForSelector(selector, { state: "visible", timeout: 30000 });
    } catch (e) {
      await page.screenshot({ path: shot });
      throw new Error(`${selector} was not shown: ${await diagnose(page, selector)}\n${e.message}`);
    }
    found = await page.$$eval(`${selector} tr`, (rows) => rows.length);
  }
  const rows = selector ? await page.$$eval(`${selector} tr[data-metric]`, (rs) => rs.map((r) => r.dataset.metric)) : [];
  await page.evaluate(() => window.app.canvas.setDirty(true, true));
  await page.waitForTimeout(500);
  await page.screenshot({ path: shot });
  return { missing, rows, found, loaded, layout };
}

// What the page and the server knew when an awaited element did not appear: the element, the
// view's zoom, the server's queue and last prompt, the websocket messages of this job.
async function diagnose(page, selector) {
  const seen = await page.evaluate((sel) => {
    const el = document.querySelector(sel);
    const box = el ? el.getBoundingClientRect() : null;
    return {
      element: el ? { display: getComputedStyle(el).display, hidden: !!el.closest("[hidden]"),
                      box: [box.x, box.y, box.width, box.height] } : "absent",
      scale: window.app.canvas.ds.scale, client: sessionStorage.getItem("clientId"),
    };
  }, selector);
  let server = {};
  try {
    const queue = await (await fetch(`${url}/queue`)).json();
    const history = Object.values(await (await fetch(`${url}/history`)).json());
    const last = history[history.length - 1];
    server = { running: queue.queue_running.length, pending: queue.queue_pending.length,
               last: last ? { status: last.status, outputs: Object.keys(last.outputs || {}) } : null };
  } catch (e) {
    server = { unreachable: String(e) };
  }
  const counts = {};
  for (const m of messages) counts[m] = (counts[m] || 0) + 1;
  return JSON.stringify({ ...seen, server, messages: counts, errors, failed });
}
