"""What every command shares and no stage owns, the floor below kernels: one-line CLI errors and argument
checks (cli_errors), atomic writes (atomic), the model file and training checkpoint format (checkpoint), the
challenge's token shard format (shards) and where a model came from (provenance). No module here imports another
package of the project (the layers contract in setup.cfg, checked by `lint-imports`)."""
