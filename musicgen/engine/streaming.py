"""EnCodec's decoder run incrementally: codes in as a request completes them, audio out as soon as it is final,
equal to ``Codec.decode`` of the whole clip to float rounding, without decoding any frame twice (beyond a few
frames of look-ahead and, at a long clip's chunk boundaries, the overlap ``Codec.decode`` itself decodes).

The decoder (SEANet, non-causal) is: a convolution at the frame rate, a unidirectional LSTM, then transposed
convolutions and residual blocks up to the sample rate. So a frame's audio depends on

- the codes a few frames to its right (each convolution's right padding: the look-ahead ``lookahead()``),
- everything to its left, but only through the LSTM's state, which is carried from chunk to chunk here, and
  through the convolutions' left context (a few frames, decoded again with each chunk and cropped).

A frame's audio is emitted once the codes of the frames its receptive field reaches are known, or at the end
of the clip (where the convolutions' reflect padding applies, as in the whole decode). ``Codec.decode``
decodes a long clip in chunks of ``chunk_frames``, each from ``context_frames`` before it with a fresh LSTM
state; the stream follows the same plan (a fresh LSTM at each chunk's context start), so it equals that
decode across chunk boundaries too. Stereo checkpoints decode each channel's codebooks on their own.
"""

from __future__ import annotations

import math

import torch
from transformers.models.encodec.modeling_encodec import (
    EncodecConv1d,
    EncodecConvTranspose1d,
    EncodecLSTM,
    EncodecResnetBlock,
)

from musicgen.engine.codec import Codec


def _radius(layers, scale: int = 1) -> tuple[float, int]:
    """How far (in frames, each way) the output of ``layers`` reaches into its input, and the scale (samples
    per frame) of their output; ``scale``: samples per frame of their input."""
    reach = 0.0
    for layer in layers:
        if isinstance(layer, EncodecConv1d):
            reach += (int(layer.padding_total) - int(layer.padding_total) // 2) / scale
        elif isinstance(layer, EncodecConvTranspose1d):
            kernel, stride = layer.conv.kernel_size[0], layer.conv.stride[0]
            reach += math.ceil(kernel / stride) / scale
            scale *= stride
        elif isinstance(layer, EncodecResnetBlock):
            reach += _radius([*layer.block, layer.shortcut], scale)[0]
    return reach, scale


class _Channel:
    """One channel's codebooks decoded from frame ``origin`` on with a fresh LSTM (one of ``Codec.decode``'s
    chunks): codes pushed, audio of frames up to a limit emitted."""

    def __init__(self, stream: StreamingDecoder, origin: int):
        self.stream, self.origin = stream, origin
        self.codes = torch.zeros(stream.codebooks, 0, dtype=torch.long)  # frames [origin, origin + n)
        self.state = None  # the LSTM's (h, c)
        self.lstm_done = origin  # frames through the LSTM so far
        self.y = torch.zeros(1, stream.width, 0)  # the LSTM's outputs, frames [y_start, lstm_done)
        self.y_start = origin

    def push(self, codes: torch.Tensor) -> None:
        self.codes = torch.cat([self.codes, codes], dim=-1)

    @property
    def known(self) -> int:
        return self.origin + self.codes.shape[-1]

    def audio(self, start: int, limit: int, final: bool) -> tuple[torch.Tensor, int]:
        """Audio of frames [start, stop) for the largest stop <= ``limit`` that is final (every frame, when
        ``final``: no more codes will come); returns (samples (stop - start) * hop, stop)."""
        s = self.stream
        known = self.known
        # through the head convolution and the LSTM, in order
        ready = known if final else known - s.head_margin
        if ready > self.lstm_done:
            lo = max(self.origin, self.lstm_done - s.head_margin)
            hi = known if final else min(known, ready + s.head_margin)
            x = s.quantizer.decode(self.codes[None, :, lo - self.origin : hi - self.origin].transpose(0, 1)
                                   .to(s.device)).to(s.dtype)
            for layer in s.head:
                x = layer(x)
            x = x[..., self.lstm_done - lo : ready - lo].permute(2, 0, 1)  # (frames, 1, width)
            out, self.state = s.lstm.lstm(x, self.state)
            self.y = torch.cat([self.y, (out + x).permute(1, 2, 0)], dim=-1)
            self.lstm_done = ready
        # through the upsampling tail, with look-ahead
        stop = min(limit, self.lstm_done if final else self.lstm_done - s.tail_margin)
        if stop <= start:
            return torch.zeros(0), start
        lo = max(self.origin, start - s.tail_margin)
        hi = self.lstm_done if final else min(self.lstm_done, stop + s.tail_margin)
        y = self.y[..., lo - self.y_start : hi - self.y_start]
        for layer in s.tail:
            y = layer(y)
        wav = y[0, 0, (start - lo) * s.hop : (stop - lo) * s.hop].float().cpu()
        keep = max(self.origin, stop - s.tail_margin)  # what the next call's left context needs
        self.y, self.y_start = self.y[..., keep - self.y_start :], keep
        return wav, stop


class StreamingDecoder:
    def __init__(self, codec: Codec, chunk_frames: int | None = None, context_frames: int | None = None):
        """Decode ``codec``'s codes as they come (``push``), in ``Codec.decode``'s chunk plan (its defaults
        unless given)."""
        encodec = codec.model
        layers = list(encodec.decoder.layers)
        at = next(i for i, layer in enumerate(layers) if isinstance(layer, EncodecLSTM))
        self.head, self.lstm, self.tail = layers[:at], layers[at], layers[at + 1 :]
        self.quantizer = encodec.quantizer
        self.device = codec.device
        self.dtype = next(encodec.parameters()).dtype
        self.hop, self.channels = codec.hop, codec.channels
        self.codebooks = codec.num_codebooks // codec.channels
        self.width = self.lstm.lstm.input_size
        self.head_margin = math.ceil(_radius(self.head)[0])
        self.tail_margin = math.ceil(_radius(self.tail)[0]) + 1
        self.chunk = chunk_frames or codec.chunk_frames
        self.context = codec.context_frames if context_frames is None else context_frames
        self.emitted = 0  # frames whose audio has been returned
        self.chunk_index = 0
        self.parts = [_Channel(self, 0) for _ in range(self.channels)]

    def lookahead(self) -> int:
        """Frames of codes past a frame needed before its audio is final (mid-clip)."""
        return self.head_margin + self.tail_margin

    @torch.inference_mode()
    def push(self, codes: torch.Tensor) -> torch.Tensor:
        """New frames' codes (K, n) in order; returns the audio (channels, samples) that became final."""
        codes = codes.cpu()
        for channel, part in enumerate(self.parts):
            part.push(codes if self.channels == 1 else codes[channel :: self.channels])
        return self._drain(final=False)

    @torch.inference_mode()
    def finish(self) -> torch.Tensor:
        """The rest of the audio, the clip's end decoded as the whole decode does (no more codes come)."""
        return self._drain(final=True)

    def _drain(self, final: bool) -> torch.Tensor:
        pieces = []
        while True:
            boundary = (self.chunk_index + 1) * self.chunk  # where this chunk's audio ends
            outs = [part.audio(self.emitted, boundary, final) for part in self.parts]
            stop = min(stop for _, stop in outs)
            if stop > self.emitted:
                pieces.append(torch.stack([wav[: (stop - self.emitted) * self.hop] for wav, _ in outs]))
                self.emitted = stop
            known = self.parts[0].known
            if self.emitted < boundary or known <= boundary:
                break
            # the next chunk, as Codec.decode decodes it: a fresh LSTM from its context's start
            self.chunk_index += 1
            origin = max(0, boundary - self.context)
            old, self.parts = self.parts, [_Channel(self, origin) for _ in range(self.channels)]
            for part, before in zip(self.parts, old):
                part.push(before.codes[:, origin - before.origin :])
        if not pieces:
            return torch.zeros(self.channels, 0)
        return torch.cat(pieces, dim=-1)
