"""Training checkpoints: written atomically at the end of epochs, found again by ``--resume latest`` (newest
readable first), read with ``weights_only=True`` (``open_clip_simzss.weights.read``).
"""
import logging
import os

import torch
from open_clip_train.distributed import broadcast_object, is_master
from open_clip_train.main import LATEST_CHECKPOINT_NAME

from open_clip_simzss.atomic import write_file
from open_clip_simzss.weights.read import CheckpointError, read_checkpoint


def checkpoint_candidates(folder, most_recent: bool):
    """This run's checkpoints, newest first: ``epoch_latest.pt`` when ``most_recent`` (--save-most-recent),
    then ``epoch_N.pt`` by decreasing N."""
    if not os.path.isdir(folder):
        return []
    epochs = []
    for name in os.listdir(folder):
        number = name.removeprefix("epoch_").removesuffix(".pt")
        if name.startswith("epoch_") and name.endswith(".pt") and number.isdigit():
            epochs.append((int(number), name))
    names = ([LATEST_CHECKPOINT_NAME] if most_recent and LATEST_CHECKPOINT_NAME in os.listdir(folder) else []) + \
        [name for _, name in sorted(epochs, reverse=True)]
    return [os.path.join(folder, name) for name in names]


def resolve_resume(args):
    """``--resume``: (path, checkpoint) to start from, or (None, None). ``latest`` is the newest checkpoint of
    this run that can be read (rank 0 looks, skipping unreadable ones with a warning, and broadcasts the path).
    Any other value is read as it is (CheckpointError, one line, when it cannot be)."""
    if args.resume is None:
        return None, None
    if args.resume != "latest":
        return args.resume, read_checkpoint(args.resume)
    resume_from = checkpoint = None
    if is_master(args):
        for path in checkpoint_candidates(args.checkpoint_path, args.save_most_recent):
            try:
                checkpoint = read_checkpoint(path)
            except CheckpointError as error:
                logging.warning(f"resume: skipping {path}, it cannot be read ({error})")
                continue
            resume_from = path
            break
        logging.info(f"resume: {resume_from or 'no checkpoint yet, starting from scratch'}")
    if args.distributed:
        resume_from = broadcast_object(args, resume_from)
        if resume_from is not None and checkpoint is None:
            checkpoint = read_checkpoint(resume_from)
    return resume_from, checkpoint


def save_checkpoint(model, optimizer, scaler, args, completed_epoch):
    checkpoint = {"epoch": completed_epoch, "name": args.name, "state_dict": model.state_dict(),
                  "optimizer": optimizer.state_dict(), "simzss_variant": args.simzss_variant}
    if scaler is not None:
        checkpoint["scaler"] = scaler.state_dict()
    # Atomic writes (open_clip_simzss.atomic): a kill or a full disk leaves the previous checkpoints intact and
    # no partial file for --resume latest to pick.
    if completed_epoch == args.epochs or (args.save_frequency > 0 and completed_epoch % args.save_frequency == 0):
        write_checkpoint(checkpoint, os.path.join(args.checkpoint_path, f"epoch_{completed_epoch}.pt"))
    if args.delete_previous_checkpoint:
        previous = os.path.join(args.checkpoint_path, f"epoch_{completed_epoch - 1}.pt")
        if os.path.exists(previous):
            os.remove(previous)
    if args.save_most_recent:
        write_checkpoint(checkpoint, os.path.join(args.checkpoint_path, LATEST_CHECKPOINT_NAME))


def write_checkpoint(checkpoint, path):
    write_file(path, lambda handle: torch.save(checkpoint, handle))
