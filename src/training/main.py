"""``python -m training.main``: SimZSS training with OpenCLIP's flags, on OpenCLIP's trainer parts.

Reused from ``open_clip_train`` by import: argument parsing, distributed init (torchrun, SLURM, horovod),
logging setup, learning-rate schedules, checkpoint discovery (``--resume latest``), checkpoint format, the
ImageNet zero-shot / validation evaluation. SimZSS-specific: the model factory, the loss, concept-carrying
batches and the epoch loop (``training/train.py``). ``--lambda-concept 0`` trains LiT through the same code.
``--simzss-variant paper|release`` chooses the paper's loss or the authors' released one (docs/method.md);
``--dry-run`` prints the resolved recipe and exits.
"""
import json
import logging
import os
import sys
from datetime import datetime
from functools import partial

import torch
import open_clip

from open_clip_simzss.extras import MissingExtraError, require_train_extra

try:  # before OpenCLIP's trainer imports WebDataset: a missing [train] extra is one line, not a traceback
    require_train_extra("python -m training.main")
except MissingExtraError as error:
    sys.exit(f"error: {error}")

from open_clip_train.data import expand_urls, get_imagenet
from open_clip_train.distributed import broadcast_object, init_distributed_device, is_master
from open_clip_train.logger import setup_logging
from open_clip_train.main import random_seed
from open_clip_train.scheduler import const_lr, const_lr_cooldown, cosine_lr
from open_clip_train.train import evaluate

import open_clip_simzss
from open_clip_simzss.cli.common import run as run_command
from open_clip_simzss.concepts.bank import ConceptBank
from open_clip_simzss.loss import SimZSSLoss
from open_clip_simzss.weights.read import CheckpointError, fit_state_dict
from training.checkpoints import resolve_resume, save_checkpoint
from training.checks import (
    check_logs, check_model, check_stored_concepts, check_train_data, load_concept_bank, recipe,
)
from training.compat import fix_open_clip_zero_shot
from training.data import NoTrainingDataError, SkipTally, get_wds_dataset
from training.feature_cache import FeatureCache
from training.params import ArgumentError, parse_args
from training.train import train_one_epoch

try:
    import wandb
except ImportError:
    wandb = None
try:
    import torch.utils.tensorboard as tensorboard
except ImportError:
    tensorboard = None


def make_extractor(spacy_model, concept_bank):
    """Built lazily in each loader worker (spaCy pipelines are not shared across processes)."""
    from open_clip_simzss.concepts.extract import ConceptExtractor
    return ConceptExtractor(spacy_model=spacy_model, bank=ConceptBank.from_spec(concept_bank))


def build_feature_cache(args, model, preprocess_val, device):
    """``--cache-vision-features``: every rank encodes its share of the shards, then all read the same files."""
    cache = FeatureCache.for_model(args.cache_vision_features, model, open_clip.get_model_preprocess_cfg(model),
                                   args.cache_dtype)
    urls, _ = expand_urls(args.train_data)
    encoded = cache.build(urls, model, preprocess_val, device=device, batch_size=max(args.batch_size, 1),
                          rank=args.rank, world_size=args.world_size)
    if args.distributed and not args.horovod:
        torch.distributed.barrier()
    logging.info(f"feature cache {cache.dir}: {encoded} images encoded by this rank, {len(urls)} shards cached")
    return cache


def get_data(args, preprocess_fns, epoch, tokenizer, feature_cache=None, bank=None):
    preprocess_train, preprocess_val = preprocess_fns
    data = {}
    use_concepts = args.lambda_concept > 0
    extractor_factory = None
    if use_concepts and args.concept_source != "stored":
        extractor_factory = partial(make_extractor, args.spacy_model, args.concept_bank)
    if args.train_data:
        data["train"] = get_wds_dataset(
            args, preprocess_train, is_train=True, epoch=epoch, tokenizer=tokenizer, with_concepts=use_concepts,
            extractor_factory=extractor_factory, force_on_the_fly=args.concept_source == "spacy",
            feature_cache=feature_cache, num_concept_ids=None if bank is None or bank.is_open else bank.num_ids)
    if args.val_data:
        data["val"] = get_wds_dataset(args, preprocess_val, is_train=False, tokenizer=tokenizer)
    if args.imagenet_val is not None:
        data["imagenet-val"] = get_imagenet(args, preprocess_fns, "val")
    if args.imagenet_v2 is not None:
        data["imagenet-v2"] = get_imagenet(args, preprocess_fns, "v2")
    return data


def create_optimizer(model, args):
    """OpenCLIP's AdamW grouping (no weight decay on gains, biases, logit scale) over trainable parameters:
    the frozen vision tower is not in the optimizer."""
    named = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    if args.opt.startswith("timm/"):
        from timm.optim import create_optimizer_v2
        kwargs = {}
        if args.beta1 is not None:
            kwargs["betas"] = (args.beta1, args.beta2)
        if args.momentum is not None:
            kwargs["momentum"] = args.momentum
        return create_optimizer_v2(model, args.opt.split("timm/")[-1], lr=args.lr, weight_decay=args.wd,
                                   eps=args.eps, **kwargs)
    if args.opt != "adamw":
        raise ArgumentError(f"--opt {args.opt}: use adamw or a timm/ optimizer")
    exclude = lambda n, p: p.ndim < 2 or "bn" in n or "ln" in n or "bias" in n or "logit_scale" in n  # noqa: E731
    # The fused kernel gives the same updates (and state dict) as the default one; on CPU it is ~9x faster,
    # which matters for small text towers whose step is dominated by the 49408-row token embedding.
    fused = all(p.device.type in ("cpu", "cuda") for _, p in named)
    return torch.optim.AdamW(
        [{"params": [p for n, p in named if exclude(n, p)], "weight_decay": 0.0},
         {"params": [p for n, p in named if not exclude(n, p)], "weight_decay": args.wd}],
        lr=args.lr, betas=(args.beta1, args.beta2), eps=args.eps, fused=fused,
    )


def create_scheduler(optimizer, args, num_batches):
    total_steps = num_batches * args.epochs
    if args.lr_scheduler == "cosine":
        return cosine_lr(optimizer, args.lr, args.warmup, total_steps)
    if args.lr_scheduler == "const":
        return const_lr(optimizer, args.lr, args.warmup, total_steps)
    if args.lr_scheduler == "const-cooldown":
        if args.epochs_cooldown is None:
            raise ArgumentError("--lr-scheduler const-cooldown needs --epochs-cooldown")
        return const_lr_cooldown(optimizer, args.lr, args.warmup, total_steps, num_batches * args.epochs_cooldown,
                                 args.lr_cooldown_power, args.lr_cooldown_end)
    raise ArgumentError(f"unknown --lr-scheduler {args.lr_scheduler}")


def main(argv):
    args = parse_args(argv)
    bank = load_concept_bank(args)
    if args.dry_run:
        for name, value in recipe(args, argv):
            print(f"{name}: {value}")
        return 0
    check_model(args)
    check_train_data(args)
    check_logs(args)
    concepts_note = check_stored_concepts(args, bank)
    resume = None if args.resume == "latest" else resolve_resume(args)  # a bad --resume FILE before any output
    if torch.cuda.is_available():
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.benchmark = True
    device = init_distributed_device(args)

    if args.name is None:
        date_str = datetime.now().strftime("%Y_%m_%d-%H_%M_%S")
        if args.distributed:
            date_str = broadcast_object(args, date_str)
        args.name = "-".join([date_str, f"model_{args.model.replace('/', '-')}", f"lambda_{args.lambda_concept}",
                              f"lr_{args.lr}", f"b_{args.batch_size}", f"p_{args.precision}"])
    resume_latest = args.resume == "latest"
    log_base_path = os.path.join(args.logs, args.name)
    args.log_path = None
    if is_master(args, local=args.log_local):
        os.makedirs(log_base_path, exist_ok=True)
        args.log_path = os.path.join(log_base_path, f"out-{args.rank}" if args.log_local else "out.log")
        if os.path.exists(args.log_path) and not resume_latest:
            raise ArgumentError(f"experiment {args.name} exists; use --name NEW or --resume latest")
    setup_logging(args.log_path, logging.DEBUG if args.debug else logging.INFO)
    # OpenCLIP's setup_logging sets every existing logger to INFO, torch's internals included, which then print
    # compile statistics at exit: keep torch's own loggers at WARNING.
    for name in list(logging.root.manager.loggerDict):
        if name.startswith("torch.") and not args.debug:
            logging.getLogger(name).setLevel(logging.WARNING)
    args.wandb = "wandb" in args.report_to or "all" in args.report_to
    args.tensorboard = "tensorboard" in args.report_to or "all" in args.report_to
    if args.wandb and wandb is None:
        raise ArgumentError("--report-to wandb needs wandb: pip install 'open_clip_simzss[wandb]'")
    if args.tensorboard and tensorboard is None:
        raise ArgumentError("--report-to tensorboard needs tensorboard: pip install tensorboard")
    args.checkpoint_path = os.path.join(log_base_path, "checkpoints")
    args.tensorboard_path = os.path.join(log_base_path, "tensorboard") if args.tensorboard and is_master(args) else ""
    if is_master(args):
        for d in (args.tensorboard_path, args.checkpoint_path):
            if d:
                os.makedirs(d, exist_ok=True)
    args.resume, checkpoint = resume or resolve_resume(args)
    if args.distributed:
        logging.info(f"distributed: rank {args.rank}/{args.world_size}, device {args.device}")

    random_seed(args.seed, 0)
    model, preprocess_train, preprocess_val = open_clip_simzss.create_model_and_transforms(
        args.model, args.pretrained, precision=args.precision, device=device,
        force_image_size=args.force_image_size[0] if isinstance(args.force_image_size, (list, tuple))
        else args.force_image_size,
        force_context_length=args.force_context_length, image_mean=args.image_mean, image_std=args.image_std,
        image_interpolation=args.image_interpolation, image_resize_mode=args.image_resize_mode,
        aug_cfg=args.aug_cfg, pretrained_image=args.pretrained_image, pretrained_image_path=args.vision_weights,
        denoiser_weights=args.denoiser_weights, output_dict=True, cache_dir=args.cache_dir,
        simzss_variant=args.simzss_variant,
    )
    random_seed(args.seed, args.rank)
    # The tower is frozen whatever --lock-image says (docs/method.md); the call is kept for OpenCLIP parity.
    model.lock_image_tower()
    if args.lock_text:
        model.lock_text_tower(args.lock_text_unlocked_layers, args.lock_text_freeze_layer_norm)
    if args.grad_checkpointing:
        model.set_grad_checkpointing()
    if is_master(args):
        with open(os.path.join(log_base_path, "params.txt"), "w") as f:
            for name in sorted(vars(args)):
                f.write(f"{name}: {getattr(args, name)}\n")
        trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
        logging.info(f"{args.model}: {trainable / 1e6:.1f}M trainable parameters (vision tower frozen)")
        logging.info(f"SimZSS variant: {args.simzss_variant} (docs/method.md), lambda {args.lambda_concept:g}, "
                     f"tau {args.concept_tau:g}, T {args.concept_temperature:g}")
        logging.log(*concepts_note)

    original_model = model
    if args.distributed and not args.horovod:
        ddp_args = {"static_graph": True} if args.ddp_static_graph else {}
        device_ids = [device] if device.type == "cuda" else None
        model = torch.nn.parallel.DistributedDataParallel(model, device_ids=device_ids, **ddp_args)

    optimizer = scaler = None
    if args.train_data:
        optimizer = create_optimizer(model, args)
        if args.horovod:
            import horovod.torch as hvd
            optimizer = hvd.DistributedOptimizer(optimizer, named_parameters=model.named_parameters())
            hvd.broadcast_parameters(model.state_dict(), root_rank=0)
            hvd.broadcast_optimizer_state(optimizer, root_rank=0)
        if args.precision == "amp":
            scaler = torch.amp.GradScaler(device=device.type)

    start_epoch = 0
    if args.resume is not None:  # read with weights_only=True (a local file or an fsspec URL)
        if not isinstance(checkpoint, dict):
            raise CheckpointError(f"--resume {args.resume} is not a checkpoint (expected a dict of tensors)")
        if "epoch" in checkpoint:
            saved_variant = checkpoint.get("simzss_variant", args.simzss_variant)
            if saved_variant != args.simzss_variant:
                raise ArgumentError(f"--resume {args.resume} was trained with --simzss-variant {saved_variant}, "
                                    f"not {args.simzss_variant}")
            start_epoch = checkpoint["epoch"]
            original_model.load_state_dict(fit_state_dict(original_model, checkpoint["state_dict"], args.model,
                                                          source=args.resume))
            if optimizer is not None:
                optimizer.load_state_dict(checkpoint["optimizer"])
            if scaler is not None and "scaler" in checkpoint:
                scaler.load_state_dict(checkpoint["scaler"])
            logging.info(f"=> resuming checkpoint '{args.resume}' (epoch {start_epoch})")
        else:
            original_model.load_state_dict(fit_state_dict(original_model, checkpoint, args.model, source=args.resume))
            logging.info(f"=> loaded checkpoint '{args.resume}'")

    tokenizer = open_clip_simzss.get_tokenizer(args.model, context_length=args.force_context_length)
    feature_cache = None
    if args.cache_vision_features and args.train_data:
        feature_cache = build_feature_cache(args, original_model, preprocess_val, device)
    data = get_data(args, (preprocess_train, preprocess_val), start_epoch, tokenizer, feature_cache, bank)
    if not data:
        raise ArgumentError("nothing to do: give --train-data, --val-data or --imagenet-val")
    if "imagenet-val" in data or "imagenet-v2" in data:
        fix_open_clip_zero_shot()  # OpenCLIP 3.3's zero-shot accuracy() fails under NumPy 2.4
    scheduler = None
    if "train" in data and optimizer is not None:
        scheduler = create_scheduler(optimizer, args, data["train"].dataloader.num_batches)

    args.save_logs = args.logs and args.logs.lower() != "none" and is_master(args)
    writer = tensorboard.SummaryWriter(args.tensorboard_path) if args.save_logs and args.tensorboard else None
    if args.wandb and is_master(args):
        wandb.init(project=args.wandb_project_name, name=args.name, id=args.name, notes=args.wandb_notes,
                   resume="auto" if resume_latest else None, config=vars(args))

    if "train" not in data:
        evaluate(model, data, start_epoch, args, tb_writer=writer, tokenizer=tokenizer)
        return 0

    loss = SimZSSLoss(
        lambda_concept=args.lambda_concept, tau=args.concept_tau, concept_temperature=args.concept_temperature,
        local_loss=args.local_loss, gather_with_grad=args.gather_with_grad, cache_labels=True,
        rank=args.rank, world_size=args.world_size, use_horovod=args.horovod, variant=args.simzss_variant,
    )
    tally = SkipTally()
    history_path = os.path.join(log_base_path, f"history-rank{args.rank}.jsonl")
    for epoch in range(start_epoch, args.epochs):
        if is_master(args):
            logging.info(f"Start epoch {epoch}")
        history = train_one_epoch(model, data, loss, epoch, optimizer, scaler, scheduler, args, writer, tally)
        with open(history_path, "a") as f:
            for record in history:
                f.write(json.dumps(record) + "\n")
        completed_epoch = epoch + 1
        if tally.total_skipped or tally.total_bad_concepts:
            logging.info(f"epoch {epoch}: {tally.total_skipped} corrupt samples skipped, "
                         f"{tally.total_bad_concepts} bad concepts ignored so far (malformed concepts.json, rows "
                         "past the caption's end-of-text token or with an id outside the concept bank)")
        if any(v in data for v in ("val", "imagenet-val", "imagenet-v2")):
            evaluate(model, data, completed_epoch, args, tb_writer=writer, tokenizer=tokenizer)
            if args.distributed and not args.horovod:
                torch.distributed.barrier()
        if args.save_logs:
            save_checkpoint(original_model, optimizer, scaler, args, completed_epoch)
        if args.distributed and not args.horovod:
            torch.distributed.barrier()
    if args.wandb and is_master(args):
        wandb.finish()
    if args.distributed and not args.horovod:
        torch.distributed.destroy_process_group()
    return 0


def cli(argv=None):
    """The project's error policy (``open_clip_simzss.cli.common``): bad input exits 2, a failure while
    training 1, each with one ``error:`` line on stderr; ``--debug`` adds the traceback."""
    return run_command(None, main, argv, input_errors=(ArgumentError, FileNotFoundError, NoTrainingDataError))


if __name__ == "__main__":
    sys.exit(cli())
