"""Serving logic of the variants API: deployed variant configs and generator states in, the
catalog the studio, the CLI and OpenAI clients read out (so none of them hard-codes a variant)."""

from __future__ import annotations

from deployments.replica_status import GeneratorStatus
from model_store.adapters import list_adapters
from model_store.variants import VariantConfig
from serve_app.generate.serving import JobService, output_formats
from serve_app.variants.protocol import (
    AdapterSummary,
    ImageSizeRule,
    ModelCard,
    ModelList,
    UploadFields,
    VariantInfo,
    VariantList,
    VariantReadiness,
)

#: ``owned_by`` of every /v1/models entry.
OWNER = "wan-serve"


def _uploads(variant: VariantConfig) -> UploadFields:
    u = variant.uploads
    return UploadFields(required=list(u.required), optional=list(u.optional), repeatable=list(u.repeatable))


def _readiness(status: GeneratorStatus | None) -> VariantReadiness:
    if status is None:
        return VariantReadiness(ready=False, running_replicas=0, reason="its generator state is unknown")
    return VariantReadiness(ready=status.ready, running_replicas=status.running_replicas, reason=status.reason)


class VariantsService:
    """Describes the deployed variants.

    Args:
        jobs: the ingress's job service (its ``variants``, ``default_variant`` and model ``store``).
        deployed_at: unix seconds when this ingress started: OpenAI's ``created`` of each model.
    """

    def __init__(self, jobs: JobService, deployed_at: float) -> None:
        self.jobs = jobs
        self.deployed_at = int(deployed_at)

    def catalog(self, statuses: dict[str, GeneratorStatus], load: dict[str, dict[str, int]]) -> VariantList:
        """Every deployed variant with its limits, defaults, uploads, adapters, readiness and
        ``load`` (the router's queued and running jobs per variant). Reads the model store's
        adapter folders (blocking file reads)."""
        adapters = list_adapters(self.jobs.store)
        infos = []
        for v in self.jobs.variants.values():
            infos.append(
                VariantInfo(
                    name=v.name,
                    description=v.description,
                    task=v.task,
                    output=v.output_kind,
                    pipeline_class=v.pipeline_class,
                    twin_of=v.twin_of,
                    experts=2 if v.boundary_ratio is not None else 1,
                    sizes=list(v.native_sizes),
                    image_sizes=ImageSizeRule(
                        multiple_of=v.image_sizing.multiple_of,
                        min_side=v.limits.min_image_side,
                        max_side=v.limits.max_image_side,
                        default_area=v.image_sizing.default_area,
                    )
                    if v.image_sizing
                    else None,
                    fps=v.fps,
                    frame_rule=v.frame_rule,
                    max_num_frames=v.limits.max_num_frames,
                    max_seconds=round(v.limits.max_num_frames / v.fps, 3),
                    max_inference_steps=v.limits.max_inference_steps,
                    min_inference_steps=v.limits.min_inference_steps,
                    max_upload_bytes=v.limits.max_upload_bytes,
                    max_reference_images=v.limits.max_reference_images,
                    max_edit_images=v.limits.max_edit_images if v.task == "image_edit" else None,
                    defaults=v.defaults,
                    uploads=_uploads(v),
                    output_formats=output_formats(v),
                    speed_profiles={name: p.description for name, p in v.speed.profiles.items()},
                    default_speed=v.speed.default,
                    loras=[AdapterSummary(name=a.name, experts=a.experts) for a in adapters if a.base == v.name],
                    readiness=_readiness(statuses.get(v.name)),
                    queued=load.get(v.name, {}).get("queued", 0),
                    running=load.get(v.name, {}).get("running", 0),
                )
            )
        return VariantList(default_variant=self.jobs.default_variant, variants=infos)

    def models(self, statuses: dict[str, GeneratorStatus]) -> ModelList:
        """The deployed variants as OpenAI's model list."""
        return ModelList(
            data=[
                ModelCard(
                    id=v.name,
                    created=self.deployed_at,
                    owned_by=OWNER,
                    task=v.task,
                    description=v.description,
                    inputs=_uploads(v),
                    ready=_readiness(statuses.get(v.name)).ready,
                )
                for v in self.jobs.variants.values()
            ]
        )
