// Settings of the DSD pack: API keys for the prompt enhancer.
//
// A key is never a setting value: ComfyUI stores setting values in comfy.settings.json, which
// GET /settings and GET /userdata hand to every client of the server. Each entry is a custom
// setting type (a function returning an element) whose setter is never called; it sends the key
// to the pack's /dsd/keys routes, which keep it server-side and only answer "set" / "not set".
// Environment variables (GEMINI_API_KEY / GOOGLE_API_KEY, OPENAI_API_KEY) win when set. A key set
// here goes only to the provider's official API; a key for another base_url is registered by the
// server's owner for exactly that URL (README, "API keys in ComfyUI"). The routes accept changes
// only from this page (same Origin, JSON body) on the machine running ComfyUI.
//
// This file is served at /extensions/<pack>/js/, so the frontend's modules are three levels up.
import { app } from "../../../scripts/app.js";
import { api } from "../../../scripts/api.js";

const PROVIDERS = [
  {
    id: "gemini",
    settingId: "DSD.Keys.Gemini",
    label: "Gemini API key",
    env: "GEMINI_API_KEY / GOOGLE_API_KEY",
  },
  {
    id: "openai",
    settingId: "DSD.Keys.OpenAI",
    label: "OpenAI-compatible API key",
    env: "OPENAI_API_KEY",
  },
];

async function callKeys(path, options = {}) {
  const response = await api.fetchApi(`/dsd/keys${path}`, {
    ...options,
    headers: { "Content-Type": "application/json" },
  });
  const body = await response.json().catch(() => ({}));
  if (!response.ok) {
    throw new Error(body.error || `the server answered HTTP ${response.status}`);
  }
  return body;
}

function element(tag, props = {}, style = {}) {
  const node = Object.assign(document.createElement(tag), props);
  Object.assign(node.style, style);
  return node;
}

function describe(provider, status) {
  const env = status.environment?.[provider.id];
  const stored = status[provider.id] === "set" ? "set" : "not set";
  return env ? `${stored} (the environment variable ${env} is set and is used first)` : stored;
}

// The render function of one custom setting: a password field, Save, Clear and the status.
function keyEditor(provider) {
  return () => {
    const root = element("div", { className: "dsd-key-editor" },
      { display: "flex", gap: "0.5rem", alignItems: "center", flexWrap: "wrap" });
    root.dataset.provider = provider.id;
    const input = element("input", {
      type: "password",
      autocomplete: "new-password",
      spellcheck: false,
      placeholder: "paste the key",
      className: "p-inputtext p-component",
    }, { minWidth: "14rem" });
    input.dataset.dsdKeyInput = provider.id;
    const save = element("button", { type: "button", textContent: "Save", className: "p-button p-component" });
    save.dataset.dsdKeySave = provider.id;
    const clear = element("button", { type: "button", textContent: "Clear", className: "p-button p-component" });
    clear.dataset.dsdKeyClear = provider.id;
    const status = element("span", { textContent: "…" });
    status.dataset.dsdKeyStatus = provider.id;

    const show = (promise) =>
      promise
        .then((state) => { status.textContent = describe(provider, state); })
        .catch((error) => { status.textContent = `error: ${error.message}`; });
    save.addEventListener("click", () => {
      const key = input.value.trim();
      if (!key) {
        status.textContent = "paste a key first";
        return;
      }
      input.value = ""; // the key must not linger in the page
      show(callKeys("/set", { method: "POST", body: JSON.stringify({ provider: provider.id, key }) }));
    });
    clear.addEventListener("click", () =>
      show(callKeys("/clear", { method: "POST", body: JSON.stringify({ provider: provider.id }) })));
    input.addEventListener("keydown", (event) => {
      if (event.key === "Enter") save.click();
    });
    root.append(input, save, clear, status);
    show(callKeys(""));
    return root;
  };
}

app.registerExtension({
  name: "DSD.Settings",
  settings: PROVIDERS.map((provider) => ({
    id: provider.settingId,
    category: ["DSD", "Prompt enhancer", provider.label],
    name: `${provider.label} (used when ${provider.env} is not set)`,
    type: keyEditor(provider),
    defaultValue: "",
    tooltip: "Kept on the ComfyUI server outside every folder it serves; never saved in settings, "
      + "workflows or images, and sent only to the provider's official API (never to a base_url a graph "
      + "names). This page can only see whether a key is set.",
  })),
});
