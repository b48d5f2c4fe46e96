"""The catalog store: items -> vectors (through the one `ItemEncoder`) -> Qdrant, and the queries served from it."""
