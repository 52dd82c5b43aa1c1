"""The packed-record contract: feature names, dtypes and layouts shared by writers and the trainer."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

Layout = Literal["decoder_only", "encoder_decoder"]

# seqio/t5x feature-converter names (seqio.feature_converters).  Every feature is a
# fixed-length int64 vector in the tf.train.Example; the trainer casts to int32.
DECODER_FEATURES: tuple[str, ...] = (
    "decoder_target_tokens",
    "decoder_input_tokens",
    "decoder_loss_weights",
    "decoder_segment_ids",
    "decoder_positions",
)
DECODER_ONLY_FEATURES: tuple[str, ...] = DECODER_FEATURES + ("decoder_causal_attention",)
ENCODER_FEATURES: tuple[str, ...] = ("encoder_input_tokens", "encoder_segment_ids", "encoder_positions")



@dataclass(frozen=True)
class SpecialIds:
    """The tokenizer's ids a packed row uses, read from the model (or the pipeline's overrides) and recorded
    in every manifest: never constants, since models differ (T5: pad 0, eos 1; Llama: unk 0, bos 1, eos 2)."""

    pad: int  # padding, and the decoder input at segment starts
    eos: int  # ends every input and target part
    bos: int | None = None  # prepended to every input part when set (``tokenizer: {bos: true}``)


@dataclass(frozen=True)
class RecordLayout:
    """Which features a packed row has and how long each one is."""

    layout: Layout
    inputs_length: int
    targets_length: int

    @property
    def features(self) -> dict[str, int]:
        """Feature name -> fixed length of that feature in every row."""
        if self.layout == "decoder_only":
            n = self.inputs_length + self.targets_length
            return {name: n for name in DECODER_ONLY_FEATURES}
        out = {name: self.inputs_length for name in ENCODER_FEATURES}
        out.update({name: self.targets_length for name in DECODER_FEATURES})
        return out

    @property
    def sequence_length(self) -> int:
        """Length of the longest feature (the decoder row for decoder_only)."""
        return max(self.features.values())
