"""``visor flops``, ``visor model-demo``, ``visor convert``: tools on the model alone (no Ray, no MLflow)."""

from __future__ import annotations

import json
from enum import Enum
from pathlib import Path

import typer

commands = typer.Typer()


class Preset(str, Enum):
    llava_ov_05b = "llava-ov-0.5b"
    llava_ov_7b = "llava-ov-7b"


class CrossAttention(str, Enum):
    joint = "joint"
    gated = "gated"


@commands.command()
def flops(
    preset: Preset = typer.Option(Preset.llava_ov_05b, help="Model shape."),
    image_size: str = typer.Option(
        "1000x1000", help="Image HEIGHTxWIDTH in pixels: tiles and visual tokens follow by the anyres rule."
    ),
    text_tokens: int = typer.Option(64, min=1, help="Text tokens per sample."),
    cross_attention: CrossAttention = typer.Option(CrossAttention.joint, help="Cross-attention variant."),
    token_reduction: int = typer.Option(1, help="Visual-token pooling factor per tile side (1 or 2)."),
    as_json: bool = typer.Option(False, "--json", help="Print one JSON object instead of a table."),
) -> None:
    """Analytic FLOPs per budget against the LLaVA-OneVision baseline (no weights are allocated)."""
    from visor_model import flops as visor_flops
    from visor_model.anyres import image_tokens
    from visor_model.presets import llava_ov_config

    height, _, width = image_size.lower().partition("x")
    if not (height.isdigit() and width.isdigit()):
        raise typer.BadParameter(f"expected HEIGHTxWIDTH in pixels, e.g. 1536x1536, got {image_size!r}",
                                 param_hint="--image-size")
    try:
        config = llava_ov_config(
            preset.value, cross_attention=cross_attention.value, token_reduction=token_reduction
        )
        tiles, visual_tokens = image_tokens(config, int(height), int(width))
    except ValueError as err:
        raise typer.BadParameter(str(err)) from err
    table = visor_flops.flops_table(config, visual_tokens, text_tokens, tiles)
    if as_json:
        typer.echo(json.dumps(table, indent=2))
        return
    typer.echo(format_flops_table(preset.value, table))


def format_flops_table(name: str, table: dict) -> str:
    """Markdown table of :func:`visor_model.flops.flops_table` output (GFLOP)."""
    cfg, base = table["config"], table["baseline"]
    lines = [
        f"{name}: {cfg['num_visual_tokens']} visual tokens ({cfg['num_tiles']} tiles), {cfg['num_text_tokens']} "
        f"text tokens, {cfg['cross_attention']} cross-attention, C layers {cfg['cross_layers']}",
        "",
        "| config | S layers | language GFLOP | total GFLOP | saving (language) | saving (total) |",
        "| --- | --- | ---: | ---: | ---: | ---: |",
        f"| LLaVA-OneVision | all | {base['language'] / 1e9:,.1f} | {base['total'] / 1e9:,.1f} | 1.00x | 1.00x |",
    ]
    for row in table["budgets"]:
        layers = ", ".join(f"{i}s" if i in row["text_side_only"] else str(i) for i in row["sa_layers"])
        lines.append(
            f"| budget {row['budget']} | [{layers}] | {row['language'] / 1e9:,.1f} | "
            f"{row['total'] / 1e9:,.1f} | {row['saving_language']:.2f}x | {row['saving_total']:.2f}x |"
        )
    lines.append(
        f"\nvision tower {base['vision'] / 1e9:,.1f} GFLOP + projector {base['projector'] / 1e9:,.1f} GFLOP "
        "are the same in every row. `Ns`: S layer N runs its text side only (nothing reads its visual update)."
    )
    return "\n".join(lines)


@commands.command("model-demo")
def model_demo(
    cross_attention: CrossAttention = typer.Option(CrossAttention.joint, help="Cross-attention variant."),
    seed: int = typer.Option(0, help="Random seed for the tiny model and the image."),
    max_new_tokens: int = typer.Option(8, min=1, help="Tokens to generate per budget."),
) -> None:
    """Build a tiny random VISOR model, answer one image question at every budget, print the costs."""
    from jobs.demo.model_demo import run_model_demo

    typer.echo(run_model_demo(cross_attention.value, seed, max_new_tokens))


@commands.command()
def convert(
    llava_path: Path = typer.Argument(..., exists=True, file_okay=False, help="Local LLaVA-OneVision checkpoint."),
    out: Path = typer.Option(..., help="Directory to write the VISOR model to."),
    cross_attention: CrossAttention = typer.Option(CrossAttention.joint, help="Cross-attention variant."),
    full_attention: bool = typer.Option(False, help="Use the full-attention plan (reproduces LLaVA-OneVision)."),
    token_reduction: int = typer.Option(1, help="Visual-token pooling factor per tile side (1 or 2)."),
) -> None:
    """Convert a local LLaVA-OneVision checkpoint (transformers format) into a VISOR model directory."""
    from jobs.train.convert import convert_checkpoint

    model, copied = convert_checkpoint(llava_path, out, cross_attention.value, full_attention, token_reduction)
    typer.echo(f"wrote {out} (plan:\n{model.plan.describe()}\n)" + ("; processor copied" if copied else ""))
