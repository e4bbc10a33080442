"""``VisorProcessor``: LLaVA-OneVision's processor, plus training labels.

It *is* ``transformers``' ``LlavaOnevisionProcessor`` (anyres tiling by
``LlavaOnevisionImageProcessor``, image-token expansion, chat template) so its
``input_ids``, ``pixel_values`` and ``image_sizes`` are the reference ones by
construction. Differences:

* it has no video processor (the video processor needs torchvision, which does
  not install beside the CPU torch build; VISOR is an image model);
* :meth:`VisorProcessor.build_example` turns one (image, question, answer) into
  model inputs with ``labels`` that keep only the answer tokens (everything
  else is -100);
* :meth:`VisorProcessor.prompt` renders a question as a generation prompt.

Use the PIL image processor (``LlavaOnevisionImageProcessorPil``): it is the
backend that works without torchvision and gives the same pixels.
"""

from __future__ import annotations

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
        """Inputs for one training sample: ``input_ids``, ``attention_mask``, ``labels`` ``[1, T]``,
        ``pixel_values [1, tiles, 3, H, W]`` and ``image_sizes [1, 2]`` when there is an image.

        ``labels`` equal ``input_ids`` on the answer tokens (and the end-of-turn
        token after them) and -100 elsewhere. Raises ``ValueError`` for an empty
        answer or a sequence longer than ``max_length``.
        """
        if not answer.strip():
            raise ValueError("empty answer")
        prompt = self.prompt(question, with_image=image is not None)
        full = self.apply_chat_template(
            self.conversation(question, answer, with_image=image is not None), tokenize=False
        )
        if not full.startswith(prompt):
            raise ValueError("the chat template does not render the answer after the generation prompt")
        images = [image] if image is not None else None
        inputs = self(text=[full], images=images, return_tensors="pt")
        prompt_len = self(text=[prompt], images=images, return_tensors="pt")["input_ids"].shape[1]
        length = inputs["input_ids"].shape[1]
        if max_length is not None and length > max_length:
            raise ValueError(f"sequence of {length} tokens is longer than max_length={max_length}")
        labels = inputs["input_ids"].clone()
        labels[:, :prompt_len] = -100
        if (labels != -100).sum() == 0:
            raise ValueError("the answer produced no tokens")
        inputs["labels"] = labels
        inputs.pop("batch_num_images", None)
        return dict(inputs)
