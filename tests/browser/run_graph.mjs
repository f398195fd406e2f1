// Drives the real ComfyUI frontend in headless Chromium:
//   node run_graph.mjs URL API_PROMPT.json SCREENSHOT.png WAIT_SELECTOR
// loads the API-format prompt into the canvas, queues it from the page, waits for
// WAIT_SELECTOR to appear, saves a screenshot and prints a JSON summary on stdout.
import { chromium } from "playwright-core";
import { readFileSync } from "node:fs";

const [url, promptPath, shot, selector] = process.argv.slice(2);
const prompt = JSON.parse(readFileSync(promptPath, "utf8"));
const browser = await chromium.launch({
  executablePath: process.env.CHROMIUM || "/usr/bin/chromium",
  args: ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
         "--disable-component-update", "--disable-sync", "--no-first-run"],
});
const errors = [];
try {
  const page = await browser.newPage({ viewport: { width: 1600, height: 1000 } });
  page.on("console", (m) => { if (m.type() === "error") errors.push(`${m.text()} [${m.location().url}]`); });
  page.on("pageerror", (e) => errors.push(`${e} ${(e.stack || "").split("\n").slice(1, 3).join(" ").trim()}`));
  const failed = [];
  page.on("response", (r) => { if (r.status() >= 400) failed.push(`${r.status()} ${r.url()}`); });
  await page.goto(url, { waitUntil: "load" });
  await page.waitForFunction(() => window.app && window.app.graph && window.LiteGraph, null, { timeout: 60000 });
  const ui = Array.isArray(prompt.nodes);  // a UI-format workflow: load it, do not queue it
  const missing = await page.evaluate((p) => {
    const types = Array.isArray(p.nodes) ? p.nodes.map((n) => n.type) : Object.values(p).map((n) => n.class_type);
    return types.filter((t) => !window.LiteGraph.registered_node_types[t]);
  }, prompt);
  if (ui) {
    await page.evaluate((p) => window.app.loadGraphData(p), prompt);
  } else {
    await page.evaluate((p) => window.app.loadApiJson(p, "persona-test.json"), prompt);
    await page.evaluate(() => window.app.queuePrompt(0, 1));
  }
  const loaded = await page.evaluate(() => window.app.graph._nodes.length);
  let found = 0;
  if (selector) {
    await page.waitForSelector(selector, { timeout: 180000 });
    found = await page.$$eval(`${selector} tr`, (rows) => rows.length);
  }
  const rows = selector ? await page.$$eval(`${selector} tr[data-metric]`, (rs) => rs.map((r) => r.dataset.metric)) : [];
  await page.evaluate(() => window.app.canvas.setDirty(true, true));
  await page.waitForTimeout(500);
  await page.screenshot({ path: shot });
  console.log(JSON.stringify({ missing, errors, failed, rows, found, loaded }));
} finally {
  await browser.close();
}
