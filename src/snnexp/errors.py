"""Every error a user can cause, in one tree. The CLI catches `SnnexpError` alone, prints its message on one
line after `snnexp: error:` (no traceback) and exits with the error's `exit_code`:

    SnnexpError              2  bad input: the message says what was wrong and what to type instead
      ConfigError               a config value out of range, or a combination that cannot run
      DatasetError              data that cannot be found or read
        CorruptFile             a file that is not what its name or header says
      SpecError                 a malformed network spec
      ModelError                a network that cannot be built for this input and output
      CheckpointError           a checkpoint or run file missing, unreadable, foreign or unwritable
      ExportError               a network the export format cannot express
      CompareError              no runs to compare, or a bad column
      NonFiniteError         3  the run's numbers went NaN or inf (the message says where and why)
      Interrupted      128 + N  stopped by signal N (130 Ctrl-C, 143 SIGTERM) after saving

Torch-free and import-free on purpose: the CLI reports a config error before torch is imported.
Each class also derives from the built-in exception it replaces, so `except ValueError` keeps working
for callers of the Python API.
"""


class SnnexpError(Exception):
    """Base of every error a user can cause; `exit_code` is the process's exit status."""

    exit_code = 2


class ConfigError(SnnexpError, ValueError):
    """A config value out of range; the message names the key, the value and what is allowed."""


class DatasetError(SnnexpError, RuntimeError):
    """Data that cannot be found or read; the message says where to put which files."""


class CorruptFile(DatasetError, ValueError):
    """A file that cannot be read as the format it claims, or that is not the sensor's recording it should be; the
    message names it, and `path` holds it (so that skipped samples can be counted by file)."""

    def __init__(self, message: str, path=None):
        super().__init__(message)
        self.path = None if path is None else str(path)

    def __reduce__(self):  # `path` survives the trip back from a worker process
        return type(self), (str(self), self.path)


class SpecError(SnnexpError, ValueError):
    """A malformed network spec; the message points at the bad token."""


class ModelError(SnnexpError, ValueError):
    """A network that cannot be built for this input/output shape or these options."""


class CheckpointError(SnnexpError, RuntimeError):
    """A checkpoint or run file that is missing, unreadable, not a snnexp checkpoint, or cannot be written."""


class ExportError(SnnexpError, ValueError):
    """A network, or a layer of it, that the chosen format cannot express; the message says what to do."""


class CompareError(SnnexpError, ValueError):
    """Nothing to compare under the given folders, or an unknown column."""


class KernelUnavailable(SnnexpError, RuntimeError):
    """The CPU kernels cannot be built or loaded here (no C compiler, a failed build): the neurons then run their
    reference definition, with one warning."""


class NonFiniteError(SnnexpError, FloatingPointError):
    """A NaN or inf loss or gradient; the message names the step, the layer and likely causes."""

    exit_code = 3


class Interrupted(SnnexpError):
    """Ctrl-C or SIGTERM: the current step finished and the run was saved; `exit_code` is 128 + the signal."""

    def __init__(self, signame: str, signum: int, message: str):
        super().__init__(message)
        self.signame, self.exit_code = signame, 128 + signum
