"""danbooru2023 metadata (HakuBooru's SQLite schema), image shards, and the synthetic demo data generator."""

from .schema import (
    DANBOORU_CATEGORY_TO_TAG_TYPE,
    HAKUBOORU_SCHEMA_SQL,
    Rating,
    TagType,
    open_metadata_db,
    table_counts,
)

__all__ = [
    "DANBOORU_CATEGORY_TO_TAG_TYPE",
    "HAKUBOORU_SCHEMA_SQL",
    "Rating",
    "TagType",
    "open_metadata_db",
    "table_counts",
]
