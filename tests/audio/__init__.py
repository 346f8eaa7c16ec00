"""Tests of talkingface.audio: decoding, log-mel/HuBERT front ends, pitch and loudness."""
