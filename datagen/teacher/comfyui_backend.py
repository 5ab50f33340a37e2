"""Teacher backend: a running ComfyUI server, driven through its HTTP API.

Lets users draw the grids with the ComfyUI set-up they already have (their model files, their
GPU, their custom samplers). For each image the backend fills an API-format workflow, POSTs it to
``/prompt``, polls ``/history/<prompt_id>`` and downloads the result through ``/view``.

Workflow markers. A workflow (the shipped ``workflow_template.json``, or your own exported with
"Save (API)" and given as ``teacher.comfyui_workflow``) carries ``{{name}}`` markers in node
input values. A value that is exactly one marker becomes the typed value (``"{{seed}}"`` -> an
integer); a marker inside a longer string is replaced textually. Markers:

  {{prompt}} (required)  {{seed}} (required)  {{width}}  {{height}}  {{steps}}  {{guidance}}
  {{filename_prefix}}  {{unet_name}}  {{weight_dtype}}  {{clip_l}}  {{t5}}  {{vae_name}}
  {{ckpt_name}}  {{sampler}}  {{scheduler}}

The image is taken from the workflow's SaveImage (else PreviewImage or any image output) with the
lowest node id. Without ``comfyui_workflow`` the shipped template is used; with
``comfyui_checkpoint`` set, ``workflow_template_checkpoint.json`` (CheckpointLoaderSimple).
"""

from __future__ import annotations

import copy
import io
import json
import logging
import re
import time
import urllib.error
import urllib.parse
import urllib.request
import uuid
from pathlib import Path
from typing import Any

from PIL import Image

from .config import TeacherConfig

logger = logging.getLogger(__name__)

TEMPLATE_DIR = Path(__file__).resolve().parent
DEFAULT_TEMPLATE = TEMPLATE_DIR / "workflow_template.json"
CHECKPOINT_TEMPLATE = TEMPLATE_DIR / "workflow_template_checkpoint.json"
MARKERS = (
    "prompt", "seed", "width", "height", "steps", "guidance", "filename_prefix", "unet_name", "weight_dtype",
    "clip_l", "t5", "vae_name", "ckpt_name", "sampler", "scheduler",
)  # fmt: skip
REQUIRED_MARKERS = ("prompt", "seed")
_IMAGE_NODES = ("SaveImage", "PreviewImage")


class ComfyUIError(RuntimeError):
    """Base of the ComfyUI backend's errors."""


class ComfyUIUnreachable(ComfyUIError):
    pass


class ComfyUIWorkflowError(ComfyUIError):
    """ComfyUI refused the workflow (validation) or a node failed while running; has ComfyUI's text."""


class ComfyUITimeout(ComfyUIError):
    pass


class WorkflowTemplateError(ValueError):
    """The workflow file is not an API-format graph with the required markers."""


# ----------------------------------------------------------------------------------------------
# workflow templates


def load_workflow(path: str | Path) -> dict[str, Any]:
    path = Path(path).expanduser()
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError as exc:
        raise WorkflowTemplateError(f"workflow file {path} does not exist (teacher.comfyui_workflow)") from exc
    except json.JSONDecodeError as exc:
        raise WorkflowTemplateError(f"{path}: not valid JSON ({exc})") from exc
    if not isinstance(data, dict) or "nodes" in data or not all(
        isinstance(v, dict) and "class_type" in v for k, v in data.items() if not k.startswith("_")
    ):
        raise WorkflowTemplateError(
            f"{path}: not an API-format workflow (a UI workflow has a 'nodes' list); in ComfyUI use "
            "Workflow > Export (API) and put {{prompt}} / {{seed}} markers in the exported file"
        )
    found = set(_markers_in(data))
    unknown = sorted(found - set(MARKERS))
    if unknown:
        raise WorkflowTemplateError(f"{path}: unknown marker(s) {', '.join(unknown)}; known: {', '.join(MARKERS)}")
    missing = [m for m in REQUIRED_MARKERS if m not in found]
    if missing:
        raise WorkflowTemplateError(
            f"{path}: the workflow has no {' / '.join('{{' + m + '}}' for m in missing)} marker; put them in the "
            "text input of the positive prompt node and in the sampler's seed (or noise_seed) input"
        )
    return data


def _markers_in(obj: Any) -> list[str]:
    out: list[str] = []
    if isinstance(obj, dict):
        for v in obj.values():
            out += _markers_in(v)
    elif isinstance(obj, list):
        for v in obj:
            out += _markers_in(v)
    elif isinstance(obj, str):
        out += re.findall(r"\{\{\s*([A-Za-z0-9_]+)\s*\}\}", obj)
    return out


def fill_workflow(workflow: dict[str, Any], values: dict[str, Any]) -> dict[str, Any]:
    """A copy of ``workflow`` with every ``{{marker}}`` replaced (typed when the value is the marker)."""
    pattern = re.compile(r"\{\{\s*([A-Za-z0-9_]+)\s*\}\}")

    def sub(obj: Any) -> Any:
        if isinstance(obj, dict):
            return {k: sub(v) for k, v in obj.items()}
        if isinstance(obj, list):
            return [sub(v) for v in obj]
        if isinstance(obj, str):
            whole = pattern.fullmatch(obj.strip())
            if whole and whole.group(1) in values:
                return values[whole.group(1)]
            return pattern.sub(lambda m: str(values.get(m.group(1), m.group(0))), obj)
        return obj

    return sub(copy.deepcopy(workflow))


def default_workflow(cfg: TeacherConfig) -> dict[str, Any]:
    if cfg.comfyui_workflow:
        return load_workflow(cfg.comfyui_workflow)
    return load_workflow(CHECKPOINT_TEMPLATE if cfg.comfyui_checkpoint else DEFAULT_TEMPLATE)


# ----------------------------------------------------------------------------------------------
# HTTP client


def _format_validation_error(body: dict[str, Any]) -> str:
    err = body.get("error") or {}
    lines = [str(err.get("message", "invalid prompt")) if isinstance(err, dict) else str(err)]
    if isinstance(err, dict) and err.get("details"):
        lines.append(str(err["details"]))
    for node_id, info in sorted((body.get("node_errors") or {}).items()):
        for e in info.get("errors", []):
            detail = f": {e['details']}" if e.get("details") else ""
            lines.append(f"node {node_id} ({info.get('class_type', '?')}): {e.get('message', '')}{detail}")
    return "\n  ".join(lines)


def _format_execution_error(prompt_id: str, status: dict[str, Any]) -> str:
    for kind, data in status.get("messages") or []:
        if kind == "execution_error":
            return (
                f"node {data.get('node_id')} ({data.get('node_type')}) failed: "
                f"{data.get('exception_type', 'error')}: {str(data.get('exception_message', '')).strip()}"
            )
        if kind == "execution_interrupted":
            return f"prompt {prompt_id} was interrupted (someone pressed cancel or the queue was cleared)"
    return f"prompt {prompt_id} finished with status {status.get('status_str')!r} and no error message"


class ComfyUIClient:
    def __init__(self, url: str, timeout_s: float = 600.0) -> None:
        self.url = url.rstrip("/")
        self.timeout_s = timeout_s
        self.client_id = uuid.uuid4().hex

    def _request(self, path: str, body: dict[str, Any] | None = None) -> tuple[int, bytes]:
        data = None if body is None else json.dumps(body).encode("utf-8")
        req = urllib.request.Request(self.url + path, data=data, headers={"Content-Type": "application/json"})
        try:
            with urllib.request.urlopen(req, timeout=min(self.timeout_s, 60.0)) as resp:
                return resp.status, resp.read()
        except urllib.error.HTTPError as exc:
            return exc.code, exc.read()
        except (urllib.error.URLError, ConnectionError, TimeoutError, OSError) as exc:
            reason = getattr(exc, "reason", exc)
            raise ComfyUIUnreachable(
                f"cannot reach ComfyUI at {self.url} ({reason}); start it (python main.py --listen 127.0.0.1 "
                "--port 8188) or set teacher.comfyui_url / --comfyui-url to where it runs"
            ) from exc

    def _json(self, path: str, body: dict[str, Any] | None = None) -> tuple[int, Any]:
        status, raw = self._request(path, body)
        try:
            return status, json.loads(raw or b"null")
        except json.JSONDecodeError as exc:
            raise ComfyUIError(f"ComfyUI at {self.url}{path} answered HTTP {status} with non-JSON: {raw[:200]!r}") from exc

    def check(self) -> dict[str, Any]:
        status, stats = self._json("/system_stats")
        if status != 200:
            raise ComfyUIUnreachable(f"{self.url}/system_stats answered HTTP {status}: is this a ComfyUI server?")
        return stats

    def submit(self, workflow: dict[str, Any]) -> str:
        status, body = self._json("/prompt", {"prompt": workflow, "client_id": self.client_id})
        if status != 200 or not isinstance(body, dict) or "prompt_id" not in body:
            text = _format_validation_error(body) if isinstance(body, dict) else str(body)
            raise ComfyUIWorkflowError(f"ComfyUI rejected the workflow (HTTP {status}):\n  {text}")
        return str(body["prompt_id"])

    def wait(self, prompt_id: str, deadline: float) -> dict[str, Any]:
        delay = 0.1
        while True:
            status, body = self._json(f"/history/{urllib.parse.quote(prompt_id)}")
            entry = body.get(prompt_id) if status == 200 and isinstance(body, dict) else None
            if entry is not None:
                st = entry.get("status") or {}
                if st.get("status_str") == "error" or (st and not st.get("completed", True)):
                    raise ComfyUIWorkflowError(f"ComfyUI could not run the workflow: {_format_execution_error(prompt_id, st)}")
                return entry
            if time.monotonic() > deadline:
                raise ComfyUITimeout(
                    f"ComfyUI at {self.url} did not finish prompt {prompt_id} within the timeout; raise "
                    "teacher.timeout_s or check the server's console"
                )
            time.sleep(delay)
            delay = min(delay * 1.5, 1.0)

    def first_image(self, entry: dict[str, Any], workflow: dict[str, Any]) -> Image.Image:
        outputs = entry.get("outputs") or {}

        def rank(node_id: str) -> tuple[int, int, str]:
            class_type = workflow.get(node_id, {}).get("class_type", "")
            kind = _IMAGE_NODES.index(class_type) if class_type in _IMAGE_NODES else len(_IMAGE_NODES)
            return kind, int(node_id) if node_id.isdigit() else 1 << 30, node_id

        for node_id in sorted(outputs, key=rank):
            for img in outputs[node_id].get("images") or []:
                query = urllib.parse.urlencode(
                    {"filename": img["filename"], "subfolder": img.get("subfolder", ""), "type": img.get("type", "output")}
                )
                status, raw = self._request(f"/view?{query}")
                if status != 200:
                    raise ComfyUIError(f"ComfyUI /view answered HTTP {status} for {img['filename']}")
                with Image.open(io.BytesIO(raw)) as im:
                    return im.convert("RGB")
        raise ComfyUIWorkflowError(
            "the workflow finished without an image output: add a SaveImage node fed by the decoded image"
        )


class ComfyUITeacher:
    name = "comfyui"

    def __init__(self, cfg: TeacherConfig, local_rank: int = 0) -> None:
        self.cfg = cfg
        self.workflow = default_workflow(cfg)
        self.client = ComfyUIClient(cfg.comfyui_url, cfg.timeout_s)
        self.client.check()

    def _values(self, prompt: str, seed: int) -> dict[str, Any]:
        c = self.cfg
        return {
            "prompt": prompt, "seed": int(seed), "width": c.width, "height": c.height, "steps": c.steps,
            "guidance": c.guidance, "filename_prefix": f"dsd_teacher/{seed}", "unet_name": c.comfyui_unet,
            "weight_dtype": c.comfyui_weight_dtype, "clip_l": c.comfyui_clip_l, "t5": c.comfyui_t5,
            "vae_name": c.comfyui_vae, "ckpt_name": c.comfyui_checkpoint or "", "sampler": c.comfyui_sampler,
            "scheduler": c.comfyui_scheduler,
        }  # fmt: skip

    def generate(self, prompts: list[str], seeds: list[int]) -> list[Image.Image]:
        # Queue the whole batch first: ComfyUI runs it back to back while we wait.
        graphs = [fill_workflow(self.workflow, self._values(p, s)) for p, s in zip(prompts, seeds, strict=True)]
        ids = [self.client.submit(g) for g in graphs]
        deadline = time.monotonic() + self.cfg.timeout_s * len(ids)
        return [self.client.first_image(self.client.wait(pid, deadline), g) for pid, g in zip(ids, graphs, strict=True)]

    def close(self) -> None:
        pass
