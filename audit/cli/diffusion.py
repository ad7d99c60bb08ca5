"""Commands: train, generate (the small diffusion model of the memorisation loop)."""

from __future__ import annotations

import click

from audit.cli.options import default, emit, json_option


def _default(name: str):  # type: ignore[no-untyped-def]
    """Defaults live in the library signature; read them from there (without importing torch)."""
    fn = "train_on_workspace" if name.startswith("train.") else "generate"
    return default(f"audit.training:{fn}", name.split(".", 1)[1])


@click.command("train")
@click.argument("ws_root", metavar="WS", type=click.Path(file_okay=False))
@click.option(
    "--out", required=True, type=click.Path(file_okay=False), help="Model folder, e.g. models/NAME."
)
@click.option(
    "--resolution",
    type=click.Choice(["16", "32", "64"]),
    default=str(_default("train.resolution")),
    show_default=True,
)
@click.option(
    "--steps",
    type=int,
    default=_default("train.steps"),
    show_default=True,
    help="Optimizer steps in total (exactly reproducible).",
)
@click.option(
    "--minutes",
    type=float,
    default=_default("train.minutes"),
    show_default=True,
    help="Train for this wall-clock budget instead of --steps (0 = by steps); the steps that "
    "fit are planned from the measured rate and recorded in config.json.",
)
@click.option("--batch-size", type=int, default=_default("train.batch_size"), show_default=True)
@click.option("--lr", type=float, default=_default("train.lr"), show_default=True)
@click.option("--seed", type=int, default=_default("train.seed"), show_default=True)
@click.option(
    "--device",
    default=_default("train.device"),
    show_default=True,
    help="auto (CUDA when present), cpu, cuda.",
)
@click.option(
    "--precision",
    type=click.Choice(["auto", "fp32", "bf16"]),
    default=_default("train.precision"),
    show_default=True,
    help="bf16: bfloat16 autocast, ~1.7x faster on CPUs with native bf16; auto: bf16 only there.",
)
@click.option(
    "--conditioning",
    type=click.Choice(["none", "category"]),
    default=_default("train.conditioning"),
    show_default=True,
    help="category: condition on the top level of the `category` column.",
)
@click.option(
    "--all-rows",
    is_flag=True,
    help="Train on every row, ignoring opt-outs (no `audit filter` needed).",
)
@click.option(
    "--base-channels",
    type=int,
    default=_default("train.base_channels"),
    show_default=True,
    help="UNet width (channels of the first level).",
)
@click.option(
    "--min-snr-gamma",
    type=float,
    default=_default("train.min_snr_gamma"),
    show_default=True,
    help="> 0: weight the loss by min(SNR, gamma) / SNR (Min-SNR; the demo uses 5); 0: plain eps-MSE.",
)
@click.option(
    "--checkpoint-every", type=int, default=_default("train.checkpoint_every"), show_default=True
)
@click.option(
    "--sample-grid",
    type=int,
    default=_default("train.sample_grid"),
    show_default=True,
    help="Images in samples.png at the end (0 = none).",
)
@json_option
def train_command(ws_root: str, out: str, resolution: str, as_json: bool, **options) -> None:  # type: ignore[no-untyped-def]
    """Train a small DDPM on the consented rows of workspace WS (resumes from OUT's last checkpoint).

    Example: audit train indexes/sample --out models/sample --minutes 10
    """
    from audit import training

    s = training.train_on_workspace(ws_root, out, resolution=int(resolution), **options)
    rate = f", {s['steps_per_s']} steps/s" if s["steps_per_s"] else ""
    if s["budget_seconds"]:
        rate += f", {s['spent_seconds']:.0f} of {s['budget_seconds']:.0f} s budget"
    emit(
        s,
        as_json,
        lambda: (
            f"trained {s['steps']} steps (from {s['resumed_from']}) on {s['rows']} images "
            f"({s['skipped']} skipped){rate}, loss {s['final_loss']:.4f} -> {out}"
        ),
    )


@click.command("generate")
@click.argument("model", type=click.Path(file_okay=False, exists=True))
@click.option(
    "--n",
    type=int,
    default=_default("generate.n"),
    show_default=True,
    help="Images (per prompt or class label when given).",
)
@click.option(
    "--out",
    required=True,
    type=click.Path(file_okay=False),
    help="Folder for PNGs + generated.parquet.",
)
@click.option(
    "--sampler",
    type=click.Choice(["ddim", "ddpm"]),
    default=_default("generate.sampler"),
    show_default=True,
)
@click.option(
    "--steps",
    type=int,
    default=_default("generate.steps"),
    show_default=True,
    help="Denoising steps.",
)
@click.option(
    "--seed",
    type=int,
    default=_default("generate.seed"),
    show_default=True,
    help="Image i uses seed+i.",
)
@click.option("--class-label", multiple=True, help="Class name or index; repeat for several.")
@click.option(
    "--prompts",
    type=click.Path(dir_okay=False, exists=True),
    help="CSV with a `prompt` column (optional `class_label`); n images per row.",
)
@click.option(
    "--eta",
    type=float,
    default=_default("generate.eta"),
    show_default=True,
    help="DDIM noise (0 = deterministic).",
)
@click.option(
    "--guidance-scale", type=float, default=_default("generate.guidance_scale"), show_default=True
)
@click.option("--device", default=_default("generate.device"), show_default=True)
@click.option(
    "--sign-cert",
    type=click.Path(dir_okay=False, exists=True),
    help="PEM certificate chain that signs the C2PA manifests (default: a local, untrusted one).",
)
@click.option(
    "--sign-key",
    type=click.Path(dir_okay=False, exists=True),
    help="PEM private key of --sign-cert.",
)
@click.option(
    "--training-mining",
    type=click.Choice(["notAllowed", "allowed", "constrained"]),
    default=_default("generate.training_mining"),
    show_default=True,
    help="CAWG training-and-data-mining choice embedded in every output.",
)
@json_option
def generate_command(
    model: str, out: str, class_label: tuple[str, ...], as_json: bool, **options
) -> None:  # type: ignore[no-untyped-def]
    """Sample images from a trained MODEL folder into OUT (generated/*.png + LAION-like generated.parquet).

    Every image carries IPTC trainedAlgorithmicMedia in XMP and a signed C2PA manifest.

    Example: audit generate models/sample --n 64 --out generated/sample --training-mining notAllowed
    """
    from audit import training

    s = training.generate(model, out, class_label=list(class_label) or None, **options)
    who = "a LOCAL, UNTRUSTED test certificate" if s["local_certificate"] else "your certificate"
    emit(
        s,
        as_json,
        lambda: (
            f"wrote {s['images']} images ({s['sampler']}, {s['steps']} steps, model step {s['model_step']}) -> {out}; "
            f"marked trainedAlgorithmicMedia, C2PA signed with {who} ({s['signer']}), "
            f"training-mining {s['training_mining']}"
        ),
    )


COMMANDS: list = [train_command, generate_command]
