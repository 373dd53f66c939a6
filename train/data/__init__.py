"""The data pipeline: the challenge's binary token shards, the streaming train loader, the tokenizer with the exact
val_bpb byte tables, the `python -m train.data` CLI (download / tokenize / embedded / inspect) and the offline
embedded default corpus.

Submodules are imported on demand (`from train.data.shards import read_shard`) so that the CLI and the shard reader
do not pull in torch or sentencepiece when they are not needed.
"""
