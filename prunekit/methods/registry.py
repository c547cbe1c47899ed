from __future__ import annotations

from ..foundations.registry import Registry

METHODS: Registry = Registry("method")


def register(cls):
    METHODS.register(cls.name, cls)
    return cls


def get(name: str, options: dict | None = None):
    """Instantiate a method by name with its hyperparameters from a dict."""
    from ..foundations.hparams import from_dict

    cls = METHODS.get(name)
    return cls(from_dict(cls.Hparams, options, where=f"method {name!r}"))


def names() -> list[str]:
    return METHODS.names()


def _discover() -> None:
    """Import every module of this package: each method file registers itself."""
    import importlib
    import pkgutil

    from .. import methods as pkg

    for info in pkgutil.iter_modules(pkg.__path__):
        if info.name not in ("base", "registry"):
            importlib.import_module(f"{pkg.__name__}.{info.name}")


_discover()
