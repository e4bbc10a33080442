"""``visor`` is a model type ``transformers`` knows: the Auto classes load a saved VISOR directory, silently."""

from __future__ import annotations

import logging
import warnings
from pathlib import Path

import torch
from transformers import AutoConfig, AutoModelForImageTextToText, AutoProcessor, AutoTokenizer

from visor_model import VisorConfig, VisorForConditionalGeneration, VisorProcessor
from visor_model.presets import tiny_config


class Records(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.messages.append(record.getMessage())


def test_auto_classes_load_a_saved_visor_model_without_warnings(tmp_path: Path, processor: VisorProcessor) -> None:
    torch.manual_seed(0)
    model = VisorForConditionalGeneration(tiny_config(len(processor.tokenizer), num_layers=3, hidden_size=32))
    model.save_pretrained(tmp_path)
    processor.save_pretrained(tmp_path)
    records, logger = Records(), logging.getLogger("transformers")
    logger.addHandler(records)
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            config = AutoConfig.from_pretrained(tmp_path)
            loaded = AutoModelForImageTextToText.from_pretrained(tmp_path)
            auto_processor = AutoProcessor.from_pretrained(tmp_path)
            AutoTokenizer.from_pretrained(tmp_path)
    finally:
        logger.removeHandler(records)
    assert isinstance(config, VisorConfig) and config.plan == model.config.plan
    assert isinstance(loaded, VisorForConditionalGeneration) and isinstance(auto_processor, VisorProcessor)
    assert all(torch.equal(v, loaded.state_dict()[k]) for k, v in model.state_dict().items())
    assert records.messages == [] and [str(w.message) for w in caught] == []
