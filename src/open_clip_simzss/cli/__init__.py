"""The command line: one module per ``simzss-<command>`` console script, each with ``main(argv=None) -> int``,
started by the console scripts and by ``python -m open_clip_simzss <command>`` (``__main__.py``), and ``common``
for what they share (the error policy, argument groups, and the device, protocol and model they resolve). The top
floor: it may import everything below (the library and the workflows); nothing in them imports it, and the trainer
(``python -m training.main``) imports only ``common.run``, for the same error policy.
"""
