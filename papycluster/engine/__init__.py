"""The pipeline engine: Worker, Piper, Dagger, Plumber and the NuMap pool."""

from papycluster.engine.checkpoint import Checkpoint
from papycluster.engine.dagger import Dagger
from papycluster.engine.imports import imports
from papycluster.engine.numap import NuMap
from papycluster.engine.piper import Piper
from papycluster.engine.plumber import Plumber
from papycluster.engine.worker import Worker

__all__ = ["Checkpoint", "Dagger", "NuMap", "Piper", "Plumber", "Worker", "imports"]
