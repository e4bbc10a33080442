"""VisorProcessor equals transformers' LlavaOnevisionProcessor; training labels keep only the answer."""

import numpy as np
import pytest
import torch
from transformers import LlavaOnevisionProcessor
from transformers.processing_utils import ProcessorMixin

from tests.conftest import random_image
from visor_model.presets import CHAT_TEMPLATE


@pytest.fixture
def reference_processor(processor, monkeypatch):
    """transformers' own processor. Its constructor insists on a video processor, which needs torchvision;
    torchvision cannot be imported beside the CPU torch build here, so only that class check is bypassed."""
    check = ProcessorMixin.check_argument_for_proper_class
    monkeypatch.setattr(
        ProcessorMixin,
        "check_argument_for_proper_class",
        lambda self, name, arg: None if arg is None else check(self, name, arg),
    )
    return LlavaOnevisionProcessor(
        image_processor=processor.image_processor,
        tokenizer=processor.tokenizer,
        video_processor=None,
        num_image_tokens=processor.num_image_tokens,
        vision_feature_select_strategy=processor.vision_feature_select_strategy,
        chat_template=CHAT_TEMPLATE,
    )


def test_same_outputs_as_llava_onevision_processor(processor, reference_processor):
    rng = np.random.default_rng(3)
    sizes = [tuple(int(x) for x in rng.integers(8, 120, 2)) for _ in range(12)] + [(33, 200), (200, 33)]
    images = [random_image(h, w, i) for i, (h, w) in enumerate(sizes)]
    texts = [processor.prompt("what colour is the box ?")] * len(images)
    processor.tokenizer.padding_side = "right"
    ours = processor(text=texts, images=images, return_tensors="pt", padding=True)
    theirs = reference_processor(text=texts, images=images, return_tensors="pt", padding=True)
    for key in ("input_ids", "attention_mask", "pixel_values", "image_sizes"):
        assert torch.equal(ours[key], theirs[key]), key
    assert len({int(n) for n in (ours["input_ids"] == 2).sum(1)}) > 3  # many different tile grids


def test_labels_keep_only_the_answer(processor):
    example = processor.build_example(random_image(40, 60, 0), "what colour is the box ?", "blue")
    labels = example["labels"][0]
    kept = labels[labels != -100]
    assert processor.tokenizer.decode(kept, skip_special_tokens=True).strip() == "blue"
    assert kept[-1] == processor.tokenizer.convert_tokens_to_ids("<|im_end|>")
    assert example["pixel_values"].shape[0] == 1 and example["image_sizes"].tolist() == [[40, 60]]


@pytest.mark.parametrize("answer, max_length, message", [("  ", None, "empty answer"),
                                                         ("red", 5, "longer than max_length")])
def test_build_example_errors(processor, answer, max_length, message):
    with pytest.raises(ValueError, match=message):
        processor.build_example(random_image(20, 20, 0), "what ?", answer, max_length=max_length)


def test_round_trip_save(processor, tmp_path):
    from visor_model import VisorProcessor
    processor.save_pretrained(tmp_path)
    loaded = VisorProcessor.from_pretrained(tmp_path)
    image = random_image(50, 30, 1)
    a = processor(text=[processor.prompt("what ?")], images=[image], return_tensors="pt")
    b = loaded(text=[loaded.prompt("what ?")], images=[image], return_tensors="pt")
    assert torch.equal(a["input_ids"], b["input_ids"]) and torch.equal(a["pixel_values"], b["pixel_values"])
