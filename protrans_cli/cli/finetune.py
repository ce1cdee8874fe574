"""`protrans finetune`: LoRA fine-tuning of a protein language model together with a prediction head.

    protrans finetune ss3 -m prot_t5_xl_half --labels Train_HHblits.csv.gz \
        --test CB513_HHblits.csv -o ft/ss3
    protrans predict ft/ss3/head --fasta proteins.fa -o ss3.csv    # embeds with ft/ss3/model
"""

from __future__ import annotations

import click

from protrans_cli.choices import ALL_ARCHITECTURES, DUAL_POLICIES, FORMATS, TASK_NAMES
from protrans_cli.cli import INPUT_FILE, completion, given_option
from protrans_cli.cli.embed import chain_options
from protrans_cli.cli.fit import mask_options


@click.command("finetune", context_settings={"show_default": True})
@click.argument("task", type=click.Choice(list(TASK_NAMES)))
@click.option("-m", "--model", required=True, shell_complete=completion.weights, help="The model to fine-tune: anything `embed -m` loads.")
@click.option("--labels", required=True, type=INPUT_FILE, metavar="FILE",
              help="Training labels (as fit reads them); their sequences, or --fasta's.")
@click.option("--fasta", type=INPUT_FILE, metavar="FILE", default=None,
              help="Sequences by id, for label files that carry none (tables, FLIP).")
@click.option("-o", "--output", required=True, type=click.Path(file_okay=False),
              help="Folder to write: model/, head/, finetune.json.")
@click.option("--valid", type=INPUT_FILE, metavar="LABELS", default=None,
              help="Validation labels for early stopping.  [default: the --labels file's validation records, "
                   "else --valid-fraction of train]")
@click.option("--test", "tests", type=INPUT_FILE, metavar="LABELS", multiple=True,
              help="Labels of a set to score at the end; repeat for several.")
@click.option("--label-format", type=click.Choice(list(FORMATS)), default="auto", help="Format of every label file.")
@mask_options
@click.option("--class-weights", is_flag=True, help="Weight the loss by inverse class frequency.")
@chain_options("A complex: one record whose chains are separated by ':'. error: refuse it; linker: the model "
               "reads the chains joined by --linker-length glycines, the linker's rows dropped; separate: "
               "each chain alone, rows concatenated (as embed --chains). A per-residue head reads each chain "
               "alone; predict --fasta with the head reads complexes the same way.")
@click.option("--lora-rank", type=int, default=4, help="LoRA rank (Schmirler et al. 2024: 4).")
@click.option("--lora-alpha", type=float, default=8.0, help="LoRA alpha; the update is scaled by alpha / rank.")
@click.option("--lora-dropout", type=float, default=0.0, help="Dropout on the adapters' input.")
@click.option("--lr", type=float, default=3e-4, help="AdamW learning rate (Schmirler et al. 2024: 3e-4).")
@click.option("--weight-decay", type=float, default=0.01, help="AdamW weight decay.")
@click.option("--max-epochs", type=int, default=10, help="Epochs at most.")
@click.option("--patience", type=int, default=3,
              help="Stop after this many epochs improving neither validation accuracy nor loss.")
@click.option("--max-residues", type=int, default=4096, help="Padded residues per batch.")
@click.option("--accumulate", type=int, default=1, help="Batches per optimizer step (gradient accumulation).")
@click.option("--activation-checkpointing", is_flag=True,
              help="Recompute each transformer block in the backward pass: the model's activations in memory "
                   "for about a third more time (a larger model or batch on one GPU); the same numbers.")
@click.option("--seed", type=int, default=0, help="Seed of the adapters, the head, the batches and the hold-out.")
@click.option("--valid-fraction", type=float, default=0.1, help="Share of train held out when no validation set is given: round(share x proteins), at least one, never all.")
@click.option("--architecture", type=click.Choice(list(ALL_ARCHITECTURES)),
              default=None, help="The head's network, as fit's (linear: one affine map, which takes no --hidden, "
                                 "--kernel or --dropout).  [default: cnn per residue, fnn per protein]")
@click.option("--hidden", type=int, default=32, help="Hidden channels/units of the head.")
@click.option("--kernel", type=int, default=None, help="Convolution width (odd).  [default: 7, light-attention 9]")
@click.option("--dropout", type=float, default=0.25, help="The head's dropout.")
@click.option("--dual", type=click.Choice(list(DUAL_POLICIES)), default="first",
              help="loc: DeepLoc's Cytoplasm-Nucleus counts as Cytoplasm (first) or is left out (skip).")
@click.option("--layer", type=int, default=-1, help="The hidden state the head reads (-1: the last).")
@click.option("--bootstrap", "n_bootstrap", type=int, default=1000,
              help="Bootstrap resamples for the 95% CI (at least 10).")
@click.option("-j", "--threads", type=int, default=None, help="CPU threads for torch.  [default: $PROTRANS_THREADS, else min(cores, 4)]")
@click.option("--device", default="auto",
              help="auto, cpu, cuda, cuda:N or mps (bf16 autocast on a CUDA GPU with bfloat16 hardware; float32 "
                   "elsewhere, Apple's GPU included).")
@click.option("--resume", is_flag=True, help="Continue the interrupted run kept in OUTPUT.partial (saved every epoch).")
@click.option("--force", is_flag=True, help="Replace OUTPUT (and an interrupted OUTPUT.partial) if it exists.")
def command(task, model, labels, fasta, output, valid, tests, label_format, mask_path, mask_columns, class_weights,
            chains, linker_length, lora_rank, lora_alpha, lora_dropout, lr, weight_decay, max_epochs, patience,
            max_residues, accumulate,
            activation_checkpointing, seed, valid_fraction, architecture, hidden,
            kernel, dropout, dual, layer, n_bootstrap, threads, device, resume, force):
    """Fine-tune a protein LM with LoRA together with a prediction head.

    \b
    protrans finetune ss3 -m prot_t5_xl_half --labels Train_HHblits.csv.gz \\
        --test CB513_HHblits.csv -o ft/ss3
    """
    from protrans_cli.heads.finetune import FinetuneConfig, finetune, partial_path
    from protrans_cli.heads.tasks import warn_unused_dual

    if given_option("dual"):
        warn_unused_dual(task)  # (changed nothing, without a word)
    if given_option("mask_columns"):
        from protrans_cli.heads.tasks import resolve_mask_columns

        resolve_mask_columns(task, tuple(mask_columns))  # (--mask-column disorder for the disorder task: exit 2)

    config = FinetuneConfig(task=task, model=model, lora_rank=lora_rank, lora_alpha=lora_alpha,
                            lora_dropout=lora_dropout, lr=lr, weight_decay=weight_decay, max_epochs=max_epochs,
                            patience=patience, max_residues=max_residues, accumulate=accumulate,
                            activation_checkpointing=activation_checkpointing, seed=seed,
                            valid_fraction=valid_fraction, architecture=architecture, hidden=hidden, kernel=kernel,
                            dropout=dropout, dual=dual, layer=layer, n_bootstrap=n_bootstrap,
                            label_format=label_format, mask_path=mask_path, mask_columns=tuple(mask_columns),
                            class_weights=class_weights, chains=chains, linker_length=linker_length, device=device,
                            threads=threads, resume=resume, force=force)
    try:
        finetune(config, labels, output, fasta=fasta, valid=valid, tests=list(tests))
    except KeyboardInterrupt as exc:
        from protrans_cli.cli import stopped
        from protrans_cli.heads.fit import piped_files
        from protrans_cli.io.files import written_through

        kept = partial_path(written_through(output))  # (an -o link: beside the folder it names)
        if piped := piped_files([labels, fasta, valid, *tests]):
            # (--resume is refused for them: "run the same command with --resume" led there)
            raise stopped(exc, f"a finetune whose inputs come from a pipe ({', '.join(piped)}) cannot be resumed: "
                          "give them as files next time") from None
        raise stopped(exc, f"the epochs finished so far are kept in {kept}; run the same command with --resume "
                      "to continue" if (kept / "state.pt").is_file() else None) from None
