"""Settings from the environment, all prefixed TILEDETECT_."""

from __future__ import annotations

from pathlib import Path

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

from catalog.db import OUTAGE_WAIT_S
from catalog.quotas import ProjectLimits

# static/ sits beside the packages in a checkout; an installed copy (Docker) names its own.
_CHECKOUT_STATIC = Path(__file__).resolve().parent.parent / "static"


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="TILEDETECT_", env_file=".env", extra="ignore")

    data_dir: Path = Field(Path("data"), description="Blob store, database and caches live here.")
    blob_url: str | None = Field(
        None,
        description="Where COGs, models and exports live: a directory, s3://bucket/prefix or "
        "gs://bucket/prefix; default <data_dir>/blobs.",
    )
    remote_cog_hosts: str = Field(
        "",
        description="Comma-separated hosts whose COGs may be registered by URL without copying "
        "(host, host:port, or s3://bucket); empty: registration by URL is off.",
    )
    database_url: str | None = Field(
        None, description="SQLAlchemy URL; default sqlite:///<data_dir>/tiledetect.db"
    )
    static_dir: Path = Field(_CHECKOUT_STATIC, description="The web app's files.")
    max_upload_bytes: int = Field(20 * 1024**3, description="Largest accepted upload, in bytes.")
    max_image_bands: int = 32
    max_image_pixels: int = Field(
        25_000_000_000, ge=1, description="Largest width x height an upload may declare."
    )
    max_image_expansion: float = Field(
        10_000.0,
        gt=0,
        description="Most decoded bytes per file byte (above 1 GiB decoded): decompression bombs.",
    )
    max_json_bytes: int = Field(
        32 * 1024**2, ge=1024, description="Largest JSON request body (annotations, exports)."
    )
    database_wait_s: float = Field(
        OUTAGE_WAIT_S,
        ge=0,
        description="How long background work waits for an unreachable database to record its "
        "result (an ingested image, a trained version, an export) before giving up.",
    )
    ingest_workers: int = Field(1, ge=1, description="Concurrent background ingests.")
    tile_cache_seconds: int = Field(
        86400, description="Cache-Control max-age for tiles; an image id's pixels never change."
    )

    auth: bool = Field(
        False,
        description="Require an API key (Bearer or ?token=) on every API and tile request; "
        "off: one implicit 'default' project, for a single user on localhost.",
    )
    allow_unauthenticated: bool = Field(
        False, description="Let `serve` bind a non-loopback address with auth off."
    )
    auth_cache_seconds: float = Field(
        5.0, ge=0, description="How long a checked API key is trusted before it is checked again."
    )

    # Per-project limits (catalog.quotas): unset, none with auth off (one user's server) and
    # the value in brackets with auth on; 0, no limit. `tiledetect projects limits` overrides
    # them for one project.
    project_trainings: int | None = Field(
        None, ge=0, description="Trainings a project runs at once (auth on: 2)."
    )
    project_exports: int | None = Field(
        None, ge=0, description="Exports a project runs at once (auth on: 4)."
    )
    project_storage_bytes: int | None = Field(
        None, ge=0, description="Bytes a project stores: COGs, models, exports (auth on: 500 GiB)."
    )
    project_upload_bytes: int | None = Field(
        None,
        ge=0,
        description="Largest image upload of a project, within max_upload_bytes (auth on: that).",
    )
    project_requests_per_minute: int | None = Field(
        None,
        ge=0,
        description="Requests per minute per API key, bursts of a quarter of it (auth on: 6000).",
    )

    detection_cache_bytes: int = Field(
        512 * 1024**2, description="Memory for cached detection probabilities, in bytes."
    )
    detection_threads: int = Field(4, ge=1, description="Threads reading windows and inferring.")
    detection_batch_size: int | None = Field(
        None, ge=1, description="Windows per onnxruntime call; default 8 on CUDA, 1 on CPU."
    )
    detection_batch_wait_ms: float = Field(4.0, ge=0, description="Longest wait to fill a batch.")

    dask_scheduler: str | None = Field(
        None, description="tcp://host:port of a Dask scheduler; default an in-process cluster."
    )
    dask_threads: int | None = Field(
        None, ge=1, description="Threads of the in-process Dask worker; default min(2, cores)."
    )
    dask_cell_resources: str = Field(
        "", description="Resources a worker must declare to take export cells, e.g. 'GPU=1'."
    )
    export_cell_px: int = Field(2048, ge=256, description="Export cell size in native pixels.")
    export_retries: int = Field(3, ge=0, description="Retries of a failing export cell.")
    export_backoff_s: float = Field(1.0, ge=0, description="Pause before the first retry.")
    export_lease_s: float = Field(
        60.0,
        gt=0,
        description="A server process renews its exports' lease 4 times per period; another "
        "process (a replica) adopts an export whose lease has lapsed this long.",
    )

    def project_limits(self) -> ProjectLimits:
        """Every project's limits unless `tiledetect projects limits` says otherwise."""
        shared = {
            "trainings": (self.project_trainings, 2),
            "exports": (self.project_exports, 4),
            "storage_bytes": (self.project_storage_bytes, 500 * 1024**3),
            "upload_bytes": (self.project_upload_bytes, None),
            "requests_per_minute": (self.project_requests_per_minute, 6000),
        }
        chosen = {
            name: (value or None) if value is not None else (default if self.auth else None)
            for name, (value, default) in shared.items()
        }
        return ProjectLimits(**chosen)

    def dask_resources(self) -> dict[str, float] | None:
        """`dask_cell_resources` ('GPU=1,MEM=4e9') as Dask's resources mapping."""
        pairs = [p.split("=", 1) for p in self.dask_cell_resources.split(",") if p.strip()]
        return {name.strip(): float(value) for name, value in pairs} or None

    def resolved_database_url(self) -> str:
        return self.database_url or f"sqlite:///{self.data_dir.resolve() / 'tiledetect.db'}"

    @property
    def blob_dir(self) -> Path:
        return self.data_dir / "blobs"

    def blob_location(self) -> str:
        """The data location: `blob_url`, or the local directory under data_dir."""
        return self.blob_url or str(self.blob_dir)

    @property
    def blob_cache_dir(self) -> Path:
        """Local copies of remote blobs that code needs as files (ONNX models, layer sources)."""
        return self.data_dir / "cache" / "blobs"

    @property
    def staging_dir(self) -> Path:
        """Finished files wait here before going up to a remote blob store."""
        return self.data_dir / "staging"

    def remote_hosts(self) -> tuple[str, ...]:
        return tuple(h.strip().lower() for h in self.remote_cog_hosts.split(",") if h.strip())

    @property
    def detection_cache_dir(self) -> Path:
        return self.data_dir / "cache" / "detections"

    @property
    def upload_dir(self) -> Path:
        return self.data_dir / "uploads"
