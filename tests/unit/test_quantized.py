"""The INT8 (dynamic quantisation) variant of the sentiment transformer, on CPU."""

from __future__ import annotations

from core.inference.transformer import QuantizedSentimentTransformer, SentimentTransformer


def test_int8_model_labels_clear_cases_and_has_its_own_version() -> None:
    model = QuantizedSentimentTransformer.load(device="cpu")
    predictions = model.predict(["a wonderful, moving and funny film", "a dull, lifeless mess"])

    assert [p.label for p in predictions] == ["positive", "negative"]
    assert model.version == QuantizedSentimentTransformer.current_version()
    assert model.version != SentimentTransformer.current_version()  # never shares cache entries
    assert model.name.endswith("-int8")
