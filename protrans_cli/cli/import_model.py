"""`protrans import-model`: a fair-esm `.pt` checkpoint (ESM-2, ESM-1b, ESM-1v), ESM C's `.pth`
weights, or a peft LoRA adapter merged into its base model, as a transformers model directory.

    protrans import-model ~/.cache/torch/hub/checkpoints/esm2_t33_650M_UR50D.pt -o esm2_650M/
    protrans import-model esmc_300m_2024_12_v0.pth -o esmc_300m/
    protrans import-model esm2_lora/ --base esm2_t12_35M/ -o esm2_merged/
    protrans embed proteins.fa -m esm2_650M/ -o proteins.h5
"""

from __future__ import annotations

import click

from protrans_cli.cli import INPUT_FILE


@click.command("import-model", context_settings={"show_default": True})
@click.argument("checkpoint", type=INPUT_FILE)
@click.option("-o", "--output", required=True, type=click.Path(file_okay=False),
              help="Model directory to write: EsmForMaskedLM for a fair-esm file (as the published facebook/esm2_* "
                   "are), protrans's ESM C model for ESM C's, the base model's class for an adapter.")
@click.option("--base", metavar="MODEL",
              help="With a peft adapter: its base model (short name, hub id or local directory) in place of "
                   "adapter_config.json's base_model_name_or_path.")
@click.option("--force", is_flag=True, help="Replace OUTPUT if it is a model directory.")
def command(checkpoint, output, base, force):
    """Convert a fair-esm .pt or ESM C .pth checkpoint, or merge a peft LoRA adapter, into a model directory.

    fair-esm's files (esm2_*.pt, esm1b_*.pt, esm1v_*.pt, as torch.hub keeps them in
    ~/.cache/torch/hub/checkpoints/, or a model fine-tuned with fair-esm's code) become the
    directory every command takes as -m. The file is read weights-only: the config objects it
    pickles are read as inert stand-ins, and nothing in it runs. The contact regression
    (NAME-contact-regression.pt beside NAME.pt) becomes the contact head, as fair-esm merges it.

    ESM C's weights (esmc_300m_2024_12_v0.pth, esmc_600m_2024_12_v0.pth from the hub repositories
    EvolutionaryScale/esmc-300m-2024-12 and -600m-2024-12) become protrans's own ESM C model,
    with its sequence head (docs/models.md#esm-c).

    A directory holding adapter_config.json (what peft's save_pretrained writes for a LoRA
    fine-tune) is merged into its base model as peft's merge_and_unload() merges it, without
    peft: W + alpha/r * B @ A (rsLoRA, rank_pattern and alpha_pattern, fan_in_fan_out, LoRA
    on embeddings, trained biases and modules_to_save included). The base is
    base_model_name_or_path, or --base (offline: a local copy). A task head the base lacks
    (a classifier) is left out, and the summary names it.

    \b
    protrans import-model esm2_t33_650M_UR50D.pt -o esm2_650M/
    protrans import-model esmc_300m_2024_12_v0.pth -o esmc_300m/
    protrans import-model esm2_lora/ --base esm2_t12_35M/ -o esm2_merged/
    protrans embed proteins.fa -m esm2_650M/ -o proteins.h5
    """
    from protrans_cli import console
    from protrans_cli.errors import UsageError
    from protrans_cli.models.peft_merge import is_adapter

    if str(checkpoint) != "-" and is_adapter(checkpoint):
        from protrans_cli.models.peft_merge import describe, import_adapter

        console.info(describe(import_adapter(checkpoint, output, base=base, force=force)))
        return
    if base is not None:
        raise UsageError("--base is for a peft adapter directory (one holding adapter_config.json); "
                         f"{checkpoint} is not one")
    from protrans_cli.models import esmc
    from protrans_cli.models.fair_esm import import_fair_esm
    from protrans_cli.models.imported import describe

    if str(checkpoint) != "-" and (state := esmc.read_esmc(checkpoint)) is not None:
        console.info(describe(esmc.import_esmc(checkpoint, output, force=force, state=state)))
        return
    console.info(describe(import_fair_esm(checkpoint, output, force=force)))
