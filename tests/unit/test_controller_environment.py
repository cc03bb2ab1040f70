"""The environment check, rule by rule: each rule's blocking side and its passing side."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

from controller.environment import (
    ArtifactEnvironment,
    EnvironmentPolicy,
    EnvironmentVerdict,
    ServingEnvironment,
    check_environment,
    is_pickled,
)
from controller.environment_policy import POLICY_VALUES, policy_value

ENV = ServingEnvironment(
    python_version="3.11.9",
    distributions={
        "pandas": "3.1.1",
        "numpy": "2.4.6",
        "scikit-learn": "1.6.1",
        "torch": "2.13.0+cpu",
        "ray": "2.60.0",
        "mlflow-skinny": "3.17.2",
        "tzdata": "2026.1",
        "rc-lib": "2.0.0rc1",
    },
)


def check(
    *requirements: str,
    python: str | None = None,
    pickled: bool = False,
    policy: EnvironmentPolicy = EnvironmentPolicy.SHARED,
    env: ServingEnvironment = ENV,
) -> EnvironmentVerdict:
    artifact = ArtifactEnvironment(
        requirements=list(requirements), python_version=python, pickled=pickled
    )
    return check_environment(artifact, env, policy)


MISSING = (
    " is not installed in the serving environment, and the environment policy 'shared' serves "
    "a version in the serving environment only (under 'isolate' it would get an environment "
    "of its own)"
)


def test_missing_package_blocks() -> None:
    verdict = check("foo==1.2.3")
    assert verdict.blocking == [f"requirement 'foo==1.2.3': package 'foo'{MISSING}"]
    assert verdict.warnings == []


def test_names_compare_canonicalized() -> None:
    assert check("Scikit_Learn==1.6.1", "NumPy>=2") == EnvironmentVerdict([], [])


ANOTHER_MAJOR = (
    ", another major version: not a reason to quarantine it by itself; a load that fails on "
    "serving quarantines it with the cause"
)


def test_another_major_version_only_warns() -> None:
    # What an MLflow 2 client logged (issue 17): such a model often loads and predicts right
    # under MLflow 3 and pandas 3; whether it does is for the load on serving to find out.
    verdict = check("mlflow==2.22.0", "pandas==2.2.3")
    assert verdict.blocking == []
    assert verdict.warnings == [
        "requirement 'mlflow==2.22.0': this version was logged with mlflow ==2.22.0; the "
        f"serving environment has 3.17.2{ANOTHER_MAJOR}",
        "requirement 'pandas==2.2.3': this version was logged with pandas ==2.2.3; the "
        f"serving environment has 3.1.1{ANOTHER_MAJOR}",
    ]


@pytest.mark.parametrize(
    "requirement",
    ["numpy<2", "numpy<2.0.0", "numpy>=3", "numpy~=1.26", "numpy==1.*", "numpy!=2.*"],
)
def test_a_bound_that_excludes_the_whole_installed_major_only_warns(requirement: str) -> None:
    verdict = check(requirement)
    assert verdict.blocking == []
    assert len(verdict.warnings) == 1
    assert "numpy" in verdict.warnings[0]
    assert verdict.warnings[0].endswith(f"the serving environment has 2.4.6{ANOTHER_MAJOR}")


def test_same_major_not_satisfied_warns() -> None:
    verdict = check("scikit-learn==1.5.0")
    assert verdict.blocking == []
    assert verdict.warnings == [
        "requirement 'scikit-learn==1.5.0': this version was logged with scikit-learn "
        "==1.5.0; the serving environment has 1.6.1"
    ]


@pytest.mark.parametrize(
    "requirement",
    [
        "numpy<=2.0",
        "numpy>=2.5",
        "numpy>2.4.6,<2.4.7",
        "numpy!=2.4.6",
        "numpy>=1.0,<2.4",
        "numpy~=2.5.0",
        "numpy===2.4",
    ],
)
def test_a_bound_within_the_installed_major_only_warns(requirement: str) -> None:
    verdict = check(requirement)
    assert verdict.blocking == []
    assert len(verdict.warnings) == 1
    assert verdict.warnings[0].endswith("the serving environment has 2.4.6")


@pytest.mark.parametrize(
    "requirement",
    ["pandas==3.1.1", "pandas>=2.2", "pandas", "numpy>=1.26,<3", "tzdata>=2025.2", "rc-lib>=1.5"],
)
def test_satisfied_requirements_say_nothing(requirement: str) -> None:
    assert check(requirement) == EnvironmentVerdict([], [])


def test_local_version_label_satisfies_the_public_version() -> None:
    assert check("torch==2.13.0") == EnvironmentVerdict([], [])
    assert check("torch>=2.13,<2.14") == EnvironmentVerdict([], [])


def test_extras_check_the_base_distribution() -> None:
    assert check("ray[serve]==2.60.0") == EnvironmentVerdict([], [])
    verdict = check("ray[serve]==3.0.0")
    assert verdict.warnings == [
        "requirement 'ray[serve]==3.0.0': this version was logged with ray ==3.0.0; the "
        f"serving environment has 2.60.0{ANOTHER_MAJOR}"
    ]
    assert check("absent[extra]==1.0").blocking == [
        f"requirement 'absent[extra]==1.0': package 'absent'{MISSING}"
    ]


def test_mlflow_is_satisfied_by_mlflow_skinny() -> None:
    assert check("mlflow==3.17.2") == EnvironmentVerdict([], [])
    assert check("mlflow-skinny==3.17.2") == EnvironmentVerdict([], [])
    assert check("mlflow==3.16.0").warnings == [
        "requirement 'mlflow==3.16.0': this version was logged with mlflow ==3.16.0; the "
        "serving environment has 3.17.2"
    ]


def test_mlflow_prefers_the_full_package_when_both_are_installed() -> None:
    env = ServingEnvironment("3.11.9", {"mlflow": "3.17.2", "mlflow-skinny": "3.17.0"})
    assert check("mlflow==3.17.2", env=env) == EnvironmentVerdict([], [])


def test_mlflow_missing_entirely_blocks() -> None:
    env = ServingEnvironment("3.11.9", {"pandas": "3.1.1"})
    assert check("mlflow==3.17.2", env=env).blocking == [
        f"requirement 'mlflow==3.17.2': package 'mlflow'{MISSING}"
    ]


def test_markers_are_evaluated_for_the_serving_python() -> None:
    skipped = 'foo==1.0; python_version < "3.11"'
    applies = 'foo==1.0; python_version >= "3.11"'
    full = 'foo==1.0; python_full_version == "3.11.9"'
    assert check(skipped) == EnvironmentVerdict([], [])
    assert len(check(applies).blocking) == 1
    assert len(check(full).blocking) == 1
    # The same artifact checked against a 3.10 serving environment: the other way round.
    old = ServingEnvironment("3.10.14", {})
    assert len(check(skipped, env=old).blocking) == 1
    assert check(applies, env=old) == EnvironmentVerdict([], [])


def test_blank_lines_comments_and_continuations_are_prepared_as_pip_does() -> None:
    verdict = check("", "# a comment", "pandas==3.1.1  # inline", "scikit-learn\\", "==1.6.1")
    assert verdict == EnvironmentVerdict([], [])


@pytest.mark.parametrize(
    "line",
    [
        "-r other-requirements.txt",
        "-c constraints.txt",
        "--index-url https://example.invalid/simple",
        "--extra-index-url https://example.invalid/simple",
        "-e git+https://example.invalid/repo.git#egg=thing",
    ],
)
def test_pip_options_are_warnings_naming_the_line(line: str) -> None:
    verdict = check(line)
    assert verdict.blocking == []
    assert verdict.warnings == [
        f"requirement line {line!r} is a pip option, which cannot be checked against the "
        "serving environment"
    ]


def test_unparseable_lines_are_warnings_naming_the_line() -> None:
    verdict = check("this is not ( a requirement")
    assert verdict.blocking == []
    assert verdict.warnings == [
        "requirement line 'this is not ( a requirement' is not a valid requirement, so it "
        "cannot be checked against the serving environment"
    ]


def test_per_requirement_options_are_ignored() -> None:
    assert check("pandas==3.1.1 --hash=sha256:abcd") == EnvironmentVerdict([], [])


def test_url_requirements_cannot_be_verified() -> None:
    line = "pandas @ https://example.invalid/pandas-2.0.0-py3-none-any.whl"
    verdict = check(line)
    assert verdict.blocking == []
    assert verdict.warnings == [
        f"requirement {line!r}: pandas comes from a URL, so its version cannot be verified; "
        "the serving environment has pandas 3.1.1"
    ]
    vcs = "thing @ git+https://example.invalid/thing.git@v1"
    assert check(vcs).blocking == [f"requirement {vcs!r}: package 'thing'{MISSING}"]


def test_python_minor_mismatch_blocks_a_pickled_model() -> None:
    verdict = check(python="3.10.4", pickled=True)
    assert verdict.blocking == [
        "this version was saved with Python 3.10 by (cloud)pickle and can only be loaded by "
        "Python 3.10; the serving environment runs 3.11.9, and no environment serving could "
        "build for it would change the interpreter"
    ]
    assert verdict.warnings == []


def test_python_minor_mismatch_only_warns_without_a_pickle() -> None:
    verdict = check(python="3.10.4", pickled=False)
    assert verdict.blocking == []
    assert verdict.warnings == [
        "this version was saved with Python 3.10.4 and the serving environment runs Python "
        "3.11.9 (another minor version)"
    ]


def test_python_patch_mismatch_is_nothing() -> None:
    assert check(python="3.11.2", pickled=True) == EnvironmentVerdict([], [])
    assert check(python=None, pickled=True) == EnvironmentVerdict([], [])


def test_no_requirements_file_checks_only_python() -> None:
    artifact = ArtifactEnvironment(requirements=None, python_version="3.11.9", pickled=True)
    assert check_environment(artifact, ENV, EnvironmentPolicy.ISOLATE) == EnvironmentVerdict(
        [], []
    )


def test_isolate_policy_lists_a_missing_package_as_a_need_not_a_quarantine() -> None:
    shared = check("foo==1.0", "scikit-learn==1.5.0", "pandas==2.2.3", python="3.10.4",
                   pickled=True)
    assert len(shared.blocking) == 2  # foo, and the pickle of another Python minor
    isolate = check(
        "foo==1.0",
        "scikit-learn==1.5.0",
        "pandas==2.2.3",
        python="3.10.4",
        pickled=True,
        policy=EnvironmentPolicy.ISOLATE,
    )
    # Only the interpreter still blocks: no environment changes it.
    assert isolate.blocking == [shared.blocking[0]]
    assert "no environment serving could build" in isolate.blocking[0]
    assert isolate.warnings == shared.warnings
    assert [str(r) for r in isolate.missing] == ["foo==1.0"]
    assert [(str(m.requirement), m.installed, m.another_major) for m in isolate.mismatched] == [
        ("scikit-learn==1.5.0", "1.6.1", False),
        ("pandas==2.2.3", "3.1.1", True),
    ]


@pytest.mark.parametrize(
    ("value", "meant"),
    [("isolate", "isolate"), ("shared", "shared"), ("off", "off"), ("strict", "isolate"),
     ("warn", "off"), ("STRICT", "isolate"), ("nonsense", "nonsense")],
)
def test_the_values_before_issue_17_are_read_as_the_new_ones(value: str, meant: str) -> None:
    assert policy_value(value) == meant
    if meant != "nonsense":
        assert EnvironmentPolicy(value).value == meant
        assert value.lower() in POLICY_VALUES


def test_the_setting_and_the_default_take_the_old_values_too(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from tests.unit.test_controller_http import _settings

    assert _settings(tmp_path).default_environment_policy is EnvironmentPolicy.ISOLATE
    monkeypatch.setenv("SIGSERVE_DEFAULT_ENVIRONMENT_POLICY", "warn")
    assert _settings(tmp_path).default_environment_policy is EnvironmentPolicy.OFF
    monkeypatch.setenv("SIGSERVE_DEFAULT_ENVIRONMENT_POLICY", "strict")
    assert _settings(tmp_path).default_environment_policy is EnvironmentPolicy.ISOLATE


def test_off_policy_checks_nothing() -> None:
    verdict = check(
        "foo==1.0", "-r x.txt", python="3.10.4", pickled=True, policy=EnvironmentPolicy.OFF
    )
    assert verdict == EnvironmentVerdict([], [])


def test_from_lock_file(tmp_path: Path) -> None:
    lock = tmp_path / "requirements.lock"
    lock.write_text(
        "# Exact versions tested together\n"
        "\n"
        "-e git+https://example.invalid/repo.git#egg=sigserve\n"
        "Pandas==3.1.1\n"
        "scikit_learn==1.6.1  # pinned for the demo\n"
        'backport==1.0; python_version < "3.11"\n'
        "torch==2.13.0+cpu\n",
        encoding="utf-8",
    )
    env = ServingEnvironment.from_lock_file(lock, python_version="3.11.9")
    assert env.python_version == "3.11.9"
    assert dict(env.distributions) == {
        "pandas": "3.1.1",
        "scikit-learn": "1.6.1",
        "torch": "2.13.0+cpu",
    }
    assert check("scikit-learn==1.6.1", "torch==2.13.0", env=env) == EnvironmentVerdict([], [])
    assert ServingEnvironment.from_lock_file(lock).python_version == (
        ServingEnvironment.current().python_version
    )


def test_from_lock_file_refuses_a_line_that_pins_nothing(tmp_path: Path) -> None:
    lock = tmp_path / "requirements.lock"
    lock.write_text("pandas>=2\n", encoding="utf-8")
    with pytest.raises(ValueError, match="does not pin one version"):
        ServingEnvironment.from_lock_file(lock)


def test_the_project_lock_file_reads() -> None:
    lock = Path(__file__).resolve().parents[2] / "requirements.lock"
    env = ServingEnvironment.from_lock_file(lock)
    assert "pandas" in env.distributions


def test_current_finds_installed_distributions() -> None:
    import pydantic

    env = ServingEnvironment.current()
    assert env.distributions["pydantic"] == pydantic.VERSION
    assert env.installed("mlflow") is not None
    assert env.python_version.count(".") == 2


# is_pickled, checked against MLmodel files MLflow itself writes.


def _save_mlmodel(path: Path, **kwargs: Any) -> dict[str, Any]:
    import mlflow

    mlflow.pyfunc.save_model(str(path), pip_requirements=["pandas"], **kwargs)
    loaded: dict[str, Any] = yaml.safe_load((path / "MLmodel").read_text(encoding="utf-8"))
    return loaded


def test_a_pickled_python_model_is_pickled(tmp_path: Path) -> None:
    import mlflow

    class Echo(mlflow.pyfunc.PythonModel):
        def predict(self, context: Any, model_input: list[str], params: Any = None) -> list[str]:
            return model_input

    mlmodel = _save_mlmodel(tmp_path / "m", python_model=Echo())
    assert "python_model" in mlmodel["flavors"]["python_function"]
    assert is_pickled(mlmodel)


def test_a_model_from_code_is_not_pickled(tmp_path: Path) -> None:
    code = tmp_path / "echo_model.py"
    code.write_text(
        "import mlflow\n\n\n"
        "class Echo(mlflow.pyfunc.PythonModel):\n"
        "    def predict(self, context, model_input: list[str], params=None) -> list[str]:\n"
        "        return model_input\n\n\n"
        "mlflow.models.set_model(Echo())\n",
        encoding="utf-8",
    )
    mlmodel = _save_mlmodel(tmp_path / "m", python_model=str(code))
    pyfunc = mlmodel["flavors"]["python_function"]
    # MLflow records cloudpickle_version for models from code too: it alone proves nothing.
    assert "model_code_path" in pyfunc
    assert "cloudpickle_version" in pyfunc
    assert not is_pickled(mlmodel)


@pytest.mark.parametrize(
    ("flavors", "pickled"),
    [
        ({"python_function": {"cloudpickle_version": "3.1.3"}}, True),
        ({"sklearn": {"pickled_model": "model.pkl", "serialization_format": "cloudpickle"}}, True),
        ({"sklearn": {"pickled_model": "model.pkl", "serialization_format": "pickle"}}, True),
        ({"sklearn": {"pickled_model": "model.pkl"}}, True),
        ({"sklearn": {"pickled_model": "model.skops", "serialization_format": "skops"}}, False),
        ({"transformers": {"source_model_name": "x"}, "python_function": {}}, False),
        (None, False),
    ],
)
def test_is_pickled_reads_flavor_keys(flavors: dict[str, Any] | None, pickled: bool) -> None:
    assert is_pickled({"flavors": flavors}) is pickled
