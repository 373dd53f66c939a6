"""Evaluation: exact val_bpb, sliding-window scoring (stride 64) and legal score-first test-time training."""
