"""The results of an evaluation as people read them: one dataset's mIoU, background selection and per-class IoU,
and the paper's row (Tables 1-2 column order); ``run.Evaluation`` computes them, ``simzss-evaluate`` prints them.
"""
import sys
from typing import Dict, Optional

from .datasets import BENCHMARK_ORDER

COLUMN_TITLES = {"voc20": "VOC20", "context59": "Context59", "coco_stuff": "COCO-Stuff", "cityscapes": "Cityscapes",
                 "ade20k": "ADE20K", "context60": "Context60", "coco_object": "COCO-Object", "voc21": "VOC21"}


def _fmt(x: Optional[float]) -> str:
    return "  n/a" if x is None else f"{x:5.2f}"


def print_dataset(name: str, result: Dict, per_class: bool = True, out=None):
    out = out or sys.stdout  # resolved per call: sys.stdout may be replaced (pytest capture, redirection)
    first = f", from image {result['first_image']}" if result.get("first_image") else ""
    print(f"\n== {name}: mIoU {_fmt(result['miou'])} ({result['num_images']} images{first}, "
          f"{result['num_classes']} classes, class names {result['class_names']}, {result['seconds']} s)", file=out)
    if result.get("classifier", "text").startswith("few-shot"):
        print(f"classifier: {result['classifier']}", file=out)
    bg = result["background"]
    if bg:
        line = (f"background: {bg['score']}" + (f" (scale {bg['scale']:g})" if bg["scale"] else "")
                + f", threshold {bg['threshold']:.4g}"
                + (f" (cosine {bg['cosine']:g})" if bg["cosine"] is not None else ""))
        if bg["selected_on"]:
            line += f", selected on the {bg['selected_on']}"
        elif bg.get("source"):
            line += f" ({bg['source']})"
        print(line, file=out)
        if len(bg["sweep"]) > 1:
            cos = bg["sweep"][0].get("cosine") is not None
            sel = "selection_miou" in bg["sweep"][0]
            print(("  cosine" if cos else "") + "  threshold" + ("  selection" if sel else "") + "   mIoU", file=out)
            for row in bg["sweep"]:
                mark = "  <- selected" if row["threshold"] == bg["threshold"] else ""
                print((f"{row['cosine']:8.4g}" if cos else "") + f"  {row['threshold']:9.4g}"
                      + (f"  {_fmt(row['selection_miou']):>9}" if sel else "") + f"  {_fmt(row['miou'])}{mark}",
                      file=out)
    if per_class:
        width = max(len(c) for c in result["per_class"])
        print(f"{'class':<{width}}  IoU", file=out)
        for cls, iou in result["per_class"].items():
            print(f"{cls:<{width}}  {_fmt(iou)}", file=out)


def paper_row(results: Dict[str, Dict]) -> str:
    """Markdown header and row, Tables 1-2 column order, "|" between without- and with-background sets."""
    cols = [n for n in BENCHMARK_ORDER if n in results]

    def line(cells):
        no_bg = [c for n, c in zip(cols, cells) if BENCHMARK_ORDER.index(n) < 5]
        bg = [c for n, c in zip(cols, cells) if BENCHMARK_ORDER.index(n) >= 5]
        return "| " + " | ".join(no_bg + (["‖"] if no_bg and bg else []) + bg) + " |"
    return (line([COLUMN_TITLES[n] for n in cols]) + "\n"
            + line([_fmt(results[n]["miou"]).strip() for n in cols]))
