"""Pipelines that run several stages in one command, above every stage they run: the challenge script's entry
(challenge_main: train, quantize, evaluate; bundled into a submission's train_gpt.py by quant.bundle) and the
main job (`python -m pipelines.demo`: build the embedded corpus, train, quantize, evaluate)."""
