"""The app's page: the Gradio layout on a :class:`~.app.SegmentApp` (``simzss-app``, the ``[app]`` extra).

Gradio is imported here only, when the page is built: the requests (``app.py``) are testable without it.
"""
import html
import os
import sys
from pathlib import Path
from typing import Optional, Sequence

from ..segmentation.background import BACKGROUND_SCORES, DEFAULT_BACKGROUND_SCORE, default_threshold
from .app import MAX_UPLOAD, AppResult, InputError, SegmentApp


def legend_html(result: AppResult) -> str:
    """The legend as an HTML table (colour, label, pixel share, pixels), largest share first."""
    rows = sorted(zip(result.labels, result.colors, result.shares, result.pixels), key=lambda r: -r[2])
    cells = "".join(
        f"<tr class='legend-row'><td><span style='display:inline-block;width:1em;height:1em;border:1px solid #000;"
        f"background:rgb{color}'></span></td><td class='legend-label'>{html.escape(name)}</td>"
        f"<td class='legend-share' style='text-align:right'>{100 * share:.1f} %</td>"
        f"<td style='text-align:right'>{pixels}</td></tr>"
        for name, color, share, pixels in rows)
    return ("<table id='legend-table'><thead><tr><th></th><th>label</th><th>pixels (%)</th><th>pixels</th></tr>"
            f"</thead><tbody>{cells}</tbody></table>")


# --- the page ---------------------------------------------------------------------------------------------------
def _payload_path(payload) -> Optional[str]:
    # Events run with preprocess=False: files arrive as Gradio's FileData dicts, decoded here with our messages.
    if isinstance(payload, dict):
        return payload.get("path")
    return payload or None


def build_blocks(app: SegmentApp):
    """The Gradio page on ``app``; requests are queued one at a time (``.queue`` is set here)."""
    os.environ.setdefault("GRADIO_TEMP_DIR", str(app.output_dir / "uploads"))  # uploads stay under the output folder
    os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
    import gradio as gr

    def run(image, labels_text, labels_file, background, threshold, background_score, pamr):
        empty = (None, "", None, None, None)
        try:
            result = app.segment(_payload_path(image), labels_text, _payload_path(labels_file), background,
                                 threshold, background_score, pamr)
        except InputError as e:
            return (f"<span id='status-error'>⚠ {html.escape(str(e))}</span>",) + empty
        except Exception as e:  # noqa: BLE001 - a failure while working: one sentence, the app keeps serving
            print(f"error: {type(e).__name__}: {e}", file=sys.stderr)
            return (f"<span id='status-error'>⚠ Segmentation failed ({type(e).__name__}); see the server log.</span>",
                    ) + empty
        status = f"<span id='status-ok' data-request='{result.folder.name}'>Segmented in {result.seconds:.1f} s.</span>"
        return status, str(result.overlay), legend_html(result), result.downloads, str(result.similarity), str(result.pca)

    with gr.Blocks(title="SimZSS: segment with any words", analytics_enabled=False,
                   delete_cache=(3600, 3600)) as blocks:
        gr.Markdown("# SimZSS: zero-shot segmentation with any words\n"
                    f"Model: {app.description}.")
        with gr.Row():
            with gr.Column():
                image = gr.Image(label="image", type="filepath", image_mode=None, sources=["upload", "clipboard"],
                                 elem_id="input-image")
                labels = gr.Textbox(label="labels (comma separated)", placeholder="cat, grass, sky",
                                    elem_id="labels")
                labels_file = gr.File(label="or a labels file (one a line, # comments)", file_types=[".txt"],
                                      elem_id="labels-file")
                with gr.Row():
                    background = gr.Checkbox(label="background", value=False, elem_id="background")
                    score = gr.Radio(list(BACKGROUND_SCORES), value=DEFAULT_BACKGROUND_SCORE,
                                     label="background score", elem_id="background-score")
                threshold = gr.Slider(0, 1, value=default_threshold(DEFAULT_BACKGROUND_SCORE), step=0.01,
                                      label="background threshold (foreground confidence below it)",
                                      elem_id="threshold")
                pamr = gr.Checkbox(label="PAMR refinement (sharper edges, slower)", value=app.pamr, elem_id="pamr")
                button = gr.Button("Segment", variant="primary", elem_id="segment")
            with gr.Column():
                status = gr.HTML(elem_id="status")
                overlay = gr.Image(label="overlay", type="filepath", interactive=False, elem_id="overlay")
                legend = gr.HTML(elem_id="legend")
                downloads = gr.File(label="label map (palette PNG) and shares (JSON)", file_count="multiple",
                                    interactive=False, elem_id="downloads")
        with gr.Row():
            similarity = gr.Image(label="similarity per label (paper Fig. 3)", type="filepath", interactive=False,
                                  elem_id="similarity")
            pca = gr.Image(label="dense features, PCA to RGB (paper Fig. 1)", type="filepath", interactive=False,
                           elem_id="pca")
        if app.examples:
            gr.Examples([[path, text] for path, text in app.examples], inputs=[image, labels],
                        label="held-out synthetic scenes (click one, then Segment)")
        score.change(lambda s: default_threshold(s), inputs=score, outputs=threshold)
        button.click(run, inputs=[image, labels, labels_file, background, threshold, score, pamr],
                     outputs=[status, overlay, legend, downloads, similarity, pca], preprocess=False,
                     concurrency_limit=1)
    blocks.queue(default_concurrency_limit=1, max_size=32)
    return blocks


def launch(app: SegmentApp, host: str = "127.0.0.1", port: Optional[int] = None, share: bool = False,
           allowed: Sequence[Path] = (), block: bool = True):
    """Serve the page of ``app``; ``allowed``: more folders the page may serve files from (example scenes)."""
    import gradio as gr

    blocks = build_blocks(app)
    theme = gr.themes.Default(font=["ui-sans-serif", "system-ui", "sans-serif"],  # no web fonts: works offline
                              font_mono=["ui-monospace", "monospace"])
    return blocks.launch(server_name=host, server_port=port, share=share, max_file_size=MAX_UPLOAD,
                         allowed_paths=[str(app.output_dir), *map(str, allowed)], theme=theme, quiet=False,
                         prevent_thread_lock=not block, footer_links=[])
