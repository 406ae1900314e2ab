"""Exit statuses of ``ckptd run`` (besides the job's own status when it finished by itself)."""

OK = 0
FAILED = 1  # the final checkpoint failed, or the job had to be killed at the deadline
USAGE = 2  # bad configuration or command line, or the run directory is taken
GAVE_UP = 3  # max_restarts restarts in a row without a new checkpoint
FENCED = 4  # another daemon took over the remote prefix: the job runs elsewhere now
DIVERGED = 5  # the loss diverged past [guard] rollback_limit, or with nonfinite = "stop"
CANNOT_EXECUTE = 127  # the command was not found or not executable (as in a shell)
