"""The catalogue: image and job records (SQLAlchemy), the blob store, and ingest orchestration."""
