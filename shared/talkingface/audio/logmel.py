"""The built-in log-mel front end: 80 mel bands per 25 fps frame, no checkpoint needed.

Analysis: 16 kHz audio, 25 ms Hann windows (400 samples, FFT 512) every 10 ms (160
samples); 80 HTK-mel triangular bands over 0-8000 Hz applied to the power spectrum. Each
25 fps frame i (samples [i*640, (i+1)*640)) averages the mel power of its four 10 ms
sub-frames centred at i*640 + 80 + 160*k, k = 0..3 (so it is centred on the frame's centre,
(i + 0.5) * 40 ms), then takes 10*log10(power + 1e-10): dB relative to a full-scale
power spectrum, floored at -100 dB. Audio beyond either end counts as zeros.
"""

from __future__ import annotations

import numpy as np

from talkingface.audio.decode import SAMPLE_RATE

HOP = 640  # samples per 25 fps frame
SUB_HOP = 160  # 10 ms sub-frames; four per frame
WIN = 400  # 25 ms window
N_FFT = 512
N_MELS = 80
F_MIN, F_MAX = 0.0, SAMPLE_RATE / 2
FLOOR_DB = -100.0


def _hz_to_mel(hz: np.ndarray) -> np.ndarray:
    return 2595.0 * np.log10(1.0 + np.asarray(hz, np.float64) / 700.0)


def _mel_to_hz(mel: np.ndarray) -> np.ndarray:
    return 700.0 * (10.0 ** (np.asarray(mel, np.float64) / 2595.0) - 1.0)


def mel_filterbank(n_mels: int = N_MELS, n_fft: int = N_FFT) -> np.ndarray:
    """[n_mels, n_fft // 2 + 1] HTK-mel triangles with unit peak over F_MIN..F_MAX."""
    edges = _mel_to_hz(np.linspace(_hz_to_mel(F_MIN), _hz_to_mel(F_MAX), n_mels + 2))
    bins = np.linspace(0.0, SAMPLE_RATE / 2, n_fft // 2 + 1)
    lower, centre, upper = edges[:-2, None], edges[1:-1, None], edges[2:, None]
    rising = (bins[None, :] - lower) / (centre - lower)
    falling = (upper - bins[None, :]) / (upper - centre)
    return np.maximum(0.0, np.minimum(rising, falling)).astype(np.float32)


class LogMelFrontEnd:
    """Log-mel spectrogram at 25 fps (see the module docstring for every parameter)."""

    name = "logmel"

    def __init__(self) -> None:
        self.dim = N_MELS
        self._filters = mel_filterbank()
        # Periodic Hann (as torch.stft/librosa use) so overlapping windows sum flat.
        self._window = (0.5 - 0.5 * np.cos(2 * np.pi * np.arange(WIN) / WIN)).astype(np.float32)

    def __call__(self, audio16k: np.ndarray) -> np.ndarray:
        """[T, 80] float32 with T = frame_count(len(audio16k))."""
        audio = np.asarray(audio16k, np.float32).reshape(-1)
        frames = int(np.floor(audio.shape[0] / HOP + 0.5))
        if frames == 0:
            return np.zeros((0, self.dim), np.float32)
        subs = frames * (HOP // SUB_HOP)
        # Sub-frame j is centred at 80 + 160 j; its window starts 200 samples earlier.
        first_start = SUB_HOP // 2 - WIN // 2
        pad_left = -first_start
        total = pad_left + (subs - 1) * SUB_HOP + WIN
        padded = np.zeros(total, np.float32)
        take = min(audio.shape[0], total - pad_left)
        padded[pad_left : pad_left + take] = audio[:take]
        windows = np.lib.stride_tricks.sliding_window_view(padded, WIN)[::SUB_HOP][:subs]
        spectrum = np.fft.rfft(windows * self._window, n=N_FFT, axis=1)
        power = (spectrum.real**2 + spectrum.imag**2).astype(np.float32)
        mel = power @ self._filters.T  # [subs, 80]
        mel = mel.reshape(frames, HOP // SUB_HOP, self.dim).mean(axis=1)
        return np.maximum(10.0 * np.log10(mel + 1e-10), FLOOR_DB).astype(np.float32)
