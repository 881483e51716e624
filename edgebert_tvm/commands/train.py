"""`edgebert-tvmc train`: the two-stage EdgeBERT recipe into a checkpoint directory (resumable)."""

from __future__ import annotations

import argparse
from pathlib import Path

from ..fileio import check_output_directory
from ..training.recipe import RecipeConfig, Trainer


def execute(args: argparse.Namespace) -> None:
    check_output_directory(Path(args.output))
    config = RecipeConfig(
        backbone=args.backbone, task=args.task, train_file=args.train_file, teacher=args.teacher,
        max_examples=args.max_examples, max_seq_len=args.max_seq_len, batch_size=args.batch_size,
        epochs=args.epochs, lr=args.lr, sparsity=args.sparsity, pruning=args.pruning, pruning_block=args.pruning_block,
        embedding_keep=args.embedding_keep, spans=not args.no_spans, span_form=args.span_form, span_max=args.span_max,
        span_ramp=args.span_ramp, span_coeff=args.span_coeff, offramp_epochs=args.offramp_epochs,
        offramp_lr=args.offramp_lr, offramp_distill_alpha=args.offramp_distill_alpha, seed=args.seed,
        save_every=args.save_every,
    )
    checkpoint = Trainer(config, Path(args.output)).run()
    extra = checkpoint.model.edgebert.extra
    dev = "" if extra["dev_accuracy"] is None else f"final-exit dev accuracy {extra['dev_accuracy']:.2%}, "
    print(f"wrote {args.output}: encoder sparsity {extra['encoder_sparsity']:.1%}, {dev}"
          f"trained in {extra['train_seconds'] / 60:.1f} min")
