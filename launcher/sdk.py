"""The launcher's training job as a sagemaker SDK ``ModelTrainer`` (the optional ``[sdk]`` extra).

For notebooks and pipelines built on the SDK::

    from launcher.sdk import model_trainer
    trainer = model_trainer("cloud_prod_001", preset="production", spot=True)
    trainer.train(wait=False)

:func:`model_trainer` runs what ``roadsense-launch --run-id ...`` runs before it creates a job
(:func:`launcher.launch.plan_cloud`: the dataset check, pre-flight and validated request;
:func:`launcher.launch.prepare_cloud`: the run id's prefix, the image, the dataset upload) and
translates the resulting CreateTrainingJob request, field by field, into the SDK's objects: the
SDK then sends the same request (tests/test_sdk.py compares the two). Only
the job name differs: the SDK names each job ``<run-id with dashes>-<YYYYmmddHHMMSS>`` itself.

The SDK is large (about 1 GB with mlflow, pandas and pyarrow) and slow to import, so it is
imported here only, when this function is called, and never by the CLI or the training image.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any, Sequence

from launcher import aws
from launcher.launch import LaunchOptions, plan_cloud, prepare_cloud
from launcher.layout import validate_run_id
from launcher.settings import LaunchSettings, load_settings

if TYPE_CHECKING:
    from mypy_boto3_sagemaker.type_defs import CreateTrainingJobRequestTypeDef
    from sagemaker.train import ModelTrainer

SDK_MISSING_FIX = "pip install 'roadsense[sdk]' (or: pip install -e '.[sdk]' in a checkout)"


def model_trainer(
    run_id: str,
    *,
    preset: str = "production",
    sets: Sequence[str] = (),
    dataset: Path | None = None,
    spot: bool = False,
    resume: bool = False,
    force: bool = False,
    network_isolation: bool = True,
    settings: LaunchSettings | None = None,
    sagemaker_session: Any = None,
) -> "ModelTrainer":
    """A configured ``ModelTrainer`` for the run ``run_id``: call ``.train()`` on it to create the job.

    The arguments are the launch flags of the same names (``sets`` are ``--set key=value``
    strings); ``settings`` default to what ``roadsense-launch`` reads (flags aside: the
    environment, ``roadsense-launch.toml``, the infra stack). ``sagemaker_session`` defaults to
    one on the launcher's boto3 session. Every failure is a :class:`roadsense.errors.RoadsenseError`:
    a :class:`launcher.aws.LaunchError` with the fix when the SDK is not installed or a setting is
    wrong, the launcher's own errors for a bad config or request, an :class:`launcher.aws.AwsError`
    when AWS refuses.
    """
    require_sdk()  # before any AWS call: a missing extra is the first thing to fix
    settings = settings or aws.with_stack_defaults(load_settings())
    options = LaunchOptions(
        run_id=validate_run_id(run_id),
        preset=preset,
        sets=tuple(sets),
        dataset=dataset,
        spot=spot,
        resume=resume,
        force=force,
        network_isolation=network_isolation,
    )
    session = aws.make_session(settings)
    try:
        planned = plan_cloud(options, settings, session)
        prepare_cloud(planned, options, settings, session)
    except Exception as exc:  # noqa: BLE001 - translate() re-raises what it does not know
        raise aws.translate(exc) from None
    if sagemaker_session is None:
        from sagemaker.core.helper.session_helper import Session

        sagemaker_session = Session(boto_session=session)
    return trainer_for_request(planned.request, sagemaker_session)


def require_sdk() -> None:
    """Raise a LaunchError saying how to install the ``[sdk]`` extra if the sagemaker SDK is missing."""
    try:
        import sagemaker.train  # noqa: F401 - only whether it imports
    except ImportError as exc:
        raise aws.LaunchError(f"the sagemaker SDK is not installed ({exc.name or exc})", SDK_MISSING_FIX) from None


def trainer_for_request(request: CreateTrainingJobRequestTypeDef, sagemaker_session: Any) -> "ModelTrainer":
    """``request`` (a validated CreateTrainingJob request, :func:`launcher.request.build_request`) as a ModelTrainer.

    Every field of the request is carried over; none is made up here. The job name becomes the
    trainer's base name (the run id's part), since the SDK names every job it creates.
    """
    require_sdk()
    # The shapes, not training.configs' subclasses: those add defaults (CompressionType GZIP) the launcher does not
    # send.
    from sagemaker.core.shapes import CheckpointConfig, OutputDataConfig
    from sagemaker.core.training.configs import (
        Channel,
        Compute,
        DataSource,
        MetricDefinition,
        Networking,
        S3DataSource,
        StoppingCondition,
        Tag,
    )
    from sagemaker.train import ModelTrainer

    algorithm, resources, stopping = (
        request["AlgorithmSpecification"],
        request["ResourceConfig"],
        request["StoppingCondition"],
    )
    channels = [
        Channel(
            channel_name=channel["ChannelName"],
            input_mode=channel["InputMode"],
            data_source=DataSource(
                s3_data_source=S3DataSource(
                    s3_data_type=channel["DataSource"]["S3DataSource"]["S3DataType"],
                    s3_uri=channel["DataSource"]["S3DataSource"]["S3Uri"],
                    s3_data_distribution_type=channel["DataSource"]["S3DataSource"]["S3DataDistributionType"],
                )
            ),
        )
        for channel in request.get("InputDataConfig", [])
    ]
    trainer = ModelTrainer(
        sagemaker_session=sagemaker_session,
        role=request["RoleArn"],
        base_job_name=request["Environment"]["ROADSENSE_RUN_ID"].replace("_", "-"),
        training_image=algorithm["TrainingImage"],
        training_input_mode=algorithm["TrainingInputMode"],
        compute=Compute(
            instance_type=resources["InstanceType"],
            instance_count=resources["InstanceCount"],
            volume_size_in_gb=resources["VolumeSizeInGB"],
            enable_managed_spot_training=request["EnableManagedSpotTraining"],
        ),
        stopping_condition=StoppingCondition(
            max_runtime_in_seconds=stopping["MaxRuntimeInSeconds"],
            max_wait_time_in_seconds=stopping.get("MaxWaitTimeInSeconds"),
        ),
        networking=Networking(enable_network_isolation=request["EnableNetworkIsolation"]),
        output_data_config=OutputDataConfig(s3_output_path=request["OutputDataConfig"]["S3OutputPath"]),
        checkpoint_config=CheckpointConfig(
            s3_uri=request["CheckpointConfig"]["S3Uri"], local_path=request["CheckpointConfig"]["LocalPath"]
        ),
        environment=dict(request["Environment"]),
        hyperparameters=dict(request["HyperParameters"]),  # strings, which the SDK's safe_serialize sends as they are
        tags=[Tag(key=tag["Key"], value=tag["Value"]) for tag in request["Tags"]],
        input_data_config=channels or None,
    )
    return trainer.with_metric_definitions(
        [MetricDefinition(name=m["Name"], regex=m["Regex"]) for m in algorithm["MetricDefinitions"]]
    )
