"""What every command shares: the error policy, argument groups, and the device, protocol and model they resolve.

Error policy (every ``simzss-*`` command and ``python -m open_clip_simzss <command>``):

- bad input (an unknown flag, a missing file, a checkpoint of another model, a missing dataset folder): one
  ``error: ...`` line on stderr, exit status 2;
- a failure while working (an image that does not decode, a full disk, a bug): one ``error: ...`` line on
  stderr, exit status 1;
- ``--debug`` prints the traceback before that line; ``--version`` prints the package version.
"""
import argparse
import re
import sys
import traceback
from contextlib import contextmanager
from typing import Callable, Iterable, List, Optional, Sequence, Tuple

from ..atomic import WriteError, check_output as check_writable
from ..evaluation.datasets import DatasetError
from ..extras import MissingExtraError
from ..segmentation.background import (
    BACKGROUND_SCORES, DEFAULT_BACKGROUND_SCALE, DEFAULT_BACKGROUND_SCORE, PUBLISHED_THRESHOLDS,
)
from ..segmentation.classifier import DEFAULT_TEMPLATES, TEMPLATE_SETS
from ..segmentation.labels import parse_labels
from ..segmentation.protocol import SegmentationProtocol
from ..segmentation.windows import MAX_LONG_SIDE, SHORT_SIDE, STRIDE, WINDOW
from ..version import __version__
from ..weights.build import MODEL_PRECISIONS, resolve_device
from ..weights.read import CheckpointError, one_line
from ..weights.resolve import DEFAULT_MODEL, checkpoint_spec

EXIT_FAILURE = 1
EXIT_USAGE = 2


class UsageError(Exception):
    """Bad command-line input: one line on stderr, exit status 2."""


# Library errors that mean the user's input cannot work (exit status 2).
INPUT_ERRORS = (UsageError, CheckpointError, DatasetError)


@contextmanager
def bad_input(*errors: type):
    """Turn library errors raised while the input is checked (ValueError for a bad option, ImageError for a
    missing image, ...) into usage errors."""
    try:
        yield
    except errors as e:
        raise UsageError(one_line(e)) from None


class Parser(argparse.ArgumentParser):
    """argparse with the error policy: a parse error is a UsageError (one line), not a usage dump."""

    def error(self, message):
        raise UsageError(message)


def debug_options() -> argparse.ArgumentParser:
    """The ``--debug`` flag, as a parent parser (sub-commands take it too)."""
    p = argparse.ArgumentParser(add_help=False)
    p.add_argument("--debug", action="store_true", help="show the traceback of an error")
    return p


def make_parser(command: str, description: str, **kwargs) -> Parser:
    """The parser of ``simzss-<command>``, with ``--version`` and ``--debug``."""
    p = Parser(prog=f"simzss-{command}", description=description, parents=[debug_options()], **kwargs)
    p.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    return p


def run(parser: Optional[argparse.ArgumentParser], body: Callable, argv: Optional[Sequence[str]] = None,
        input_errors: Tuple[type, ...] = ()) -> int:
    """Parse ``argv`` and run ``body(args)`` under the error policy; returns the exit status. Without a parser,
    ``body`` gets the argument list (sub-commands that parse their own). ``input_errors``: more exception types
    that mean bad input."""
    argv = list(sys.argv[1:] if argv is None else argv)
    debug = "--debug" in argv
    try:
        return body(parser.parse_args(argv) if parser is not None else argv)
    except INPUT_ERRORS + tuple(input_errors) as e:
        return fail(e, EXIT_USAGE, debug)
    except KeyboardInterrupt:
        print("error: interrupted", file=sys.stderr)
        return 130
    except (MissingExtraError, OSError) as e:  # a missing dependency, an unwritable folder: the message says it
        return fail(e, EXIT_FAILURE, debug)
    except Exception as e:  # noqa: BLE001 - anything else: one line, its type first
        return fail(e, EXIT_FAILURE, debug, with_type=True)


def fail(error: BaseException, status: int, debug: bool, with_type: bool = False) -> int:
    if debug:
        traceback.print_exception(error)
    message = one_line(error)
    print(f"error: {type(error).__name__}: {message}" if with_type else f"error: {message}", file=sys.stderr)
    return status


# --- argument groups ----------------------------------------------------------------------------------------
def add_model_args(p: argparse.ArgumentParser, checkpoint_required: bool = False):
    """``--model`` and ``--checkpoint`` (alias ``--pretrained``): what ``open_clip_simzss.load_model`` takes."""
    g = p.add_argument_group("model")
    g.add_argument("--model", help=f"SimZSS config name (default {DEFAULT_MODEL}; model folders and hub ids bring "
                   "their own)")
    g.add_argument("--checkpoint", "--pretrained", dest="checkpoint", required=checkpoint_required,
                   help="checkpoint file, model folder, local-dir:PATH, hf-hub:org/name or org/name "
                        "(without it: random weights, smoke tests only)")


def add_device_args(p: argparse.ArgumentParser, precisions: Iterable[str] = MODEL_PRECISIONS):
    g = p.add_argument_group("device")
    g.add_argument("--device", help="cpu, cuda or cuda:N (default: cuda if available)")
    g.add_argument("--precision", default="fp32", choices=tuple(precisions))


def add_output_arg(p: argparse.ArgumentParser, help: str, required: bool = False, default: Optional[str] = None):
    p.add_argument("--output", required=required, default=default, help=help)


def add_image_args(p: argparse.ArgumentParser):
    p.add_argument("--image", nargs="+", required=True, help="image files and/or folders of images")


def add_label_args(p: argparse.ArgumentParser, required: bool, what: str = "labels"):
    g = p.add_mutually_exclusive_group(required=required)
    g.add_argument("--labels", help=f'comma-separated {what}, e.g. "cat, grass, sky"')
    g.add_argument("--labels-file", help="a file with one label per line (# comments)")


def add_protocol_args(p: argparse.ArgumentParser, background_default: Optional[str] = None, evaluation: bool = False):
    """The segmentation protocol (docs/evaluation.md): templates, resize, windows, PAMR and, when
    ``background_default`` says what no threshold means, the background options."""
    g = p.add_argument_group("segmentation protocol (docs/evaluation.md)")
    g.add_argument("--templates", default=DEFAULT_TEMPLATES, choices=tuple(TEMPLATE_SETS),
                   help=f"prompt template set (default {DEFAULT_TEMPLATES})")
    g.add_argument("--short-side", type=int, default=SHORT_SIDE, help=f"processing short side (protocol {SHORT_SIDE})")
    if evaluation:
        g.add_argument("--max-long-side", type=int, default=MAX_LONG_SIDE,
                       help=f"processing long side bound (protocol {MAX_LONG_SIDE})")
    g.add_argument("--window", type=int, default=WINDOW, help=f"sliding window (protocol {WINDOW})")
    g.add_argument("--stride", type=int, default=STRIDE, help=f"window stride (protocol {STRIDE})")
    g.add_argument("--pamr", action="store_true", help="refine window scores with PAMR (sharper edges, slower)")
    if evaluation:
        g.add_argument("--synonyms", choices=("mean", "max"), default="mean",
                       help="a class's synonyms: one averaged query, or the best synonym per patch")
    if background_default is None:
        return g
    threshold = g.add_mutually_exclusive_group()
    threshold.add_argument("--background-threshold", type=float,
                           help="pixels whose foreground confidence is below this are background "
                                f"({background_default}"
                                + (")" if evaluation else f"; default per score: {PUBLISHED_THRESHOLDS['voc21']})"))
    if evaluation:
        threshold.add_argument("--background-sweep", metavar="START:STOP:STEP",
                               help="evaluate many thresholds from one pass: a grid in cosine units with the sigmoid score "
                                    "(e.g. 0.0:0.4:0.01; probability units with softmax), or a comma list")
    g.add_argument("--background-score", choices=BACKGROUND_SCORES, default=DEFAULT_BACKGROUND_SCORE,
                   help="foreground confidence: sigmoid(max cosine) or max softmax(scale * cosine)")
    g.add_argument("--background-scale", type=float, default=DEFAULT_BACKGROUND_SCALE,
                   help="softmax scale s (only with --background-score softmax)")
    return g


def check_positive(args: argparse.Namespace, *names: str):
    """UsageError naming the flags when one of them is < 1 (sizes, counts)."""
    bad = [n for n in names if getattr(args, n) is not None and getattr(args, n) < 1]
    if bad:
        raise UsageError(f"{', '.join('--' + n.replace('_', '-') for n in bad)} must be positive")


# Python names of the protocols' fields and arguments, as their errors name them, and the flags that set them.
_FIELDS = re.compile(r"\b(background_threshold|background_scale|background_score|background_sweep|short_side|"
                     r"max_long_side|data_root|class_names|sweep_on|fewshot_from)\b|^(templates|synonyms|window|stride|"
                     r"precision|limit)\b")


@contextmanager
def flags_of(*errors: type):
    """Like ``bad_input``, with the Python names that the library's errors use for a protocol's fields turned
    into the flags that set them ("background_threshold must be ..." -> "--background-threshold must be ...")."""
    try:
        yield
    except errors as e:
        message = _FIELDS.sub(lambda m: "--" + m.group(0).replace("_", "-"), one_line(e))
        raise UsageError(message) from None


def segmentation_protocol(args: argparse.Namespace, **fields) -> SegmentationProtocol:
    """The ``SegmentationProtocol`` of the flags of ``add_protocol_args`` (those the parser has), checked once:
    a bad value is a UsageError naming its flag. ``fields`` override or complete the flags."""
    options = {k: getattr(args, k) for k in ("templates", "synonyms", "short_side", "max_long_side", "window",
                                             "stride", "pamr", "background_threshold", "background_score",
                                             "background_scale") if getattr(args, k, None) is not None}
    options.update(fields)
    with flags_of(ValueError):
        return SegmentationProtocol.of(**options)


def check_output(path, folder: bool = False):
    """Refuse an unusable ``--output`` (unwritable, a folder where a file goes or the reverse, a file on the way)
    before a model is loaded or any long work starts (``atomic.check_output``); creates nothing."""
    with bad_input(WriteError):
        check_writable(path, folder)


def read_labels(args: argparse.Namespace) -> Optional[List[str]]:
    """Labels from ``--labels`` or ``--labels-file`` (one per line, ``#`` comments); None when neither."""
    if args.labels is None and args.labels_file is None:
        return None
    with bad_input(ValueError, OSError):
        if args.labels_file is not None:
            try:
                text = open(args.labels_file, encoding="utf-8").read()
            except FileNotFoundError:
                raise UsageError(f"labels file not found: {args.labels_file}") from None
            return parse_labels([line.split("#", 1)[0] for line in text.splitlines()])
        return parse_labels(args.labels)


def check_checkpoint(args: argparse.Namespace):
    """Fail early (before data is read) on a checkpoint reference that names nothing (nothing is read)."""
    checkpoint_spec(args.model, args.checkpoint)


def device(args: argparse.Namespace):
    """The one device resolver (``weights.build.resolve_device``, whose messages start with "device") with usage
    errors naming the flag: ``--device meta holds no data ...``."""
    try:
        return resolve_device(args.device)
    except ValueError as e:
        raise UsageError(f"--{e}") from None


def load(args: argparse.Namespace, torch_device, precision: Optional[str] = None):
    """``open_clip_simzss.load_model`` from ``--model``/``--checkpoint``; warns about random weights.
    Returns (model, tokenizer)."""
    from ..weights.load import load_model, load_tokenizer
    model, _ = load_model(args.model, args.checkpoint, device=torch_device,
                          precision=precision or getattr(args, "precision", "fp32"))
    if model.source.random_weights:
        print(f"warning: no --checkpoint: {model.source.spec} has random weights (smoke test only)", file=sys.stderr)
    return model, load_tokenizer(model)
