"""The `tiledetect` command line: serve, ingest, demo, images, detectors, projects, keys.

Commands share the server's settings (TILEDETECT_* environment variables or --data-dir), so
`tiledetect ingest` writes into the same catalogue a running server reads.
"""

from __future__ import annotations

import ipaddress
import json
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.progress import BarColumn, Progress, TaskProgressColumn, TextColumn, TimeRemainingColumn
from rich.table import Table

from catalog.errors import NotFoundError
from catalog.models import DEFAULT_PROJECT
from catalog.projects import owner
from scenes.synthetic import SceneSpec
from server.services import Services, build_services
from server.settings import Settings
from tiles.errors import TileDetectError

app = typer.Typer(
    help="tiledetect: find objects in huge aerial and satellite images.",
    no_args_is_help=True,
    add_completion=False,
)
console = Console(stderr=True, soft_wrap=True)  # messages stay greppable, one per line

DataDir = Annotated[
    Path | None,
    typer.Option(
        "--data-dir",
        help="Where the database and blob store live (default: $TILEDETECT_DATA_DIR or ./data).",
        show_default=False,
    ),
]
BlobUrl = Annotated[
    str | None,
    typer.Option(
        "--blob-url",
        help="Where COGs, models and exports live: a directory, s3://bucket/prefix or "
        "gs://bucket/prefix (default: $TILEDETECT_BLOB_URL or DATA_DIR/blobs).",
        show_default=False,
    ),
]


ProjectOption = Annotated[
    str | None,
    typer.Option(
        "--project",
        help="Project (name or id) the new records belong to (default: the default project).",
        show_default=False,
    ),
]
ProjectFilter = Annotated[
    str | None,
    typer.Option("--project", help="Only this project's (name or id).", show_default=False),
]


def _settings(data_dir: Path | None, blob_url: str | None = None) -> Settings:
    overrides = {"data_dir": data_dir, "blob_url": blob_url}
    return Settings(**{key: value for key, value in overrides.items() if value})


def _project_id(services: Services, project: str | None) -> str | None:
    """The id of --project (a name or an id), or None when it was not given."""
    if project is None:
        return None
    try:
        return services.projects.resolve(project).id
    except NotFoundError as exc:
        services.close()
        console.print(f"[red]{exc}")
        raise typer.Exit(code=1) from exc


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False  # a host name: it may resolve to anything, so it is not trusted


def _progress_bar() -> Progress:
    return Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        TaskProgressColumn(),
        TimeRemainingColumn(),
        console=console,
        transient=False,
    )


@app.command()
def serve(
    host: Annotated[str, typer.Option(help="Interface to listen on.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="TCP port.")] = 8000,
    workers: Annotated[
        int, typer.Option(help="Uvicorn worker processes.", envvar="TILEDETECT_WORKERS", min=1)
    ] = 1,
    log_level: Annotated[str, typer.Option(help="debug, info, warning or error.")] = "info",
    access_log: Annotated[bool, typer.Option(help="Log every request.")] = True,
    auth: Annotated[
        bool | None,
        typer.Option(
            "--auth/--no-auth",
            help="Require API keys (default: $TILEDETECT_AUTH, off).",
            show_default=False,
        ),
    ] = None,
    allow_unauthenticated: Annotated[
        bool,
        typer.Option(
            "--allow-unauthenticated",
            help="Listen on a non-loopback address with auth off (something else must guard "
            "it). Also $TILEDETECT_ALLOW_UNAUTHENTICATED=true.",
        ),
    ] = False,
    data_dir: DataDir = None,
    blob_url: BlobUrl = None,
) -> None:
    """Start the HTTP server: API, XYZ/TileJSON/WMTS tiles and the web app.

    With several workers and no $TILEDETECT_DASK_SCHEDULER, this process runs one local Dask
    scheduler and worker that every server process sends its exports and trainings to.
    """
    import os

    import uvicorn

    if data_dir:
        os.environ["TILEDETECT_DATA_DIR"] = str(data_dir)
    if blob_url:
        os.environ["TILEDETECT_BLOB_URL"] = blob_url
    if auth is not None:
        os.environ["TILEDETECT_AUTH"] = "true" if auth else "false"
    settings = _settings(None)
    if not settings.auth and not is_loopback(host):
        if not (allow_unauthenticated or settings.allow_unauthenticated):
            console.print(
                f"[red]tiledetect: refusing to listen on {host} with auth off: anyone who can "
                "reach that address could read, change and delete every image and detector. "
                "Turn auth on (--auth or TILEDETECT_AUTH=true; create keys with `tiledetect "
                "keys create --project NAME`), listen on 127.0.0.1, or, when something in "
                "front of the server controls access, allow it explicitly with "
                "--allow-unauthenticated or TILEDETECT_ALLOW_UNAUTHENTICATED=true."
            )
            raise typer.Exit(code=2)
        console.print(f"[yellow]tiledetect: auth is off on {host}, as explicitly allowed")
    mode = "auth on: API keys required" if settings.auth else "auth off: single user"
    cluster = None
    if workers > 1:
        from catalog.db import Database

        settings.data_dir.mkdir(parents=True, exist_ok=True)
        Database(settings.resolved_database_url()).dispose()  # the schema, before they all start
    if workers > 1 and not settings.dask_scheduler:
        from export.cluster import local_cluster

        # One cluster for all workers: each making its own would split the cores N ways and
        # give the same export's cells no shared scheduler. The workers inherit the variable.
        cluster = local_cluster(settings.dask_threads, for_others=True)
        os.environ["TILEDETECT_DASK_SCHEDULER"] = cluster.scheduler_address
        console.print(f"tiledetect: Dask scheduler for the workers at {cluster.scheduler_address}")
    console.print(
        f"tiledetect: serving on http://{host}:{port} with {workers} worker(s)  "
        f"(data: {settings.data_dir}; {mode})"
    )
    try:
        uvicorn.run(
            "server.app:create_app",
            factory=True,
            host=host,
            port=port,
            workers=workers,
            log_level=log_level,
            access_log=access_log,
            # A worker answers the supervisor's pings only once it has imported this CLI and
            # what it imports (onnxruntime, torch, GDAL): more than uvicorn's 5 s on a busy host,
            # which would kill and respawn the workers for ever.
            timeout_worker_healthcheck=60,
        )
    finally:
        if cluster is not None:
            cluster.close()


@app.command()
def ingest(
    files: Annotated[list[Path], typer.Argument(help="GeoTIFF file(s) to add.", exists=True)],
    name: Annotated[str | None, typer.Option(help="Display name (default: the file name).")] = None,
    project: ProjectOption = None,
    data_dir: DataDir = None,
    blob_url: BlobUrl = None,
) -> None:
    """Validate GeoTIFFs, convert them to Cloud-Optimized GeoTIFFs and add them to the catalogue."""
    if name and len(files) > 1:
        raise typer.BadParameter("--name applies to a single file")
    services = build_services(_settings(data_dir, blob_url))
    project_id = _project_id(services, project) or DEFAULT_PROJECT
    failed = 0
    try:
        for path in files:
            try:
                ticket = services.ingestor.submit(path, name or path.name, project=project_id)
            except TileDetectError as exc:
                console.print(f"[red]{path}: {exc}")
                failed += 1
                continue
            with _progress_bar() as bar:
                task = bar.add_task(f"ingesting {path.name}", total=1.0)
                image = services.ingestor.run(
                    ticket, progress=lambda f, t=task: bar.update(t, completed=f)
                )
            typer.echo(json.dumps({"id": image.id, "name": image.name, "status": image.status}))
    finally:
        services.close()
    if failed:
        raise typer.Exit(code=1)


@app.command()
def demo(
    size: Annotated[int, typer.Option(help="Scene width and height in pixels.", min=256)] = 8192,
    seed: Annotated[int, typer.Option(help="Seed: the same seed gives the same scene.")] = 0,
    force: Annotated[bool, typer.Option(help="Regenerate even if the demo exists.")] = False,
    detector_seconds: Annotated[
        float, typer.Option(help="Training budget of the demo detector (0: no detector).")
    ] = 90.0,
    data_dir: DataDir = None,
) -> None:
    """Make the synthetic demo scene (0.3 m, trees, buildings, cars) with its ground truth, ingest
    it, and train the demo detector (trainer/demo_detector.py). Quick when it already exists."""
    from server.demo import ensure_demo

    services = build_services(_settings(data_dir))
    spec = SceneSpec(width=size, height=size, seed=seed)
    try:
        with _progress_bar() as bar:
            tasks: dict[str, int] = {}

            def report(stage: str, fraction: float) -> None:
                if stage not in tasks:
                    tasks[stage] = bar.add_task(stage, total=1.0)
                bar.update(tasks[stage], completed=fraction)

            result = ensure_demo(
                services,
                spec,
                force=force,
                progress=report,
                detector_seconds=detector_seconds or None,
            )
    finally:
        services.close()
    state = (
        "generated and ingested"
        if result.generated
        else ("ingested" if result.ingested else "already present")
    )
    console.print(f"demo {state}: image {result.image_id}, truth in {result.files.truth}")
    typer.echo(
        json.dumps(
            {
                "image_id": result.image_id,
                "detector_id": result.detector_id,
                "truth": str(result.files.truth),
                "counts": result.counts,
            }
        )
    )


detectors_app = typer.Typer(
    help="Detectors (ONNX files with their metadata).", no_args_is_help=True
)
app.add_typer(detectors_app, name="detectors")


@detectors_app.command("add")
def detectors_add(
    onnx_file: Annotated[Path, typer.Argument(help="ONNX detector file.", exists=True)],
    name: Annotated[str | None, typer.Option(help="Display name.")] = None,
    project: ProjectOption = None,
    data_dir: DataDir = None,
) -> None:
    """Register an ONNX detector (tiledetect or Deepness metadata) as a new detector."""
    from inference.session import load_detector

    services = build_services(_settings(data_dir))
    project_id = _project_id(services, project) or DEFAULT_PROJECT
    try:
        spec = load_detector(onnx_file).spec
        record = services.detectors.create(
            name or spec.name or onnx_file.stem, list(spec.class_names), project=project_id
        )
        services.detectors.add_version(record.id, onnx_file, spec, source="import")
    except TileDetectError as exc:
        console.print(f"[red]{onnx_file}: {exc}")
        raise typer.Exit(code=1) from exc
    finally:
        services.close()
    typer.echo(json.dumps({"id": record.id, "name": record.name, "classes": record.classes}))


@detectors_app.command("list")
def detectors_list(project: ProjectFilter = None, data_dir: DataDir = None) -> None:
    """List detectors and their latest version, as JSON lines."""
    services = build_services(_settings(data_dir))
    project_id = _project_id(services, project)
    try:
        for record in services.detectors.list(project_id):
            versions = services.detectors.versions(record.id)
            typer.echo(
                json.dumps(
                    {
                        "id": record.id,
                        "name": record.name,
                        "classes": record.classes,
                        "versions": len(versions),
                        "project": owner(record.project_id),
                    }
                )
            )
    finally:
        services.close()


images_app = typer.Typer(help="Look at and manage the image catalogue.", no_args_is_help=True)
app.add_typer(images_app, name="images")


@images_app.command("list")
def images_list(
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON lines.")] = False,
    project: ProjectFilter = None,
    data_dir: DataDir = None,
) -> None:
    """List images with their status."""
    services = build_services(_settings(data_dir))
    project_id = _project_id(services, project)
    try:
        records = services.images.list(project=project_id)
    finally:
        services.close()
    if as_json:
        for r in records:
            line = {"id": r.id, "name": r.name, "status": r.status, "project": owner(r.project_id)}
            typer.echo(json.dumps(line))
        return
    table = Table("id", "name", "status", "size", "gsd (m)", "project")
    for r in records:
        meta = r.meta or {}
        size = f"{meta['width']}x{meta['height']}" if "width" in meta else ""
        gsd = f"{r.gsd:.3f}" if r.gsd else ""
        table.add_row(r.id, r.name, r.status, size, gsd, owner(r.project_id))
    Console().print(table)


@images_app.command("delete")
def images_delete(image_id: str, data_dir: DataDir = None, blob_url: BlobUrl = None) -> None:
    """Delete an image and its COG."""
    services: Services = build_services(_settings(data_dir, blob_url))
    try:
        services.images.delete(image_id)
    except (NotFoundError, TileDetectError) as exc:
        console.print(f"[red]{exc}")
        raise typer.Exit(code=1) from exc
    finally:
        services.close()


projects_app = typer.Typer(
    help="Projects (workspaces): each image, detector, export and job belongs to one.",
    no_args_is_help=True,
)
app.add_typer(projects_app, name="projects")


@projects_app.command("create")
def projects_create(
    name: Annotated[str, typer.Argument(help="Project name (letters, digits, _ . -).")],
    data_dir: DataDir = None,
) -> None:
    """Create a project; then give it keys with `tiledetect keys create --project NAME`."""
    services = build_services(_settings(data_dir))
    try:
        record = services.projects.create(name)
    except TileDetectError as exc:
        console.print(f"[red]{exc}")
        raise typer.Exit(code=1) from exc
    finally:
        services.close()
    typer.echo(json.dumps({"id": record.id, "name": record.name}))


@projects_app.command("list")
def projects_list(data_dir: DataDir = None) -> None:
    """List projects, as JSON lines."""
    services = build_services(_settings(data_dir))
    try:
        for record in services.projects.list():
            keys = [k for k in services.keys.list(record.id) if k.revoked_at is None]
            line = {"id": record.id, "name": record.name, "active_keys": len(keys)}
            typer.echo(json.dumps(line))
    finally:
        services.close()


def _project_report(services: Services, record) -> dict:
    return {
        "id": record.id,
        "name": record.name,
        "limits": services.quotas.limits(record.id).as_dict(),
        "own_limits": services.quotas.overrides(record.id),
        "usage": services.quotas.usage(record.id).as_dict(),
    }


@projects_app.command("usage")
def projects_usage(
    project: Annotated[str, typer.Argument(help="Project name or id.")],
    data_dir: DataDir = None,
) -> None:
    """A project's usage (storage, jobs running, objects exported) and limits, as JSON.
    Limits are those of this command's settings (run it with the server's environment)."""
    services = build_services(_settings(data_dir))
    try:
        record = services.projects.resolve(project)
        typer.echo(json.dumps(_project_report(services, record)))
    except TileDetectError as exc:
        console.print(f"[red]{exc}")
        raise typer.Exit(code=1) from exc
    finally:
        services.close()


_LIMIT_HELP = "N, 'none' (no limit) or 'default' (the server's settings)"
_SIZE_HELP = "a size (500GB, 2TiB, 1e9), 'none' (no limit) or 'default' (the server's settings)"
_DEFAULT = object()  # the option asks for the server's setting again


@projects_app.command("limits")
def projects_limits(
    project: Annotated[str, typer.Argument(help="Project name or id.")],
    trainings: Annotated[
        str | None, typer.Option(help=f"Trainings at once: {_LIMIT_HELP}.", show_default=False)
    ] = None,
    exports: Annotated[
        str | None, typer.Option(help=f"Exports at once: {_LIMIT_HELP}.", show_default=False)
    ] = None,
    storage: Annotated[
        str | None, typer.Option(help=f"Bytes stored: {_SIZE_HELP}.", show_default=False)
    ] = None,
    upload: Annotated[
        str | None, typer.Option(help=f"Largest upload: {_SIZE_HELP}.", show_default=False)
    ] = None,
    rate: Annotated[
        str | None,
        typer.Option(help=f"Requests per minute per key: {_LIMIT_HELP}.", show_default=False),
    ] = None,
    reset: Annotated[
        bool, typer.Option(help="Drop all of the project's own limits first.")
    ] = False,
    data_dir: DataDir = None,
) -> None:
    """Set one project's own limits over the server's settings; prints them with its usage.
    A running server sees the change within TILEDETECT_AUTH_CACHE_SECONDS."""
    asked = {
        "trainings": (trainings, False),
        "exports": (exports, False),
        "storage_bytes": (storage, True),
        "upload_bytes": (upload, True),
        "requests_per_minute": (rate, False),
    }
    try:
        parsed = {
            name: _limit_value(text, size)
            for name, (text, size) in asked.items()
            if text is not None
        }
    except ValueError as exc:
        console.print(f"[red]{exc}")
        raise typer.Exit(code=2) from exc
    services = build_services(_settings(data_dir))
    try:
        record = services.projects.resolve(project)
        own = {} if reset else services.quotas.overrides(record.id)
        own |= {k: v for k, v in parsed.items() if v is not _DEFAULT}
        for name, value in parsed.items():
            if value is _DEFAULT:
                own.pop(name, None)
        services.quotas.set_limits(record.id, own, reset=True)
        typer.echo(json.dumps(_project_report(services, record)))
    except TileDetectError as exc:
        console.print(f"[red]{exc}")
        raise typer.Exit(code=1) from exc
    finally:
        services.close()


_UNITS = {
    "": 1,
    "b": 1,
    "kb": 1000,
    "mb": 1000**2,
    "gb": 1000**3,
    "tb": 1000**4,
    "kib": 1024,
    "mib": 1024**2,
    "gib": 1024**3,
    "tib": 1024**4,
}


def _limit_value(text: str, size: bool):
    """'none' -> None (no limit), 'default' -> _DEFAULT, else a whole number (sizes with a
    unit); ValueError naming what was wrong."""
    word = text.strip().lower()
    if word in ("none", "off", "unlimited"):
        return None
    if word == "default":
        return _DEFAULT
    number, unit = word, ""
    if size:
        digits = word.rstrip("abcdefghijklmnopqrstuvwxyz ")
        number, unit = digits, word[len(digits) :].strip()
    try:
        value = float(number) * _UNITS[unit]
    except (KeyError, ValueError):
        raise ValueError(
            f"{text!r} is not {'a size' if size else 'a whole number'}, 'none' or 'default'"
        ) from None
    if value < 0 or value != value or value == float("inf") or (not size and value % 1):
        raise ValueError(f"{text!r}: use a whole number of zero or more")
    return int(value)


keys_app = typer.Typer(
    help="API keys of projects (sent as 'Authorization: Bearer <token>' or '?token=').",
    no_args_is_help=True,
)
app.add_typer(keys_app, name="keys")


def _key_line(key, project_names: dict[str, str]) -> dict:
    return {
        "id": key.id,
        "project": project_names.get(key.project_id, key.project_id),
        "name": key.name,
        "prefix": key.prefix,
        "created_at": key.created_at.isoformat(),
        "revoked_at": key.revoked_at.isoformat() if key.revoked_at else None,
    }


@keys_app.command("create")
def keys_create(
    project: Annotated[str, typer.Option("--project", help="Project (name or id).")],
    name: Annotated[str, typer.Option(help="What the key is for, e.g. 'qgis-alice'.")] = "",
    data_dir: DataDir = None,
) -> None:
    """Create an API key: prints its token once on stdout (only a hash is stored)."""
    services = build_services(_settings(data_dir))
    project_id = _project_id(services, project)
    assert project_id is not None
    try:
        key, token = services.keys.create(project_id, name)
        names = {p.id: p.name for p in services.projects.list()}
    finally:
        services.close()
    console.print(
        f"key {key.id} ({key.prefix}...) of project {names[project_id]}; the token below is "
        "shown only now:"
    )
    typer.echo(token)


@keys_app.command("list")
def keys_list(project: ProjectFilter = None, data_dir: DataDir = None) -> None:
    """List keys (id, project, name, token prefix, revoked), as JSON lines; never the tokens."""
    services = build_services(_settings(data_dir))
    project_id = _project_id(services, project)
    try:
        names = {p.id: p.name for p in services.projects.list()}
        for key in services.keys.list(project_id):
            typer.echo(json.dumps(_key_line(key, names)))
    finally:
        services.close()


@keys_app.command("revoke")
def keys_revoke(
    key_id: Annotated[str, typer.Argument(help="Key id (from `keys list`).")],
    data_dir: DataDir = None,
) -> None:
    """Revoke a key: servers refuse it within TILEDETECT_AUTH_CACHE_SECONDS (5 s)."""
    services = build_services(_settings(data_dir))
    try:
        key = services.keys.revoke(key_id)
        names = {p.id: p.name for p in services.projects.list()}
    except NotFoundError as exc:
        console.print(f"[red]{exc}")
        raise typer.Exit(code=1) from exc
    finally:
        services.close()
    typer.echo(json.dumps(_key_line(key, names)))


@app.command()
def train(
    image: Annotated[
        Path, typer.Argument(help="GeoTIFF the annotations are drawn on.", exists=True)
    ],
    annotations: Annotated[
        Path,
        typer.Option(
            "--annotations",
            help="GeoJSON (WGS84): training/testing/accuracy areas and labels with a class.",
            exists=True,
        ),
    ],
    out: Annotated[Path, typer.Option("--out", help="Folder for model.onnx and report.json.")],
    seconds: Annotated[
        float | None, typer.Option(help="Training budget (default: suits the hardware).")
    ] = None,
    steps: Annotated[int | None, typer.Option(help="Train exactly this many steps.")] = None,
    classes: Annotated[
        str | None, typer.Option(help="Comma-separated classes (default: those labelled).")
    ] = None,
    name: Annotated[str | None, typer.Option(help="Detector name.")] = None,
) -> None:
    """Train a detector from annotations on one image; writes OUT/model.onnx and OUT/report.json."""
    from export.run import image_meta
    from trainer.annotations import AnnotationError, parse_annotations
    from trainer.data import ImageSource
    from trainer.train import TrainingRequest, default_seconds, train_detector

    try:
        collection = json.loads(annotations.read_text())
        meta = image_meta(image)
        names = _classes_of(collection, classes)
        parsed = parse_annotations(
            collection,
            classes=names,
            image_crs_wkt=meta["crs_wkt"],
            image_bounds=tuple(meta["bounds"]),
        )
    except (AnnotationError, ValueError, TileDetectError) as exc:
        console.print(f"[red]{exc}")
        raise typer.Exit(code=1) from exc
    for warning in parsed.warnings:
        console.print(f"[yellow]warning: {warning.message}")
    request = TrainingRequest(
        name=name or image.stem,
        class_names=tuple(names),
        images={"image": ImageSource("image", str(image.resolve()), meta)},
        annotations={"image": parsed},
        seconds=seconds,
        steps=steps,
    )
    budget = seconds or default_seconds()
    with _progress_bar() as bar:
        task = bar.add_task(f"training on {len(parsed.labels)} labels", total=1.0)

        def show(state) -> None:
            bar.update(
                task,
                completed=state.fraction,
                description=f"step {state.step} · loss {state.loss:.3f}",
            )

        report = train_detector(request, out, progress=show)
    summary = {k: v for k, v in report.items() if k not in ("loss_curve",)}
    summary["budget_seconds"] = None if steps else budget
    typer.echo(json.dumps(summary))


def _classes_of(collection: dict, given: str | None) -> list[str]:
    if given:
        return [c.strip() for c in given.split(",") if c.strip()]
    found = []
    for feature in collection.get("features", []) if isinstance(collection, dict) else []:
        props = feature.get("properties") if isinstance(feature, dict) else None
        if isinstance(props, dict) and props.get("role", "label") in ("label", None):
            cls = props.get("class")
            if isinstance(cls, str) and cls not in found:
                found.append(cls)
    if not found:
        raise ValueError("no labelled class found; give --classes")
    return found


@app.command()
def detect(
    model: Annotated[Path, typer.Argument(help="Detector ONNX file.", exists=True, dir_okay=False)],
    image: Annotated[Path, typer.Argument(help="GeoTIFF (or COG) to sweep.", exists=True)],
    out: Annotated[
        Path, typer.Option("--out", help="Result: .geojson (WGS84), .gpkg, .fgb or .parquet.")
    ],
    aoi: Annotated[
        Path | None,
        typer.Option(
            "--aoi", help="GeoJSON polygon(s) in WGS84 to limit the sweep to.", exists=True
        ),
    ] = None,
    scheduler: Annotated[
        str | None,
        typer.Option(
            "--scheduler",
            help="tcp://host:port of a Dask scheduler (default: $TILEDETECT_DASK_SCHEDULER, "
            "else an in-process cluster). Workers must see MODEL, IMAGE and OUT's folder.",
        ),
    ] = None,
    crs: Annotated[
        str | None, typer.Option(help="Output CRS for gpkg/fgb/parquet (default: the image's).")
    ] = None,
    cell_px: Annotated[int, typer.Option(help="Cell size in native pixels.")] = 2048,
) -> None:
    """Find every object in IMAGE with MODEL, cell by cell on Dask, and write them to OUT.

    Cells finished by an interrupted run of the same command are kept and skipped.
    """
    from export.cli_run import run_detect_command
    from export.run import ExportFailedError

    settings = Settings()
    try:
        summary = run_detect_command(
            model,
            image,
            out,
            aoi_path=aoi,
            scheduler=scheduler or settings.dask_scheduler,
            crs=crs,
            cell_px=cell_px,
            progress_bar=_progress_bar,
        )
    except (TileDetectError, ValueError, ExportFailedError) as exc:
        console.print(f"[red]{exc}")
        raise typer.Exit(code=1) from exc
    typer.echo(json.dumps(summary))
    if summary["state"] != "done":
        raise typer.Exit(code=2)


experiments_app = typer.Typer(
    help="Evaluate the training methodology on a suite of datasets.", no_args_is_help=True
)
app.add_typer(experiments_app, name="experiments")


@experiments_app.command("run")
def experiments_run(
    suite: Annotated[
        str, typer.Option(help="default, synthetic, real, neon, all, quick, or one dataset's name.")
    ] = "default",
    seconds: Annotated[
        float | None, typer.Option(help="Training budget per run (default: the trainer's).")
    ] = None,
    labels: Annotated[
        str | None, typer.Option(help="Comma-separated label counts, e.g. 20,50,100.")
    ] = None,
    out: Annotated[Path, typer.Option(help="Where result JSON files go.")] = Path(
        "experiments/results"
    ),
    steps: Annotated[
        int | None, typer.Option(help="Train exactly this many steps instead of a budget.")
    ] = None,
    setting: Annotated[
        list[str] | None,
        typer.Option("--set", help="Override a training setting, e.g. --set gap_radius=1."),
    ] = None,
    seeds: Annotated[
        str, typer.Option(help="Comma-separated seeds; each dataset and fold trains with each.")
    ] = "0,1,2",
    folds: Annotated[
        int | None, typer.Option(help="At most this many folds per dataset (real images: 2).")
    ] = None,
) -> None:
    """Train and score the current methodology on every dataset of a suite, in every fold and
    with every seed; print each run (with the change since the last run) and the mean and
    spread, and save them as JSON."""
    from trainer.experiments import run_from_cli

    counts = [int(n) for n in labels.split(",")] if labels else None
    seed_list = [int(n) for n in seeds.split(",")]
    code = run_from_cli(suite, seconds, counts, out, steps, setting or (), seed_list, folds)
    raise typer.Exit(code=code)


def main() -> None:
    app()
