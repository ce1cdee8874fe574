"""`protrans translate`: ProstT5's translations, amino acids to 3Di strings and back.

    protrans translate proteins.fa -m prostt5 --to 3di -o proteins.3di.fa
    protrans translate structures.3di.fa -m prostt5 --to aa --sample -n 10 -o designs.fa
"""

from __future__ import annotations

import click

from protrans_cli.cli import INPUT_FILE, completion


@click.command("translate", context_settings={"show_default": True})
@click.argument("fasta", type=INPUT_FILE)
@click.option("--to", "to", type=click.Choice(["3di", "aa"]), default=None,
              help="3di: the FASTA holds amino acids, write a 3Di string each (Foldseek's structure "
                   "alphabet); aa: it holds 3Di strings (either case), design amino acids (inverse "
                   "folding).  [required]")
@click.option("-m", "--model", default="prostt5", shell_complete=completion.weights,
              help="ProstT5 (prostt5, prostt5_half), its directory or hub id: an encoder-decoder with "
                   "<AA2fold>, <fold2AA> and 3Di tokens.")
@click.option("-o", "--output", default="-", type=click.Path(dir_okay=False, allow_dash=True),
              help="The FASTA to write (.gz compresses); - for stdout.")
@click.option("--num-beams", type=int, default=1, help="Beam search with this many beams (1: greedy).")
@click.option("--sample", is_flag=True,
              help="Sample each letter (under --temperature, --top-k, --top-p) instead of taking the likeliest.")
@click.option("--temperature", type=float, default=1.0, help="With --sample: divides the logits.")
@click.option("--top-k", type=int, default=None, help="With --sample: draw from the k likeliest letters.")
@click.option("--top-p", type=float, default=None,
              help="With --sample: draw from the smallest set of likeliest letters reaching p.")
@click.option("--repetition-penalty", type=float, default=1.0,
              help="Divides the scores of letters already written (the model card's 1.2).")
@click.option("-n", "--num-sequences", type=int, default=1,
              help="Translations a protein (--sample, or at most --num-beams): records ID_1 ... ID_N.")
@click.option("--seed", type=int, default=0, help="Random seed of --sample.")
@click.option("--invalid-policy", type=click.Choice(["error", "skip"]), default="error",
              help="Records that cannot be read (a J, no residues; for --to aa a letter that is no 3Di "
                   "state): fail (nothing is written), or leave them out with a warning.")
@click.option("--revision", default=None, help="Hub revision (branch, tag or commit) of the model.")
@click.option("--device", default="auto", help="auto (a GPU when there is one, else the CPU), cpu, cuda, cuda:N or mps.")
@click.option("--dtype", type=click.Choice(["auto", "float32", "bfloat16", "float16"]), default="auto",
              help="Compute dtype; auto = bfloat16 on a GPU with bfloat16 hardware, float16 on one without, "
                   "float32 on the CPU.")
@click.option("--max-tokens", type=int, default=None,
              help="Padded tokens a batch, every beam and design counted.  [default: 2048 on the CPU, 8192 on "
                   "a GPU]")
@click.option("--max-batch-size", type=int, default=64, help="Proteins a batch at most.")
@click.option("--resume", is_flag=True,
              help="Go on with the batches an interrupted run kept in OUTPUT.partial/ (-o FILE only; the same "
                   "options).")
@click.option("-j", "--threads", type=int, default=None,
              help="CPU threads for torch.  [default: $PROTRANS_THREADS, else min(cores, 4)]")
def command(fasta, to, model, output, num_beams, sample, temperature, top_k, top_p, repetition_penalty,
            num_sequences, seed, invalid_policy, revision, device, dtype, max_tokens, max_batch_size,
            resume, threads):
    """ProstT5's translations: amino acids to Foldseek 3Di strings, and back.

    --to 3di predicts a 3Di string from each sequence alone (for Foldseek searches of proteins
    without a structure); --to aa designs amino acids for each 3Di string (inverse folding).
    The encoder reads the input as ProstT5's model card lays it out (<AA2fold> before amino
    acids, <fold2AA> before lower-case 3Di letters); the decoder writes only the target's 20
    letters, exactly one a residue. Greedy by default (deterministic); the model card samples:
    --sample --num-beams 3 --temperature 1.2 --top-k 6 --top-p 0.95 --repetition-penalty 1.2
    (to 3Di), --sample --top-k 3 --top-p 0.85 --repetition-penalty 1.2 (to amino acids).

    Writes FASTA in input order, headers `ID 3Di predicted by MODEL` or `ID designed from 3Di by
    MODEL`; 3Di upper-case, as Foldseek's databases hold it. FASTA `-` is stdin, .gz is read.
    Greedy and beam search translate a repeated sequence once (written under each id); --sample
    draws each record's designs from generators seeded by --seed, its id and the design's number:
    the same letters whatever the batching (beam sampling, --sample --num-beams, draws a batch
    at a time: its letters depend on the batching). With -o FILE finished batches are kept in
    FILE.partial/ until FILE is written: after an interruption, the same command with --resume
    goes on from them to the same bytes.

    \b
    protrans translate proteins.fa -m prostt5 --to 3di -o proteins.3di.fa
    protrans translate structures.3di.fa --to aa --sample -n 10 -o designs.fa
    protrans translate proteome.fa --to 3di -o proteome.3di.fa --resume  # after Ctrl-C
    """
    from protrans_cli.cli import kept_in_partial
    from protrans_cli.threads import resolve_threads
    from protrans_cli.translate import TranslateOptions, translate

    options = TranslateOptions(model=model, to=to, num_beams=num_beams, sample=sample, temperature=temperature,
                               top_p=top_p, top_k=top_k, repetition_penalty=repetition_penalty,
                               num_sequences=num_sequences, seed=seed, invalid_policy=invalid_policy,
                               max_tokens=max_tokens, max_batch_size=max_batch_size, revision=revision,
                               device=device, dtype=dtype, resume=resume, threads=resolve_threads(threads))
    with kept_in_partial(output, "the translations made are in"):
        translate(fasta, output, options)
