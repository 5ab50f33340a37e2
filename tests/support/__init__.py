"""Test and benchmark helpers that speak real protocols on 127.0.0.1 (no mocks).

``FakeLLMServer`` (``llm_server``) answers the OpenAI chat-completions / files / batches API and the
Gemini ``generateContent`` API, so the official ``openai`` and ``google-genai`` clients run unchanged
against it; ``gguf_writer`` writes FLUX GGUF files that ComfyUI-GGUF loads.
"""
