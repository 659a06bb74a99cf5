"""One epoch of SimZSS training: OpenCLIP's step (autocast, grad scaler, clipping, logit-scale clamp, logging to
the console, tensorboard and wandb) with batches that carry concepts, and the concept loss and accuracy logged.
"""
import logging
import math
import time

import torch
from open_clip import get_input_dtype
from open_clip_train.distributed import is_master
from open_clip_train.precision import get_autocast
from open_clip_train.train import AverageMeter, backward, unwrap_model

from open_clip_simzss.data import SkipTally
from open_clip_simzss.loss import total_loss as sum_losses

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
            inputs.update({k: v.to(device=device, non_blocking=True) for k, v in concepts.items()})
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

        batch_time_m.update(time.time() - end)
        end = time.time()
        batch_count = i + 1
        losses["loss"] = total
        record = {k: float(v.detach()) for k, v in losses.items()}
        record.update(step=step, epoch=epoch, lr=optimizer.param_groups[0]["lr"],
                      num_concepts=int(concepts["concept_ids"].numel()))
        history.append(record)
        if is_master(args) and (i % args.log_every_n_steps == 0 or batch_count == num_batches_per_epoch):
            batch_size = len(texts)
            num_samples = batch_count * batch_size * args.world_size
            for key, val in record.items():
                if key.endswith(("loss", "accuracy")):
                    meters.setdefault(key, AverageMeter()).update(val, batch_size)
            samples_per_second = args.batch_size * args.world_size / batch_time_m.val
            logit_scale = float(unwrap_model(model).logit_scale.detach().exp())
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
    return history
