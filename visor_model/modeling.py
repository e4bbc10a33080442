"""``VisorForConditionalGeneration``: LLaVA-OneVision weights, VISOR's way of driving them.

The model holds exactly the parts of ``LlavaOnevisionForConditionalGeneration``
(``model.vision_tower``, ``model.multi_modal_projector``, ``model.image_newline``,
``model.language_model``, ``lm_head``, same parameter names) plus, for the
``gated`` variant, one :class:`~visor_model.layers.GatedCrossAttention` per C
layer (``gated.<layer>``) and the budget policy (``policy``).

Forward pass (docs/DESIGN.md §3): the vision tower, projector and anyres packing of
``transformers`` give the visual tokens; :func:`~visor_model.streams.split_streams`
keeps text and visual tokens apart with LLaVA-OneVision's positions; each
decoder layer then runs, per sample, in mode T, C or S of that sample's budget.
Logits are computed for text tokens only: ``logits[b, j]`` belongs to
``input_ids[b, text_index[b, j]]``.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
import torch.utils.checkpoint
from torch import nn
from transformers import LlavaOnevisionForConditionalGeneration
from transformers.modeling_outputs import ModelOutput
from transformers.models.llava_onevision.modeling_llava_onevision import (
    LlavaOnevisionModel,
    LlavaOnevisionPreTrainedModel,
    image_size_to_num_patches,
)

from .anyres import packing_view
from .attention_layout import AttentionLayout, RowSet
from .cache import DecodeState, VisorCache, split_visual
from .config import VisorConfig
from .layers import (
    CAUSAL,
    GatedCrossAttention,
    attention_over_parts,
    finish,
    layer_attend,
    project,
    project_visual_kv,
)
from .plan import LayerPlan
from .policy import BudgetPolicy, choose_budget, last_valid_index
from .streams import Streams, prompt_columns, scatter_visual, split_streams

MODE_CODES = {"T": 0, "C": 1, "S": 2, "s": 3}  # the run modes of LayerPlan.run_modes
PREFILL_INPUTS = (
    "input_ids", "attention_mask", "pixel_values", "image_sizes", "budget", "tau", "batch_num_images", "image_features"
)
Budget = int | torch.Tensor | str | None
AUTO_BUDGET = -1  # in a budget tensor: this row's budget is the policy's choice (``"auto"`` for one row)
ImageFeatures = tuple[list[torch.Tensor], list[int]]
"""What :meth:`VisorForConditionalGeneration.image_features` returns: per image, its visual tokens ``[n'_k, D]``
(after the projector, anyres packing and any token reduction) and the slots ``n_k`` it takes in ``input_ids``."""


@dataclass
class VisorOutput(ModelOutput):
    """Output of :meth:`VisorForConditionalGeneration.forward`.

    ``logits [B, Tt, V]`` over the text stream; ``text_index``/``text_mask``
    ``[B, Tt]`` map it to ``input_ids`` columns; ``budget [B]`` is the budget
    each sample ran; ``loss`` is the mean next-token loss over labelled tokens
    and ``loss_per_sample [B]`` the same per sample (NaN where a sample has no
    label); ``correct_per_sample [B]`` is True where every labelled token is the
    argmax prediction (greedy decoding would reproduce the answer exactly);
    ``num_visual_tokens [B]`` counts each sample's visual tokens (after any token
    reduction); ``policy_logits [B, K+1]`` is set when the policy chose the budget.
    """

    loss: torch.Tensor | None = None
    logits: torch.Tensor | None = None
    text_index: torch.LongTensor | None = None
    text_mask: torch.BoolTensor | None = None
    budget: torch.LongTensor | None = None
    loss_per_sample: torch.Tensor | None = None
    correct_per_sample: torch.BoolTensor | None = None
    num_visual_tokens: torch.LongTensor | None = None
    policy_logits: torch.Tensor | None = None


@dataclass
class _Prefill:
    """Result of running the decoder layers over a prompt."""

    hidden: torch.Tensor  # final-normed text hidden states [B, Tt, D]
    streams: Streams
    budget: torch.LongTensor
    policy_logits: torch.Tensor | None
    policy_features: torch.Tensor | None


class VisorBackbone(LlavaOnevisionModel):
    """``LlavaOnevisionModel`` whose anyres packing can first pool every tile 2×2.

    With ``config.token_reduction == 1`` it is the unchanged model. Otherwise
    each tile's patch grid (side ``s``) is average-pooled to side ``ceil(s/2)``
    after the projector, then ``transformers``' own packing (unpad, anyres_max
    interpolation, newline tokens) runs on the pooled grid.
    """

    def pack_image_features(self, image_features, image_sizes, image_newline=None, vision_aspect_ratio="anyres_max_9"):
        factor = self.config.token_reduction
        if factor == 1:
            return super().pack_image_features(image_features, image_sizes, image_newline, vision_aspect_ratio)
        vision = self.config.vision_config
        view = packing_view(self.config)
        pooled = [_pool_tiles(x, vision.image_size // vision.patch_size, factor) for x in image_features]
        return LlavaOnevisionModel.pack_image_features(view, pooled, image_sizes, image_newline, vision_aspect_ratio)

    def slot_counts(self, image_sizes: torch.Tensor, batch_num_images: torch.Tensor | None) -> list[int]:
        """Image tokens each image occupies in ``input_ids`` (the unreduced LLaVA-OneVision count)."""
        vision = self.config.vision_config
        side = vision.image_size // vision.patch_size
        single = [True] * len(image_sizes) if batch_num_images is None else [
            n == 1 for n in batch_num_images.tolist() for _ in range(n)
        ]
        dummies = [
            torch.ones(
                image_size_to_num_patches(size, self.config.image_grid_pinpoints, vision.image_size) if one else 1,
                side * side,
                1,
            )
            for size, one in zip(image_sizes, single, strict=True)
        ]
        packed, _ = LlavaOnevisionModel.pack_image_features(
            self, dummies, image_sizes, torch.ones(1), self.config.vision_aspect_ratio
        )
        return [p.shape[0] for p in packed]


def _pool_tiles(features: torch.Tensor, side: int, factor: int) -> torch.Tensor:
    """``[tiles, side*side, D] -> [tiles, ceil(side/f)**2, D]`` by f×f average pooling."""
    tiles, _, dim = features.shape
    grid = features.view(tiles, side, side, dim).permute(0, 3, 1, 2)
    pooled = F.avg_pool2d(grid, factor, factor, ceil_mode=True)
    return pooled.permute(0, 2, 3, 1).reshape(tiles, -1, dim)


class VisorForConditionalGeneration(LlavaOnevisionPreTrainedModel):
    config_class = VisorConfig
    config: VisorConfig
    _tied_weights_keys = {"lm_head.weight": "model.language_model.embed_tokens.weight"}

    def __init__(self, config: VisorConfig):
        super().__init__(config)
        text = config.text_config
        self.model = VisorBackbone(config)
        self.lm_head = nn.Linear(text.hidden_size, text.vocab_size, bias=False)
        plan = config.layer_plan
        head_dim = getattr(text, "head_dim", None) or text.hidden_size // text.num_attention_heads
        self.gated = nn.ModuleDict(
            {
                str(layer): GatedCrossAttention(
                    text.hidden_size,
                    text.num_attention_heads,
                    text.num_key_value_heads,
                    head_dim,
                    text.rms_norm_eps,
                    config.cpe_kernel_size,
                )
                for layer in plan.cross_layers
            }
            if config.cross_attention == "gated"
            else {}
        )
        self.policy = BudgetPolicy(text.hidden_size, config.policy_hidden_size, plan.num_budgets)
        self.activation_checkpointing = False
        self.post_init()

    @torch.no_grad()
    def _init_weights(self, module: nn.Module) -> None:
        super()._init_weights(module)
        if isinstance(module, GatedCrossAttention):
            nn.init.zeros_(module.gate)
            nn.init.zeros_(module.cpe.weight)
            nn.init.zeros_(module.cpe.bias)
            nn.init.ones_(module.norm.weight)

    # ------------------------------------------------------------------ helpers
    @property
    def plan(self) -> LayerPlan:
        return self.config.layer_plan

    @property
    def language_model(self) -> nn.Module:
        return self.model.language_model

    def get_input_embeddings(self) -> nn.Module:
        return self.language_model.embed_tokens

    def get_output_embeddings(self) -> nn.Module:
        return self.lm_head

    def gradient_checkpointing_enable(self, gradient_checkpointing_kwargs: dict | None = None) -> None:
        """Recompute each decoder-layer step in the backward pass (activation checkpointing)."""
        self.activation_checkpointing = True

    def gradient_checkpointing_disable(self) -> None:
        self.activation_checkpointing = False

    def _budget_tensor(self, budget: Budget, batch: int, device: torch.device) -> torch.LongTensor | None:
        """Normalise ``budget`` to ``[B]`` (None for ``"auto"``); default is the largest budget."""
        plan = self.plan
        if isinstance(budget, str):
            if budget != "auto":
                raise ValueError(f"budget must be an int, a LongTensor [batch] or 'auto', got {budget!r}")
            plan.check_policy_ready()
            return None
        if budget is None:
            budget = plan.max_budget
        if isinstance(budget, torch.Tensor):
            budget = budget.to(device=device, dtype=torch.long).reshape(-1)
            if budget.numel() == 1:
                budget = budget.expand(batch)
            if budget.shape[0] != batch:
                raise ValueError(f"budget has {budget.shape[0]} entries for a batch of {batch}")
            if budget.numel() and bool((budget == AUTO_BUDGET).all()):
                plan.check_policy_ready()
                return None
            return budget
        return torch.full((batch,), plan.check_budget(int(budget)), dtype=torch.long, device=device)

    def _host_budgets(self, budgets: torch.LongTensor) -> list[int]:
        """``budgets [B]`` on the host, each checked: the one device-to-host copy a prefill makes per budget
        decision (the row groups of every layer are then derived on the host)."""
        host = budgets.tolist()
        for b in set(host):
            self.plan.check_budget(b)
        return host

    def _first_budgets(self, budgets: torch.LongTensor | None, batch: int) -> tuple[list[int], bool]:
        """The budgets rows run with until the policy layer, on the host, and whether the policy decides any row
        (``budgets`` None, or rows of :data:`AUTO_BUDGET`): those rows run budget 0 until then, whose layers up to
        the policy layer every budget shares."""
        if budgets is None:
            return [0] * batch, True
        host = budgets.tolist()
        auto = AUTO_BUDGET in host
        if auto:
            self.plan.check_policy_ready()
            host = [0 if b == AUTO_BUDGET else b for b in host]
        for b in set(host):
            self.plan.check_budget(b)
        return host, auto

    def image_features(
        self, pixel_values: torch.Tensor, image_sizes: torch.Tensor, batch_num_images: torch.Tensor | None = None
    ) -> tuple[list[torch.Tensor], list[int]]:
        """Per-image visual tokens ``[n'_k, D]`` and the slots ``n_k`` each takes in ``input_ids``."""
        out = self.model.get_image_features(
            pixel_values, image_sizes, batch_num_images=batch_num_images, return_dict=True
        )
        features = list(out.pooler_output)
        if self.config.token_reduction == 1:
            return features, [f.shape[0] for f in features]
        return features, self.model.slot_counts(image_sizes, batch_num_images)

    def _tau(self, tau: float | torch.Tensor | None, batch: int, device: torch.device) -> float | torch.Tensor:
        """The policy's threshold: ``config.policy_tau`` when None, a float, or one per row (``[B]`` → ``[B, 1]``,
        to broadcast over the budgets)."""
        if tau is None:
            return self.config.policy_tau
        if isinstance(tau, torch.Tensor):
            tau = tau.to(device=device, dtype=torch.float32).reshape(-1)
            if tau.numel() not in (1, batch):
                raise ValueError(f"tau has {tau.numel()} entries for a batch of {batch}")
            return tau.expand(batch)[:, None]
        return tau

    def _visual_tokens(
        self,
        pixel_values: torch.Tensor | None,
        image_sizes: torch.Tensor | None,
        batch_num_images: torch.Tensor | None,
        image_features: ImageFeatures | None,
    ) -> ImageFeatures:
        """The prompt's visual tokens: ``image_features`` when given (computed once by :meth:`image_features` and
        shared by several calls on the same images; ``pixel_values`` is then not read), else the vision tower's
        output for ``pixel_values``, else none."""
        if image_features is not None:
            features, slots = image_features
            if len(features) != len(slots):
                raise ValueError(f"image_features has {len(features)} feature tensors for {len(slots)} slot counts")
            return list(features), list(slots)
        if pixel_values is None:
            return [], []
        if image_sizes is None:
            raise ValueError("image_sizes is required with pixel_values")
        return self.image_features(pixel_values, image_sizes, batch_num_images)

    # ------------------------------------------------------------------ prefill
    def _prefill(
        self,
        input_ids: torch.LongTensor,
        attention_mask: torch.Tensor | None,
        pixel_values: torch.Tensor | None,
        image_sizes: torch.Tensor | None,
        budget: Budget,
        tau: float | torch.Tensor | None,
        batch_num_images: torch.Tensor | None,
        image_features: ImageFeatures | None = None,
        cache: VisorCache | None = None,
        policy_only: bool = False,
        labels: torch.LongTensor | None = None,
    ) -> _Prefill:
        batch, device = input_ids.shape[0], input_ids.device
        budgets = self._budget_tensor(budget, batch, device)
        features, slots = self._visual_tokens(pixel_values, image_sizes, batch_num_images, image_features)
        streams = split_streams(
            input_ids,
            attention_mask,
            self.config.image_token_id,
            slots,
            [f.shape[0] for f in features],
            self.config.text_config.pad_token_id or 0,
        )
        h_t = self.get_input_embeddings()(streams.text_ids)
        h_v = (
            scatter_visual(features, streams.visual_valid).to(h_t.dtype)
            if features
            else h_t.new_zeros(batch, 0, h_t.shape[-1])
        )
        layout = AttentionLayout.build(streams, self.language_model.rotary_emb, h_t)

        plan = self.plan
        table = [[MODE_CODES[m] for m in plan.run_modes(b)] for b in range(plan.num_budgets)]
        host, auto = self._first_budgets(budgets, batch)
        groups = _RowGroups(device)
        cache_widths = None if cache is None else streams.num_visual.tolist()  # once per batch, for the cache
        policy_logits = policy_features = None
        for layer_idx, layer in enumerate(self.language_model.layers):
            if auto and layer_idx == plan.policy_layer:
                query_valid = streams.text_valid if labels is None else _prompt_slots(streams, labels)
                policy_features = BudgetPolicy.features(h_t, query_valid, h_v, streams.visual_valid)
                if policy_only:
                    break
                policy_logits = self.policy(policy_features)
                chosen = choose_budget(policy_logits, self._tau(tau, batch, device))
                budgets = chosen if budgets is None else torch.where(budgets == AUTO_BUDGET, chosen, budgets)
                host = self._host_budgets(budgets)
            codes = groups.split([table[b][layer_idx] for b in host])
            h_t, h_v = self._run_layer(layer_idx, layer, codes, h_t, h_v, layout, cache, cache_widths)
        if budgets is None:  # "auto" with a plan whose policy layer is past the end (no budget-dependent layer)
            budgets = torch.zeros(batch, dtype=torch.long, device=device)
        budgets = budgets.clamp(min=0)  # the same: auto rows run budget 0 when no layer depends on the budget
        return _Prefill(self.language_model.norm(h_t), streams, budgets, policy_logits, policy_features)

    def _run_layer(
        self,
        layer_idx: int,
        layer: nn.Module,
        codes: list[tuple[int, RowSet | None]],
        h_t: torch.Tensor,
        h_v: torch.Tensor,
        layout: AttentionLayout,
        cache: VisorCache | None,
        cache_widths: list[int] | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Run one decoder layer, each group of rows in its run mode (``codes``: ``(mode code, rows)``, rows
        None for the whole batch, from :class:`_RowGroups`); fill ``cache`` if given (``cache_widths``: each
        row's visual token count, on the host, to store visual K/V without padding).

        A group covering the whole batch runs on the tensors as they are, otherwise on row subsets that
        are then merged. Nothing here copies from the device to the host.
        """
        batch = h_t.shape[0]
        new_t, new_v = h_t, h_v  # groups are merged with out-of-place index_copy
        k_t_all = v_t_all = None
        for code, row_set in codes:
            rows = None if row_set is None else row_set.index
            pick = (lambda t: t) if rows is None else (lambda t, r=rows: t.index_select(0, r))
            fn = {0: self._mode_t, 1: self._mode_c, 2: self._mode_s, 3: self._mode_read}[code]
            fn_args = (layer_idx, layer, pick(h_t), pick(h_v), layout.select(row_set))
            if self.activation_checkpointing and self.training:
                out = torch.utils.checkpoint.checkpoint(fn, *fn_args, use_reentrant=False)
            else:
                out = fn(*fn_args)
            g_t, g_v, (k_t, v_t), visual = out
            if rows is None:
                new_t, new_v = g_t, g_v
            else:
                new_t = new_t.index_copy(0, rows, g_t)
                new_v = new_v.index_copy(0, rows, g_v)
            if cache is not None:
                if k_t_all is None:
                    k_t_all = k_t.new_zeros(batch, *k_t.shape[1:])
                    v_t_all = v_t.new_zeros(batch, *v_t.shape[1:])
                index = torch.arange(batch, device=h_t.device) if rows is None else rows
                k_t_all.index_copy_(0, index, k_t)
                v_t_all.index_copy_(0, index, v_t)
                if visual is not None:
                    kind, k_v, v_v = visual
                    members = tuple(range(batch)) if row_set is None else row_set.key
                    (cache.gated if kind == "gated" else cache.visual)[layer_idx].extend(
                        split_visual(members, k_v, v_v, cache_widths)
                    )
        if cache is not None:
            cache.write_prefill(layer_idx, (k_t_all, v_t_all), layout.streams.text_valid)
        return new_t, new_v

    def _mode_t(self, layer_idx: int, layer: nn.Module, h_t, h_v, layout: AttentionLayout):
        """Text over text only (causal in stream order, no mask)."""
        q, k, v = project(layer, h_t, layout.pe_t)
        return finish(layer, h_t, layer_attend(layer)(q, k, v, CAUSAL)), h_v, (k, v), None

    def _mode_c(self, layer_idx: int, layer: nn.Module, h_t, h_v, layout: AttentionLayout):
        """Text over the image and the text (joint: the layer's own attention; gated: a sublayer first). With no
        visual token in the batch (text-only prompts) the gated sublayer adds exactly zero and is skipped."""
        if self.config.cross_attention == "gated":
            if h_v.shape[1] == 0:
                return self._mode_t(layer_idx, layer, h_t, h_v, layout)
            gated = self.gated[str(layer_idx)]
            k_g, v_g = gated.visual_kv(h_v, layout.streams.visual_valid)
            h_t = gated.update(h_t, layout.text_over_visual(gated.query(h_t), k_g, v_g, gated.scaling))
            h_t, _, text_kv, _ = self._mode_t(layer_idx, layer, h_t, h_v, layout)
            return h_t, h_v, text_kv, ("gated", k_g, v_g)
        return self._mode_read(layer_idx, layer, h_t, h_v, layout)

    def _mode_read(self, layer_idx: int, layer: nn.Module, h_t, h_v, layout: AttentionLayout):
        """Text over ``[visual ; text]`` through the layer's own attention, the visual stream untouched: the
        joint C mode, and the ``s`` run mode (the text side of an S layer whose visual update nothing reads —
        a text query of S sees exactly these keys)."""
        inv_rms = layout.visual_inv_rms(h_v, layer.input_layernorm.variance_epsilon)
        k_v, v_v = project_visual_kv(layer, h_v, inv_rms, layout.pe_v)
        q, k_t, v_t = project(layer, h_t, layout.pe_t)
        attended = layout.text_over_all(layer_attend(layer), q, (k_v, v_v), (k_t, v_t))
        return finish(layer, h_t, attended), h_v, (k_t, v_t), ("self", k_v, v_v)

    def _mode_s(self, layer_idx: int, layer: nn.Module, h_t, h_v, layout: AttentionLayout):
        """Every token over every token: causal in the merged position order (no mask)."""
        hidden = layout.to_merged(h_v, h_t)
        q, k, v = project(layer, hidden, layout.pe_merged)
        h_v, h_t = layout.from_merged(finish(layer, hidden, layer_attend(layer)(q, k, v, CAUSAL)))
        (k_v, k_t), (v_v, v_t) = layout.from_merged(k, dim=2), layout.from_merged(v, dim=2)
        return h_t, h_v, (k_t, v_t), ("self", k_v, v_v)

    # ------------------------------------------------------------------ forward
    def forward(
        self,
        input_ids: torch.LongTensor,
        attention_mask: torch.Tensor | None = None,
        pixel_values: torch.Tensor | None = None,
        image_sizes: torch.Tensor | None = None,
        labels: torch.LongTensor | None = None,
        budget: Budget = None,
        tau: float | torch.Tensor | None = None,
        batch_num_images: torch.Tensor | None = None,
        image_features: ImageFeatures | None = None,
    ) -> VisorOutput:
        """Logits (and loss) for a batch under ``budget``.

        ``budget``: an int, a LongTensor ``[B]`` (one per sample; :data:`AUTO_BUDGET` (-1) lets the policy pick
        that sample's, in the same pass), ``"auto"`` (the policy picks every sample's, with threshold ``tau`` — a
        float or one per sample ``[B]`` — or ``config.policy_tau``) or None (the largest budget). ``labels [B, T]``
        are in ``input_ids`` layout with -100 for ignored tokens: the token at column i is trained to predict
        ``labels[i+1]``. A prediction LLaVA-OneVision would make from the last
        visual token of an image is dropped (visual tokens carry no logits here);
        with user turns masked, as in every chat recipe, there is none. With ``budget="auto"`` the policy
        reads the prompt, never the answer: the end of its input is the last token before the first label.
        ``image_features``: the output of :meth:`image_features` for these images, to run the vision tower once
        for several calls (every budget, the policy); the result is the same as from ``pixel_values``.
        """
        pre = self._prefill(
            input_ids, attention_mask, pixel_values, image_sizes, budget, tau, batch_num_images, image_features,
            labels=labels,
        )
        logits = self.lm_head(pre.hidden)
        loss = loss_per_sample = correct = None
        if labels is not None:
            loss, loss_per_sample, correct = self._loss(logits, labels, input_ids, pre.streams)
        return VisorOutput(
            loss=loss,
            logits=logits,
            text_index=pre.streams.text_index,
            text_mask=pre.streams.text_valid,
            budget=pre.budget,
            loss_per_sample=loss_per_sample,
            correct_per_sample=correct,
            num_visual_tokens=pre.streams.num_visual,
            policy_logits=pre.policy_logits,
        )

    def _loss(
        self, logits: torch.Tensor, labels: torch.LongTensor, input_ids: torch.LongTensor, streams: Streams
    ) -> tuple[torch.Tensor, torch.Tensor, torch.BoolTensor]:
        is_image = input_ids == self.config.image_token_id
        shifted = torch.full_like(labels, -100)
        shifted[:, :-1] = labels[:, 1:].masked_fill(is_image[:, 1:], -100)
        targets = shifted.gather(1, streams.text_index).masked_fill(~streams.text_valid, -100)
        token_loss = F.cross_entropy(
            logits.float().transpose(1, 2), targets, ignore_index=-100, reduction="none"
        )  # [B, Tt]
        labelled = (targets != -100).float()
        loss = (token_loss * labelled).sum() / labelled.sum().clamp(min=1.0)
        per_sample = (token_loss * labelled).sum(1) / labelled.sum(1)
        wrong = (logits.argmax(-1) != targets) & (targets != -100)
        correct = ~wrong.any(1) & (labelled.sum(1) > 0)
        return loss, per_sample, correct

    @torch.no_grad()
    def policy_features(
        self,
        input_ids: torch.LongTensor,
        attention_mask: torch.Tensor | None = None,
        pixel_values: torch.Tensor | None = None,
        image_sizes: torch.Tensor | None = None,
        batch_num_images: torch.Tensor | None = None,
        image_features: ImageFeatures | None = None,
    ) -> torch.Tensor:
        """The policy's input ``[B, 2D]`` for a batch of prompts (runs only the layers before it; the vision tower
        too unless ``image_features`` gives its output, as in :meth:`forward`)."""
        pre = self._prefill(
            input_ids, attention_mask, pixel_values, image_sizes, "auto", None, batch_num_images, image_features,
            policy_only=True,
        )
        return pre.policy_features

    # ---------------------------------------------------------------- generate
    @torch.no_grad()
    def generate(
        self,
        input_ids: torch.LongTensor,
        attention_mask: torch.Tensor | None = None,
        pixel_values: torch.Tensor | None = None,
        image_sizes: torch.Tensor | None = None,
        budget: Budget = None,
        max_new_tokens: int = 32,
        do_sample: bool = False,
        temperature: float = 1.0,
        top_k: int = 0,
        top_p: float = 1.0,
        eos_token_id: int | list[int] | None = None,
        pad_token_id: int | None = None,
        generator: torch.Generator | None = None,
        tau: float | None = None,
        batch_num_images: torch.Tensor | None = None,
        return_dict_in_generate: bool = False,
        min_new_tokens: int = 0,
        repetition_penalty: float = 1.0,
        image_features: ImageFeatures | None = None,
        **unsupported: Any,
    ) -> torch.LongTensor | GenerationResult:
        """Batched greedy or sampled decoding with VISOR's reduced KV cache.

        Returns ``[B, T + n]``: ``input_ids`` followed by the new tokens, with
        ``pad_token_id`` after a row's EOS (as ``transformers``' ``generate``), or
        a :class:`GenerationResult` when ``return_dict_in_generate``. Works with left
        or right padding. Stops at ``max_new_tokens`` or when every row has produced EOS.
        ``min_new_tokens``: EOS cannot be chosen before that many new tokens; ``repetition_penalty``: as in
        ``transformers`` (CTRL's rule), every token already in a row — its prompt and what it has generated —
        has its logit divided by the penalty when positive, multiplied when negative. ``image_features``: as in
        :meth:`forward` (the vision tower's output, computed once elsewhere). Any other argument of
        ``transformers``' ``generate`` (beam search, n-gram blocking, …) raises a ``TypeError`` naming it.
        """
        if unsupported:
            raise TypeError(
                f"generate() does not support {sorted(unsupported)}: VISOR decodes greedily or by sampling "
                "(do_sample, temperature, top_k, top_p), with min_new_tokens and repetition_penalty"
            )
        if max_new_tokens < 1:
            raise ValueError("max_new_tokens must be >= 1")
        if not 0 <= min_new_tokens <= max_new_tokens:
            raise ValueError(f"min_new_tokens must be in 0..max_new_tokens ({max_new_tokens}), got {min_new_tokens}")
        if repetition_penalty <= 0:
            raise ValueError(f"repetition_penalty must be > 0, got {repetition_penalty}")
        eos = eos_token_id if eos_token_id is not None else self.config.text_config.eos_token_id
        eos_ids = torch.tensor([] if eos is None else ([eos] if isinstance(eos, int) else list(eos)),
                               device=input_ids.device)
        pad = pad_token_id if pad_token_id is not None else self.config.text_config.pad_token_id
        pad = pad if pad is not None else (eos_ids[0].item() if eos_ids.numel() else 0)
        batch = input_ids.shape[0]
        state = self.start_decoding(max_new_tokens, input_ids=input_ids, attention_mask=attention_mask,
                                    pixel_values=pixel_values, image_sizes=image_sizes, budget=budget, tau=tau,
                                    batch_num_images=batch_num_images, image_features=image_features)
        finished = torch.zeros(batch, dtype=torch.bool, device=input_ids.device)
        seen = None
        if repetition_penalty != 1.0:  # [B, V]: which tokens each row holds so far
            mask = torch.ones_like(input_ids) if attention_mask is None else attention_mask
            prompt = input_ids.masked_fill(mask == 0, self.config.image_token_id)  # never an output anyway
            seen = torch.zeros_like(state.logits, dtype=torch.bool).scatter_(1, prompt, True)
        new_tokens = []
        for step in range(max_new_tokens):
            logits = state.logits
            logits[:, self.config.image_token_id] = float("-inf")  # an image placeholder is never an output
            if step < min_new_tokens and eos_ids.numel():
                logits[:, eos_ids] = float("-inf")
            if seen is not None:
                penalised = torch.where(logits > 0, logits / repetition_penalty, logits * repetition_penalty)
                logits = torch.where(seen, penalised, logits)
            token = next_token(logits, do_sample, temperature, top_k, top_p, generator)
            token = token.masked_fill(finished, pad)
            new_tokens.append(token)
            if seen is not None:
                seen.scatter_(1, token[:, None], True)
            finished |= torch.isin(token, eos_ids)
            if finished.all() or step == max_new_tokens - 1:
                break
            self.decode_step(state, token)
        sequences = torch.cat([input_ids, torch.stack(new_tokens, dim=1)], dim=1)
        if not return_dict_in_generate:
            return sequences
        cache = state.cache
        return GenerationResult(
            sequences=sequences,
            budget=state.budget,
            cache_entries=cache.num_entries(),
            cache_visual_entries=cache.num_visual_entries(),
            cache_bytes=cache.nbytes(),
            num_visual_tokens=state.num_visual,
            num_text_tokens=state.num_text,
        )

    @torch.no_grad()
    def start_decoding(self, capacity: int = 32, **inputs: Any) -> DecodeState:
        """Prefill prompts into a fresh reduced cache with room for ``capacity`` new tokens per row: the
        :class:`~visor_model.cache.DecodeState` whose ``logits`` give each row's first new token. ``inputs`` are
        :meth:`forward`'s prompt arguments (``input_ids`` and optionally ``attention_mask``, ``pixel_values``,
        ``image_sizes``, ``budget``, ``tau``, ``batch_num_images``, ``image_features``)."""
        unknown = set(inputs) - set(PREFILL_INPUTS)
        if unknown:
            raise TypeError(f"start_decoding got unexpected arguments {sorted(unknown)}")
        input_ids = inputs["input_ids"]
        if inputs.get("attention_mask") is None:
            inputs["attention_mask"] = torch.ones_like(input_ids)
        text = (input_ids != self.config.image_token_id) & inputs["attention_mask"].bool()
        streams_len = int(text.sum(1).max())  # the text stream's width: padding takes no slot
        cache = VisorCache(self.config.text_config.num_hidden_layers, streams_len, capacity)
        pre = self._prefill(*(inputs.get(name) for name in PREFILL_INPUTS), cache=cache)
        streams = pre.streams
        rows = torch.arange(input_ids.shape[0], device=input_ids.device)
        logits = self.lm_head(pre.hidden[rows, last_valid_index(streams.text_valid)])
        return DecodeState(cache, logits, streams.last_position + 1, pre.budget, streams.num_visual, streams.num_text)

    @torch.no_grad()
    def decode_step(self, state: DecodeState, token: torch.LongTensor) -> None:
        """Feed one new token per row (``[B]``): extends the cache, sets ``state.logits`` to the next token's
        logits ``[B, V]`` and advances ``state.next_pos``."""
        state.logits = self._decode_step(token, state.next_pos, state.cache)
        state.next_pos = state.next_pos + 1

    def _decode_step(self, token: torch.LongTensor, pos: torch.LongTensor, cache: VisorCache) -> torch.Tensor:
        """One token per row through every layer, reading and extending ``cache``; returns logits ``[B, V]``."""
        hidden = self.get_input_embeddings()(token[:, None])
        pos_emb = self.language_model.rotary_emb(hidden, pos[:, None])
        for layer_idx, layer in enumerate(self.language_model.layers):
            if cache.gated[layer_idx]:
                gated = self.gated[str(layer_idx)]
                attended = attention_over_parts(gated.query(hidden), None, cache.gated[layer_idx], gated.scaling)
                hidden = gated.update(hidden, attended)
            q, k, v = project(layer, hidden, pos_emb)
            text = cache.append(layer_idx, k, v)
            attended = attention_over_parts(q, text, cache.visual[layer_idx], layer.self_attn.scaling)
            hidden = finish(layer, hidden, attended)
        cache.advance()
        return self.lm_head(self.language_model.norm(hidden))[:, 0]

    # -------------------------------------------------------------- conversion
    @classmethod
    def from_llava_onevision(
        cls,
        path_or_model: str | Path | LlavaOnevisionForConditionalGeneration,
        plan: LayerPlan | None = None,
        **visor_fields: Any,
    ) -> VisorForConditionalGeneration:
        """Build a VISOR model from a LLaVA-OneVision checkpoint (local path or loaded model).

        Nothing is downloaded: a path must be a local directory in ``transformers``
        format. All LLaVA-OneVision weights are copied; ``gated`` sublayers start
        from their decoder layer's attention weights with the gate at 0; the
        policy starts untrained. ``visor_fields`` set :class:`VisorConfig` fields (``cross_attention``,
        ``token_reduction``, …); a field left out keeps ``VisorConfig``'s default.
        """
        if isinstance(path_or_model, (str, Path)):
            if not Path(path_or_model).is_dir():
                raise FileNotFoundError(
                    f"{path_or_model} is not a local directory; convert from a LLaVA-OneVision checkpoint saved "
                    "in transformers format (save_pretrained) on local disk"
                )
            reference = LlavaOnevisionForConditionalGeneration.from_pretrained(path_or_model, local_files_only=True)
        else:
            reference = path_or_model
        config = VisorConfig.from_llava_onevision_config(
            reference.config,
            plan=plan.to_dict() if plan is not None else None,
            **visor_fields,
        )
        model = cls(config).to(dtype=reference.dtype)
        missing, unexpected = model.load_state_dict(reference.state_dict(), strict=False)
        added = [k for k in missing if not k.startswith(("gated.", "policy."))]
        if unexpected or added:
            raise ValueError(f"checkpoint does not match the VISOR model: missing {added}, unexpected {unexpected}")
        for layer_idx, gated in model.gated.items():
            gated.copy_from(model.language_model.layers[int(layer_idx)])
        return model.eval()

    @property
    def is_full_attention(self) -> bool:
        """True when this model computes exactly LLaVA-OneVision: one budget, every layer in mode S, no gated
        sublayers and no token reduction (so :meth:`to_llava_onevision` is exact)."""
        plan = self.plan
        return (
            plan.num_budgets == 1 and plan.budgets[0] == tuple(range(plan.num_layers))
            and not self.gated and self.config.token_reduction == 1
        )

    def to_llava_onevision(self) -> LlavaOnevisionForConditionalGeneration:
        """The ``transformers`` LLaVA-OneVision model with this model's weights (a full-attention model only).

        A full-attention VISOR model *is* LLaVA-OneVision (docs/DESIGN.md §3.3); exporting it lets it take
        the path every real checkpoint takes — :meth:`from_llava_onevision` with a sparse plan — and lets
        ``transformers`` load it (``save_pretrained``) without VISOR. The policy head is dropped.
        """
        if not self.is_full_attention:
            raise ValueError(
                "only a full-attention model (one budget with every layer in mode S, joint attention, no token "
                f"reduction) is a LLaVA-OneVision model; this one has plan {self.config.plan}, cross_attention "
                f"{self.config.cross_attention!r} and token_reduction {self.config.token_reduction}"
            )
        reference = LlavaOnevisionForConditionalGeneration(self.config.to_llava_onevision_config())
        weights = {k: v for k, v in self.state_dict().items() if not k.startswith("policy.")}
        reference.load_state_dict(weights, strict=True)
        return reference.to(dtype=self.dtype).eval()


@dataclass
class GenerationResult:
    """``generate(..., return_dict_in_generate=True)``: sequences plus cost accounting, per sample."""

    sequences: torch.LongTensor
    budget: torch.LongTensor
    cache_entries: torch.LongTensor
    cache_visual_entries: torch.LongTensor
    cache_bytes: int
    num_visual_tokens: torch.LongTensor
    num_text_tokens: torch.LongTensor


class _RowGroups:
    """Rows of a batch grouped by run mode, per layer, decided on the host: a layer's mode codes (one per row,
    a Python list) become ``[(code, RowSet | None)]`` (None: every row), each distinct row set's index tensor
    made once per batch."""

    def __init__(self, device: torch.device):
        self.device = device
        self._sets: dict[tuple[int, ...], RowSet] = {}

    def split(self, codes: list[int]) -> list[tuple[int, RowSet | None]]:
        present = sorted(set(codes))
        if len(present) == 1:
            return [(present[0], None)]
        groups = []
        for code in present:
            key = tuple(i for i, c in enumerate(codes) if c == code)
            if key not in self._sets:
                self._sets[key] = RowSet(key, torch.tensor(key, dtype=torch.long, device=self.device))
            groups.append((code, self._sets[key]))
        return groups


def _prompt_slots(streams: Streams, labels: torch.LongTensor) -> torch.BoolTensor:
    """Text slots ``[B, Tt]`` of the prompt: valid and before the first labelled column of ``labels [B, T]``
    (the token before it predicts the first answer token)."""
    return streams.text_valid & prompt_columns(labels).gather(1, streams.text_index)


def next_token(
    logits: torch.Tensor, do_sample: bool, temperature: float, top_k: int, top_p: float, generator
) -> torch.LongTensor:
    """Greedy argmax, or a sample from ``softmax(logits / T)`` restricted by top-k / top-p."""
    if not do_sample:
        return logits.argmax(-1)
    if temperature <= 0:
        raise ValueError("temperature must be > 0 when sampling")
    logits = logits.float() / temperature
    if top_k > 0:
        kth = logits.topk(min(top_k, logits.shape[-1]), dim=-1).values[:, -1:]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if top_p < 1.0:
        sorted_logits, order = logits.sort(dim=-1, descending=True)
        cumulative = sorted_logits.softmax(-1).cumsum(-1)
        drop = cumulative - sorted_logits.softmax(-1) > top_p
        logits = logits.masked_fill(drop.scatter(1, order, drop), float("-inf"))
    return torch.multinomial(logits.softmax(-1), 1, generator=generator).squeeze(1)
