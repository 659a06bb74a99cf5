"""Command-line flags: OpenCLIP's (``open_clip_train.params``) plus SimZSS's own.

SimZSS flags are parsed first and removed, the rest goes to OpenCLIP's parser unchanged, so every OpenCLIP flag
keeps its meaning. Combinations this trainer cannot honour are refused with a one-line reason.
"""
import argparse

from open_clip_train.params import parse_args as parse_open_clip_args

from open_clip_simzss.validation import check_count, check_non_negative, check_number, check_positive


def simzss_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(add_help=False, description="SimZSS options (besides OpenCLIP's)")
    group = parser.add_argument_group("SimZSS")
    group.add_argument("--lambda-concept", type=float, default=0.05,
                       help="weight λ of the concept loss (Eq. 10); 0 trains LiT under the same conditions")
    group.add_argument("--concept-tau", type=float, default=0.1,
                       help="temperature τ of the softmax over patches that pools visual concepts (Eq. 3)")
    group.add_argument("--concept-temperature", type=float, default=0.07,
                       help="temperature T of the concept classifier (Eq. 8)")
    group.add_argument("--simzss-variant", choices=["paper", "release"], default="paper",
                       help="paper: the paper's equations; release: the authors' released loss (text concept = sum "
                            "of normalised projected tokens, classifier-row queries, argmax targets), which "
                            "produced the published numbers (docs/method.md)")
    group.add_argument("--concept-bank", default="default",
                       help="concept bank: 'default', 'none' or a file (one per line); the shards' concepts.json "
                            "must have been made with the same one (checked)")
    group.add_argument("--spacy-model", default="en_core_web_sm",
                       help="spaCy pipeline (the paper used en_core_web_trf); the shards' concepts.json must have "
                            "been made with the same one (checked)")
    group.add_argument("--concept-source", choices=["auto", "stored", "spacy", "shards"], default="auto",
                       help="auto: the shards' concepts.json when present (refused if made with another bank or "
                            "spaCy model), else spaCy in the loader workers; stored: concepts.json only (same "
                            "check); spacy: ignore concepts.json and extract on the fly; shards: older name of "
                            "stored")
    group.add_argument("--vision-weights", default=None,
                       help="local weights file for the vision tower (timm or original DINOv2 format); "
                            "default $SIMZSS_VISION_WEIGHTS, else --pretrained-image downloads them with timm")
    group.add_argument("--denoiser-weights", default=None, metavar="FILE",
                       help="DVT's released denoiser weights for a model with a denoiser (simzss-vitb14-dvt); "
                            "default $SIMZSS_DENOISER_WEIGHTS, else downloaded from the Hugging Face hub")
    group.add_argument("--dry-run", action="store_true",
                       help="print the resolved recipe (model, variant, λ, τ, T, batch, lr, schedule, precision, "
                            "weights) and exit without building the model or reading data")
    group.add_argument("--cache-vision-features", default=None, metavar="DIR",
                       help="compute the frozen tower's outputs once per image, store them (memory-mapped) in DIR "
                            "and reuse them every epoch; images get the deterministic validation transform")
    group.add_argument("--max-consecutive-skips", type=int, default=1000, metavar="N",
                       help="stop with one line when a loader worker's first N samples, in a row, are all "
                            "corrupt (a whole pass over its shards without a batch stops it too)")
    group.add_argument("--cache-dtype", choices=["float16", "float32"], default="float16",
                       help="storage type of the feature cache")
    return parser


class ArgumentError(ValueError):
    """A flag combination this trainer refuses; the message is the one line shown to the user."""


def check_numbers(args):
    """Every numeric flag finite and in range (``nan`` would train to a NaN checkpoint, or silently train LiT)."""
    checks = [("lambda_concept", check_non_negative), ("concept_tau", check_positive),
              ("concept_temperature", check_positive), ("lr", check_non_negative), ("wd", check_non_negative),
              ("eps", check_positive), ("grad_clip_norm", check_positive), ("lr_cooldown_end", check_non_negative),
              ("lr_cooldown_power", check_positive), ("coca_caption_loss_weight", check_non_negative),
              ("coca_contrastive_loss_weight", check_non_negative)]
    try:
        for name, check in checks:
            if getattr(args, name, None) is not None:
                check("--" + name.replace("_", "-"), getattr(args, name))
        for name in ("beta1", "beta2"):
            if getattr(args, name, None) is not None:
                check_number(f"--{name}", getattr(args, name), minimum=0, below=1)
        for name, minimum in (("batch_size", 1), ("epochs", 0), ("warmup", 0), ("workers", 0),
                              ("max_consecutive_skips", 1), ("log_every_n_steps", 1)):
            check_count("--" + name.replace("_", "-"), getattr(args, name), minimum)
        if args.train_num_samples is not None:
            check_count("--train-num-samples", args.train_num_samples)
    except ValueError as error:
        raise ArgumentError(str(error)) from None


def validate(args):
    if args.accum_freq != 1:
        raise ArgumentError("--accum-freq > 1 is not supported: concepts are tied to their batch")
    if args.siglip:
        raise ArgumentError("--siglip is not supported: SimZSS uses the CLIP (softmax) global loss")
    if args.distill_model or args.distill_pretrained:
        raise ArgumentError("--distill-model/--distill-pretrained are not supported by SimZSS")
    if args.trace or args.torchscript:
        raise ArgumentError("--trace/--torchscript are not supported for SimZSS models")
    if args.torchcompile:
        raise ArgumentError("--torchcompile is not supported: the step's shapes change with every batch (trimmed "
                            "text length, concept counts), so torch.compile would recompile; see "
                            "docs/performance.md")
    if args.use_bnb_linear:
        raise ArgumentError("--use-bnb-linear is not supported for SimZSS models")
    if args.horovod and args.lambda_concept > 0:
        raise ArgumentError("--horovod only trains LiT (--lambda-concept 0): the concept loss gathers with "
                            "torch.distributed")
    if args.lock_image_unlocked_groups:
        raise ArgumentError("--lock-image-unlocked-groups: SimZSS keeps the whole vision tower frozen")
    if args.train_data and args.dataset_type not in ("webdataset", "auto"):
        raise ArgumentError(f"--dataset-type {args.dataset_type}: SimZSS trains on WebDataset shards")
    check_numbers(args)
    if args.cache_vision_features and args.aug_cfg:
        raise ArgumentError("--cache-vision-features stores one encoding per image: it cannot be combined with "
                            "random image augmentation (--aug-cfg)")
    if args.concept_source == "shards":
        args.concept_source = "stored"
    if args.device.split(":")[0] == "meta":
        raise ArgumentError("--device meta holds no data and cannot train: use cpu or cuda")
    if not args.model.startswith(("simzss", "local-dir:", "hf-hub:")):
        raise ArgumentError(f"--model {args.model}: not a SimZSS model (see open_clip_simzss.list_models())")


def parse_args(argv):
    ours = simzss_parser()
    if any(a in ("-h", "--help") for a in argv):
        ours.print_help()
        print("\nOpenCLIP options:")
        parse_open_clip_args(["--help"])  # prints and exits
    simzss_args, rest = ours.parse_known_args(argv)
    if not any(a == "--model" or a.startswith("--model=") for a in rest):
        rest += ["--model", "simzss-vitb14"]
    args = parse_open_clip_args(rest)
    for k, v in vars(simzss_args).items():
        setattr(args, k, v)
    validate(args)
    return args

