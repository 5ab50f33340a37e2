"""Test and benchmark helpers that speak real protocols on 127.0.0.1 (no mocks).

``FakeLLMServer`` answers the OpenAI chat-completions / files / batches API and the Gemini
``generateContent`` API, so the official ``openai`` and ``google-genai`` clients run
unchanged against it.
"""

from .llm_server import FakeLLMServer, RecordedRequest, default_responder, fake_object_for_schema

__all__ = ["FakeLLMServer", "RecordedRequest", "default_responder", "fake_object_for_schema"]
