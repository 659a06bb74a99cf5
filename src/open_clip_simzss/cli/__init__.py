"""The command-line layer: one module per ``simzss-<name>`` command, each with ``main(argv=None) -> int``, and
``common`` for what they share (error policy, argument groups, device and model resolution). Library modules
never import from here."""
