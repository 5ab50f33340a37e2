"""The shipped workflows in the real ComfyUI web page, the way artists use them (headless Chromium).

Every step leaves a screenshot under the test's artifact folder (see conftest.py). The run tests use a
tiny-model variant of ``dsd_basic``: the test-only nodes of ``dsd_test_nodes/`` stand in for the FLUX,
VAE and text-encoder files (CLIP Text Encode needs a CLIP; ours fixes the conditioning by the text), and
the canvas and step count shrink; every DSD node, LoadImage, the sampler and SaveImage run as shipped.
"""

from __future__ import annotations

import copy
import hashlib
import json
import re
import time
from pathlib import Path

import pytest
from PIL import Image

from tests.browser.conftest import PACK_DIR_NAME, ComfyServer
from tests.browser.dsd_test_nodes import tiny
from tests.support.workflow_files import script

pytestmark = [pytest.mark.browser, pytest.mark.comfyui]

REPO = Path(__file__).resolve().parents[2]
WORKFLOWS = REPO / "workflows"
NAMES = sorted(path.stem for path in WORKFLOWS.glob("*.json"))
REFERENCE, TINY_REFERENCE = "dsd_browser_ref.png", "dsd_browser_16px.png"
RUN_TIMEOUT_MS = 120_000


def load_ui(name: str) -> dict:
    return json.loads((WORKFLOWS / f"{name}.json").read_text(encoding="utf-8"))


def load_api(name: str) -> dict:
    return json.loads((WORKFLOWS / "api" / f"{name}.json").read_text(encoding="utf-8"))


# ------------------------------------------------------------------ page helpers
def load_workflow(page, workflow: dict, name: str) -> None:
    page.evaluate("async ([wf, name]) => { await window.app.loadGraphData(wf, true, true, name); }", [workflow, name])
    page.evaluate("() => window.app.extensionManager.command.execute('Comfy.Canvas.FitView')")
    page.wait_for_timeout(300)  # one frame for the canvas to draw the fitted view


def open_dialogs(page) -> list[str]:
    """Text of every visible dialog and error toast (the missing-nodes dialog is one)."""
    return page.evaluate(
        """() => Array.from(document.querySelectorAll('.p-dialog, [role=dialog], .p-toast-message-error'))
            .filter(el => el.offsetParent !== null).map(el => el.innerText.trim())"""
    )


def missing_node_types(page) -> list[str]:
    return page.evaluate(
        """() => window.app.graph.nodes
            .filter(n => !(n.type in window.LiteGraph.registered_node_types) || n.has_errors)
            .map(n => n.type)"""
    )


def canonical(prompt: dict) -> list[str]:
    """The prompt as a sorted list of node digests: each names its class, its values and, for each link,
    the digest of the node it comes from. Equal lists = the same graph, whatever the node ids."""
    memo: dict[str, str] = {}

    def number(value):  # JavaScript has one number type: 1.0 comes back as 1
        return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else value

    def digest(node_id: str) -> str:
        if node_id not in memo:
            node = prompt[node_id]
            inputs = {
                key: ["link", digest(str(value[0])), value[1]] if isinstance(value, list) else number(value)
                for key, value in node["inputs"].items()
            }
            title = node.get("_meta", {}).get("title")
            body = json.dumps([node["class_type"], inputs, title], sort_keys=True)
            memo[node_id] = hashlib.sha256(body.encode()).hexdigest()[:16]
        return memo[node_id]

    return sorted(digest(node_id) for node_id in prompt)


def page_prompt(page, server: ComfyServer, expected_titles: set[str]) -> tuple[dict, dict]:
    """``app.graphToPrompt()``'s API prompt, and the inputs it sent that the node's definition does not
    declare (display-only widgets such as Preview Any's ``preview``/``previewMode``, which the server
    ignores). Titles are kept only where the API file names one (the page puts every node's display name
    in ``_meta``; the API files only the titles the graphs set)."""
    output = page.evaluate("async () => (await window.app.graphToPrompt()).output")
    info = server.get_json("/object_info")
    display_only: dict[str, list[str]] = {}
    for node in output.values():
        spec = info[node["class_type"]]["input"]
        declared = {*spec.get("required", {}), *spec.get("optional", {})}
        extra = sorted(set(node["inputs"]) - declared)
        if extra:
            display_only[node["class_type"]] = extra
            node["inputs"] = {k: v for k, v in node["inputs"].items() if k in declared}
        title = node.pop("_meta", {}).get("title")
        if title in expected_titles:
            node["_meta"] = {"title": title}
    return output, display_only


# ------------------------------------------------------------------ shipped workflows load as they are
@pytest.mark.parametrize("name", NAMES)
def test_workflow_loads_and_builds_its_api_prompt(page, name):
    page.open()
    load_workflow(page, load_ui(name), name)
    page.shot(f"{name}-loaded")
    assert missing_node_types(page) == [], f"{name}: node types the page does not know"
    assert open_dialogs(page) == [], f"{name}: the page showed a dialog or error on load"
    assert page.page_errors == []
    api = load_api(name)
    titles = {node["_meta"]["title"] for node in api.values() if "_meta" in node}
    built, display_only = page_prompt(page, page.server, titles)
    assert set(display_only) <= {"PreviewAny"}, f"{name}: inputs the server does not declare: {display_only}"
    if canonical(built) != canonical(api):
        differing = {k: (built.get(k), api.get(k)) for k in sorted(set(built) | set(api)) if built.get(k) != api.get(k)}
        pytest.fail(f"{name}: the page's prompt differs from workflows/api/{name}.json (page, file): {differing}")


# ------------------------------------------------------------------ templates browser
def open_templates(page) -> None:
    page.evaluate("() => window.app.extensionManager.command.execute('Comfy.BrowseTemplates')")
    page.locator(".workflow-template-selector-dialog").wait_for(timeout=30_000)


def template_cards(page) -> list[dict]:
    """Title, description and thumbnail state of each card in the open templates dialog. The dialog draws the
    pictures of the cards in view only: a card out of view has ``src`` None."""
    return page.evaluate(
        """() => Array.from(document.querySelectorAll('.workflow-template-selector-dialog h3.line-clamp-1')).map(h => {
            const titles = (el) => el.querySelectorAll('h3.line-clamp-1').length;
            let card = h.parentElement;
            while (card.parentElement && !card.querySelector('img') && titles(card.parentElement) === 1)
                card = card.parentElement;
            const img = card.querySelector('img');
            return {title: h.innerText.trim(), description: (card.querySelector('p') || {}).innerText || '',
                    src: img ? img.getAttribute('src') : null,
                    width: img ? img.naturalWidth : 0, complete: img ? img.complete : false};
        })"""
    )


def category_label() -> str:
    """The pack's templates category as the page shows it: its name in locales/en/main.json."""
    locale = json.loads((REPO / "locales" / "en" / "main.json").read_text(encoding="utf-8"))
    return locale["templateWorkflows"]["category"][PACK_DIR_NAME]


def test_templates_browser_lists_the_workflows_with_thumbnails(page, comfy_server: ComfyServer):
    """Frontend 1.35.9 titles a pack's template by its file name and describes it by the name with spaces;
    the readable title and description are in the thumbnail (scripts/workflow_thumbnails.py), the category name
    in locales/en/main.json."""
    assert sorted(comfy_server.get_json("/api/workflow_templates")[PACK_DIR_NAME]) == NAMES
    page.open()
    open_templates(page)
    page.get_by_text(category_label(), exact=True).first.click()
    titles = page.locator(".workflow-template-selector-dialog h3.line-clamp-1")
    page.wait_for_function("(n) => document.querySelectorAll('.workflow-template-selector-dialog h3.line-clamp-1')"
                           ".length >= n", arg=len(NAMES), timeout=30_000)  # fmt: skip
    cards: dict[str, dict] = {}
    # The dialog draws the pictures of the cards in view only, and may redraw while it loads: bring every
    # card into view in turn (again on each poll) until its own picture has loaded.
    for i in range(titles.count()):
        card, deadline = titles.nth(i), time.monotonic() + 60
        while time.monotonic() < deadline:
            card.scroll_into_view_if_needed()
            cards.update({c["title"]: c for c in template_cards(page) if c["complete"] and c["width"]})
            if card.inner_text().strip() in cards:
                break
            page.wait_for_timeout(250)
    page.shot("templates-ours")
    assert sorted(cards) == NAMES, f"cards in the pack's category: {sorted(cards)}"
    for name, card in cards.items():
        assert card["description"] == name.replace("_", " ")
        assert "default-template" not in card["src"], f"{name}: the generic placeholder is shown"
        assert card["width"] == Image.open(WORKFLOWS / f"{name}.jpg").width, f"{name}: not our thumbnail"
    assert page.pack_404s() == [], "the page got 404s for the pack's own files"
    page.locator(".workflow-template-selector-dialog h3", has_text="dsd_basic").first.click()
    page.wait_for_function("() => window.app.graph.nodes.some(n => n.type === 'DSDReferenceConditioning')")
    page.evaluate("() => window.app.extensionManager.command.execute('Comfy.Canvas.FitView')")
    page.wait_for_timeout(300)
    page.shot("template-dsd_basic-opened")
    assert missing_node_types(page) == []
    assert open_dialogs(page) == []


# ------------------------------------------------------------------ the pack's web extension
def pack_ids_in_js() -> set[str]:
    """Every ``"DSD.<...>"`` string literal in the pack's web files: extension, setting or panel ids."""
    text = "\n".join(path.read_text(encoding="utf-8") for path in sorted((REPO / "web").rglob("*.js")))
    return set(re.findall(r"""["'`](DSD\.[A-Za-z0-9_.-]+)["'`]""", text))


def registered_ids(page) -> dict[str, list[str]]:
    return page.evaluate(
        """() => ({
            extensions: window.app.extensions.map(e => e.name),
            settings: Object.keys(window.app.ui.settings.settingsLookup || {}),
            sidebarTabs: window.app.extensionManager.getSidebarTabs().map(t => t.id),
            commands: window.app.extensionManager.command.commands.map(c => c.id),
        })"""
    )


def test_pack_web_extension_loads_and_registers_everything(page):
    page.open()
    page.wait_for_timeout(500)  # extensions load right after the app is ready
    page.shot("opened")
    assert page.pack_404s() == [], "the page got 404s for the pack's own web files"
    scripts = [text for kind, text in page.console if kind == "error" and "extension" in text.lower()]
    assert scripts == [], f"an extension failed to load: {scripts}"
    ids = pack_ids_in_js()
    assert ids, "the pack's web files define no DSD.* ids (extension name, settings)"
    registered = registered_ids(page)
    everything = {i for values in registered.values() for i in values}
    assert ids <= everything, f"defined in web/js but not in the page: {sorted(ids - everything)}"
    settings = sorted(i for i in ids if i in registered["settings"])
    page.evaluate("() => window.app.extensionManager.command.execute('Comfy.ShowSettingsDialog')")
    page.get_by_role("dialog").wait_for(timeout=30_000)
    page.get_by_role("dialog").get_by_text("DSD", exact=True).first.click()
    page.wait_for_timeout(500)
    page.shot("settings-dsd")
    dialog_text = page.get_by_role("dialog").inner_text()
    for setting in settings:
        label = page.evaluate("(id) => window.app.ui.settings.settingsLookup[id].name", setting)
        assert label in dialog_text, f"setting {setting} ({label!r}) is not shown in the DSD settings panel"


# ------------------------------------------------------------------ running a tiny dsd_basic from the page
WIDGET_OVERRIDES = {
    "DSDAdapterLoader": {"adapter": tiny.ADAPTER_NAME},
    "ModelSamplingFlux": {"width": 128, "height": 64},
    "DSDReferenceConditioning": {"width": 128, "height": 64},
    "DSDMultiReferenceConditioning": {"frame_width": 64, "height": 64},
    "BasicScheduler": {"steps": 2},
    "SaveImage": {"filename_prefix": "DSD/browser"},
}
SWAPS = {"UNETLoader": "DSDBrowserTest_TinyFlux", "VAELoader": "DSDBrowserTest_TinyVAE",
         "CLIPTextEncode": "DSDBrowserTest_TextEncode"}


def _set_widget(build, node: dict, name: str, value) -> None:
    index = 0
    for widget in build.NODE_SPECS[node["type"]][1]:
        if widget == name:
            node["widgets_values"][index] = value
            return
        index += 1 + ((node["type"], widget) in build.EXTRA_WIDGET_VALUES)
    raise KeyError(f"{node['type']} has no widget {name}")


def tiny_basic(reference: str | None, name: str = "dsd_basic") -> dict:
    """A shipped workflow (``dsd_basic``) with the test-only tiny models, 64 px frames and 2 steps; every Load Image
    gets ``reference`` (None: the shipped file names)."""
    build = script("build")
    wf = copy.deepcopy(load_ui(name))
    dropped = {n["id"] for n in wf["nodes"] if n["type"] == "DualCLIPLoader"}
    dropped_links = {link[0] for link in wf["links"] if link[1] in dropped}
    wf["nodes"] = [n for n in wf["nodes"] if n["id"] not in dropped]
    wf["links"] = [link for link in wf["links"] if link[0] not in dropped_links]
    for node in wf["nodes"]:
        overrides = dict(WIDGET_OVERRIDES.get(node["type"], {}))
        if node["type"] == "LoadImage" and reference is not None:
            overrides["image"] = reference
        for name, value in overrides.items():
            _set_widget(build, node, name, value)
        if node["type"] in SWAPS:
            node["type"] = node["properties"]["Node name for S&R"] = SWAPS[node["type"]]
            node["inputs"] = [i for i in node["inputs"] if i.get("link") not in dropped_links]
            if node["type"] != "DSDBrowserTest_TextEncode":
                node["widgets_values"] = []
    return wf


@pytest.fixture(scope="module")
def tiny_inputs(comfy_server: ComfyServer) -> ComfyServer:
    """The tiny adapter in models/dsd/ and two references in input/, before any page asks for the lists."""
    tiny.write_adapter(comfy_server.base_dir / "models" / "dsd")
    inputs = comfy_server.base_dir / "input"
    inputs.mkdir(exist_ok=True)
    gradient = Image.linear_gradient("L").resize((96, 96)).convert("RGB")
    gradient.save(inputs / REFERENCE)
    gradient.resize((16, 16)).save(inputs / TINY_REFERENCE)
    return comfy_server


def click_run(page) -> None:
    page.get_by_role("button", name="Run", exact=True).first.click()


def saved_images_of_new_run(page, server: ComfyServer, before: set, what: str, shot: str = "") -> list[dict]:
    """Wait for a prompt not in ``before`` to complete (a screenshot ``shot`` then, done or not); its saved images."""
    deadline = time.monotonic() + RUN_TIMEOUT_MS / 1000
    done: list = []
    while not done and time.monotonic() < deadline:
        page.wait_for_timeout(500)
        history = server.get_json("/history")
        done = [entry for key, entry in history.items() if key not in before and entry.get("status", {}).get("completed")]
    if shot:
        page.shot(shot)
    assert done, f"{what} did not complete"
    return [img for out in done[0]["outputs"].values() for img in out.get("images", []) if img.get("type") == "output"]


def test_tiny_dsd_basic_runs_from_the_run_button(page, tiny_inputs: ComfyServer):
    page.open()
    load_workflow(page, tiny_basic(REFERENCE), "dsd_basic_tiny")
    page.shot("tiny-loaded")
    assert missing_node_types(page) == []
    started = time.monotonic()
    click_run(page)
    page.shot("queued")
    page.evaluate("() => window.app.extensionManager.command.execute('Workspace.ToggleSidebarTab.assets')")
    result = page.locator("img[src*='/api/view'][src*='browser']").first
    result.wait_for(timeout=RUN_TIMEOUT_MS)
    page.wait_for_function("(img) => img.complete && img.naturalWidth > 0", arg=result.element_handle())
    page.shot("result-in-assets")
    elapsed = time.monotonic() - started
    history = tiny_inputs.get_json("/history")
    saved = [img for entry in history.values() for out in entry["outputs"].values() for img in out.get("images", [])
             if img.get("type") == "output"]
    assert saved and saved[-1]["subfolder"] == "DSD", f"no saved result in /history: {history}"
    assert (tiny_inputs.base_dir / "output" / "DSD" / saved[-1]["filename"]).is_file()
    assert open_dialogs(page) == []
    print(f"tiny dsd_basic: Run -> result in the page in {elapsed:.1f} s")


def test_shipped_reference_name_runs_unchanged(page, tiny_inputs: ComfyServer):
    """dsd_basic's Load Image keeps its shipped file name: the pack copied example_inputs/ into input/ at load."""
    build = script("build")
    shipped = tiny_inputs.base_dir / "input" / build.REFERENCE_IMAGE
    assert shipped.read_bytes() == (REPO / "example_inputs" / build.REFERENCE_IMAGE).read_bytes()
    before = set(tiny_inputs.get_json("/history"))
    page.open()
    load_workflow(page, tiny_basic(build.REFERENCE_IMAGE), "dsd_basic_shipped_input")
    assert missing_node_types(page) == [] and open_dialogs(page) == []
    click_run(page)
    saved = saved_images_of_new_run(page, tiny_inputs, before, "the run with the shipped reference", "shipped-input-done")
    assert saved and (tiny_inputs.base_dir / "output" / saved[0]["subfolder"] / saved[0]["filename"]).is_file()


def test_tiny_reference_shows_our_error_and_the_server_keeps_serving(page, tiny_inputs: ComfyServer):
    page.open()
    load_workflow(page, tiny_basic(TINY_REFERENCE), "dsd_basic_16px")
    click_run(page)
    message = page.get_by_text(re.compile(r"reference image is 16x16 pixels; DSD needs at least \d+ px")).first
    message.wait_for(timeout=RUN_TIMEOUT_MS)
    page.shot("error-shown")
    assert tiny_inputs.alive()
    assert tiny_inputs.get_json("/system_stats")["system"]["comfyui_version"]
    assert tiny_inputs.get_json("/queue") == {"queue_running": [], "queue_pending": []}


def test_tiny_multi_reference_runs_and_shows_the_trained_k_warning(page, tiny_inputs: ComfyServer):
    """dsd_multi_reference as shipped (its three example pictures) on the tiny models: the run saves the last frame,
    and DSD Guider's warning (the tiny adapter was trained with one reference, the graph gives three) is a toast."""
    before = set(tiny_inputs.get_json("/history"))
    page.open()
    load_workflow(page, tiny_basic(None, "dsd_multi_reference"), "dsd_multi_reference_tiny")
    assert missing_node_types(page) == [] and open_dialogs(page) == []
    page.shot("multi-reference-loaded")
    click_run(page)
    toast = page.get_by_text(re.compile(r"3 references given but the DSD adapter was trained with at most 1")).first
    toast.wait_for(timeout=RUN_TIMEOUT_MS)
    page.shot("multi-reference-warning")
    saved = saved_images_of_new_run(page, tiny_inputs, before, "the multi-reference run")
    assert saved and saved[0]["subfolder"] == "DSD"
    assert Image.open(tiny_inputs.base_dir / "output" / "DSD" / saved[0]["filename"]).size == (64, 64)
