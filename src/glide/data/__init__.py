"""Data: sources, filters, deduplication, shards and the procedural ``shapes`` world."""
