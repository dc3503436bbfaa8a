"""What the decoder is conditioned on: the text (T5 states, cross-attended by plain checkpoints) and, on
melody checkpoints, the melody's chroma, which they read together with the text as a prefix before the
tokens. Classifier-free guidance adds an unconditional row (null text, null melody) next to the conditional
one.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from musicgen.errors import MusicGenError
from musicgen.engine.quant import one_thread

# SentencePiece pieces are at most 16 characters long, so a prompt this many times longer than the token
# limit is certainly over it: refused without tokenizing it
_CHARS_PER_TOKEN_BOUND = 32


@dataclass(frozen=True)
class Conditioning:
    """The decoder inputs of one window, for ``rows`` rows ([cond] or [cond, uncond])."""

    rows: int
    text_states: torch.Tensor | None = None  # plain checkpoints: projected text states (rows, Lt, H)
    text_mask: torch.Tensor | None = None  # and their attention mask (rows, Lt)
    prefix: torch.Tensor | None = None  # melody checkpoints: chroma then text states, embedded (rows, Lp, H)


@dataclass(frozen=True)
class TextStates:
    """A prompt run through the text encoder once: hidden states (1, Lt, D) and mask (1, Lt); the
    null condition (no prompt) is one zero state, masked out."""

    text: str | None
    hidden: torch.Tensor
    mask: torch.Tensor


class Conditioner:
    def __init__(self, model, tokenizer):
        self.model, self.tokenizer = model, tokenizer
        cfg = model.config
        self.is_melody = cfg.model_type == "musicgen_melody"
        self.max_text_tokens = int(getattr(cfg.text_encoder, "n_positions", None) or 512)

    @property
    def device(self) -> torch.device:
        return next(self.model.text_encoder.parameters()).device

    @property
    def dtype(self) -> torch.dtype:
        return next(self.model.text_encoder.parameters()).dtype

    def _token_ids(self, text: str) -> list[int]:
        return self.tokenizer(text, verbose=False)["input_ids"]

    def check_text(self, text: str | None) -> None:
        """Refuse a prompt longer than the text encoder reads, with one sentence (before any model work)."""
        if text is None:
            return
        limit = self.max_text_tokens
        if len(text) > _CHARS_PER_TOKEN_BOUND * limit:
            raise MusicGenError(
                f"prompt is {len(text)} characters long, far more than the {limit} tokens the text encoder "
                "reads; shorten it to a few sentences."
            )
        tokens = len(self._token_ids(text))
        if tokens > limit:
            raise MusicGenError(
                f"prompt is {tokens} tokens long, more than the {limit} tokens the text encoder reads; shorten it."
            )

    def encode_text(self, text: str | None) -> TextStates:
        """The text encoder's states for ``text`` (None: the null condition)."""
        if text is None:
            hidden_size = self.model.config.text_encoder.hidden_size
            return TextStates(None, torch.zeros(1, 1, hidden_size, device=self.device, dtype=self.dtype),
                              torch.zeros(1, 1, dtype=torch.long, device=self.device))
        self.check_text(text)
        enc = self.tokenizer([text], return_tensors="pt", padding=True)
        ids, mask = enc["input_ids"].to(self.device), enc["attention_mask"].to(self.device)
        hidden = self.model.text_encoder(input_ids=ids, attention_mask=mask).last_hidden_state
        return TextStates(text, hidden, mask)

    def _project_text(self, hidden: torch.Tensor) -> torch.Tensor:
        proj = getattr(self.model, "enc_to_dec_proj", None)
        return proj(hidden) if proj is not None else hidden

    def _melody_states(self, melody_chroma: torch.Tensor | None, rows_like: int) -> torch.Tensor:
        """Chroma (T, 12) (or None for the null melody) projected and tiled to the model's chroma length."""
        num_chroma = self.model.config.num_chroma
        if melody_chroma is None:
            melody_chroma = torch.zeros(rows_like, num_chroma)
            melody_chroma[:, 0] = 1.0  # the null melody, as the checkpoints were trained
        states = melody_chroma[None].to(self.device, self.dtype)
        proj = getattr(self.model, "audio_enc_to_dec_proj", None)
        if proj is not None:
            states = proj(states)
        length = self.model.config.chroma_length
        if states.shape[1] < length:
            states = states.repeat(1, math.ceil(length / states.shape[1]), 1)
        return states[:, :length]

    def null_prefix(self) -> torch.Tensor | None:
        """Melody checkpoints: the embedded null melody (1, chroma length, H) that begins the prefix of every
        request without a melody and of every unconditional row (None for other checkpoints)."""
        if not self.is_melody:
            return None
        with torch.no_grad(), one_thread():  # as condition() runs (sequence.py): the same bits
            return self._melody_states(None, 1)

    def condition(self, text: TextStates, melody_chroma: torch.Tensor | None, cfg_scale: float) -> Conditioning:
        """The conditional row and, when guidance changes anything, the unconditional row (null text, null
        melody)."""
        informative = text.text is not None or melody_chroma is not None
        use_cfg = informative and cfg_scale != 1
        states = self._project_text(text.hidden) * text.mask[..., None]
        if self.is_melody:
            prefix = torch.cat([self._melody_states(melody_chroma, 1), states], dim=1)
            if use_cfg:
                frames = melody_chroma.shape[0] if melody_chroma is not None else 1
                uncond = torch.cat([self._melody_states(None, frames), torch.zeros_like(states)], dim=1)
                prefix = torch.cat([prefix, uncond], dim=0)
            return Conditioning(prefix.shape[0], prefix=prefix)
        mask = text.mask
        if use_cfg:
            states = torch.cat([states, torch.zeros_like(states)], dim=0)
            mask = torch.cat([mask, torch.zeros_like(mask)], dim=0)
        return Conditioning(states.shape[0], text_states=states, text_mask=mask)
