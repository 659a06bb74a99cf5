"""Hugging Face Space entry point: ``python app.py`` serves ``simzss-app`` (docs/app.md, "As a Space").

Spaces run this file with Gradio's SDK and set GRADIO_SERVER_NAME/GRADIO_SERVER_PORT, which ``simzss-app``
reads as its --host/--port defaults. Without an installed package the checkout's ``src/`` is used.
"""
import sys
from pathlib import Path

try:
    import open_clip_simzss  # noqa: F401
except ImportError:
    sys.path.insert(0, str(Path(__file__).resolve().parent / "src"))

from open_clip_simzss.cli.app import main

if __name__ == "__main__":
    raise SystemExit(main())
