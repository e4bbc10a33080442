"""``visor flops``, ``visor model-demo``, ``visor convert``: tools on the model alone (no Ray, no MLflow)."""

from __future__ import annotations

import json
from enum import Enum
from pathlib import Path
from typing import get_args

import typer

from jobs.train.config import CrossAttention as CrossAttentionVariant

commands = typer.Typer()


CrossAttention = Enum("CrossAttention", {name: name for name in get_args(CrossAttentionVariant)}, type=str)
"""The cross-attention variants, as the training config declares them."""
VARIANT = typer.Option(None, help="Cross-attention variant (default: the model's, joint cross-attention).")
TOKEN_REDUCTION = typer.Option(None, help="Visual-token pooling factor per tile side (1 or 2; default: the "
                               "model's, none).")


def variant_fields(cross_attention: Enum | None, token_reduction: int | None) -> dict[str, object]:
    """The ``VisorConfig`` fields given on the command line (the others keep ``VisorConfig``'s defaults)."""
    given = {"cross_attention": cross_attention and cross_attention.value, "token_reduction": token_reduction}
    return {name: value for name, value in given.items() if value is not None}


@commands.command()
def flops(
    preset: str | None = typer.Option(None, help="Model shape: a LLaVA-OneVision preset of visor_model.presets "
                                      "(default: the smallest; an unknown name lists them)."),
    image_size: str = typer.Option(
        "1000x1000", help="Image HEIGHTxWIDTH in pixels: tiles and visual tokens follow by the anyres rule."
    ),
    text_tokens: int = typer.Option(64, min=1, help="Text tokens per sample."),
    cross_attention: CrossAttention | None = VARIANT,
    token_reduction: int | None = TOKEN_REDUCTION,
    as_json: bool = typer.Option(False, "--json", help="Print one JSON object instead of a table."),
) -> None:
    """Analytic FLOPs per budget against the LLaVA-OneVision baseline (no weights are allocated)."""
    from visor_model import flops as visor_flops
    from visor_model.anyres import image_tokens
    from visor_model.presets import PRESETS, llava_ov_config

    height, _, width = image_size.lower().partition("x")
    if not (height.isdigit() and width.isdigit()):
        raise typer.BadParameter(f"expected HEIGHTxWIDTH in pixels, e.g. 1536x1536, got {image_size!r}",
                                 param_hint="--image-size")
    preset = preset or PRESETS[0]
    try:
        config = llava_ov_config(preset, **variant_fields(cross_attention, token_reduction))
        tiles, visual_tokens = image_tokens(config, int(height), int(width))
    except ValueError as err:
        raise typer.BadParameter(str(err)) from err
    table = visor_flops.flops_table(config, visual_tokens, text_tokens, tiles)
    if as_json:
        typer.echo(json.dumps(table, indent=2))
        return
    typer.echo(format_flops_table(preset, table))


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
    cross_attention: CrossAttention | None = VARIANT,
    seed: int = typer.Option(0, help="Random seed for the tiny model and the image."),
    max_new_tokens: int = typer.Option(8, min=1, help="Tokens to generate per budget."),
) -> None:
    """Build a tiny random VISOR model, answer one image question at every budget, print the costs."""
    from jobs.demo.model_demo import run_model_demo

    typer.echo(run_model_demo(seed, max_new_tokens, **variant_fields(cross_attention, None)))


@commands.command()
def convert(
    llava_path: Path = typer.Argument(..., exists=True, file_okay=False, help="Local LLaVA-OneVision checkpoint."),
    out: Path = typer.Option(..., help="Directory to write the VISOR model to."),
    cross_attention: CrossAttention | None = VARIANT,
    full_attention: bool = typer.Option(False, help="Use the full-attention plan (reproduces LLaVA-OneVision)."),
    token_reduction: int | None = TOKEN_REDUCTION,
) -> None:
    """Convert a local LLaVA-OneVision checkpoint (transformers format) into a VISOR model directory."""
    from jobs.train.convert import convert_checkpoint

    model, copied = convert_checkpoint(llava_path, out, full_attention, **variant_fields(cross_attention,
                                                                                          token_reduction))
    typer.echo(f"wrote {out} (plan:\n{model.plan.describe()}\n)" + ("; processor copied" if copied else ""))
