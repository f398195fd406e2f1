// Persona front-end extension: shows a node's text report (ui.text) inside the node.
import { app } from "../../scripts/app.js";

const REPORT_WIDGET = "persona_report";

function showReport(node, text) {
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

app.registerExtension({
  name: "persona.reports",
  async beforeRegisterNodeDef(nodeType, nodeData) {
    if (!nodeData?.name?.startsWith("Persona")) return;
    const onExecuted = nodeType.prototype.onExecuted;
    nodeType.prototype.onExecuted = function (message) {
      onExecuted?.apply(this, arguments);
      const text = message?.text;
      if (text && text.length) showReport(this, Array.isArray(text) ? text.join("\n") : String(text));
    };
  },
});
