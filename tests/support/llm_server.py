"""A protocol-faithful local LLM/VLM server for tests and benchmarks.

Usage::

    with FakeLLMServer(latency_s=0.2, responder=lambda req: {"same": True}) as srv:
        config = ProviderConfig(kind="openai", model="m", base_url=srv.openai_base_url)
        ...                                   # or kind="gemini", base_url=srv.gemini_base_url
        srv.queue_failures([("status", 429, {"retry-after": "0.1"}), ("status", 500)])
        srv.requests[-1].images               # the image bytes the client really sent
        srv.max_in_flight                     # peak number of concurrent model requests

Endpoints (aiohttp on a private event loop thread, so latency never serialises requests):

* OpenAI: ``POST /v1/chat/completions`` (text + ``image_url`` data URIs, ``response_format``
  json_schema, ``usage``), ``POST /v1/files`` (multipart), ``GET /v1/files/{id}/content``,
  ``POST /v1/batches``, ``GET /v1/batches/{id}``.
* Control (for a server in another process): ``GET /_fake/stats`` (requests, in_flight,
  max_in_flight), ``POST /_fake/reset``; see :func:`serve_forever`.
* Gemini: ``POST /v1beta/models/{model}:generateContent`` (``contents/parts`` with
  ``inlineData``, ``systemInstruction``, ``generationConfig`` with ``responseMimeType`` +
  ``responseJsonSchema``/``responseSchema``, ``usageMetadata``).

Answers come from ``responder(RecordedRequest) -> dict | str``: a dict is sent as JSON text,
a string as is; a failure tuple (below, e.g. ``("refusal",)``) answers this request with that
failure, so a test can refuse by content (the same request always gets the same answer). The default echoes the prompt, or builds a deterministic object that fits the
requested schema. Failures are queued FIFO and consumed one per model request (batch lines
included):

* ``("status", code)`` or ``("status", code, {"retry-after": "0.1"})``: an API error body
  in the provider's format with those headers;
* ``("timeout", seconds)``: wait that long before answering (longer than the client timeout);
* ``("malformed",)``: non-JSON text when a schema was asked, otherwise a broken HTTP body;
* ``("refusal",)``: OpenAI ``message.refusal`` / Gemini ``finishReason: SAFETY``;
* ``("html", code, text)``: a ``text/html`` page with that status, as a server that is no LLM
  API (an internal admin page, a proxy) would answer.

With ``api_key`` set, requests carrying another key get the provider's 401 answer.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import hashlib
import itertools
import json
import socket
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web

Responder = Callable[["RecordedRequest"], "dict | str"]
Failure = tuple[Any, ...]

_GEMINI_STATUS = {400: "INVALID_ARGUMENT", 401: "UNAUTHENTICATED", 403: "PERMISSION_DENIED",
                  404: "NOT_FOUND", 429: "RESOURCE_EXHAUSTED", 500: "INTERNAL", 503: "UNAVAILABLE",
                  504: "DEADLINE_EXCEEDED"}
_IMAGE_TOKENS = 258  # what Gemini bills per image; a fixed figure keeps accounting testable


@dataclass
class RecordedRequest:
    """One model request as the server understood it."""

    api: str  # "openai", "gemini" or "openai-batch"
    path: str
    model: str
    prompt: str  # user text parts joined with "\n"
    system: str | None = None
    images: list[bytes] = field(default_factory=list)
    image_mime_types: list[str] = field(default_factory=list)
    json_schema: dict | None = None
    temperature: float | None = None
    max_output_tokens: int | None = None
    headers: dict[str, str] = field(default_factory=dict)
    body: dict = field(default_factory=dict)
    received_at: float = 0.0


def fake_object_for_schema(schema: dict, seed: str = "") -> Any:
    """A deterministic value that fits ``schema`` (types, required keys, enums, min/maxItems)."""
    if "enum" in schema:
        return schema["enum"][0]
    if "const" in schema:
        return schema["const"]
    for key in ("anyOf", "oneOf"):
        if key in schema:
            return fake_object_for_schema(schema[key][0], seed)
    kind = schema.get("type", "object")
    if isinstance(kind, list):
        kind = next((k for k in kind if k != "null"), "null")
    kind = str(kind).lower()  # Gemini's OpenAPI-style responseSchema spells types in capitals
    if kind == "object":
        props = schema.get("properties", {})
        return {k: fake_object_for_schema(v, f"{seed}/{k}") for k, v in props.items()}
    if kind == "array":
        n = max(1, int(schema.get("minItems", 1)))
        return [fake_object_for_schema(schema.get("items", {"type": "string"}), f"{seed}[{i}]") for i in range(n)]
    if kind == "string":
        return f"{seed.rsplit('/', 1)[-1] or 'text'}-{hashlib.sha256(seed.encode()).hexdigest()[:6]}"
    if kind == "integer":
        return int(schema.get("minimum", 1))
    if kind == "number":
        return float(schema.get("minimum", 0.5))
    if kind == "boolean":
        return True
    return None


def default_responder(request: RecordedRequest) -> dict | str:
    """Echo the prompt, or a schema-fitting object seeded by the prompt (deterministic)."""
    if request.json_schema is not None:
        return fake_object_for_schema(request.json_schema, seed=request.prompt[:40])
    images = f" [{len(request.images)} image(s)]" if request.images else ""
    return f"Echo: {' '.join(request.prompt.split())}{images}"


def _b64decode(data: str) -> bytes:
    # google-genai serialises bytes as URL-safe base64 without padding; the REST docs use standard.
    data = data.replace("-", "+").replace("_", "/")
    return base64.b64decode(data + "=" * (-len(data) % 4))


def _count_tokens(text: str | None) -> int:
    return len(text.split()) if text else 0


class FakeLLMServer:
    """See the module docstring. Thread-safe; a context manager that starts and stops the server."""

    def __init__(
        self,
        *,
        responder: Responder | None = None,
        script: Responder | None = None,
        latency_s: float = 0.0,
        api_key: str | None = None,
        batch_polls_before_done: int = 1,
    ) -> None:
        # ``script`` is an alias of ``responder`` (the name some callers use).
        self.responder: Responder = responder or script or default_responder
        self.latency_s = latency_s
        self.api_key = api_key
        self.batch_polls_before_done = batch_polls_before_done
        self._lock = threading.Lock()
        self._requests: list[RecordedRequest] = []
        self._failures: deque[Failure] = deque()
        self._in_flight = 0
        self._max_in_flight = 0
        self._files: dict[str, tuple[str, bytes, str]] = {}
        self._batches: dict[str, dict[str, Any]] = {}
        self._ids = itertools.count(1)
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._runner: web.AppRunner | None = None
        self.port: int = 0

    # -- lifecycle -----------------------------------------------------------------------------
    def start(self) -> FakeLLMServer:
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(("127.0.0.1", 0))
        self.port = sock.getsockname()[1]
        self._loop = asyncio.new_event_loop()
        ready = threading.Event()

        async def setup() -> None:
            app = web.Application(client_max_size=64 * 1024 * 1024)
            app.router.add_post("/v1/chat/completions", self._openai_chat)
            app.router.add_post("/v1/files", self._openai_file_upload)
            app.router.add_get("/v1/files/{file_id}/content", self._openai_file_content)
            app.router.add_post("/v1/batches", self._openai_batch_create)
            app.router.add_get("/v1/batches/{batch_id}", self._openai_batch_get)
            app.router.add_post("/{version}/models/{model_action}", self._gemini_generate)
            app.router.add_get("/_fake/stats", self._stats)
            app.router.add_post("/_fake/reset", self._reset)
            # handler_cancellation: a client that timed out stops its handler (in-flight stays true).
            self._runner = web.AppRunner(app, shutdown_timeout=0.5, handler_cancellation=True, access_log=None)
            await self._runner.setup()
            await web.SockSite(self._runner, sock, backlog=512).start()

        def run() -> None:
            assert self._loop is not None
            asyncio.set_event_loop(self._loop)
            self._loop.run_until_complete(setup())
            ready.set()
            self._loop.run_forever()

        self._thread = threading.Thread(target=run, name="fake-llm-server", daemon=True)
        self._thread.start()
        if not ready.wait(120):  # a deadline against a hang only: a loaded 2-core machine starts threads late
            raise RuntimeError("FakeLLMServer did not start within 120 s")
        return self

    def stop(self) -> None:
        if self._loop is None or self._thread is None:
            return
        loop = self._loop
        if self._runner is not None:
            asyncio.run_coroutine_threadsafe(self._runner.cleanup(), loop).result(timeout=120)
        loop.call_soon_threadsafe(loop.stop)
        self._thread.join(timeout=120)
        loop.close()
        self._loop = self._thread = self._runner = None

    def __enter__(self) -> FakeLLMServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # -- public state --------------------------------------------------------------------------
    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def openai_base_url(self) -> str:
        return f"{self.url}/v1"

    @property
    def gemini_base_url(self) -> str:
        return self.url

    @property
    def requests(self) -> list[RecordedRequest]:
        """Every model request received so far (a copy), failed ones included."""
        with self._lock:
            return list(self._requests)

    @property
    def max_in_flight(self) -> int:
        with self._lock:
            return self._max_in_flight

    @property
    def in_flight(self) -> int:
        with self._lock:
            return self._in_flight

    def queue_failures(self, failures: Iterable[Failure]) -> None:
        """Append failures, consumed one per model request in arrival order."""
        with self._lock:
            for failure in failures:
                if not failure or failure[0] not in ("status", "timeout", "malformed", "refusal", "html"):
                    raise ValueError(f"unknown failure {failure!r}; see FakeLLMServer docs")
                self._failures.append(tuple(failure))

    def reset(self) -> None:
        """Forget recorded requests, queued failures and the in-flight peak."""
        with self._lock:
            self._requests.clear()
            self._failures.clear()
            self._max_in_flight = self._in_flight

    async def _stats(self, request: web.Request) -> web.Response:
        with self._lock:
            return web.json_response({"requests": len(self._requests), "in_flight": self._in_flight,
                                      "max_in_flight": self._max_in_flight})

    async def _reset(self, request: web.Request) -> web.Response:
        self.reset()
        return web.json_response({"ok": True})

    # -- shared request handling ---------------------------------------------------------------
    def _take(self, recorded: RecordedRequest) -> Failure | None:
        with self._lock:
            self._requests.append(recorded)
            return self._failures.popleft() if self._failures else None

    def _answer(self, recorded: RecordedRequest) -> str:
        answer = self.responder(recorded)
        return answer if isinstance(answer, str) else json.dumps(answer)

    async def _model_call(self, recorded: RecordedRequest, render: Callable[[str, Failure | None], web.Response]
                          ) -> web.StreamResponse:
        failure = self._take(recorded)
        with self._lock:
            self._in_flight += 1
            self._max_in_flight = max(self._max_in_flight, self._in_flight)
        try:
            if self.latency_s:
                await asyncio.sleep(self.latency_s)
            if failure and failure[0] == "timeout":
                await asyncio.sleep(float(failure[1]))
                failure = None
            if failure and failure[0] == "html":
                return web.Response(status=int(failure[1]), text=str(failure[2]), content_type="text/html")
            text = ""
            if not failure:
                answer = self.responder(recorded)
                if isinstance(answer, tuple):  # the responder scripts a failure for this request
                    failure = answer
                else:
                    text = answer if isinstance(answer, str) else json.dumps(answer)
            return render(text, failure)
        finally:
            with self._lock:
                self._in_flight -= 1

    def _key_ok(self, presented: str | None) -> bool:
        return self.api_key is None or presented == self.api_key

    # -- OpenAI ----------------------------------------------------------------------------------
    def _parse_openai(self, body: dict, path: str, headers: dict[str, str], api: str = "openai") -> RecordedRequest:
        prompt_parts: list[str] = []
        system: str | None = None
        images: list[bytes] = []
        mimes: list[str] = []
        for message in body.get("messages", []):
            content = message.get("content")
            parts = [{"type": "text", "text": content}] if isinstance(content, str) else (content or [])
            texts = [p.get("text", "") for p in parts if p.get("type") == "text"]
            if message.get("role") in ("system", "developer"):
                system = "\n".join(texts)
                continue
            prompt_parts += texts
            for part in parts:
                if part.get("type") == "image_url":
                    url = part["image_url"]["url"]
                    header, _, data = url.partition(",")
                    mimes.append(header.removeprefix("data:").split(";")[0])
                    images.append(base64.b64decode(data))
        fmt = body.get("response_format") or {}
        schema = fmt.get("json_schema", {}).get("schema") if fmt.get("type") == "json_schema" else None
        return RecordedRequest(
            api=api, path=path, model=str(body.get("model", "")), prompt="\n".join(prompt_parts), system=system,
            images=images, image_mime_types=mimes, json_schema=schema, temperature=body.get("temperature"),
            max_output_tokens=body.get("max_completion_tokens", body.get("max_tokens")),
            headers=headers, body=body, received_at=time.monotonic(),
        )

    def _openai_completion(self, recorded: RecordedRequest, text: str, failure: Failure | None
                           ) -> tuple[int, dict[str, str], Any]:
        """(status, headers, body) of a chat completion; body is a str when deliberately broken."""
        if failure and failure[0] == "status":
            code = int(failure[1])
            headers = dict(failure[2]) if len(failure) > 2 else {}
            return code, headers, {"error": {"message": f"injected HTTP {code}", "type": "fake_error",
                                             "code": str(code)}}
        message: dict[str, Any] = {"role": "assistant", "content": text, "refusal": None}
        finish = "stop"
        if failure and failure[0] == "refusal":
            message = {"role": "assistant", "content": None, "refusal": "I'm sorry, I can't help with that."}
        elif failure and failure[0] == "malformed":
            if recorded.json_schema is None:
                return 200, {}, '{"id": "chatcmpl-broken", "choices": [{"message": '
            message["content"] = "Sure! Here is what you asked for, but not as JSON."
        prompt_tokens = _count_tokens(recorded.prompt) + _count_tokens(recorded.system) + _IMAGE_TOKENS * len(recorded.images)
        completion_tokens = _count_tokens(message["content"])
        return 200, {}, {
            "id": f"chatcmpl-{next(self._ids)}", "object": "chat.completion", "created": int(time.time()),
            "model": recorded.model,
            "choices": [{"index": 0, "message": message, "finish_reason": finish, "logprobs": None}],
            "usage": {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
                      "total_tokens": prompt_tokens + completion_tokens},
        }

    async def _openai_chat(self, request: web.Request) -> web.StreamResponse:
        headers = dict(request.headers)
        if not self._key_ok(headers.get("Authorization", "").removeprefix("Bearer ")):
            return web.json_response({"error": {"message": "Incorrect API key provided.", "type": "invalid_request_error",
                                                "code": "invalid_api_key"}}, status=401)
        recorded = self._parse_openai(await request.json(), request.path, headers)

        def render(text: str, failure: Failure | None) -> web.Response:
            status, extra, body = self._openai_completion(recorded, text, failure)
            if isinstance(body, str):
                return web.Response(status=status, text=body, content_type="application/json", headers=extra)
            return web.json_response(body, status=status, headers=extra)

        return await self._model_call(recorded, render)

    async def _openai_file_upload(self, request: web.Request) -> web.Response:
        form = await request.post()
        upload = form["file"]
        data = upload.file.read() if hasattr(upload, "file") else str(upload).encode()
        file_id = f"file-{next(self._ids)}"
        filename = getattr(upload, "filename", "upload.jsonl")
        self._files[file_id] = (filename, data, str(form.get("purpose", "")))
        return web.json_response(self._file_object(file_id))

    def _file_object(self, file_id: str) -> dict[str, Any]:
        filename, data, purpose = self._files[file_id]
        return {"id": file_id, "object": "file", "bytes": len(data), "created_at": int(time.time()),
                "filename": filename, "purpose": purpose, "status": "processed"}

    async def _openai_file_content(self, request: web.Request) -> web.Response:
        file_id = request.match_info["file_id"]
        if file_id not in self._files:
            return web.json_response({"error": {"message": f"No such File object: {file_id}"}}, status=404)
        return web.Response(body=self._files[file_id][1], content_type="application/octet-stream")

    async def _openai_batch_create(self, request: web.Request) -> web.Response:
        body = await request.json()
        input_id = body.get("input_file_id")
        if input_id not in self._files:
            return web.json_response({"error": {"message": f"No such File object: {input_id}"}}, status=404)
        out_lines, err_lines = [], []
        for line in self._files[input_id][1].decode().splitlines():
            if not line.strip():
                continue
            item = json.loads(line)
            recorded = self._parse_openai(item["body"], item["url"], dict(request.headers), api="openai-batch")
            failure = self._take(recorded)
            if failure and failure[0] == "timeout":
                failure = None  # a batch line has no client timeout
            text = ""
            if not failure:
                answer = self.responder(recorded)
                if isinstance(answer, tuple):  # the responder scripts a failure for this request
                    failure = answer
                else:
                    text = answer if isinstance(answer, str) else json.dumps(answer)
            status, _, completion = self._openai_completion(recorded, text, failure)
            entry = {"id": f"batch_req_{next(self._ids)}", "custom_id": item["custom_id"],
                     "response": {"status_code": status, "request_id": f"req_{next(self._ids)}",
                                  "body": completion if isinstance(completion, dict) else {"raw": completion}},
                     "error": None}
            (out_lines if status == 200 else err_lines).append(json.dumps(entry))
        batch_id = f"batch_{next(self._ids)}"
        output_id = error_id = None
        if out_lines:
            output_id = f"file-{next(self._ids)}"
            self._files[output_id] = ("output.jsonl", ("\n".join(out_lines) + "\n").encode(), "batch_output")
        if err_lines:
            error_id = f"file-{next(self._ids)}"
            self._files[error_id] = ("errors.jsonl", ("\n".join(err_lines) + "\n").encode(), "batch_output")
        now = int(time.time())
        total = len(out_lines) + len(err_lines)
        self._batches[batch_id] = {
            "polls": 0,
            "object": {
                "id": batch_id, "object": "batch", "endpoint": body.get("endpoint"), "input_file_id": input_id,
                "completion_window": body.get("completion_window"), "status": "validating", "created_at": now,
                "metadata": body.get("metadata"),
                "request_counts": {"total": total, "completed": len(out_lines), "failed": len(err_lines)},
            },
            "final": {"status": "completed", "completed_at": now, "output_file_id": output_id,
                      "error_file_id": error_id},
        }
        return web.json_response(self._batches[batch_id]["object"])

    async def _openai_batch_get(self, request: web.Request) -> web.Response:
        batch = self._batches.get(request.match_info["batch_id"])
        if batch is None:
            return web.json_response({"error": {"message": "No such batch"}}, status=404)
        batch["polls"] += 1
        obj = batch["object"]
        if batch["polls"] > self.batch_polls_before_done:
            obj.update(batch["final"])
        else:
            obj["status"] = "in_progress"
        return web.json_response(obj)

    # -- Gemini ----------------------------------------------------------------------------------
    async def _gemini_generate(self, request: web.Request) -> web.StreamResponse:
        model, _, action = request.match_info["model_action"].partition(":")
        if action != "generateContent":
            return web.json_response({"error": {"code": 404, "message": f"unsupported action {action!r}",
                                                "status": "NOT_FOUND"}}, status=404)
        headers = dict(request.headers)
        if not self._key_ok(headers.get("x-goog-api-key") or request.query.get("key")):
            return web.json_response({"error": {"code": 401, "message": "API key not valid. Please pass a valid API key.",
                                                "status": "UNAUTHENTICATED"}}, status=401)
        body = await request.json()
        recorded = self._parse_gemini(body, request.path, model, headers)

        def render(text: str, failure: Failure | None) -> web.Response:
            if failure and failure[0] == "status":
                code = int(failure[1])
                extra = dict(failure[2]) if len(failure) > 2 else {}
                return web.json_response({"error": {"code": code, "message": f"injected HTTP {code}",
                                                    "status": _GEMINI_STATUS.get(code, "UNKNOWN")}},
                                         status=code, headers=extra)
            prompt_tokens = (_count_tokens(recorded.prompt) + _count_tokens(recorded.system)
                             + _IMAGE_TOKENS * len(recorded.images))
            if failure and failure[0] == "refusal":
                candidate: dict[str, Any] = {"finishReason": "SAFETY", "index": 0, "safetyRatings": [
                    {"category": "HARM_CATEGORY_DANGEROUS_CONTENT", "probability": "HIGH", "blocked": True}]}
                text = ""
            else:
                if failure and failure[0] == "malformed":
                    if recorded.json_schema is None:
                        return web.Response(text='{"candidates": [{"content": ', content_type="application/json")
                    text = "Sure! Here is what you asked for, but not as JSON."
                candidate = {"content": {"parts": [{"text": text}], "role": "model"}, "finishReason": "STOP", "index": 0}
            out_tokens = _count_tokens(text)
            return web.json_response({
                "candidates": [candidate],
                "usageMetadata": {"promptTokenCount": prompt_tokens, "candidatesTokenCount": out_tokens,
                                  "totalTokenCount": prompt_tokens + out_tokens},
                "modelVersion": model, "responseId": f"resp-{next(self._ids)}",
            })

        return await self._model_call(recorded, render)

    def _parse_gemini(self, body: dict, path: str, model: str, headers: dict[str, str]) -> RecordedRequest:
        def get(d: dict, camel: str) -> Any:
            # The SDK sends camelCase; snake_case accepted too, as the REST API does.
            snake = "".join(f"_{c.lower()}" if c.isupper() else c for c in camel)
            return d.get(camel, d.get(snake))

        texts: list[str] = []
        images: list[bytes] = []
        mimes: list[str] = []
        for content in body.get("contents", []):
            for part in content.get("parts", []):
                if "text" in part:
                    texts.append(part["text"])
                inline = get(part, "inlineData")
                if inline:
                    images.append(_b64decode(inline["data"]))
                    mimes.append(get(inline, "mimeType"))
        system_content = get(body, "systemInstruction")
        system = None
        if system_content:
            system = "\n".join(p.get("text", "") for p in system_content.get("parts", []))
        gen = get(body, "generationConfig") or {}
        schema = get(gen, "responseJsonSchema") or get(gen, "responseSchema")
        return RecordedRequest(
            api="gemini", path=path, model=model, prompt="\n".join(texts), system=system, images=images,
            image_mime_types=mimes, json_schema=schema, temperature=get(gen, "temperature"),
            max_output_tokens=get(gen, "maxOutputTokens"), headers=headers, body=body, received_at=time.monotonic(),
        )


def serve_forever(port_queue: Any, latency_s: float = 0.0, responder: Responder | None = None) -> None:
    """Run a server until killed, reporting its port on ``port_queue`` (target of :func:`server_process`).

    ``responder`` must be picklable (a module-level function) to cross the process boundary.
    """
    server = FakeLLMServer(latency_s=latency_s, responder=responder).start()
    port_queue.put(server.port)
    threading.Event().wait()


@dataclass(frozen=True)
class RemoteFakeServer:
    """Handle on a :class:`FakeLLMServer` running in another process."""

    url: str

    @property
    def openai_base_url(self) -> str:
        return f"{self.url}/v1"

    @property
    def gemini_base_url(self) -> str:
        return self.url

    def _control(self, what: str) -> dict:
        import urllib.request

        method = "GET" if what == "stats" else "POST"
        with urllib.request.urlopen(urllib.request.Request(f"{self.url}/_fake/{what}", method=method), timeout=10) as r:
            return json.loads(r.read())

    def stats(self) -> dict:
        return self._control("stats")

    def reset(self) -> dict:
        return self._control("reset")


@contextlib.contextmanager
def server_process(latency_s: float = 0.0, responder: Responder | None = None) -> Iterator[RemoteFakeServer]:
    """A FakeLLMServer in its own process, so its CPU does not count against the client under test
    (it stands in for a remote API)."""
    import multiprocessing

    ctx = multiprocessing.get_context("spawn")
    ports = ctx.Queue()
    proc = ctx.Process(target=serve_forever, args=(ports, latency_s, responder), daemon=True)
    proc.start()
    try:
        yield RemoteFakeServer(f"http://127.0.0.1:{ports.get(timeout=60)}")
    finally:
        proc.terminate()
        proc.join(5)
