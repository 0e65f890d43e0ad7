"""Custom detectors: create, annotate, train; each training publishes a version."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Body, Depends
from starlette.concurrency import run_in_threadpool

from catalog.errors import DetectorNotFoundError
from server.auth import Project
from server.blob_responses import blob_response
from server.dependencies import get_services
from server.routers.detections import _describe
from server.schemas import (
    DetectorCreate,
    DetectorOut,
    DetectorVersionOut,
    JobOut,
    PrefillRequest,
    TrainRequest,
)
from server.services import Services

router = APIRouter(prefix="/api/detectors", tags=["training"])

ATTACHMENTS = {
    "report.json": "application/json",
    "predictions.geojson": "application/geo+json",
    "suggestions.geojson": "application/geo+json",  # where to label next (trainer.suggestions)
}


@router.post("", status_code=201, response_model=DetectorOut, summary="Create a detector")
def create_detector(
    body: DetectorCreate, services: Annotated[Services, Depends(get_services)], project: Project
) -> DetectorOut:
    record = services.training.create_detector(body.name, body.classes, body.colors, project)
    return _describe(services, record.id)


@router.get("/{detector_id}/annotations", summary="The detector's annotations (GeoJSON)")
def get_annotations(
    detector_id: str, services: Annotated[Services, Depends(get_services)], project: Project
) -> dict[str, Any]:
    return services.training.get_annotations(detector_id, project)


@router.put(
    "/{detector_id}/annotations",
    summary="Replace the annotations: areas (training/testing/accuracy) and labels, WGS84",
    description=(
        "What cannot be understood (broken geometry, unknown class, another image, overlapping "
        "training and accuracy areas) is refused with 422 naming the feature, and nothing is "
        "stored. Labels that will not be used whole are stored and listed in `warnings`, each "
        "naming its feature and what will be done with it: straddling a training area's edge "
        "(the part outside is ignored), in a testing area, or in no area (kept, unused)."
    ),
)
async def put_annotations(
    detector_id: str,
    services: Annotated[Services, Depends(get_services)],
    project: Project,
    collection: Annotated[Any, Body(description="A GeoJSON FeatureCollection.")],
) -> dict[str, Any]:
    return await run_in_threadpool(
        services.training.put_annotations, detector_id, collection, project
    )


@router.post(
    "/{detector_id}/images/{image_id}/prefill",
    summary="A version's detections in an area, as labels to correct (GeoJSON)",
    description=(
        "Predictions become labels: the objects a version finds in `area` (e.g. a new training "
        'area), as label features with `class`, `shape` ("box" for box detectors), `score` '
        "and `prefilled_from` (the version). Nothing is stored: the client adds them to the "
        "annotations, the user corrects them, and PUT annotations saves them as ordinary labels "
        "(its response counts the `prefilled` ones). At most 4096 px a side at the detector's "
        "resolution; 404 before the first version."
    ),
)
async def prefill(
    detector_id: str,
    image_id: str,
    body: PrefillRequest,
    services: Annotated[Services, Depends(get_services)],
    project: Project,
) -> dict[str, Any]:
    return await run_in_threadpool(
        services.training.prefill, detector_id, image_id, body.area, body.version, project
    )


@router.post(
    "/{detector_id}/train",
    status_code=202,
    response_model=JobOut,
    summary="Train a new version from the annotations (a job: GET /api/jobs/{id})",
)
async def train(
    detector_id: str,
    services: Annotated[Services, Depends(get_services)],
    project: Project,
    body: TrainRequest | None = None,
) -> JobOut:
    body = body or TrainRequest()
    job = await run_in_threadpool(
        services.training.start, detector_id, body.seconds, body.steps, project
    )
    return JobOut.of(job)


@router.get(
    "/{detector_id}/versions",
    response_model=list[DetectorVersionOut],
    summary="Versions with their accuracy metrics",
)
def versions(
    detector_id: str, services: Annotated[Services, Depends(get_services)], project: Project
) -> list[DetectorVersionOut]:
    services.detectors.get(detector_id, project)
    return [
        DetectorVersionOut.model_validate(v, from_attributes=True)
        for v in services.detectors.versions(detector_id)
    ]


@router.get("/{detector_id}/versions/{number}/model.onnx", summary="A version's ONNX file")
def version_model(
    detector_id: str,
    number: int,
    services: Annotated[Services, Depends(get_services)],
    project: Project,
):
    version = services.detectors.version(detector_id, number, project)
    return blob_response(
        services.detectors.blobs,
        version.onnx_key,
        "application/octet-stream",
        f"{detector_id}-v{number}.onnx",
    )


@router.get(
    "/{detector_id}/versions/{number}/{name}",
    summary="A trained version's report.json, predictions.geojson (testing/accuracy areas) or "
    "suggestions.geojson (where to label next, ranked, each with its reason)",
)
def version_attachment(
    detector_id: str,
    number: int,
    name: str,
    services: Annotated[Services, Depends(get_services)],
    project: Project,
):
    if name not in ATTACHMENTS:
        raise DetectorNotFoundError(f"versions have no file {name!r}")
    version = services.detectors.version(detector_id, number, project)
    key = services.detectors.attachment_key(detector_id, version.id, name)
    if not services.detectors.blobs.exists(key):
        raise DetectorNotFoundError(f"version {number} has no {name} (it was imported)")
    return blob_response(services.detectors.blobs, key, ATTACHMENTS[name])
