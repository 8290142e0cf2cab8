"""Diarization operators: PCM framing, VAD, speaker embeddings, clustering, snapshots."""
