"""The page, in Gradio (imported here only: it is an optional extra). Layout: query images and settings; one
tab per class (name, image editor with brush and eraser, optional mask file, saved examples, learn a prompt);
a negatives tab; Segment; the overlay with its legend, confidence and entropy maps, a table and the downloads.
Every action goes through ``handlers`` and shows a project error's one line (``gr.Error``), never a traceback.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Callable
from typing import Any

import numpy as np

from ..errors import VlfssError
from ..viz import heatmap, overlay, palette
from .examples import AppExample
from .handlers import INFERENCES, MODES, AppHandlers, ClassForm, SegmentForm, SegmentResult

log = logging.getLogger(__name__)

N_CLASSES = 3  # class tabs on the page (segment_images names their inputs)
TINY_NOTE = ("The embedded model (vlfss-tiny) knows only the synthetic world's 20 texture classes: {names}. "
             "For photos, start the app with a real CLIP, e.g. `vlfss app --model ViT-B-16 --pretrained openai`.")


def _gr():
    import gradio as gr  # heavy optional dependency (the `app` extra): imported when the page is built

    return gr


def guarded(fn: Callable) -> Callable:
    """Run a page action; a project error becomes its one-line message in the page (gr.Error), anything else a
    short note (the traceback goes to the server log only)."""
    gr = _gr()

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except gr.Error:
            raise
        except VlfssError as e:
            raise gr.Error(str(e), print_exception=False) from None
        except Exception as e:  # a bug, not bad input: keep the page clean, log the details
            log.exception("app action %s failed", fn.__name__)
            raise gr.Error(f"internal error ({type(e).__name__}); the server log has the details",
                           print_exception=False) from None

    return wrapper


def _session(request: Any) -> str:
    return getattr(request, "session_hash", None) or "local"


def _hex(label: int) -> str:
    r, g, b = (int(v) for v in palette()[label])
    return f"#{r:02x}{g:02x}{b:02x}"


def _gallery_paths(value: Any) -> list[str]:
    """Gallery input (type filepath): [(path, caption), ...] -> paths."""
    return [item[0] if isinstance(item, (tuple, list)) else item for item in (value or [])]


def result_views(res: SegmentResult) -> tuple:
    """The page's outputs for a result: overlay + legend, confidence, entropy, table, all overlays, files, note."""
    gr = _gr()
    out, image = res.outputs[0], res.images[0]
    names = res.class_names
    annotations = [(out.masks[i].numpy().astype(np.float32), n) for i, n in enumerate(names)]
    annotated = gr.AnnotatedImage((image, annotations), color_map={n: _hex(i + 1) for i, n in enumerate(names)})
    overlays = [(overlay(img, o.labels.numpy()), name) for name, img, o in zip(res.names, res.images, res.outputs)]
    note = (f"{len(names)} class(es) on {len(res.images)} image(s) in {1000 * res.seconds:.0f} ms "
            f"({res.model}, {res.mode} mode). Colours: the label PNG's palette.")
    return (annotated, heatmap(out.confidence.numpy()), heatmap(out.entropy.numpy()), res.table(),
            overlays, [str(p) for p in res.files], note)


def _editor_value(ex_class: Any) -> dict | None:
    if ex_class is None:
        return None
    return {"background": str(ex_class.support), "layers": [str(ex_class.layer)], "composite": None}


def build_ui(handlers: AppHandlers, examples: list[AppExample], title: str = "vlfss") -> Any:
    """The Gradio Blocks of the app (not launched)."""
    gr = _gr()
    models = handlers.registry.names
    with gr.Blocks(title=title, analytics_enabled=False, delete_cache=(3600, 3600)) as demo:
        gr.Markdown("# vlfss: few-shot segmentation with text and examples\n"
                    "Upload query images, give each class a name and/or paint an example, then **Segment**.")
        if "vlfss-tiny" in models:
            from ..data.synthetic import CLASS_NAMES

            gr.Markdown(TINY_NOTE.format(names=", ".join(CLASS_NAMES)))
        with gr.Row():
            with gr.Column(scale=1):
                queries = gr.Gallery(label="Query images (one or more)", type="filepath", interactive=True,
                                     columns=4, height=220, object_fit="contain", allow_preview=False,
                                     fit_columns=False, elem_id="queries")
                with gr.Row():
                    model = gr.Dropdown(models, value=models[0], label="Model", elem_id="model")
                    mode = gr.Radio(list(MODES), value="auto", label="Mode", elem_id="mode")
                inference = gr.Radio(list(INFERENCES), value=handlers.registry.configs[models[0]].inference,
                                     label="Inference (large images: slide windows, or average scales)",
                                     elem_id="inference")
                with gr.Accordion("Learned prompt file (optional)", open=False):
                    prompt_file = gr.File(label="Prompt file from `vlfss tune-prompts` or 'Learn a prompt'",
                                          file_types=[".safetensors"], elem_id="prompt-file")
            with gr.Column(scale=1):
                tabs = _class_tabs(gr, handlers, model, prompt_file)
        segment = gr.Button("Segment", variant="primary", elem_id="segment")
        outputs = _outputs(gr)
        classes, neg = tabs[:-1], tabs[-1]
        inputs = [queries, model, mode, prompt_file]
        for t in classes:
            inputs += [t["name"], t["editor"], t["mask"]]
        inputs += [neg["editor"], neg["mask"], neg["names"], inference] + [t["saved"] for t in tabs]

        @guarded
        def segment_images(queries, model=None, mode=None, prompt_file=None, class1=None, example1=None, mask1=None,
                           class2=None, example2=None, mask2=None, class3=None, example3=None, mask3=None,
                           negative_example=None, negative_mask=None, negative_names=None, inference=None,
                           saved1=None, saved2=None, saved3=None, saved_negative=None, request: gr.Request = None):
            """Segment the query images with the classes (names and/or painted examples) and negatives."""
            forms = [ClassForm(class1, example1, mask1, list(saved1 or [])),
                     ClassForm(class2, example2, mask2, list(saved2 or [])),
                     ClassForm(class3, example3, mask3, list(saved3 or []))]
            negative = ClassForm(None, negative_example, negative_mask, list(saved_negative or []))
            form = SegmentForm(_gallery_paths(queries), forms, negative_names or "", negative, model or models[0],
                               mode or "auto", prompt_file, inference)
            return result_views(handlers.segment(form, _session(request)))

        segment.click(segment_images, inputs, outputs, api_name="segment", concurrency_id="segment")
        _examples(gr, examples, queries, tabs)
    return demo


def _class_tabs(gr: Any, handlers: AppHandlers, model: Any, prompt_file: Any) -> list[dict]:
    """N_CLASSES class tabs and a negatives tab; each returns its components (the last is the negatives')."""
    tabs = []
    with gr.Tabs():
        for i in range(N_CLASSES + 1):
            negative = i == N_CLASSES
            what = "negative" if negative else f"class {i + 1}"
            with gr.Tab("Negatives" if negative else f"Class {i + 1}"):
                t = _tab(gr, i, negative)
                t["add"].click(guarded(_add(handlers, what)), [t["name"], t["editor"], t["mask"], t["saved"]],
                               [t["saved"], t["gallery"], t["editor"], t["mask"]], api_name=f"add_example_{i + 1}")
                t["clear"].click(lambda: ([], []), None, [t["saved"], t["gallery"]], api_name=False)
                if not negative:
                    t["learn"].click(guarded(_learn(handlers, what)), [t["name"], t["editor"], t["mask"], t["saved"],
                                                                       model], [prompt_file, t["note"]],
                                     api_name=f"learn_prompt_{i + 1}")
            tabs.append(t)
    return tabs


def _tab(gr: Any, i: int, negative: bool) -> dict:
    t: dict[str, Any] = {}
    if negative:
        t["names"] = gr.Textbox(label="Names of what is NOT a class (comma-separated)", elem_id="negative-names")
        t["name"] = gr.State(None)
    else:
        t["name"] = gr.Textbox(label="Class name", placeholder="e.g. stripes", elem_id=f"class{i + 1}-name")
    t["editor"] = gr.ImageEditor(
        label="Example: upload an image, paint " + ("what is NOT a class" if negative else "the object"),
        type="numpy", image_mode="RGBA", format="png", height=320, elem_id=f"editor{i + 1}",
        brush=gr.Brush(colors=["#ff2828"], color_mode="fixed"), sources=["upload", "clipboard"])
    with gr.Accordion("...or upload its mask instead of painting", open=False):
        t["mask"] = gr.File(label="Mask PNG (0/1 or 0/255, the image's size)", file_types=["image"],
                            elem_id=f"mask{i + 1}")
    t["saved"] = gr.State([])
    with gr.Row():
        t["add"] = gr.Button("Add example (paint another)", size="sm")
        t["clear"] = gr.Button("Clear saved examples", size="sm")
        if not negative:
            t["learn"] = gr.Button("Learn a prompt from these examples", size="sm")
    t["gallery"] = gr.Gallery(label="Saved examples", columns=6, height=110, interactive=False)
    t["note"] = gr.Markdown()
    return t


def _saved_view(saved: list) -> list:
    return [(overlay(img, (m == 1).astype(np.int64)), f"example {k + 1}") for k, (img, m) in enumerate(saved)]


def _add(handlers: AppHandlers, what: str) -> Callable:
    def add_example(name, editor, mask, saved):
        saved = handlers.add_example(ClassForm(name, editor, mask, list(saved or [])), what)
        return saved, _saved_view(saved), None, None
    return add_example


def _learn(handlers: AppHandlers, what: str) -> Callable:
    def learn_prompt(name, editor, mask, saved, model):
        path, note = handlers.learn_prompt(ClassForm(name, editor, mask, list(saved or [])), model, what)
        return str(path), note
    return learn_prompt


def _outputs(gr: Any) -> list:
    with gr.Row():
        annotated = gr.AnnotatedImage(label="Segmentation (first image)", height=360, elem_id="overlay")
        with gr.Column():
            confidence = gr.Image(label="Confidence (dark: low, yellow: high)", height=170, elem_id="confidence")
            entropy = gr.Image(label="Entropy (dark: certain, yellow: uncertain)", height=170, elem_id="entropy")
    table = gr.Dataframe(headers=["image", "class", "area %", "area px", "mean confidence"], label="Classes",
                         elem_id="table")
    with gr.Row():
        gallery = gr.Gallery(label="All images", columns=4, height=200, object_fit="contain", fit_columns=False,
                             elem_id="all-overlays")
        files = gr.File(label="Downloads: label PNGs (pixel = class), COCO JSON (RLE)", file_count="multiple",
                        elem_id="downloads")
    note = gr.Markdown(elem_id="note")
    return [annotated, confidence, entropy, table, gallery, files, note]


def _examples(gr: Any, examples: list[AppExample], queries: Any, tabs: list[dict]) -> None:
    """One button per preloaded example; it fills the queries, the class tabs and the negatives tab."""
    if not examples:
        return
    outs = [queries]
    for t in tabs:
        outs += [t["name"], t["editor"], t["mask"], t["saved"], t["gallery"]]
    outs.append(tabs[-1]["names"])
    gr.Markdown("**Examples** (synthetic texture world; they work offline with the embedded model)")
    with gr.Row():
        for k, ex in enumerate(examples):
            button = gr.Button(f"Example {k + 1}: {ex.title}", size="sm", elem_id=f"example{k + 1}")
            button.click(functools.partial(_example_values, ex, len(tabs)), None, outs, api_name=False)


def _example_values(ex: AppExample, n_tabs: int) -> list:
    values: list[Any] = [[str(p) for p in ex.queries]]
    for i in range(n_tabs):
        negative = i == n_tabs - 1
        c = ex.negative if negative else (ex.classes[i] if i < len(ex.classes) else None)
        values += [None if negative else (c.name if c else ""), _editor_value(c), None, [], []]
    values.append(ex.negative_names)
    return values


def launch(demo: Any, host: str = "127.0.0.1", port: int | None = None, share: bool = False,
           max_upload_mb: float = 10.0, concurrency: int = 2, prevent_thread_lock: bool = False,
           allowed_paths: list[str] | None = None, quiet: bool = False) -> Any:
    """Queue (``concurrency`` Segment requests at a time) and serve the page on ``host:port``."""
    demo.queue(default_concurrency_limit=concurrency, max_size=64)
    return demo.launch(server_name=host, server_port=port, share=share, prevent_thread_lock=prevent_thread_lock,
                       max_file_size=f"{int(max_upload_mb * 1024)}kb", show_error=False, ssr_mode=False,
                       allowed_paths=allowed_paths, quiet=quiet, footer_links=["api"], pwa=False,
                       mcp_server=False)


def create_app(configs: dict, limits: Any = None, workdir: str | None = None, examples: bool = True) -> tuple:
    """(Blocks, AppHandlers) for the offered models (name -> SegmenterConfig): the segmenters are built on first
    use, the examples written under the app's folder."""
    from .examples import build_examples
    from .state import SegmenterRegistry

    handlers = AppHandlers(SegmenterRegistry(configs), limits, workdir)
    handlers.registry.warm(next(iter(configs)))  # the first model builds while the page loads
    shown = build_examples(handlers.workdir / "examples") if examples else []
    return build_ui(handlers, shown), handlers
