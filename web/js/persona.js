// Persona front-end extension.
// - Persona nodes that return ui.text show it in a read-only monospace box inside the node.
// - Persona Metrics Panel returns ui.persona_metrics: rendered as an HTML table in the node.
import { app } from "../../scripts/app.js";

const REPORT_WIDGET = "persona_report";
const TABLE_WIDGET = "persona_metrics_table";

function showText(node, text) {
  let widget = node.widgets?.find((w) => w.name === REPORT_WIDGET);
  if (!widget) {
    const made = app.widgets?.STRING?.(node, REPORT_WIDGET, ["STRING", { multiline: true }], app);
    widget = made?.widget;
    if (!widget) return;
    if (widget.inputEl) {
      widget.inputEl.readOnly = true;
      widget.inputEl.style.fontFamily = "monospace";
      widget.inputEl.style.fontSize = "11px";
    }
    widget.serialize = false;
  }
  widget.value = text;
  node.setDirtyCanvas?.(true, true);
}

function formatValue(row) {
  if (row.value === null || row.value === undefined) return row.status || "skipped";
  return Number(row.value).toFixed(4);
}

function showMetrics(node, rows) {
  let widget = node.widgets?.find((w) => w.name === TABLE_WIDGET);
  if (!widget) {
    const host = document.createElement("div");
    host.className = "persona-metrics";
    host.style.cssText = "overflow:hidden;font:11px monospace;color:var(--fg-color,#ddd);";
    if (!node.addDOMWidget) return false;
    const state = { rows: 0 };
    const height = () => 34 + 30 * state.rows;  // header + rows (wrapped names take two lines)
    widget = node.addDOMWidget(TABLE_WIDGET, "persona-table", host,
      { serialize: false, getMinHeight: height, getHeight: height });
    widget.persona_host = host;
    widget.persona_state = state;
  }
  widget.persona_state.rows = rows.length;
  const table = document.createElement("table");
  table.className = "persona-metrics-table";
  table.style.cssText = "border-collapse:collapse;width:100%;";
  const head = table.insertRow();
  for (const title of ["metric", "value", "detail"]) {
    const th = document.createElement("th");
    th.textContent = title;
    th.style.cssText = "text-align:left;border-bottom:1px solid #666;padding:2px 6px;";
    head.appendChild(th);
  }
  for (const row of rows) {
    const tr = table.insertRow();
    tr.dataset.metric = row.metric;
    const cells = [row.metric, formatValue(row), row.detail || ""];
    cells.forEach((text, i) => {
      const td = tr.insertCell();
      const limit = i === 0 ? 80 : 64;  // the full text stays in the tooltip and in report.json
      td.textContent = text.length > limit ? text.slice(0, limit - 1) + "…" : text;
      td.title = text;
      td.style.cssText = "padding:2px 6px;border-bottom:1px solid #333;vertical-align:top;" +
        (i === 0 ? "white-space:nowrap;" : "") +
        (i === 1 && (row.value === null || row.value === undefined) ? "color:#c90;" : "");
    });
  }
  widget.persona_host.replaceChildren(table);
  const size = node.computeSize?.() ?? node.size;
  node.setSize?.([Math.max(node.size[0], 760), Math.max(node.size[1], size[1])]);
  node.setDirtyCanvas?.(true, true);
  return true;
}

app.registerExtension({
  name: "persona.reports",
  async beforeRegisterNodeDef(nodeType, nodeData) {
    if (!nodeData?.name?.startsWith("Persona")) return;
    const onExecuted = nodeType.prototype.onExecuted;
    nodeType.prototype.onExecuted = function (message) {
      onExecuted?.apply(this, arguments);
      if (message?.persona_metrics && showMetrics(this, message.persona_metrics)) return;
      const text = message?.text;
      if (text && text.length) showText(this, Array.isArray(text) ? text.join("\n") : String(text));
    };
  },
});
