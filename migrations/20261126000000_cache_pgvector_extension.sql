-- The semantic cache stores embeddings in pgvector columns; the extension must exist before any cache table.
CREATE EXTENSION IF NOT EXISTS vector;
