// Warnings of the DSD nodes, shown where an artist looks: a toast in the page.
//
// A DSD node that has a warning for this run (e.g. DSD Guider: more references than the adapter was trained
// with) sends it as its UI text (``ui.PreviewText``); the server log has the same line. The frontend draws
// such text only on Preview Any, so this extension shows it for our nodes.
//
// This file is served at /extensions/<pack>/js/, so the frontend's modules are three levels up.
import { app } from "../../../scripts/app.js";

const WARNING_NODES = new Set(["DSDGuider"]);

app.registerExtension({
  name: "DSD.Warnings",
  async beforeRegisterNodeDef(nodeType, nodeData) {
    if (!WARNING_NODES.has(nodeData.name)) return;
    const onExecuted = nodeType.prototype.onExecuted;
    nodeType.prototype.onExecuted = function (output) {
      onExecuted?.apply(this, arguments);
      const text = Array.isArray(output?.text) ? output.text[0] : output?.text;
      if (!text) return;
      app.extensionManager.toast.add({ severity: "warn", summary: nodeData.display_name, detail: text, life: 20000 });
    };
  },
});
