"""One epoch of SimZSS training: OpenCLIP's step (autocast, grad scaler, clipping, logit-scale clamp, logging to
the console, tensorboard and wandb) with batches that carry concepts, and the concept loss and accuracy logged.

Host-device syncs (docs/performance.md): a step reads nothing back from the device, except at a logging step
(every ``--log-every-n-steps`` and the epoch's last). The batch's sizes come from the loader as Python ints
(``concepts["batch_sizes"]``), and the per-step losses of the history stay on the device until the next logging
step reads them all in one transfer. ``--precision amp`` (fp16) adds torch's GradScaler checks; amp_bf16 has none.
"""
import logging
import math
import time

import torch
from open_clip import get_input_dtype
from open_clip_train.distributed import is_master
from open_clip_train.precision import get_autocast
from open_clip_train.train import AverageMeter, backward, unwrap_model

from open_clip_simzss.loss import total_loss as sum_losses

from training.data import SkipTally

try:
    import wandb
except ImportError:
    wandb = None


def train_one_epoch(model, data, loss, epoch, optimizer, scaler, scheduler, args, tb_writer=None, tally=None):
    device = torch.device(args.device)
    autocast = get_autocast(args.precision, device_type=device.type)
    input_dtype = get_input_dtype(args.precision)
    tally = tally if tally is not None else SkipTally()
    use_concepts = args.lambda_concept > 0

    model.train()
    data["train"].set_epoch(epoch)
    dataloader = data["train"].dataloader
    num_batches_per_epoch = dataloader.num_batches
    sample_digits = math.ceil(math.log(dataloader.num_samples + 1, 10))
    meters = {}
    batch_time_m, data_time_m = AverageMeter(), AverageMeter()
    history = []
    pending = []  # (record, losses still on the device) of the steps since the last logging step
    end = time.time()
    for i, (images, texts, concepts, counts) in enumerate(dataloader):
        step = num_batches_per_epoch * epoch + i
        if not args.skip_scheduler:
            scheduler(step)
        tally.update(counts)
        texts = texts.to(device=device, non_blocking=True)
        if isinstance(images, dict):  # cached outputs of the frozen tower (--cache-vision-features)
            inputs = {k: v.to(device=device, dtype=input_dtype, non_blocking=True) for k, v in images.items()}
            inputs["text"] = texts
        else:
            images = images.to(device=device, dtype=input_dtype, non_blocking=True)
            inputs = dict(image=images, text=texts)
        if use_concepts:
            inputs.update({k: v.to(device=device, non_blocking=True) for k, v in concepts.items()
                           if isinstance(v, torch.Tensor)})
        inputs["batch_sizes"] = concepts["batch_sizes"]  # Python ints: what the step's shapes depend on
        data_time_m.update(time.time() - end)

        optimizer.zero_grad()
        with autocast():
            model_out = model(**inputs)
            losses = loss(**model_out, output_dict=True)
            total = sum_losses(losses)
        backward(total, scaler)
        if scaler is not None:
            if args.horovod:
                optimizer.synchronize()
                scaler.unscale_(optimizer)
                if args.grad_clip_norm is not None:
                    torch.nn.utils.clip_grad_norm_(model.parameters(), args.grad_clip_norm, norm_type=2.0)
                with optimizer.skip_synchronize():
                    scaler.step(optimizer)
            else:
                if args.grad_clip_norm is not None:
                    scaler.unscale_(optimizer)
                    torch.nn.utils.clip_grad_norm_(model.parameters(), args.grad_clip_norm, norm_type=2.0)
                scaler.step(optimizer)
            scaler.update()
        else:
            if args.grad_clip_norm is not None:
                torch.nn.utils.clip_grad_norm_(model.parameters(), args.grad_clip_norm, norm_type=2.0)
            optimizer.step()
        with torch.no_grad():  # ln(100), as OpenCLIP and the paper
            unwrap_model(model).logit_scale.clamp_(0, math.log(100))

        batch_count = i + 1
        losses["loss"] = total
        record = dict(step=step, epoch=epoch, lr=optimizer.param_groups[0]["lr"],
                      num_concepts=int(concepts["concept_ids"].numel()))  # numel: a shape, no sync
        pending.append((record, {k: v.detach() for k, v in losses.items()}))
        logging_step = i % args.log_every_n_steps == 0 or batch_count == num_batches_per_epoch
        if logging_step:
            # The one host sync of a logging step (every rank, for its history): waits for this step's work.
            logit_scale = read_pending(pending, history, unwrap_model(model).logit_scale.detach().exp())
        # After the sync on a logging step: batch_time_m.avg is then the interval's true time per step.
        batch_time_m.update(time.time() - end)
        end = time.time()
        if is_master(args) and logging_step:
            batch_size = len(texts)
            num_samples = batch_count * batch_size * args.world_size
            for key, val in record.items():
                if key.endswith(("loss", "accuracy")):
                    meters.setdefault(key, AverageMeter()).update(val, batch_size)
            # The average since the last logging step: without a sync per step, one step's time is only the
            # host's (the device runs behind it); the interval's average is exact.
            samples_per_second = args.batch_size * args.world_size / batch_time_m.avg
            loss_log = " ".join(f"{k.replace('_', ' ').capitalize()}: {m.val:#.5g} ({m.avg:#.5g})"
                                for k, m in meters.items())
            logging.info(
                f"Train Epoch: {epoch} [{num_samples:>{sample_digits}}/{dataloader.num_samples} "
                f"({100.0 * batch_count / num_batches_per_epoch:.0f}%)] "
                f"Data (t): {data_time_m.avg:.3f} Batch (t): {batch_time_m.avg:.3f}, "
                f"{samples_per_second:#g}/s, {samples_per_second / args.world_size:#g}/s/gpu "
                f"LR: {optimizer.param_groups[0]['lr']:5f} Logit Scale: {logit_scale:.3f} "
                f"Concepts: {record['num_concepts']} Skipped samples: {tally.total_skipped} " + loss_log
            )
            log_data = {"data_time": data_time_m.val, "batch_time": batch_time_m.val,
                        "samples_per_second": samples_per_second,
                        "samples_per_second_per_gpu": samples_per_second / args.world_size,
                        "scale": logit_scale, "lr": optimizer.param_groups[0]["lr"],
                        "skipped_samples": tally.total_skipped}
            log_data.update({name: m.val for name, m in meters.items()})
            log_data = {"train/" + name: val for name, val in log_data.items()}
            if tb_writer is not None:
                for name, val in log_data.items():
                    tb_writer.add_scalar(name, val, step)
            if args.wandb:
                wandb.log(dict(log_data, step=step), step=step)
            batch_time_m.reset()
            data_time_m.reset()
    read_pending(pending, history)  # a loader that ended early: its last steps (nothing when it did not)
    return history


def read_pending(pending, history, *extra):
    """Reads the pending steps' losses (and ``extra`` scalars) from the device in one transfer, appends the
    completed records to ``history`` and returns the ``extra`` values as floats."""
    keys = [list(losses) for _, losses in pending]
    flat = [v.float() for _, losses in pending for v in losses.values()] + [v.float() for v in extra]
    if not flat:
        return None
    values = torch.stack(flat).tolist()
    for (record, _), names in zip(pending, keys):
        record.update(zip(names, values[:len(names)]))
        values = values[len(names):]
        history.append(record)
    pending.clear()
    return values[0] if len(extra) == 1 else values
