"""``VisorProcessor``: LLaVA-OneVision's processor, plus training labels.

It *is* ``transformers``' ``LlavaOnevisionProcessor`` (anyres tiling by
``LlavaOnevisionImageProcessor``, image-token expansion, chat template) so its
``input_ids``, ``pixel_values`` and ``image_sizes`` are the reference ones by
construction. Differences:

* it has no video processor and no video token (the video processor needs
  torchvision, which does not install beside the CPU torch build; VISOR is an
  image model);
* :meth:`VisorProcessor.build_chat` turns an image and (question, answer) turns
  into model inputs with ``labels`` that keep only the answer tokens (everything
  else is -100); :meth:`VisorProcessor.build_example` is its one-turn form;
* :meth:`VisorProcessor.prompt` renders a question as a generation prompt.

Use the PIL image processor (``LlavaOnevisionImageProcessorPil``): it is the
backend that works without torchvision and gives the same pixels.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from PIL import Image
from transformers import LlavaOnevisionProcessor

IMAGE_TOKEN = "<image>"


class VisorProcessor(LlavaOnevisionProcessor):
    def __init__(
        self,
        image_processor=None,
        tokenizer=None,
        num_image_tokens: int | None = None,
        vision_feature_select_strategy: str | None = None,
        chat_template: str | None = None,
        image_token: str = IMAGE_TOKEN,
        vision_aspect_ratio: str = "anyres_max_9",
        **kwargs: Any,
    ):
        super().__init__(
            image_processor,
            tokenizer,
            None,
            num_image_tokens=num_image_tokens,
            vision_feature_select_strategy=vision_feature_select_strategy,
            chat_template=chat_template,
            image_token=image_token,
            vision_aspect_ratio=vision_aspect_ratio,
            **kwargs,
        )
        # No videos: without this, a tokenizer lacking a <video> token maps it to <unk>, and every
        # unknown word would count as a video token in transformers' placeholder check.
        self.video_token = self.video_token_id = None

    def conversation(self, question: str, answer: str | None = None, with_image: bool = True) -> list[dict]:
        """A one-turn chat in ``transformers``' message format (image first, then the question)."""
        content = ([{"type": "image"}] if with_image else []) + [{"type": "text", "text": question}]
        messages = [{"role": "user", "content": content}]
        if answer is not None:
            messages.append({"role": "assistant", "content": [{"type": "text", "text": answer}]})
        return messages

    def prompt(self, question: str, with_image: bool = True) -> str:
        """The generation prompt for ``question`` (ends where the assistant's answer starts)."""
        return self.apply_chat_template(
            self.conversation(question, with_image=with_image), add_generation_prompt=True, tokenize=False
        )

    def build_example(
        self, image: Image.Image | None, question: str, answer: str, max_length: int | None = None
    ) -> dict[str, torch.Tensor]:
        """:meth:`build_chat` for a one-turn conversation."""
        return self.build_chat(image, [(question, answer)], max_length)

    def build_chat(
        self, image: Image.Image | None, turns: Sequence[tuple[str, str]], max_length: int | None = None
    ) -> dict[str, torch.Tensor]:
        """Inputs for one training sample of one or more (question, answer) turns, the image in the first:
        ``input_ids``, ``attention_mask``, ``labels`` ``[1, T]``, and ``pixel_values [1, tiles, 3, H, W]``
        and ``image_sizes [1, 2]`` when there is an image.

        ``labels`` equal ``input_ids`` on every answer's tokens (and the end-of-turn
        token after each) and -100 elsewhere. The image is tiled once; answer
        boundaries come from tokenizing the rendered prefixes with the single
        ``<image>`` placeholder, which expands to the same number of tokens in
        every prefix. Raises ``ValueError`` for no turns, an empty answer or a
        sequence longer than ``max_length``.
        """
        if not turns:
            raise ValueError("no conversation turns")
        if any(not answer.strip() for _, answer in turns):
            raise ValueError("empty answer")
        messages: list[dict] = []
        spans: list[tuple[str, str]] = []  # (text before the answer, text through the answer)
        for i, (question, answer) in enumerate(turns):
            user, assistant = self.conversation(question, answer, with_image=image is not None and i == 0)
            messages.append(user)
            before = self.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
            messages.append(assistant)
            through = self.apply_chat_template(messages, tokenize=False)
            if not through.startswith(before):
                raise ValueError("the chat template does not render the answer after the generation prompt")
            spans.append((before, through))
        inputs = self(text=[spans[-1][1]], images=[image] if image is not None else None, return_tensors="pt")
        input_ids = inputs["input_ids"]
        length = input_ids.shape[1]
        if max_length is not None and length > max_length:
            raise ValueError(f"sequence of {length} tokens is longer than max_length={max_length}")
        extra = int((input_ids == self.image_token_id).sum()) - (1 if image is not None else 0)
        labels = torch.full_like(input_ids, -100)
        for before, through in spans:
            start, end = (len(self.tokenizer(text, add_special_tokens=False)["input_ids"]) + extra
                          for text in (before, through))
            labels[:, start:end] = input_ids[:, start:end]
        if end != length:  # a tokenizer that adds BOS/EOS tokens would shift every boundary
            raise ValueError(f"answer boundaries do not line up ({end} != {length} tokens)")
        if (labels != -100).sum() == 0:
            raise ValueError("the answer produced no tokens")
        inputs["labels"] = labels
        inputs.pop("batch_num_images", None)
        return dict(inputs)
