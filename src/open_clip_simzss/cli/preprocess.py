"""``simzss-preprocess``: add ``concepts.json`` (SimZSS concepts) to img2dataset WebDataset shards; see
``open_clip_simzss.concepts.preprocess``. Exit status: 0 ok, 2 bad input, 1 when a shard could not be read."""
from ..concepts.bank import ConceptBankError
from ..concepts.preprocess import PreprocessError, preprocess_shards
from ..concepts.spacy_model import DEFAULT_SPACY_MODEL, SpacyModelNotFoundError
from ..extras import require_train_extra
from . import common


def build_parser():
    p = common.make_parser("preprocess", "Add concepts.json (SimZSS concepts) to img2dataset WebDataset shards.")
    p.add_argument("--input", nargs="+", required=True,
                   help="input shards: brace patterns such as 'coco/{00000..00295}.tar' and/or globs")
    common.add_output_arg(p, "output directory (created if needed)", required=True)
    p.add_argument("--workers", type=int, default=None,
                   help="worker processes, one shard each (default: the CPUs available)")
    p.add_argument("--spacy-model", default=DEFAULT_SPACY_MODEL,
                   help="spaCy pipeline name or path (default: %(default)s; the paper used en_core_web_trf)")
    p.add_argument("--concept-bank", default="default",
                   help="'default' (the shipped bank), 'none' (keep every concept) or a file, one per line")
    p.add_argument("--batch-size", type=int, default=256, help="captions per nlp.pipe batch")
    p.add_argument("--shard-index", type=int, default=None,
                   help="process shards shard-index, shard-index + num-shards, ... (default from SLURM)")
    p.add_argument("--num-shards", type=int, default=None, help="see --shard-index (default from SLURM)")
    return p


def preprocess(args) -> int:
    require_train_extra("simzss-preprocess")
    common.check_positive(args, "workers", "batch_size")
    with common.bad_input(PreprocessError, ConceptBankError, SpacyModelNotFoundError, FileNotFoundError):
        return preprocess_shards(args.input, args.output, args.workers, args.spacy_model, args.concept_bank,
                                 args.batch_size, args.shard_index, args.num_shards)


def main(argv=None) -> int:
    return common.run(build_parser(), preprocess, argv)

