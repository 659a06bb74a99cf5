"""``python -m open_clip_simzss <command> [flags]``: every ``simzss-<command>`` console script, one entry point
(``torchrun -m open_clip_simzss evaluate ...`` runs a multi-process evaluation). Flags are the command's own."""
import importlib
import sys

# command -> the module of cli/ whose main(argv) runs it (the console scripts of pyproject.toml point there too)
COMMANDS = {"segment": "segment", "visualize": "visualize", "evaluate": "evaluate", "preprocess": "preprocess",
            "checkpoint": "checkpoint", "clip-benchmark": "clip_benchmark", "demo": "demo", "app": "app"}
USAGE = (f"usage: python -m open_clip_simzss {{{','.join(COMMANDS)}}} ...  (--help after a command for its "
         "flags; each is also the console script simzss-<command>)")


def main(argv=None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["--version"]:
        from .version import __version__
        print(f"open_clip_simzss {__version__}")
        return 0
    if not argv or argv[0] not in COMMANDS:
        if argv and argv[0] not in ("-h", "--help"):
            print(f"error: unknown command {argv[0]!r}; {USAGE.removeprefix('usage: ')}", file=sys.stderr)
            return 2
        print(USAGE, file=sys.stdout if argv else sys.stderr)
        return 0 if argv else 2
    return importlib.import_module(f"{__package__}.cli.{COMMANDS[argv[0]]}").main(argv[1:])


if __name__ == "__main__":
    sys.exit(main())
