"""The launcher's errors in roadsense's taxonomy, and the one place the CLI turns them into an exit.

UserError (exit 2): input the user can fix; RunFailed (exit 1): valid input, but the run or an AWS
service failed. The app catches RoadsenseError once (a botocore error is translated first) and
prints one line on stderr; anything else is a bug and keeps its traceback.
"""

from __future__ import annotations

from pathlib import Path

import botocore.exceptions
import pytest
from typer.testing import CliRunner

from launcher import aws, runs
from launcher.cli import app
from launcher.codebuild import BuildError
from launcher.fetch import ArchiveError, DestinationError, RunNotFoundError
from launcher.jobs import JobFailed
from launcher.layout import RunIdError
from launcher.remote import RemoteDataError
from launcher.request import RequestError
from launcher.settings import SettingsError
from roadsense.config import ConfigError
from roadsense.errors import RoadsenseError, RunFailed, UserError
from roadsense.scenarios.dataset import DatasetError


@pytest.mark.parametrize(
    ("error", "kind"),
    [
        (aws.LaunchError, UserError),
        (RunIdError, UserError),
        (RemoteDataError, UserError),
        (ArchiveError, UserError),
        (DestinationError, UserError),
        (RunNotFoundError, UserError),
        (SettingsError, UserError),
        (RequestError, UserError),
        (ConfigError, UserError),
        (DatasetError, UserError),
        (aws.AwsError, RunFailed),
        (BuildError, RunFailed),
        (JobFailed, RunFailed),
    ],
)
def test_every_launcher_error_is_a_user_error_or_a_failed_run(
    error: type[RoadsenseError], kind: type[RoadsenseError]
) -> None:
    assert issubclass(error, kind) and error.exit_code == (2 if kind is UserError else 1)


@pytest.mark.parametrize("error", [RunIdError, RemoteDataError, DestinationError, SettingsError, RequestError])
def test_builtin_bases_stay_for_callers_that_catch_them(error: type[Exception]) -> None:
    assert issubclass(error, ValueError)


def test_botocore_errors_become_aws_errors_or_a_fix_for_a_profile() -> None:
    refused = botocore.exceptions.ClientError(
        {"Error": {"Code": "AccessDeniedException", "Message": "no."}}, "CreateChangeSet"
    )
    assert isinstance(aws.translate(refused), aws.AwsError) and str(aws.translate(refused)).startswith(
        "AWS denied access: no. Fix:"
    )
    assert isinstance(aws.translate(botocore.exceptions.EndpointConnectionError(endpoint_url="http://x")), aws.AwsError)
    assert isinstance(aws.translate(botocore.exceptions.ProfileNotFound(profile="p")), aws.LaunchError)
    mine = RunNotFoundError("gone")
    assert aws.translate(mine) is mine
    with pytest.raises(KeyError):  # not AWS's, not expected: re-raised as the bug it is
        aws.translate(KeyError("bug"))


@pytest.fixture
def local_app(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> list[str]:
    """Arguments that make the app read a local runs folder and no AWS."""
    monkeypatch.setattr(aws, "with_stack_defaults", lambda settings: settings)
    return ["--local", "--runs-dir", str(tmp_path)]


@pytest.mark.parametrize(
    ("raised", "code", "line"),
    [
        (RunNotFoundError("run 'x' has no launch record"), 2, "error: run 'x' has no launch record\n"),
        (aws.LaunchError("a problem", "the fix"), 2, "error: a problem. Fix: the fix\n"),
        (JobFailed("job-1 Failed: boom"), 1, "error: job-1 Failed: boom\n"),
        (
            botocore.exceptions.ClientError(
                {"Error": {"Code": "ThrottlingException", "Message": "slow down"}}, "ListObjectsV2"
            ),
            1,
            "error: AWS is throttling requests. Fix: wait a minute and retry\n",
        ),
    ],
)
def test_the_app_prints_one_line_and_exits_with_the_errors_code(
    local_app: list[str], monkeypatch: pytest.MonkeyPatch, raised: Exception, code: int, line: str
) -> None:
    def fail(store: object) -> None:
        raise raised

    monkeypatch.setattr(runs, "list_runs", fail)
    result = CliRunner().invoke(app, [*local_app, "list"])
    assert (result.exit_code, result.stderr) == (code, line)


def test_a_bug_keeps_its_traceback(local_app: list[str], monkeypatch: pytest.MonkeyPatch) -> None:
    def fail(store: object) -> None:
        raise ZeroDivisionError("a bug")

    monkeypatch.setattr(runs, "list_runs", fail)
    result = CliRunner().invoke(app, [*local_app, "list"])
    assert isinstance(result.exception, ZeroDivisionError) and "error:" not in result.stderr


def test_a_bad_run_id_is_refused_while_the_command_line_is_parsed(local_app: list[str]) -> None:
    result = CliRunner().invoke(app, [*local_app, "status", "a/b"])
    assert (
        result.exit_code == 2
        and result.stderr.startswith("error: run id 'a/b': use 1-40 letters")
        and result.stderr.count("\n") == 1
    )
