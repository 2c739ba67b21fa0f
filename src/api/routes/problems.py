"""`GET /problems/{slug}`: what each `type` URI of a problem document stands for."""

from __future__ import annotations

from fastapi import APIRouter

from src.api import errors, openapi
from src.api.errors import ApiError, shown
from src.api.models import ProblemKind

router = APIRouter(prefix="/problems", tags=["problems"])


@router.get("", operation_id="listProblemKinds", summary="Every kind of problem the API answers")
async def list_problem_kinds() -> list[ProblemKind]:
    return [ProblemKind(type=k.type, title=k.title, status=k.status) for k in errors.KINDS.values()]


@router.get(
    "/{slug}",
    operation_id="getProblemKind",
    summary="One kind of problem, by the last part of its `type` URI",
    responses=openapi.problems(errors.NOT_FOUND, common=False),
)
async def get_problem_kind(slug: str) -> ProblemKind:
    kind = errors.KINDS.get(slug)
    if kind is None:
        raise ApiError(errors.NOT_FOUND, f"no problem kind {shown(slug)!r}")
    return ProblemKind(type=kind.type, title=kind.title, status=kind.status)
