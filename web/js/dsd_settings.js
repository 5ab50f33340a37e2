// Settings of the DSD pack: API keys for the prompt enhancer. They are stored in the user's
// comfy.settings.json on the server, never in a workflow. Environment variables
// (GEMINI_API_KEY / GOOGLE_API_KEY, OPENAI_API_KEY) take precedence when set.
import { app } from "../../scripts/app.js";

app.registerExtension({
  name: "DSD.Settings",
  settings: [
    {
      id: "DSD.GeminiApiKey",
      category: ["DSD", "Prompt enhancer", "Gemini API key"],
      name: "Gemini API key (used when GEMINI_API_KEY is not set)",
      type: "text",
      defaultValue: "",
      tooltip: "Kept in your ComfyUI user settings on the server; never saved into workflows.",
    },
    {
      id: "DSD.OpenAIApiKey",
      category: ["DSD", "Prompt enhancer", "OpenAI API key"],
      name: "OpenAI-compatible API key (used when OPENAI_API_KEY is not set)",
      type: "text",
      defaultValue: "",
      tooltip: "For OpenAI or a key-protected vLLM/LM Studio server. Local servers need none.",
    },
  ],
});
