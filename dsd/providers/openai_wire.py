"""The OpenAI chat-completions wire format, shared by online calls and Batch API lines."""

from __future__ import annotations

import base64
from typing import Any

from .base import RawAnswer
from .errors import ProviderRefusal
from .retry import Malformed
from .schema import openai_strict_schema
from .types import ChatRequest, image_mime_type


def build_messages(request: ChatRequest) -> list[dict[str, Any]]:
    messages: list[dict[str, Any]] = []
    if request.system:
        messages.append({"role": "system", "content": request.system})
    messages += [{"role": role, "content": text} for role, text in request.history]
    if request.images:
        content: list[dict[str, Any]] = [{"type": "text", "text": request.prompt}] if request.prompt else []
        for image in request.images:
            uri = f"data:{image_mime_type(image)};base64,{base64.b64encode(image).decode('ascii')}"
            content.append({"type": "image_url", "image_url": {"url": uri}})
        messages.append({"role": "user", "content": content})
    else:
        messages.append({"role": "user", "content": request.prompt})
    return messages


def build_body(model: str, request: ChatRequest, official: bool) -> dict[str, Any]:
    """The chat-completions body (shared by online calls and Batch API lines)."""
    body: dict[str, Any] = {
        "model": model,
        "messages": build_messages(request),
        "temperature": request.temperature,
    }
    # OpenAI deprecated max_tokens (reasoning models reject it); local servers still expect it.
    body["max_completion_tokens" if official else "max_tokens"] = request.max_output_tokens
    if request.json_schema is not None:
        body["response_format"] = {
            "type": "json_schema",
            "json_schema": {
                "name": request.schema_name,
                "schema": openai_strict_schema(request.json_schema),
                "strict": True,
            },
        }
    return body


def parse_completion(completion: dict[str, Any], url: str) -> RawAnswer:
    """Text + tokens from a chat-completion object (as a plain dict); refusals raise."""
    choices = completion.get("choices") or []
    if not choices:
        raise Malformed("answer has no choices")
    choice = choices[0]
    message = choice.get("message") or {}
    if message.get("refusal"):
        raise ProviderRefusal(f"the model at {url} refused: {str(message['refusal'])[:200]}")
    if choice.get("finish_reason") == "content_filter":
        raise ProviderRefusal(f"the answer from {url} was blocked by its content filter")
    usage = completion.get("usage") or {}
    text = message.get("content")
    if not isinstance(text, str):
        raise Malformed("answer has no text content")
    return RawAnswer(
        text=text,
        input_tokens=int(usage.get("prompt_tokens") or 0),
        output_tokens=int(usage.get("completion_tokens") or 0),
    )
