"""A read of many models (their versions, their registered model), shared by their passes only
while it is as fresh as a read of their own: begun after the model's latest ask
(controller/registry_shared.py)."""

from __future__ import annotations

from controller.registry_shared import ManyRefused, SharedReads


class Reads:
    """The registry's side: what each model has, and which reads were made."""

    def __init__(self) -> None:
        self.has: dict[str, list[str]] = {"a": ["1"], "b": ["1", "2"], "c": []}
        self.calls: list[list[str]] = []
        self.during: list[str] = []  # asked for while the next read of many runs
        self.shared: SharedReads | None = None

    def one(self, name: str) -> list[str]:
        self.calls.append([name])
        return list(self.has[name])

    def many(self, names: list[str]) -> dict[str, list[str]]:
        self.calls.append(names)
        assert self.shared is not None
        for name in self.during:
            self.shared.asked(name)
        self.during = []
        return {n: list(self.has[n]) for n in names if self.has[n]}


def shared_reads(waiting: list[str], clock: list[float] | None = None) -> tuple[
        SharedReads, Reads]:
    reads = Reads()
    now = clock or [0.0]
    reads.shared = SharedReads(lambda: list(waiting), keep_s=30, clock=lambda: now[0])
    for name in waiting:
        reads.shared.asked(name)
    return reads.shared, reads


def read(shared: SharedReads, reads: Reads, name: str) -> tuple[list[str], str]:
    return shared.read("versions", name, reads.one, reads.many, list)


def test_the_models_waiting_are_read_with_the_first_and_their_passes_take_it() -> None:
    shared, reads = shared_reads(["b", "c"])
    shared.asked("a")
    assert read(shared, reads, "a") == (["1"], "many")
    assert reads.calls == [["a", "b", "c"]]
    assert read(shared, reads, "b") == (["1", "2"], "shared")
    assert read(shared, reads, "c") == ([], "shared")  # none in the answer: no versions
    assert reads.calls == [["a", "b", "c"]]
    assert read(shared, reads, "b") == (["1", "2"], "many")  # taken once: read again after


def test_a_model_asked_for_again_after_the_read_began_is_read_again() -> None:
    """A webhook for b arrives while the shared read is under way: that read may predate what
    the webhook announces, so b's pass reads for itself."""
    shared, reads = shared_reads(["b", "c"])
    reads.during = ["b"]
    read(shared, reads, "a")
    reads.has["b"].append("3")
    assert read(shared, reads, "b") == (["1", "2", "3"], "one")  # c is kept: b alone
    assert read(shared, reads, "c") == ([], "shared")


def test_a_kept_read_is_not_taken_after_keep_s() -> None:
    clock = [0.0]
    shared, reads = shared_reads(["b"], clock)
    read(shared, reads, "a")
    clock[0] = 31.0
    assert read(shared, reads, "b") == (["1", "2"], "one")


def test_alone_in_the_queue_a_model_is_read_alone() -> None:
    shared, reads = shared_reads([])
    assert read(shared, reads, "a") == (["1"], "one")
    assert reads.calls == [["a"]]


def test_each_kind_of_read_is_kept_apart() -> None:
    """A read of the waiting models' versions is no read of their registered models."""
    shared, reads = shared_reads(["b"])
    read(shared, reads, "a")
    found = shared.read("model", "b", lambda n: f"model {n}",
                        lambda names: {n: f"models {n}" for n in names}, str)
    assert found == ("model b", "one")
    assert read(shared, reads, "b") == (["1", "2"], "shared")


def test_a_name_the_filter_cannot_carry_is_left_out_and_read_alone() -> None:
    """MLflow's ``name IN (...)`` takes no backslash: such a model waiting is not read with
    the others, and its own pass reads it alone."""
    shared, reads = shared_reads(["x\\", "b"])
    reads.has["x\\"] = ["1"]
    assert read(shared, reads, "a") == (["1"], "many")
    assert reads.calls == [["a", "b"]]
    assert read(shared, reads, "x\\") == (["1"], "one")


def test_a_refused_read_of_many_falls_back_to_the_models_own() -> None:
    """Whatever in the batch the registry refuses, it is no reason to fail this model's pass."""
    shared, reads = shared_reads(["b"])

    def refuse(names: list[str]) -> dict[str, list[str]]:
        raise ManyRefused("INVALID_PARAMETER_VALUE")

    assert shared.read("versions", "a", reads.one, refuse, list) == (["1"], "one")
    assert reads.calls == [["a"]]
