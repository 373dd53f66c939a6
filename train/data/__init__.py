"""The data pipeline: the streaming train loader over the challenge's token shards (their format:
common.shards), the tokenizer with the exact val_bpb byte tables, the `python -m train.data` CLI (download /
tokenize / embedded / inspect) and the offline embedded default corpus.

Submodules are imported on demand (`from train.data.tokenizer import load_tokenizer`) so that the CLI and the shard
reader do not pull in torch or sentencepiece when they are not needed.
"""
