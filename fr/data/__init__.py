"""The face data format: Parquet face shards + dataset.json, ingest (image folders, insightface RecordIO,
the toy identities), verification .bin files, alignment and image coding, the shard dataset.

Anything that reads or writes faces imports this package and nothing of the FR models."""
