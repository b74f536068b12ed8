"""Every exception class of the package survives pickle and cloudpickle.

Errors are items: a remote worker's exception crosses to the controller, and one that
cannot be rebuilt there once made the engine declare a healthy host lost. The classes
are found by importing every module of the package, so that a new one cannot slip
through; each is built with sample arguments for its own ``__init__``.
"""

from __future__ import annotations

import importlib
import inspect
import pickle
import pkgutil

import cloudpickle
import pytest

import papycluster
from papycluster.errors import PapyError

#: Scripts run on hosts with ``python -`` (not importable as modules).
SCRIPTS = "papycluster.cluster.remote."


def _exception_classes() -> list[type[BaseException]]:
    found: dict[str, type[BaseException]] = {}
    for info in pkgutil.walk_packages(papycluster.__path__, "papycluster."):
        if info.name.startswith(SCRIPTS):
            continue
        module = importlib.import_module(info.name)
        for _, obj in inspect.getmembers(module, inspect.isclass):
            if issubclass(obj, BaseException) and obj.__module__.startswith("papycluster"):
                found[f"{obj.__module__}.{obj.__qualname__}"] = obj
    return [found[name] for name in sorted(found)]


CLASSES = _exception_classes()


def _sample(name: str, annotation: object) -> object:
    text = str(annotation)
    if "BaseException" in text or "Exception" in text:
        return ValueError(f"sample {name}")
    if text.startswith("int") or annotation is int:
        return 7
    if "tuple" in text:
        return ("papyc", 2, "tcp", 0)
    return f"sample-{name}"


def _instance(cls: type[BaseException]) -> BaseException:
    parameters = list(inspect.signature(cls.__init__).parameters.values())[1:]
    args = [_sample(p.name, p.annotation) for p in parameters
            if p.default is p.empty and p.kind in (p.POSITIONAL_ONLY,
                                                   p.POSITIONAL_OR_KEYWORD)]
    exc = cls(*(args or ["a message"]))
    exc.add_note("a note")
    return exc


def _attributes(exc: BaseException) -> dict[str, str]:
    return {key: repr(value) for key, value in vars(exc).items()}


def test_the_package_has_exception_classes():
    names = {cls.__name__ for cls in CLASSES}
    assert {"WorkerError", "TicketError", "ProducerLostError", "HostError",
            "HostsFileError", "ShareError"} <= names


@pytest.mark.parametrize("cls", CLASSES, ids=lambda c: f"{c.__module__}.{c.__name__}")
def test_derives_from_papyerror(cls):
    assert issubclass(cls, PapyError), f"{cls} is not a PapyError"


@pytest.mark.parametrize("dumps", [pickle.dumps, cloudpickle.dumps],
                         ids=["pickle", "cloudpickle"])
@pytest.mark.parametrize("cls", CLASSES, ids=lambda c: f"{c.__module__}.{c.__name__}")
def test_round_trip_keeps_type_message_and_attributes(cls, dumps):
    exc = _instance(cls)
    back = pickle.loads(dumps(exc))
    assert type(back) is cls
    assert str(back) == str(exc)
    assert back.args == exc.args or repr(back.args) == repr(exc.args)
    assert _attributes(back) == _attributes(exc)
    assert back.__notes__ == ["a note"]
