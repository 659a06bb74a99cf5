"""Time from a click on Segment to the overlay in the page, in a real browser (``simzss-app``, docs/app.md).

    python benchmarks/app_latency.py                                    # the demo's model, a 448-px scene
    python benchmarks/app_latency.py --app-args --model simzss-vits14   # a ViT-S/14 (random weights) at 448 px

Starts ``simzss-app`` on a free local port (torch limited to ``--threads`` threads, default 2), uploads a 448x448
synthetic scene with its labels in headless Chromium (Playwright, ``/usr/bin/chromium``) and measures, per
repeat, the wall time from the click until the new overlay image is loaded in the page; the first repeat (text
classifier, allocator warm-up) is reported apart. It prints the median and the 1-minute load average before and
after, since other processes on the machine slow it down. Without ``--app-args`` the app uses its default model
(``make demo``'s SimZSS model, or the demo's quick model, trained on first use), whose protocol resizes images to
its 112-px training size; ``--model``/``--checkpoint`` use the evaluation protocol (short side 448, 448 windows).
"""
import argparse
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import numpy as np
from PIL import Image

from open_clip_simzss.workflows import synthetic

CHROMIUM = "/usr/bin/chromium"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_app(args, workdir: Path, port: int):
    env = dict(os.environ, HF_HUB_OFFLINE="1", OMP_NUM_THREADS=str(args.threads), MKL_NUM_THREADS=str(args.threads))
    log = open(workdir / "server.log", "w")
    process = subprocess.Popen([sys.executable, "-m", "open_clip_simzss", "app", "--port", str(port),
                                "--output-dir", str(workdir / "out"), "--device", "cpu", *args.app_args],
                               stdout=log, stderr=subprocess.STDOUT, env=env)
    deadline = time.time() + args.start_timeout
    while True:
        try:
            urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=2)
            return process
        except OSError:
            if process.poll() is not None or time.time() > deadline:
                process.kill()
                sys.exit("error: the app did not start:\n" + (workdir / "server.log").read_text()[-2000:])
            time.sleep(0.5)


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--size", type=int, default=448, help="side of the square synthetic scene (default 448)")
    p.add_argument("--repeats", type=int, default=5, help="timed clicks after the first (default 5)")
    p.add_argument("--threads", type=int, default=2, help="torch threads of the app (default 2: 2 CPU cores)")
    p.add_argument("--start-timeout", type=float, default=300, help="seconds for the app to start (training)")
    p.add_argument("--app-args", nargs=argparse.REMAINDER, default=[], help="the rest goes to simzss-app")
    args = p.parse_args()
    from playwright.sync_api import sync_playwright

    workdir = Path(tempfile.mkdtemp(prefix="app-latency-"))
    image, truth, _, _ = synthetic.make_scene(3, seed=20_000, size=args.size)
    Image.fromarray(image).save(workdir / "scene.png")
    labels = ", ".join(synthetic.CATEGORIES[i].name for i in np.unique(truth))
    port = free_port()
    load_before = os.getloadavg()[0]
    process = start_app(args, workdir, port)
    times = []
    try:
        with sync_playwright() as pw:
            browser = pw.chromium.launch(executable_path=CHROMIUM)
            page = browser.new_page()
            page.goto(f"http://127.0.0.1:{port}/")
            page.set_input_files("#input-image input[type=file]", str(workdir / "scene.png"))
            page.wait_for_selector("#input-image img")
            page.fill("#labels textarea", labels)
            for _ in range(args.repeats + 1):
                # the status names each request's folder: a new name means a new answer (an identical overlay
                # keeps its URL, since Gradio caches files by content)
                previous = page.get_attribute("#status-ok", "data-request") if page.locator("#status-ok").count() else ""
                start = time.perf_counter()
                page.click("#segment")
                page.wait_for_function(
                    "prev => { const s = document.querySelector('#status-ok'), i = document.querySelector('#overlay img');"
                    " return s && s.dataset.request !== prev && i && i.complete && i.naturalWidth > 0; }",
                    arg=previous, timeout=600_000)
                times.append(time.perf_counter() - start)
            size = page.eval_on_selector("#overlay img", "i => [i.naturalWidth, i.naturalHeight]")
            browser.close()
    finally:
        process.terminate()
        process.wait(timeout=30)
    report = {"image": f"{args.size}x{args.size}", "labels": labels, "threads": args.threads,
              "app_args": args.app_args, "first_click_s": round(times[0], 3),
              "median_s": round(statistics.median(times[1:]), 3), "all_s": [round(t, 3) for t in times],
              "overlay_px": size, "load_average_1min_before": round(load_before, 2),
              "load_average_1min_after": round(os.getloadavg()[0], 2), "cpus": os.cpu_count()}
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
