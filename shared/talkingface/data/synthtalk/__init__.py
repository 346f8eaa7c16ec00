"""SynthTalk: speech, articulated 3-D landmarks and rendered video of synthetic people."""
